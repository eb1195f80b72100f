"""Admission and per-request plumbing between the HTTP routes and the engine.

What it does:
  - `Scheduler.submit` turns a transport-neutral `GenerationInput` into an
    engine request: encodes the prompt (BOS first when the tokenizer has one,
    as the checkpoints are trained on `<bos> prompt`), checks every limit
    (prompt tokens, new tokens, context length, tau range, timeout) and raises
    a 422 `ServiceError` naming the limit, or 429 when the engine is full, or
    503 while draining. A refused request never reaches the engine, so it
    holds no slot.
  - `TextStream`: incremental detokenization with stop strings. Text that
    could be the start of a stop string is held back until it cannot be, so
    the texts of the token events always concatenate to the final text.
  - `RequestState` / `RequestHandle`: the engine side (the engine's thread,
    or the thread receiving the engine process's messages) posts each
    request's token-id events with `loop.call_soon_threadsafe`, batched per
    step by `LoopMailbox`; on the event loop `RequestState` detokenizes them,
    watches for stop strings (ending the request there and telling the engine
    to free its row), keeps the temperature summary and records the request's
    metrics, then queues `events.TokenEvent`s and one `FinishEvent` (or
    `ErrorEvent`) for the route, which reads them from the handle and cancels
    through it.
  - Deadlines: every request gets one (its `timeout_s` or the server
    default); `drain` caps them all at now + grace.

What it does not do: HTTP (no FastAPI here), JSON, or any tensor work (the
engine builds each request's sampler and controller on its side).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from model.text_tokenizer import TextTokenizer
from service.api.events import ChoiceEnd, ErrorEvent, Event, FinishEvent, TokenEvent
from service.api.metrics import RequestMetrics, ServiceMetrics
from service.errors import ServiceError, internal_error, overloaded, unavailable, validation_error
from service.messages import (
    CancelReason,
    ControllerSpec,
    DecodeParams,
    Ended,
    EngineEvent,
    EngineFull,
    EngineRequest,
    EngineUnavailable,
    FinishReason,
    Sampled,
    Started,
    TemperatureMode,
    Ticket,
    row_seed,
)

log = logging.getLogger(__name__)
MAX_SEED = 2**63 - 1
# Prompt tokens decoded in front of the generated ones so the first generated
# token's text is right for tokenizers whose pieces depend on what precedes
# them (SentencePiece's leading space).
DETOKENIZE_CONTEXT = 5


def encode_prompt(tokenizer: TextTokenizer, text: str) -> list[int]:
    """Token ids of `text`, with the tokenizer's BOS in front when it has one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


# ---------------------------------------------------------------- text


class TextStream:
    """Token ids in, released text out; stops at the first stop string (excluded from the text)."""

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str] = (), context: Sequence[int] = ()):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._ids = list(context)
        self._prefix = 0  # decode window start
        self._read = len(self._ids)  # ids[:read] already turned into text
        self._decoded = ""  # all text decoded from generated ids (stop strings not yet cut)
        self._released = 0  # characters of _decoded handed out

    @property
    def text(self) -> str:
        return self._decoded[: self._released]

    def push(self, token_id: int) -> tuple[str, bool]:
        self._ids.append(token_id)
        self._decoded += self._decode_new()
        start = self._released
        if self._stop:
            cut = self._find_stop(start)
            if cut is not None:
                self._decoded = self._decoded[:cut]
                self._released = cut
                return self._decoded[start:], True
            self._released = len(self._decoded) - self._held_back()
        else:
            self._released = len(self._decoded)
        return self._decoded[start : self._released], False

    def flush(self) -> str:
        start = self._released
        self._released = len(self._decoded)
        return self._decoded[start:]

    def _decode_new(self) -> str:
        # The offsets method (as in TGI): decode a short window twice and keep
        # the difference, waiting while the tail is an incomplete character.
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def _find_stop(self, start: int) -> int | None:
        # A stop string cannot begin before `start`: such a beginning would
        # have been held back.
        hits = [i for s in self._stop if (i := self._decoded.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest unreleased suffix that is a proper prefix of a stop string."""
        pending = len(self._decoded) - self._released
        for size in range(min(pending, self._longest_stop - 1), 0, -1):
            tail = self._decoded[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0


# ---------------------------------------------------------------- delivery


class LoopMailbox:
    """Engine side -> one event loop, one wake-up per burst.

    A decode step produces events for every running request at once; posting
    each with its own `call_soon_threadsafe` wakes the loop (and contends for
    the GIL) once per request per step. Here the first post of a burst
    schedules one delivery and later posts join it, so the loop wakes about
    once per step whatever the batch size.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[Callable[[list[EngineEvent]], None], list[EngineEvent]]] = []
        self._scheduled = False

    def post(self, deliver: Callable[[list[EngineEvent]], None], events: list[EngineEvent]) -> None:  # any thread
        with self._lock:
            self._pending.append((deliver, events))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody will read these events
            with self._lock:
                self._pending.clear()
                self._scheduled = False
            raise

    def _deliver(self) -> None:  # event loop
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for deliver, events in pending:
            deliver(events)


class MailboxSink:
    """The engine's `Sink` for one request: posts its events to the request's event loop."""

    def __init__(self, mailbox: LoopMailbox, deliver: Callable[[list[EngineEvent]], None]) -> None:
        self._mailbox = mailbox
        self._deliver = deliver

    def push(self, events: list[EngineEvent]) -> None:  # engine side, any thread
        self._mailbox.post(self._deliver, events)


class _ChoiceState:
    """One choice (sample) of a request on the event loop: its text, temperatures and timing."""

    def __init__(self, choice: int, seed: int, text: TextStream) -> None:
        self.choice = choice
        self.seed = seed
        self.text = text
        self.taus: list[float] = []
        self.updates = 0
        self.last_token_at: float | None = None
        self.end: ChoiceEnd | None = None


class RequestState:
    """One request on the event loop: engine events in, text, stop strings, summaries and metrics out.

    Runs on the loop (`deliver`), so detokenization never runs in the engine.
    A request of n samples has n choices, each with its own text stream and
    summary. Its queue is bounded by the request's own token budget (it can
    never fill up). When a stop string completes, that choice ends here at
    once and the engine is told to free its row (`Ticket.cancel("stop",
    choice)`); tokens the engine sampled meanwhile are dropped. The request
    ends when every choice has.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        seed: int,
        texts: Sequence[TextStream],
        max_new_tokens: int,
        metrics: RequestMetrics | None,
        failure_counter: Callable[[str], None] | None,
    ) -> None:
        self.prompt_tokens = len(prompt_ids)
        self.seed = seed
        self.submitted_at = time.monotonic()
        self.ticket: Ticket | None = None
        self.choices = [_ChoiceState(i, row_seed(seed, i), text) for i, text in enumerate(texts)]
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=len(self.choices) * (max_new_tokens + 1) + 2)
        self._metrics = metrics
        self._count_failure = failure_counter
        self._started_at: float | None = None
        self._first_token_at: float | None = None
        self.done = False

    @property
    def n(self) -> int:
        return len(self.choices)

    def deliver(self, events: list[EngineEvent]) -> None:  # event loop
        for i, event in enumerate(events):
            if self.done:
                return
            if isinstance(event, Sampled):
                if self.choices[event.choice].end is not None:
                    continue  # the choice ended here (a stop string): tokens sampled meanwhile are dropped
                following = events[i + 1] if i + 1 < len(events) else None
                ends = isinstance(following, Ended) and following.reason != "stop"
                try:
                    self._token(event, flush=ends)
                except Exception as exc:  # a detokenizer failure fails this request only
                    log.exception("detokenizing a token failed")
                    self._fail("internal", f"detokenizing a token failed: {exc}")
                    self.cancel_in_engine("cancelled")
            elif isinstance(event, Started):
                self._started_at = event.at
                if self._metrics is not None:
                    self._metrics.started(event.at - self.submitted_at, self.prompt_tokens)
            elif isinstance(event, Ended):
                self._end_choice(event.choice, event.reason)
            else:
                self._fail(event.kind, event.message)

    def _token(self, event: Sampled, flush: bool) -> None:
        now = time.monotonic()
        choice = self.choices[event.choice]
        text, stop_hit = choice.text.push(event.token_id)
        if flush and not stop_hit:
            text += choice.text.flush()  # held-back text belongs to the output unless a stop string cut it
        previous, choice.last_token_at = choice.last_token_at, now
        first = self._first_token_at is None
        if first:
            self._first_token_at = now
        choice.taus.append(event.tau)
        choice.updates += int(event.updated)
        if self._metrics is not None:
            self._metrics.token(
                event.tau, event.updated,
                ttft_s=now - self.submitted_at if first else None,
                itl_s=None if previous is None else now - previous,
            )
        self.queue.put_nowait(TokenEvent(event.index, event.token_id, text, event.tau, event.updated, event.logprob,
                                         event.choice))
        if stop_hit:
            self._end_choice(event.choice, "stop")
            self.cancel_in_engine("stop", event.choice)

    def _end_choice(self, index: int, reason: FinishReason) -> None:
        choice = self.choices[index]
        if choice.end is not None:
            return
        now = time.monotonic()
        taus = choice.taus
        mean_tau, low, high = _tau_summary(taus)
        choice.end = ChoiceEnd(index, reason, choice.text.text, len(taus), mean_tau, low, high, choice.updates,
                               choice.seed)
        # Metrics first: whoever reads the response can rely on them being counted (one count per choice).
        if reason == "cancelled":
            self._failed("cancelled")
        elif self._metrics is not None:
            self._metrics.finished(reason, now - self.submitted_at, len(taus), mean_tau)
        self.queue.put_nowait(choice.end)
        if all(c.end is not None for c in self.choices):
            self._finish(now)

    def _finish(self, now: float) -> None:
        ends = tuple(c.end for c in self.choices if c.end is not None)
        taus = [tau for c in self.choices for tau in c.taus]
        mean_tau, low, high = _tau_summary(taus)
        finish = FinishEvent(
            reason=ends[0].reason,
            text=ends[0].text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(taus),
            tau_mean=mean_tau,
            tau_min=low,
            tau_max=high,
            tau_updates=sum(c.updates for c in self.choices),
            queue_s=(self._started_at or now) - self.submitted_at,
            ttft_s=None if self._first_token_at is None else self._first_token_at - self.submitted_at,
            total_s=now - self.submitted_at,
            seed=self.seed,
            choices=ends,
        )
        self.done = True
        self.queue.put_nowait(finish)

    def _fail(self, kind: Literal["internal", "unavailable"], message: str) -> None:
        self._failed(kind)
        self.done = True
        self.queue.put_nowait(ErrorEvent(kind, message))

    def _failed(self, reason: str) -> None:
        if self._count_failure is not None:
            self._count_failure(reason)

    def cancel_in_engine(self, reason: CancelReason, choice: int | None = None) -> None:
        """Free the request's rows in the engine (its reader has ended it, or left), or one choice's row."""
        if self.ticket is not None:
            self.ticket.cancel(reason, choice)


def _tau_summary(taus: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, min, max) of taus; None each when there are none."""
    if not taus:
        return None, None, None
    return sum(taus) / len(taus), min(taus), max(taus)


@dataclass(frozen=True)
class Completed:
    """A finished request: `tokens` of choice 0 (the only one when n = 1), `by_choice` every choice's."""

    tokens: list[TokenEvent]
    finish: FinishEvent
    by_choice: list[list[TokenEvent]] = field(default_factory=list)


class RequestHandle:
    """What a route holds for one admitted request."""

    def __init__(
        self,
        request_id: str,
        state: RequestState,
        mode: TemperatureMode,
        retry_after_s: int = 1,
    ) -> None:
        self.request_id = request_id
        self.created = int(time.time())
        self.finish: FinishEvent | None = None  # once seen by events(): for the route's log line
        self.prompt_tokens = state.prompt_tokens
        self.seed = state.seed
        self.n = state.n
        self.mode = mode
        self._state = state
        self._retry_after_s = retry_after_s

    async def events(self) -> AsyncIterator[TokenEvent | ChoiceEnd | FinishEvent]:
        """Token events and each choice's end, then the finish event; raises ServiceError if the engine failed
        the request."""
        while True:
            event = await self._state.queue.get()
            if isinstance(event, ErrorEvent):
                if event.kind == "unavailable":
                    raise unavailable(event.message, self._retry_after_s)
                raise internal_error(event.message)
            if isinstance(event, FinishEvent):
                self.finish = event
            yield event
            if isinstance(event, FinishEvent):
                return

    async def result(self) -> Completed:
        by_choice: list[list[TokenEvent]] = [[] for _ in range(self.n)]
        async for event in self.events():
            if isinstance(event, FinishEvent):
                return Completed(by_choice[0], event, by_choice)
            if isinstance(event, TokenEvent):
                by_choice[event.choice].append(event)
        raise internal_error("the request ended without a finish event")

    def cancel(self) -> None:
        """Remove the request from the engine (no-op once finished)."""
        if not self._state.done:
            self._state.cancel_in_engine("cancelled")


# ---------------------------------------------------------------- admission


@dataclass(frozen=True)
class GenerationInput:
    """One generation request, as both APIs describe it once their schemas are parsed."""

    prompt: str
    max_new_tokens: int | None = None
    mode: TemperatureMode = "learned"
    temperature: float | None = None
    tau_min: float | None = None
    tau_max: float | None = None
    deterministic: bool = False
    greedy: bool = False
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    timeout_s: float | None = None
    ignore_eos: bool = False
    # Already-rendered prompt token ids (the chat route renders messages with the checkpoint's
    # prompt format); when given, `prompt` is only a label and is not encoded again.
    prompt_ids: tuple[int, ...] | None = None
    n: int = 1  # samples of the prompt (choices): n rows in the engine, one prefill


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    context_length: int | None
    default_timeout_s: float
    max_timeout_s: float
    retry_after_s: int
    tau_range: tuple[float, float]
    max_n: int = 1  # samples per request (at most the running rows)


class EngineLike(Protocol):
    """What the scheduler needs of an engine: `engine.Engine` in a thread of this process, or
    `engine_client.EngineProcess`, the client of an engine running in a process of its own."""

    failure: BaseException | None

    @property
    def alive(self) -> bool: ...

    def submit(self, request: EngineRequest) -> Ticket: ...

    def load(self) -> tuple[int, int]: ...

    def cap_deadlines(self, deadline: float) -> None: ...

    def wait_idle(self, timeout: float | None = None) -> bool: ...

    def wait_until(self, predicate: Callable[[int, int], bool], timeout: float | None = None) -> bool: ...

    def stop(self, timeout: float | None = None) -> None: ...


class Scheduler:
    """Checks and admits requests, and drains the engine on shutdown."""

    def __init__(
        self,
        engine: EngineLike,
        tokenizer: TextTokenizer,
        limits: Limits,
        metrics: ServiceMetrics,
        tau_init: float,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.tau_init = tau_init  # the head's, for /info
        self.limits = limits
        self.metrics = metrics
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = (
            weakref.WeakKeyDictionary()
        )
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.engine.alive and not self.draining

    def submit(self, request: GenerationInput, *, record_metrics: bool = True) -> RequestHandle:
        """Admit a request or raise a ServiceError (422, 429, 503); never waits."""
        if self.draining or not self.engine.alive:
            reason = "the server is draining" if self.draining else "the engine is not running"
            self._count("unavailable", record_metrics)
            raise unavailable(reason, self.limits.retry_after_s)
        try:
            prompt_ids = (list(request.prompt_ids) if request.prompt_ids is not None
                          else encode_prompt(self.tokenizer, request.prompt))
            max_new_tokens = self._check(request, prompt_ids)
            spec = self._controller_spec(request)
        except ServiceError:
            self._count("validation", record_metrics)
            raise
        seed = secrets.randbits(63) if request.seed is None else request.seed
        timeout_s = request.timeout_s or self.limits.default_timeout_s
        state = RequestState(
            prompt_ids,
            seed,
            [TextStream(self.tokenizer, request.stop, context=prompt_ids[-DETOKENIZE_CONTEXT:])
             for _ in range(request.n)],
            max_new_tokens,
            self.metrics.for_request(spec.mode) if record_metrics else None,
            self.metrics.failed if record_metrics else None,
        )
        engine_request = EngineRequest(
            prompt_ids=prompt_ids,
            controller=spec,
            params=DecodeParams(max_new_tokens, request.top_k, request.top_p, request.greedy, request.ignore_eos),
            seed=seed,
            deadline=state.submitted_at + timeout_s,
            sink=MailboxSink(self._mailbox(asyncio.get_running_loop()), state.deliver),
            n=request.n,
        )
        try:
            state.ticket = self.engine.submit(engine_request)
        except EngineFull as exc:
            self._count("overloaded", record_metrics)
            raise overloaded(f"server at capacity: {exc}; retry later", self.limits.retry_after_s) from exc
        except EngineUnavailable as exc:
            self._count("unavailable", record_metrics)
            raise unavailable(str(exc), self.limits.retry_after_s) from exc
        return RequestHandle(f"gen-{uuid.uuid4().hex}", state, spec.mode, self.limits.retry_after_s)

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> LoopMailbox:
        """The mailbox of `loop` (one per loop: the server has one, tests run several)."""
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = LoopMailbox(loop)
        return mailbox

    async def warm_up(self) -> Completed:
        """One short request through the whole engine path, not counted in metrics."""
        handle = self.submit(GenerationInput(prompt="warm up", max_new_tokens=2, seed=0), record_metrics=False)
        return await handle.result()

    def begin_drain(self, grace_s: float) -> None:
        """Stop admitting (readiness fails, requests get 503); in-flight requests end within `grace_s`."""
        self.draining = True
        self.engine.cap_deadlines(time.monotonic() + grace_s)

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait (off the event loop) until no request is in the engine; False on timeout."""
        return await asyncio.to_thread(self.engine.wait_idle, timeout_s)

    def _count(self, reason: str, record: bool) -> None:
        if record:
            self.metrics.failed(reason)

    def _check(self, request: GenerationInput, prompt_ids: list[int]) -> int:
        """Validate against the server's limits; returns the effective max_new_tokens."""
        limits = self.limits
        if not 1 <= request.n <= limits.max_n:
            raise validation_error(f"n={request.n} samples: the limit is max_n={limits.max_n}", "n")
        if len(prompt_ids) > limits.max_prompt_tokens:
            raise validation_error(
                f"prompt is {len(prompt_ids)} tokens; the limit is max_prompt_tokens={limits.max_prompt_tokens}",
                "prompt",
            )
        max_new_tokens = request.max_new_tokens or limits.default_max_new_tokens
        if max_new_tokens > limits.max_new_tokens:
            raise validation_error(
                f"max_new_tokens={max_new_tokens} exceeds the limit max_new_tokens={limits.max_new_tokens}",
                "max_new_tokens",
            )
        if limits.context_length is not None and len(prompt_ids) + max_new_tokens > limits.context_length:
            raise validation_error(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context length {limits.context_length}",
                "max_new_tokens",
            )
        if request.timeout_s is not None and request.timeout_s > limits.max_timeout_s:
            raise validation_error(
                f"timeout_s={request.timeout_s} exceeds the limit max_timeout_s={limits.max_timeout_s}", "timeout_s"
            )
        return max_new_tokens

    def _controller_spec(self, request: GenerationInput) -> ControllerSpec:
        low, high = self.limits.tau_range
        if request.mode == "fixed":
            return ControllerSpec("fixed", temperature=request.temperature)
        if request.tau_min is None and request.tau_max is None:
            return ControllerSpec(request.mode, deterministic=request.deterministic)
        narrow_low = low if request.tau_min is None else request.tau_min
        narrow_high = high if request.tau_max is None else request.tau_max
        for name, value in (("tau_min", narrow_low), ("tau_max", narrow_high)):
            if not low <= value <= high:
                raise validation_error(f"{name}={value} is outside the trained tau range [{low}, {high}]", name)
        if narrow_low > narrow_high:
            raise validation_error(f"tau_min={narrow_low} exceeds tau_max={narrow_high}", "tau_min")
        return ControllerSpec(request.mode, tau_range=(narrow_low, narrow_high), deterministic=request.deterministic)
