"""The decode engine: continuous batching over `model/`, in one thread.

What it does: owns the model and a running batch (`kv.SlotBatch`: one
preallocated KV slot per row, optionally with a compiled decode step). Its loop,
between two decode steps:
  1. takes cancelled and expired requests out of the waiting queue;
  2. drops cancelled rows from the batch;
  3. admits waiting requests while there is a free slot (up to a prefill token
     budget per iteration) and prefills them together, whatever their prompt
     lengths, in groups whose padding stays under half their real tokens
     (`kv.prefill_groups`): with the native decoder straight into the batch's
     slots (`kv.SlotBatch.prefill`: compiled, only real tokens in the matmuls,
     chunks of at most `kv.PREFILL_CHUNK` tokens per prompt), otherwise through
     the model's own forward into a cache (`kv.prefill_together`: right-padded)
     whose rows are copied into slots; samples their first tokens, and each
     joins the batch as a new row. When rows are running and the first group's
     prompts fit one chunk (`kv.SlotBatch.fits_in_step`, not a drafting
     request, `prefill_in_step`), that group's prefill runs inside step 4's
     forward instead (`kv.SlotBatch.decode_and_prefill_then`: one forward per
     iteration, as vLLM mixes prefill chunks into decode steps): the running
     rows take their step and leave or stay, then the newcomers join with their
     first tokens, and step 4 does not run again in that iteration;
  4. runs one decode step for every row (unless paused) and samples the next
     token per row in that same step (`kv.SlotBatch.decode_then` with
     `sampling.sample_in_step`: the compiled forward, then one compiled graph
     for the temperature head and the draw, whatever mix of learned and fixed rows;
     rows with filters, greedy or entropy rows are drawn again by
     `sampling.sample_rows` from the step's logits), with counter-based noise
     keyed by each request's seed and token index, then emits one `Sampled` event per
     row and an `Ended` event for rows that hit EOS, their token budget or
     their deadline; those rows leave the batch at once;
  5. calls `after_iteration` after the prefills and after the decode step
     (the engine process sends the events so far to the API process there:
     one message per step for all rows, and one for the first tokens of the
     requests just admitted, so that they do not wait for the step).
Every event is handed to the request's `Sink`, which must not block.

Samples: a request of n samples (`EngineRequest.n`) is n rows. Its prompt is
prefilled once and the prefill's keys and values are copied into each row's
slot; row i draws with `sampling.row_seed(seed, i)`, so each row equals the
reference decode of that seed. Its events name the row (`choice`); each row
ends with its own `Ended`, the last one marked `final`. Cancelling, a
deadline and the drain apply to all its rows. A learned request to a
draft-reading head (model/draft.py) is drafted first: row 0 decodes the
greedy draft while rows 1..n-1 hold their slots and the prefill; when the
draft ends, its summary (`summarise_draft` of the draft's own steps) is fed
to their head at every step (`sample_rows(draft=...)`) and they join.

Bounds: at most `max_running` rows decode together (a request's rows are
admitted together, n <= max_running); `submit` refuses a
request (`EngineFull`) when running + waiting rows would exceed max_running +
max_waiting, so nothing queues without limit. A failure while prefilling one
request fails that request; a failure in a batched step fails the rows of
that batch; the engine then carries on with an empty batch. A request never
stays half-done: each gets exactly one terminal event (its `final` `Ended`, or
one `Failed` for all its rows).

What it does not do: HTTP, asyncio, tokenization, text, stop strings,
validation or Prometheus. Events carry token ids; the reader detokenizes,
looks for stop strings and ends a request early through its `Ticket`
(scheduler.RequestState). It runs in whatever process creates it: the
server's engine process (process.py), or a test's.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel

import model as model_package
import service.engine as engine_package
from model import CounterNoise, StepOutput, StepResult, TemperatureController, TemperatureHead
from model.draft import step_confidence, summarise_draft
from service.engine.graphs import GraphCache
from service.engine.kv import SlotBatch, prefill_groups, prefill_together
from service.engine.sampling import (
    RowSampler,
    build_controller,
    sample_in_step,
    sample_rows,
    sampled_result,
    serves_greedy_draft,
    step_inputs,
)
from service.messages import (
    CancelReason,
    ControllerSpec,
    Ended,
    EngineEvent,
    EngineFull,
    EngineRequest,
    EngineUnavailable,
    Failed,
    FinishReason,
    Observer,
    Sampled,
    Started,
    Ticket,
    row_seed,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    """Engine-side state of one request and its n rows (`_Sequence`s), touched only by the engine
    thread (except cancel reasons, set under the engine's lock).

    A request of a draft-reading head in learned mode with n > 1 is drafted
    first: row 0 (the greedy draft) decodes alone while rows 1..n-1 hold their
    slots (`reserved`) and the prompt's prefill (`prefilled`); when the draft
    ends, its summary is computed and they join the batch from that prefill."""

    request: EngineRequest
    rows: list[_Sequence]
    drafting: bool = False  # rows 1..n-1 wait for row 0's draft
    prefilled: tuple[StepOutput, DynamicCache, int] | None = None  # (step (1, .), cache, row in cache)
    ended: int = 0
    failed: bool = False

    @property
    def n(self) -> int:
        return len(self.rows)


@dataclass(eq=False)
class _Sequence:
    """Engine-side state of one row (choice) of a request."""

    group: _Request
    choice: int
    seed: int
    row: RowSampler | None = None  # built in the engine thread at admission
    generated: int = 0
    cancel_reason: CancelReason | None = None
    done: bool = False
    drafts: bool = False  # row 0 of a drafting request: its steps are summarised
    draft_steps: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (confidence, hidden)
    draft: torch.Tensor | None = None  # (1, F) the summary a follower's head reads

    @property
    def request(self) -> EngineRequest:
        return self.group.request

    @property
    def sampler(self) -> RowSampler:
        assert self.row is not None, "a running sequence has its sampler"
        return self.row


# ---------------------------------------------------------------- engine


class Engine:
    """Continuous batching in a dedicated thread; see the module docstring."""

    def __init__(
        self,
        model: PreTrainedModel,
        head: TemperatureHead,
        *,
        eos_token_ids: Collection[int],
        max_running: int,
        max_waiting: int,
        max_sequence_length: int,
        prefill_token_budget: int = 2048,
        prefill_in_step: bool = True,
        compile: bool = False,
        native_decode: bool | Literal["auto"] = "auto",
        graph_folder: Path | None = None,
        compiled: Collection[str] | None = None,
        observer: Observer | None = None,
        after_iteration: Callable[[], None] | None = None,
    ) -> None:
        """max_sequence_length: the longest prompt + max_new_tokens a request may have
        (the scheduler enforces it); each of the max_running KV slots holds that many tokens.
        compile: run the decode step (`kv.SlotBatch`) with its sampling (`sampling.sample_in_step`)
        through `torch.compile`; `warm_up` compiles it.
        native_decode: the decode step's forward (`kv.SlotBatch`'s `native`).
        prefill_in_step: newcomers' prompts go through the running rows' decode step when they can
        (`kv.SlotBatch.fits_in_step`); False: always a prefill of their own before the step.
        graph_folder: with `compile` on a CPU, where the compiled step and prefill are saved so that later
        starts load them instead of tracing (`graphs.GraphCache`); None: traced at every start.
        compiled: with graph_folder, the graphs this engine compiles ("step", "mixed layer", "sample"), the
        others running eager: a helper that compiles some of them into the folder (`process.compile_aside`)
        while the engine compiles the others. None: all of them.
        after_iteration: called in the engine thread after each prefill round, at the end of
        each loop iteration, and once more when the loop ends (the outbox sends nothing when it
        holds nothing new)."""
        self.model = model
        self.head = head
        self.device = next(model.parameters()).device
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.prefill_token_budget = prefill_token_budget
        self.prefill_in_step = prefill_in_step
        self.observer = observer
        self.after_iteration = after_iteration

        self._cond = threading.Condition()
        # Guarded by _cond:
        self._waiting: deque[_Request] = deque()
        self._in_system = 0  # rows submitted and not yet finished (waiting + running)
        self._stopping = False
        self._paused = False
        self._deadline_cap = math.inf
        # Engine thread only; rows of `_batch`, in order, with their (B, 1)
        # previous tau, (B,) next input token, (B,) seed and (B,) index of the
        # token they will sample next (the noise counter).
        self._rows: list[_Sequence] = []
        graphs = None
        if compile and graph_folder is not None and self.device.type == "cpu":
            graphs = GraphCache(graph_folder, graph_parts(model, head, max_running, max_sequence_length),
                                packages=(model_package, engine_package))
        self._batch = SlotBatch(
            model, slots=max_running, max_len=max_sequence_length, device=self.device, compile=compile,
            native=native_decode, graphs=graphs, compiled=compiled,
        )
        self._tau = torch.zeros((0, 1), dtype=torch.float32, device=self.device)
        self._next_tokens = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._seeds = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._counters = torch.zeros((0,), dtype=torch.long, device=self.device)
        # (B, F) the draft summary each row's head reads (zeros where it reads none); None for a head without
        # a draft input. Requests whose rows 1..n-1 wait for their draft (row 0) to end:
        self._drafts = torch.zeros((0, head.config.draft_size), device=self.device) if head.reads_draft else None
        self._drafting: list[_Request] = []
        self._controllers: dict[ControllerSpec, TemperatureController] = {}  # one per spec, shared
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    @property
    def graphs(self) -> GraphCache | None:
        """The saved graphs' folder when this engine uses one (the native decoder compiled on a CPU)."""
        return self._batch.graphs

    # ------------------------------------------------------------ control (any thread)

    def warm_up(self, prompt_ids: list[int]) -> None:
        """Run (and with `compile`, compile) the decode step with its sampling before serving; call before
        `start`. One graph for every batch (`kv.SlotBatch`)."""
        if self._thread is not None:
            raise RuntimeError("warm up before starting the engine")

        def inputs(rows: int) -> tuple:
            sampler = RowSampler(ControllerSpec("learned"), self._controller(ControllerSpec("learned")))
            drafts = None if self._drafts is None else torch.zeros((rows, self._drafts.shape[1]), device=self.device)
            noise = CounterNoise.for_rows([0] * rows, 0, self.device)
            tau = torch.ones((rows, 1), device=self.device)
            return step_inputs([sampler] * rows, self.head, tau, noise, drafts)[0]

        with torch.inference_mode():
            self._batch.warm_up(prompt_ids, sample_in_step, inputs, prompts_in_step=self.prefill_in_step)

    def start(self) -> None:
        """Run the loop in a thread of its own."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self.run, name="introllm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop; requests still in the engine get a `Failed` event ('unavailable')."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, request: EngineRequest) -> Ticket:
        """Queue a request (it waits for the loop if that has not started yet); raises EngineFull or
        EngineUnavailable instead of waiting. A request of n samples counts n rows against the bounds;
        row i draws with `row_seed(request.seed, i)`."""
        if not 1 <= request.n <= self.max_running:
            raise ValueError(f"n={request.n} samples cannot run together in {self.max_running} rows")
        group = _Request(request=request, rows=[])
        group.rows = [_Sequence(group, i, row_seed(request.seed, i)) for i in range(request.n)]
        with self._cond:
            if self._stopping:
                raise EngineUnavailable("the engine is not running")
            bound = self.max_running + self.max_waiting
            if self._in_system + request.n > bound:
                raise EngineFull(f"{self._in_system} rows in flight, {request.n} more asked (bound {bound})")
            self._waiting.append(group)
            self._in_system += request.n
            self._publish_load()
            self._cond.notify_all()
        return Ticket(functools.partial(self._cancel, group))

    def cap_deadlines(self, deadline: float) -> None:
        """Make every request, present and future, end by `deadline` (monotonic): the drain."""
        with self._cond:
            self._deadline_cap = min(self._deadline_cap, deadline)
            self._cond.notify_all()

    def pause(self) -> None:
        """Hold decode steps until `resume`: requests are still admitted, prefilled (so they get
        their first token), cancelled and timed out while waiting, but running rows do not advance.
        For whoever must change the engine between two steps (a weight update), and for tests
        that need a request to stay running."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no request is waiting or running; False on timeout."""
        return self.wait_until(lambda running, waiting: running + waiting == 0, timeout)

    def wait_until(self, predicate: Callable[[int, int], bool], timeout: float | None = None) -> bool:
        """Block until predicate(running, waiting) holds; False on timeout. Woken on every change."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(*self._load_locked()), timeout)

    def load(self) -> tuple[int, int]:
        """(running, waiting) right now; admitted requests count as running."""
        with self._cond:
            return self._load_locked()

    def _load_locked(self) -> tuple[int, int]:
        """Rows: a request of n samples counts n (its rows waiting for its draft count as running)."""
        waiting = sum(group.n for group in self._waiting)
        return self._in_system - waiting, waiting

    def _cancel(self, group: _Request, reason: CancelReason, choice: int | None) -> None:
        with self._cond:
            for sequence in group.rows if choice is None else group.rows[choice : choice + 1]:
                if sequence.cancel_reason is None:
                    sequence.cancel_reason = reason
            self._cond.notify_all()

    # ------------------------------------------------------------ the loop (engine thread)

    def run(self) -> None:
        """The loop, in the calling thread, until `stop`; `start` runs it in a thread of its own."""
        if self._thread is None:
            self._thread = threading.current_thread()
        try:
            with torch.inference_mode():
                while True:
                    work = self._next_work()
                    if work is None:
                        break
                    admitted, dropped = work
                    for group, reason in dropped:
                        for sequence in group.rows:
                            self._finish(sequence, reason)
                    self._drop_cancelled_rows()
                    stepped = False  # the first group's prompts go through the running rows' decode step
                    for indices in prefill_groups([len(g.request.prompt_ids) for g in admitted]):
                        with_step = self.prefill_in_step and not stepped and bool(self._rows) and not self._paused
                        stepped = self._start([admitted[i] for i in indices], with_step) or stepped
                    if admitted and not stepped:
                        # First tokens leave now, not after the decode step below: that step
                        # (one more token for every row) would add its length to their TTFT.
                        self._iteration_done()
                    if self._rows and not self._paused and not stepped:
                        self._step()
                    self._iteration_done()
        except BaseException as exc:  # the thread must never die silently
            self.failure = exc
            log.exception("engine loop failed")
        finally:
            self._fail_everything("unavailable", "the engine stopped")
            self._iteration_done()

    def _iteration_done(self) -> None:
        if self.after_iteration is not None:
            self.after_iteration()

    def _next_work(self) -> tuple[list[_Request], list[tuple[_Request, FinishReason]]] | None:
        """Wait for something to do; pop admissible and dead waiting requests. None: stop.

        A request is admitted when all its n rows fit beside the running and reserved ones."""
        with self._cond:
            while not self._stopping and not self._has_work_locked():
                self._cond.wait()
            if self._stopping:
                return None
            now = time.monotonic()
            dropped: list[tuple[_Request, FinishReason]] = []
            for group in list(self._waiting):
                reason = _group_cancel_reason(group)
                if reason is not None:
                    dropped.append((group, reason))
                elif now >= self._deadline(group.request):
                    dropped.append((group, "timeout"))
            for group, _ in dropped:
                self._waiting.remove(group)
            admitted: list[_Request] = []
            rows = len(self._rows) + self._reserved()
            budget = self.prefill_token_budget
            while self._waiting and rows + self._waiting[0].n <= self.max_running:
                cost = len(self._waiting[0].request.prompt_ids)
                if admitted and cost > budget:
                    break  # the rest join after the next decode step
                group = self._waiting.popleft()
                admitted.append(group)
                rows += group.n
                budget -= cost
            if admitted:
                self._publish_load()
                self._cond.notify_all()  # waiting -> running is a change wait_until may look for
            return admitted, dropped

    def _reserved(self) -> int:
        """Slots held by rows waiting for their request's draft."""
        return sum(group.n - 1 for group in self._drafting)

    def _has_work_locked(self) -> bool:
        if self._waiting:
            return True
        if not self._paused:
            return bool(self._rows)
        return any(_removable(s) for s in self._rows)  # paused: only removals to do

    def _deadline(self, request: EngineRequest) -> float:
        return min(request.deadline, self._deadline_cap)

    def _start(self, groups: list[_Request], with_step: bool = False) -> bool:
        """Prefill prompts together (right-padded when their lengths differ; once per request whatever
        its n), sample the first tokens, and join the batch unless already finished. A failure fails
        these requests only. with_step: the running rows' decode step may take the prompts into its
        forward (`_prefill_and_join`); returns whether it ran."""
        now = time.monotonic()
        for group in groups:
            self._push(group, [Started(now)])
        fits = []
        for group in groups:  # the scheduler's limits make this hold; a direct caller may not
            request = group.request
            if len(request.prompt_ids) + request.params.max_new_tokens > self._batch.max_len:
                self._error(group, "internal", f"prompt + max_new_tokens exceeds {self._batch.max_len} tokens")
            else:
                fits.append(group)
        if fits:
            return self._prefill_and_join(fits, with_step)
        return False

    def _prefill_and_join(self, groups: list[_Request], with_step: bool = False) -> bool:
        """Prefill each request's prompt once, sample the first tokens of its rows (its keys and values
        copied into each row's slot), join. A drafting request starts its draft row only. If a shared
        prefill fails, each request is tried alone, so that only the one that fails alone fails.

        with_step: when the batch can take the prompts into the decode step's forward (one chunk each, no
        draft), the running rows' step runs now with them, one forward for both (`_step`), and the
        newcomers join after it; returns whether it ran. If that step fails, its rows fail as a failed
        step's do and the prompts are prefilled alone."""
        stepped = False
        try:
            drafting = [group.n > 1 and serves_greedy_draft(group.request.controller, self.head) for group in groups]
            prompts = [g.request.prompt_ids for g in groups]
            step, cache = None, None
            if with_step and not any(drafting) and self._batch.fits_in_step(prompts):
                step, stepped = self._step(prompts), True
            if step is None:
                step, cache = self._prefill(prompts, any(drafting))
            starting: list[_Sequence] = []
            sources: list[int] = []  # the prefill row of each starting row
            for i, (group, follows) in enumerate(zip(groups, drafting, strict=True)):
                for sequence in group.rows:
                    if follows and sequence.choice > 0:
                        continue
                    sequence.drafts, sequence.draft_steps = follows, []  # (a retry alone starts afresh)
                    sequence.row = self._row_sampler(group.request, follows=False)
                    starting.append(sequence)
                    sources.append(i)
                if follows:
                    assert cache is not None
                    index = torch.tensor([i], device=self.device)
                    group.prefilled = (StepOutput(step.logits[index], step.hidden[index]), cache, i)
                    group.drafting = True
            first = self._sample_first(starting, step, sources)
        except Exception as exc:
            for group in groups:
                group.drafting, group.prefilled = False, None
            if len(groups) > 1:
                log.warning("a prefill of %d requests failed (%s): prefilling each alone", len(groups), exc)
                for group in groups:
                    self._prefill_and_join([group])
                return stepped
            log.exception("prefill failed")
            self._error(groups[0], "internal", f"prefill failed: {exc}")
            return stepped
        self._drafting.extend(group for group in groups if group.drafting)
        self._add_rows(starting, cache, sources, first)
        self._start_followers()
        return stepped

    def _prefill(self, prompts: list[list[int]], drafting: bool) -> tuple[StepOutput, DynamicCache | None]:
        """One forward (chunked for long prompts) over prompts of any lengths: their last positions' step
        (k rows) and the cache holding their keys and values, None when they are in the batch's own slots
        (`SlotBatch.prefill`, the native decoder's compiled prefill). A drafting request's followers start
        from its prompt's cache when its draft ends, so their prefill keeps a cache of its own."""
        if self._batch.prefills_in_slots and not drafting:
            return self._batch.prefill(prompts), None
        return prefill_together(self.model, prompts)

    def _sample_first(
        self, rows: list[_Sequence], step: StepOutput, sources: list[int]
    ) -> tuple[StepResult, CounterNoise, torch.Tensor | None]:
        """Sample the first token of each row from `step` row sources[i] (a prefill's last position)."""
        index = torch.tensor(sources, dtype=torch.long, device=self.device)
        if sources != list(range(step.logits.shape[0])):
            step = StepOutput(logits=step.logits[index], hidden=step.hidden[index])
        tau0 = torch.cat([s.sampler.controller.initial_tau(1, self.device).float() for s in rows])  # (k, 1)
        noise = CounterNoise.for_rows([s.seed for s in rows], 0, self.device)
        drafts = self._draft_rows(rows)
        samplers = [s.sampler for s in rows]
        args, fits = step_inputs(samplers, self.head, tau0, noise, drafts)
        if fits:  # the steps' compiled sampling (eager, it took ~3 ms of each prefill's 10 at 16 clients)
            result = sampled_result(self._batch.sample_then(sample_in_step, step.logits, step.hidden, args))
        else:
            result = sample_rows(samplers, step, tau0, noise, draft=drafts)
        self._record_draft_steps(rows, step)
        return result, noise, drafts

    def _add_rows(
        self, rows: list[_Sequence], cache: DynamicCache | None, sources: list[int],
        first: tuple[StepResult, CounterNoise, torch.Tensor | None],
    ) -> None:
        """Emit each row's first token and add the rows that go on to the batch, their prompt's keys and
        values copied from row sources[i] of `cache`, or of the batch's last prefill when `cache` is None
        (one prefill, copied into each of a request's rows)."""
        result, noise, drafts = first
        values = _host_values(result)
        joined = []
        for i, sequence in enumerate(rows):
            if self._emit(sequence, *values[i]):
                continue
            if cache is None:
                self._batch.add_prefilled(sources[i], len(sequence.request.prompt_ids))
            else:
                self._batch.add(cache, len(sequence.request.prompt_ids), row=sources[i])
            self._rows.append(sequence)
            joined.append(i)
        if not joined:
            return
        keep = torch.tensor(joined, dtype=torch.long, device=self.device)
        self._tau = torch.cat([self._tau, result.action.tau.float()[keep]])
        self._next_tokens = torch.cat([self._next_tokens, result.tokens[keep]])
        self._seeds = torch.cat([self._seeds, noise.seeds[keep]])
        self._counters = torch.cat([self._counters, noise.steps[keep] + 1])
        if self._drafts is not None:
            assert drafts is not None
            self._drafts = torch.cat([self._drafts, drafts[keep]])

    def _draft_rows(self, rows: list[_Sequence]) -> torch.Tensor | None:
        """(k, F) the draft summaries rows' heads read (zeros for rows that read none); None if the head reads none."""
        if not self.head.reads_draft:
            return None
        size = self.head.config.draft_size
        return torch.cat([
            s.draft if s.draft is not None else torch.zeros((1, size), device=self.device) for s in rows
        ])

    def _record_draft_steps(self, rows: list[_Sequence], step: StepOutput) -> None:
        """Keep what the draft summary reads of the step that chose each draft row's token (model/draft.py)."""
        members = [i for i, s in enumerate(rows) if s.drafts]
        if not members:
            return
        index = torch.tensor(members, dtype=torch.long, device=self.device)
        confidence = step_confidence(step.logits[index])  # (m, 3)
        hidden = step.hidden[index].float()  # (m, d)
        for j, i in enumerate(members):
            rows[i].draft_steps.append((confidence[j], hidden[j]))

    def _start_followers(self) -> None:
        """Rows 1..n-1 of requests whose draft has ended join, their head reading its summary."""
        while True:
            ready = [g for g in self._drafting if g.rows[0].done or g.failed]
            if not ready:
                return
            for group in ready:
                self._drafting.remove(group)
                self._follow(group)

    def _follow(self, group: _Request) -> None:
        assert group.prefilled is not None
        step, cache, source = group.prefilled
        group.prefilled, group.drafting = None, False
        if group.failed:
            return
        draft = group.rows[0]
        steps = draft.draft_steps
        draft.draft_steps = []
        summary = summarise_draft(
            torch.stack([c for c, _ in steps]).unsqueeze(0),
            torch.stack([h for _, h in steps]).unsqueeze(0),
            torch.ones((1, len(steps)), dtype=torch.bool, device=self.device),
        )  # (1, F)
        starting = []
        now = time.monotonic()
        with self._cond:
            reasons = [s.cancel_reason for s in group.rows[1:]]
        for sequence, reason in zip(group.rows[1:], reasons, strict=True):
            if reason is not None:
                self._finish(sequence, reason)
            elif now >= self._deadline(group.request):
                self._finish(sequence, "timeout")
            else:
                sequence.draft = summary
                sequence.row = self._row_sampler(group.request, follows=True)
                starting.append(sequence)
        if not starting:
            return
        k = len(starting)
        try:
            step = StepOutput(logits=step.logits.repeat(k, 1), hidden=step.hidden.repeat(k, 1))
            first = self._sample_first(starting, step, list(range(k)))
        except Exception as exc:
            log.exception("starting the rows after a draft failed")
            self._error(group, "internal", f"starting the samples after the draft failed: {exc}")
            return
        self._add_rows(starting, cache, [source] * k, first)

    def _row_sampler(self, request: EngineRequest, follows: bool) -> RowSampler:
        """follows: a row after the request's greedy draft, sampled by the head reading the draft's summary."""
        params = request.params
        spec = replace(request.controller, follows_draft=True) if follows else request.controller
        return RowSampler(
            spec=spec,
            controller=self._controller(spec),
            top_k=params.top_k,
            top_p=params.top_p,
            greedy=params.greedy or serves_greedy_draft(spec, self.head),
        )

    def _controller(self, spec: ControllerSpec) -> TemperatureController:
        if spec not in self._controllers:
            if len(self._controllers) >= 256:  # specs come from requests: keep the cache bounded
                self._controllers.clear()
            self._controllers[spec] = build_controller(spec, self.head)
        return self._controllers[spec]

    def _step(self, prompts: list[list[int]] | None = None) -> StepOutput | None:
        """One decode step for every row; finished rows leave the batch. With prompts (`SlotBatch.fits_in_step`),
        their prefill runs in the step's forward: returns their last positions (for `add_prefilled` after
        this), or None if the step failed."""
        if self.observer is not None:
            self.observer.observe_batch(len(self._rows))
        prefilled = None
        try:
            noise = CounterNoise(self._seeds, self._counters)
            samplers = [s.sampler for s in self._rows]
            args, sampled_in_step = step_inputs(samplers, self.head, self._tau, noise, self._drafts)
            if prompts:
                step, sampled, prefilled = self._batch.decode_and_prefill_then(
                    self._next_tokens, prompts, sample_in_step, args)
            else:
                step, sampled = self._batch.decode_then(self._next_tokens, sample_in_step, args)
            if sampled_in_step:
                result = sampled_result(sampled)
            else:  # filters, greedy or entropy rows: drawn again, eagerly, from the step's logits
                result = sample_rows(samplers, step, self._tau, noise, draft=self._drafts)
            values = _host_values(result)
            self._record_draft_steps(self._rows, step)
        except Exception as exc:
            log.exception("decode step failed")
            rows, self._rows = self._rows, []
            self._reset_batch()
            for group in _groups_of(rows):
                self._error(group, "internal", f"decode step failed: {exc}")
            self._start_followers()
            return None
        self._tau = result.action.tau.float()
        self._next_tokens = result.tokens
        self._counters = self._counters + 1
        keep = [i for i, sequence in enumerate(self._rows) if not self._emit(sequence, *values[i])]
        self._keep_rows(keep)
        self._start_followers()
        return prefilled

    def _emit(self, sequence: _Sequence, token: int, tau: float, updated: bool, logprob: float) -> bool:
        """Send one token's event (and the row's end, if this token ends it); True if done."""
        now = time.monotonic()
        request = sequence.request
        index = sequence.generated
        sequence.generated += 1
        reason: FinishReason | None = None
        if token in self.eos_token_ids and not request.params.ignore_eos:
            reason = "eos"
        elif sequence.generated >= request.params.max_new_tokens:
            reason = "length"
        elif now >= self._deadline(request):
            reason = "timeout"
        event = Sampled(index, token, tau, updated, logprob, now, sequence.choice)
        if reason is None:
            self._push(sequence.group, [event])
            return False
        self._finish(sequence, reason, [event])
        return True

    def _finish(self, sequence: _Sequence, reason: FinishReason, events: list[EngineEvent] | None = None) -> None:
        """Terminal event of a row that ran or was dropped while waiting (the request's when it is the last)."""
        if sequence.done:
            return
        self._retire([sequence])
        group = sequence.group
        group.ended += 1
        ended = Ended(reason, time.monotonic(), sequence.choice, final=group.ended == group.n)
        self._push(group, [*(events or []), ended])

    def _error(self, group: _Request, kind: Literal["internal", "unavailable"], message: str) -> None:
        """Fail a whole request: its rows still running leave at the next removal, its followers never start."""
        if group.failed:
            return
        group.failed = True
        with self._cond:
            for sequence in group.rows:
                sequence.cancel_reason = sequence.cancel_reason or "cancelled"
        self._retire(group.rows)
        self._push(group, [Failed(kind, message)])

    def _retire(self, sequences: list[_Sequence]) -> None:
        with self._cond:
            fresh = [s for s in sequences if not s.done]
            if not fresh:
                return
            for sequence in fresh:
                sequence.done = True
            self._in_system -= len(fresh)
            self._publish_load()
            self._cond.notify_all()

    def _push(self, group: _Request, events: list[EngineEvent]) -> None:
        try:
            group.request.sink.push(events)
        except Exception:
            # The receiver is gone: nobody will read this request's output, so stop decoding it.
            log.warning("dropping a request whose receiver is gone", exc_info=True)
            with self._cond:
                for sequence in group.rows:
                    sequence.cancel_reason = sequence.cancel_reason or "cancelled"

    def _drop_cancelled_rows(self) -> None:
        with self._cond:
            cancelled = [(i, s.cancel_reason) for i, s in enumerate(self._rows) if _removable(s)]
        if not cancelled:
            return
        for i, reason in cancelled:
            assert reason is not None
            self._finish(self._rows[i], reason)
        gone = {i for i, _ in cancelled}
        self._keep_rows([i for i in range(len(self._rows)) if i not in gone])
        self._start_followers()

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._reset_batch()
            return
        self._batch.keep(keep)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._tau = self._tau[index]
        self._next_tokens = self._next_tokens[index]
        self._seeds = self._seeds[index]
        self._counters = self._counters[index]
        if self._drafts is not None:
            self._drafts = self._drafts[index]

    def _reset_batch(self) -> None:
        self._batch.clear()
        self._tau = torch.zeros((0, 1), dtype=torch.float32, device=self.device)
        self._next_tokens = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._seeds = torch.zeros((0,), dtype=torch.long, device=self.device)
        self._counters = torch.zeros((0,), dtype=torch.long, device=self.device)
        if self._drafts is not None:
            self._drafts = torch.zeros((0, self.head.config.draft_size), device=self.device)

    def _fail_everything(self, kind: Literal["internal", "unavailable"], message: str) -> None:
        with self._cond:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
        rows, self._rows = self._rows, []
        drafting, self._drafting = self._drafting, []
        self._reset_batch()
        for group in [*waiting, *_groups_of(rows), *drafting]:
            self._error(group, kind, message)

    def _publish_load(self) -> None:
        """Report (running, waiting); caller holds the lock. Admitted requests count as running."""
        if self.observer is not None:
            self.observer.set_load(*self._load_locked())


def _removable(sequence: _Sequence) -> bool:
    """Whether a running row leaves at the next removal. A draft whose followers wait for it decodes on
    after its reader has cut it at a stop string (the reader drops those tokens): the followers' head
    reads the summary of the whole greedy draft, as in training, not of the part before the stop."""
    reason = sequence.cancel_reason
    if reason == "stop" and sequence.drafts and sequence.group.drafting:
        return False
    return reason is not None


def _group_cancel_reason(group: _Request) -> CancelReason | None:
    """A waiting request's cancel reason (every row of a request still waiting is cancelled together)."""
    return next((s.cancel_reason for s in group.rows if s.cancel_reason is not None), None)


def _groups_of(rows: list[_Sequence]) -> list[_Request]:
    """The distinct requests of rows, in order."""
    return list({id(s.group): s.group for s in rows}.values())


def _host_values(result: StepResult) -> list[tuple[int, float, bool, float]]:
    """(token, tau, gate fired, token log-prob) per row, one device-to-host copy each."""
    tokens = result.tokens.tolist()
    taus = result.action.tau.squeeze(-1).tolist()
    gates = (result.action.gate.squeeze(-1) > 0.5).tolist()
    logprobs = result.token_logprobs.tolist()
    return list(zip(tokens, taus, gates, logprobs, strict=True))


def graph_parts(model: PreTrainedModel, head: TemperatureHead, slots: int, max_len: int) -> dict:
    """What the compiled step and prefill specialize on besides the code (`graphs.GraphCache`'s key): the
    model's and the head's configurations (every static size), the weights' dtype and device, the slots."""
    parameter = next(model.parameters())
    return {
        "model": model.config.to_dict(),
        "head": asdict(head.config),
        "dtype": str(parameter.dtype),
        "device": str(parameter.device),
        "slots": slots,
        "max_len": max_len,
    }
