"""The decode engine in-process (no HTTP): agreement with the reference decode,
continuous batching, per-row temperature modes, deadlines, cancellation,
bounds and failure handling."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from model import LearnedTemperature
from service.api.events import FinishEvent, TokenEvent
from service.api.metrics import ServiceMetrics
from service.api.scheduler import Completed, GenerationInput, Limits, Scheduler
from service.engine import engine as engine_module
from service.engine.engine import Engine
from service.engine.kv import SlotBatch
from service.engine.process import start_compile_aside
from service.engine.sampling import build_controller
from service.errors import ServiceError
from service.messages import ControllerSpec, EngineSpec
from tests.service.support import COMPILED_ENGINE, PROMPTS, decode_paused, reference, reference_tokens

LONG = 300  # a budget the request does not reach in these tests
# Compiled, every engine of these tests has the same step graph (running_engine's 8 slots of 512 tokens):
# one worker compiles it once (tests/service/support.py, COMPILED_ENGINE).
EAGER_AND_COMPILED = pytest.mark.parametrize(
    "compile", [False, pytest.param(True, marks=COMPILED_ENGINE)], ids=["eager", "compiled"]
)


@contextmanager
def running_engine(
    checkpoint, *, max_running=8, max_waiting=32, prefill_token_budget=2048, compile=False, graph_folder=None,
    prefill_in_step=True, warm_up=None, helper_spec=None,
) -> Iterator[Scheduler]:
    """helper_spec: an `EngineSpec` of the same engine for a compile helper process (`start_compile_aside`),
    which must start."""
    metrics = ServiceMetrics("test")
    engine = Engine(
        checkpoint.model,
        checkpoint.head,
        eos_token_ids={checkpoint.tokenizer.eos_token_id},
        max_running=max_running,
        max_waiting=max_waiting,
        max_sequence_length=512,
        prefill_token_budget=prefill_token_budget,
        prefill_in_step=prefill_in_step,
        compile=compile,
        graph_folder=graph_folder,
        observer=metrics,
    )
    config = checkpoint.head.config
    limits = Limits(
        max_prompt_tokens=128, max_new_tokens=400, default_max_new_tokens=16, context_length=512,
        default_timeout_s=120.0, max_timeout_s=600.0, retry_after_s=1, tau_range=(config.tau_min, config.tau_max),
        max_n=max_running,
    )
    if helper_spec is not None:
        helper = start_compile_aside(helper_spec, engine)
        assert helper is not None, "the compile helper did not start"
    if compile if warm_up is None else warm_up:
        engine.warm_up([1, 5, 6])
    if helper_spec is not None:
        # The engine waited for it at warm-up, or found its graph saved already while it was still exiting.
        helper.join(60)
        assert helper.exitcode == 0
    engine.start()
    try:
        yield Scheduler(engine, checkpoint.tokenizer, limits, metrics, tau_init=config.tau_init)
    finally:
        engine.stop(timeout=30)


async def run_all(scheduler: Scheduler, requests: list[GenerationInput]) -> list[Completed]:
    handles = [scheduler.submit(r) for r in requests]
    return await asyncio.gather(*(h.result() for h in handles))


def failures(scheduler: Scheduler, reason: str) -> float:
    value = scheduler.metrics.registry.get_sample_value(
        "introllm_request_failure_total", {"model": "test", "reason": reason}
    )
    return value or 0.0


def token_ids(result: Completed) -> list[int]:
    return [t.token_id for t in result.tokens]


def taus(result: Completed) -> torch.Tensor:
    return torch.tensor([t.tau for t in result.tokens])


def staggered_prompts(count: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] + "ab" * (i % 5) for i in range(count)]


def test_greedy_tokens_equal_the_reference_for_16_requests_joining_and_leaving_at_different_steps(checkpoint):
    prompts = staggered_prompts(16)
    budgets = [3 + (7 * i) % 40 for i in range(16)]
    requests = [
        GenerationInput(prompt=p, max_new_tokens=n, greedy=True, seed=i)
        for i, (p, n) in enumerate(zip(prompts, budgets, strict=True))
    ]
    # 5 slots and a small prefill budget: rows join while others decode, and leave at different steps.
    with running_engine(checkpoint, max_running=5, prefill_token_budget=8) as scheduler:
        results = asyncio.run(run_all(scheduler, requests))
        batch_sizes = scheduler.metrics.registry.get_sample_value("introllm_batch_size_count", {"model": "test"})
    assert batch_sizes and batch_sizes > 0
    for prompt, budget, result in zip(prompts, budgets, results, strict=True):
        expected = reference(checkpoint, prompt, max_new_tokens=budget, greedy=True)
        assert token_ids(result) == reference_tokens(expected), prompt
        assert result.finish.reason == expected.finish_reasons[0]


def test_seeded_learned_sampling_gives_the_same_tokens_and_temperatures_alone_among_others_and_in_the_reference(
    checkpoint,
):
    target = GenerationInput(prompt="3 5 7 2>24\n", max_new_tokens=40, seed=1234, ignore_eos=True)
    others = [
        GenerationInput(prompt=p, max_new_tokens=10 + 3 * i, seed=i, ignore_eos=True)
        for i, p in enumerate(staggered_prompts(9))
    ]
    with running_engine(checkpoint, max_running=6, prefill_token_budget=16) as scheduler:
        (alone,) = asyncio.run(run_all(scheduler, [target]))
        crowd = asyncio.run(run_all(scheduler, [*others[:4], target, *others[4:]]))[4]
    expected = reference(checkpoint, target.prompt, max_new_tokens=40, seed=1234, stop_at_eos=False)
    assert token_ids(alone) == token_ids(crowd) == reference_tokens(expected)
    torch.testing.assert_close(taus(alone), expected.taus[0])
    torch.testing.assert_close(taus(crowd), taus(alone))
    assert [t.updated for t in crowd.tokens] == expected.gates[0].bool().tolist()
    torch.testing.assert_close(torch.tensor([t.logprob for t in alone.tokens]), expected.token_logprobs[0])


@EAGER_AND_COMPILED
def test_newcomers_of_different_lengths_are_prefilled_together_and_each_gets_its_solo_reference(
    checkpoint, monkeypatch, compile
):
    prompts = ["1 2 3 4>10\n", "5 6 7 8>26\n", "9 8 7 6>30\n", "2 4 6 8>20\n"]  # 12 tokens with BOS
    prompts += ["12 34 5>6\n", "98 7 6>54\n", "1 2>3\n"]  # 11, 11 and 7
    prompts += ["The quick brown fox jumps over the lazy dog."]  # 45: too long to pad the rest to
    requests = [GenerationInput(prompt=p, max_new_tokens=24, seed=100 + i, ignore_eos=True)
                for i, p in enumerate(prompts)]
    prefills = []
    first_prefill_started, rest_submitted = threading.Event(), threading.Event()
    real_prefill_and_join = engine_module.Engine._prefill_and_join

    def recording_prefill_and_join(engine, groups, with_step=False):
        if not prefills:
            # Hold the first arrival's prefill until the rest have queued, so that
            # the grouping below does not depend on thread timing.
            first_prefill_started.set()
            rest_submitted.wait(timeout=30)
        stepped = real_prefill_and_join(engine, groups, with_step)
        prefills.append((sorted(len(g.request.prompt_ids) for g in groups), stepped))
        return stepped

    async def first_alone_then_the_rest(scheduler: Scheduler) -> list[Completed]:
        handles = [scheduler.submit(requests[0])]
        assert await asyncio.to_thread(first_prefill_started.wait, 30)
        handles += [scheduler.submit(r) for r in requests[1:]]
        rest_submitted.set()
        return await asyncio.gather(*(h.result() for h in handles))

    monkeypatch.setattr(engine_module.Engine, "_prefill_and_join", recording_prefill_and_join)
    with running_engine(checkpoint, max_running=8, compile=compile) as scheduler:
        # After warm-up nothing may compile again: new batch sizes, prompt lengths
        # and widths all run on the warmed-up graphs (a recompile fails the request).
        with torch.compiler.set_stance("fail_on_recompile" if compile else "default"):
            done = asyncio.run(first_alone_then_the_rest(scheduler))
    # The first alone, into an idle engine; then the six short ones in one forward, the running row's
    # decode step (one forward for both); the long one on its own.
    assert prefills == [([12], False), ([7, 11, 11, 12, 12, 12], True), ([45], False)]
    for request, result in zip(requests, done, strict=True):
        expected = reference(checkpoint, request.prompt, max_new_tokens=24, seed=request.seed, stop_at_eos=False)
        assert token_ids(result) == reference_tokens(expected), request.prompt
        torch.testing.assert_close(taus(result), expected.taus[0])
        torch.testing.assert_close(torch.tensor([t.logprob for t in result.tokens]), expected.token_logprobs[0])


def _engine_spec(checkpoint_dir, **changes) -> EngineSpec:
    """The spec of running_engine's compiled engine with 4 slots, as the engine process would get it."""
    spec = EngineSpec(
        checkpoint=str(checkpoint_dir), device="cpu", dtype="float32", trust_remote_code=False, max_running=4,
        max_waiting=32, max_sequence_length=512, prefill_token_budget=2048, prefill_in_step=True, compile=True,
        compile_fallback=False, compile_helper=True, native_decode="auto", torch_threads=torch.get_num_threads(),
        warm_up_prompt_ids=(1, 5, 6), log_level="info", log_format="text",
    )
    return replace(spec, **changes)


def test_no_compile_helper_starts_when_turned_off_without_a_warm_up_or_with_the_graphs_saved(
    checkpoint, checkpoint_dir, tmp_path
):
    engine = Engine(checkpoint.model, checkpoint.head, eos_token_ids={checkpoint.tokenizer.eos_token_id},
                    max_running=4, max_waiting=32, max_sequence_length=512, compile=True, graph_folder=tmp_path)
    assert engine.graphs is not None
    assert start_compile_aside(_engine_spec(checkpoint_dir, compile_helper=False), engine) is None
    assert start_compile_aside(_engine_spec(checkpoint_dir, warm_up_prompt_ids=None), engine) is None
    engine.graphs.folder.mkdir(parents=True)
    (engine.graphs.folder / "sample-0123456789ab.graph").write_bytes(b"saved by an earlier start")
    assert start_compile_aside(_engine_spec(checkpoint_dir), engine) is None


def test_an_engine_started_from_saved_graphs_samples_the_seeded_tokens_and_temperatures_of_eager(
    checkpoint, checkpoint_dir, tmp_path, monkeypatch, caplog
):
    """A start loads the step, the prefill and the sampler (head included) that an earlier start saved for a
    model and head of the same configuration with other weights, traces nothing, and gives what the eager
    engine gives for its own weights: tokens, tau and log-probs of every seeded row. The earlier, cold start
    compiled the sampler's graph in a helper process meanwhile, and loaded it from there."""
    requests = [
        GenerationInput(prompt=p, max_new_tokens=12, seed=i, ignore_eos=True, temperature=0.7 if i % 3 == 2 else None)
        for i, p in enumerate(staggered_prompts(6))
    ]
    other = replace(checkpoint, model=copy.deepcopy(checkpoint.model), head=copy.deepcopy(checkpoint.head))
    with torch.no_grad():
        for parameter in [*other.model.parameters(), *other.head.parameters()]:
            parameter.add_(torch.randn_like(parameter) * 0.5)
    # The helper process loads the checkpoint from its folder: the graphs' key is the configuration, not weights.
    helper_spec = _engine_spec(checkpoint_dir)
    with caplog.at_level(logging.INFO, logger="service.engine.graphs"):
        with running_engine(other, max_running=4, compile=True, graph_folder=tmp_path, helper_spec=helper_spec):
            pass  # compiled at warm-up and saved
    # This process compiled the forward's graphs, and loaded the sampler's that the helper saved.
    compiled = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("compiled ")]
    loaded = [r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("loaded compiled ")]
    assert sorted(name.split("-")[0] for name in compiled) == ["mixed", "step"], compiled
    assert [name.split("-")[0] for name in loaded] == ["sample"], loaded

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again instead of loading the saved graph")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "compile", no_tracing)
        with running_engine(checkpoint, max_running=4, compile=True, graph_folder=tmp_path) as scheduler:
            loaded = asyncio.run(run_all(scheduler, requests))
    with running_engine(checkpoint, max_running=4) as scheduler:
        eager = asyncio.run(run_all(scheduler, requests))
    for got, expected in zip(loaded, eager, strict=True):
        assert token_ids(got) == token_ids(expected)
        torch.testing.assert_close(taus(got), taus(expected))
        torch.testing.assert_close(torch.tensor([t.logprob for t in got.tokens]),
                                   torch.tensor([t.logprob for t in expected.tokens]))


@EAGER_AND_COMPILED
def test_a_batch_mixing_temperature_modes_and_filters_matches_each_request_alone_in_the_reference(checkpoint, compile):
    """Compiled, the rows the in-step sampler takes (learned, deterministic, narrowed, fixed) are drawn in the step's
    graph and the others (filters, greedy, entropy) again from its logits: each must still get its own kind's draw."""
    head = checkpoint.head
    cases = [  # (request, the reference's controller spec)
        (GenerationInput(prompt="1 2>3\n", mode="learned"), ControllerSpec("learned")),
        (GenerationInput(prompt="hello", mode="learned", deterministic=True),
         ControllerSpec("learned", deterministic=True)),
        (GenerationInput(prompt="x", mode="fixed", temperature=0.7), ControllerSpec("fixed", temperature=0.7)),
        (GenerationInput(prompt="9 9>81\n", mode="entropy"), ControllerSpec("entropy")),
        (GenerationInput(prompt="12 7 3>2\n", mode="learned", tau_min=0.5, tau_max=0.9),
         ControllerSpec("learned", tau_range=(0.5, 0.9))),
        (GenerationInput(prompt="3 5 7 2>24\n", mode="fixed", temperature=1.2, top_k=5),
         ControllerSpec("fixed", temperature=1.2)),
        (GenerationInput(prompt="The fox", mode="learned", top_p=0.8), ControllerSpec("learned")),
        (GenerationInput(prompt="greedy", mode="entropy", greedy=True), ControllerSpec("entropy")),
    ]
    requests = [
        replace(r, seed=50 + i, max_new_tokens=24, ignore_eos=True)
        for i, (r, _) in enumerate(cases)
    ]
    with running_engine(checkpoint, compile=compile) as scheduler:
        results = asyncio.run(run_all(scheduler, requests))
    for request, (_, spec), result in zip(requests, cases, results, strict=True):
        expected = reference(
            checkpoint, request.prompt, max_new_tokens=24, seed=request.seed, controller=build_controller(spec, head),
            greedy=request.greedy, stop_at_eos=False, top_k=request.top_k, top_p=request.top_p,
        )
        assert token_ids(result) == reference_tokens(expected), spec
        torch.testing.assert_close(taus(result), expected.taus[0])
    fixed = results[2]
    assert all(t.tau == pytest.approx(0.7) and not t.updated for t in fixed.tokens)
    narrowed = taus(results[4])
    assert ((narrowed >= 0.5 - 1e-6) & (narrowed <= 0.9 + 1e-6)).all()


def test_learned_controller_in_the_engine_is_the_model_cores(checkpoint):
    spec = ControllerSpec("learned", tau_range=(0.3, 1.5), deterministic=True)
    controller = build_controller(spec, checkpoint.head)
    assert isinstance(controller, LearnedTemperature)
    assert controller.head is checkpoint.head and controller.tau_range == (0.3, 1.5) and controller.deterministic


def test_a_passed_deadline_ends_the_request_with_timeout_and_the_output_so_far(checkpoint):
    request = GenerationInput(prompt="3 5 7 2>24\n", max_new_tokens=LONG, ignore_eos=True, timeout_s=0.001, seed=0)
    with running_engine(checkpoint) as scheduler:
        (result,) = asyncio.run(run_all(scheduler, [request]))
    assert result.finish.reason == "timeout"
    assert result.finish.completion_tokens == len(result.tokens) < LONG
    assert "".join(t.text for t in result.tokens) == result.finish.text


def test_draining_times_out_running_requests_and_refuses_new_ones(checkpoint):
    async def scenario(scheduler: Scheduler) -> tuple[FinishEvent, ServiceError]:
        handle = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=LONG, ignore_eos=True))
        events = handle.events()
        assert isinstance(await anext(events), TokenEvent)  # it runs
        scheduler.begin_drain(grace_s=0.0)
        with pytest.raises(ServiceError) as refused:
            scheduler.submit(GenerationInput(prompt="late"))
        scheduler.engine.resume()  # the next step finds the deadline passed
        finish = [e async for e in events][-1]
        return finish, refused.value

    with running_engine(checkpoint) as scheduler, decode_paused(scheduler.engine):
        finish, refused = asyncio.run(scenario(scheduler))
        assert not scheduler.ready
        assert scheduler.engine.load() == (0, 0)
    assert isinstance(finish, FinishEvent) and finish.reason == "timeout" and finish.completion_tokens < LONG
    assert refused.status == 503 and refused.headers["Retry-After"]


def test_cancelling_removes_running_and_waiting_requests_and_counts_them(checkpoint):
    async def scenario(scheduler: Scheduler) -> None:
        running = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=LONG, ignore_eos=True))
        waiting = scheduler.submit(GenerationInput(prompt="4 5>9\n", max_new_tokens=LONG, ignore_eos=True))
        events = running.events()
        assert isinstance(await anext(events), TokenEvent)
        assert scheduler.engine.load() == (1, 1)  # one slot: the second waits
        waiting.cancel()
        running.cancel()
        assert await asyncio.to_thread(scheduler.engine.wait_idle, 60)

    with running_engine(checkpoint, max_running=1) as scheduler, decode_paused(scheduler.engine):
        asyncio.run(scenario(scheduler))
        assert failures(scheduler, "cancelled") == 2
        assert scheduler.metrics.registry.get_sample_value("introllm_num_requests_running", {"model": "test"}) == 0


def test_a_full_engine_refuses_at_once_with_429_and_the_refusal_holds_no_slot(checkpoint):
    async def scenario(scheduler: Scheduler) -> ServiceError:
        long = GenerationInput(prompt="1 2>3\n", max_new_tokens=LONG, ignore_eos=True)
        handles = [scheduler.submit(long), scheduler.submit(long)]  # one running, one waiting
        with pytest.raises(ServiceError) as refused:
            scheduler.submit(long)
        for handle in handles:
            handle.cancel()
        assert await asyncio.to_thread(scheduler.engine.wait_idle, 60)
        assert failures(scheduler, "cancelled") == 2
        scheduler.engine.resume()
        after = scheduler.submit(GenerationInput(prompt="again", max_new_tokens=3))
        assert (await after.result()).finish.completion_tokens <= 3
        return refused.value

    with running_engine(checkpoint, max_running=1, max_waiting=1) as scheduler, decode_paused(scheduler.engine):
        refused = asyncio.run(scenario(scheduler))
        assert failures(scheduler, "overloaded") == 1
        assert scheduler.engine.load() == (0, 0)
    assert refused.status == 429 and refused.type == "overloaded" and refused.headers["Retry-After"] == "1"


def test_a_failing_decode_step_fails_its_rows_and_the_engine_keeps_serving(checkpoint, monkeypatch):
    real_decode = SlotBatch.decode_then
    calls = {"n": 0}

    def decode_failing_once(self, tokens, then=None, args=()):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device error")
        return real_decode(self, tokens, then, args)

    monkeypatch.setattr(SlotBatch, "decode_then", decode_failing_once)

    async def scenario(scheduler: Scheduler) -> Completed:
        handle = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=8, ignore_eos=True))
        with pytest.raises(ServiceError) as failed:
            await handle.result()
        assert failed.value.status == 500 and "simulated device error" in failed.value.message
        return await scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=8, ignore_eos=True)).result()

    with running_engine(checkpoint) as scheduler:
        after = asyncio.run(scenario(scheduler))
        assert scheduler.engine.alive and scheduler.engine.load() == (0, 0)
        assert failures(scheduler, "internal") == 1
    assert after.finish.reason == "length" and len(after.tokens) == 8


def test_a_failing_prefill_fails_only_that_request(checkpoint, monkeypatch):
    real_prefill = engine_module.Engine._prefill

    def prefill_refusing_x(engine, prompt_ids, drafting):
        if any(len(p) == 2 for p in prompt_ids):  # BOS + "x"
            raise RuntimeError("simulated prefill error")
        return real_prefill(engine, prompt_ids, drafting)

    monkeypatch.setattr(engine_module.Engine, "_prefill", prefill_refusing_x)

    async def scenario(scheduler: Scheduler):
        # Decode paused until both are prefilled: a request that joined while the other decoded would go
        # through that row's step, not through `_prefill` (see the test below).
        with decode_paused(scheduler.engine):
            bad = scheduler.submit(GenerationInput(prompt="x", max_new_tokens=5))
            good = scheduler.submit(GenerationInput(prompt="hello", max_new_tokens=5, ignore_eos=True))
            assert await asyncio.to_thread(scheduler.engine.wait_until, lambda running, waiting: waiting == 0, 30)
        results = await asyncio.gather(bad.result(), good.result(), return_exceptions=True)
        return results

    with running_engine(checkpoint) as scheduler:
        bad, good = asyncio.run(scenario(scheduler))
        assert scheduler.engine.load() == (0, 0)
    assert isinstance(bad, ServiceError) and bad.status == 500
    assert isinstance(good, Completed) and len(good.tokens) == 5


def test_a_step_that_fails_with_newcomers_in_it_fails_its_rows_and_prefills_the_newcomers_alone(
    checkpoint, monkeypatch
):
    """A step that takes joining prompts fails as a step does (its running rows fail with 500); the prompts
    it held are then prefilled on their own and their requests complete."""
    real_in_step = SlotBatch.decode_and_prefill_then

    def failing_in_step(batch, tokens, prompts, *args, **kwargs):
        raise RuntimeError("simulated device error")

    async def scenario(scheduler: Scheduler):
        running = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=LONG, ignore_eos=True))
        events = running.events()
        await anext(events)  # its first token: it is in the batch, decoding
        monkeypatch.setattr(SlotBatch, "decode_and_prefill_then", failing_in_step)
        joining = scheduler.submit(GenerationInput(prompt="hello", max_new_tokens=5, ignore_eos=True))
        with pytest.raises(ServiceError) as failed:
            async for _ in events:
                pass
        done = await joining.result()
        monkeypatch.setattr(SlotBatch, "decode_and_prefill_then", real_in_step)
        return failed.value, done

    with running_engine(checkpoint) as scheduler:
        failed, done = asyncio.run(scenario(scheduler))
        assert scheduler.engine.alive and scheduler.engine.load() == (0, 0)
    assert failed.status == 500 and "simulated device error" in failed.message
    assert isinstance(done, Completed) and len(done.tokens) == 5


def test_with_prefill_in_step_off_newcomers_are_prefilled_on_their_own_and_warm_up_takes_no_prompt_in_a_step(
    checkpoint, monkeypatch
):
    calls = []
    monkeypatch.setattr(SlotBatch, "decode_and_prefill_then", lambda *args, **kwargs: calls.append(args))

    async def scenario(scheduler: Scheduler):
        running = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=24, ignore_eos=True))
        events = running.events()
        await anext(events)  # decoding when the next one joins
        joining = scheduler.submit(GenerationInput(prompt="hello", max_new_tokens=5, ignore_eos=True))
        return await asyncio.gather(running.result(), joining.result())

    with running_engine(checkpoint, prefill_in_step=False, warm_up=True) as scheduler:
        first, second = asyncio.run(scenario(scheduler))
    assert calls == []
    assert first.finish.reason == "length" and len(second.tokens) == 5


def test_stopping_the_engine_ends_requests_still_in_it_with_503(checkpoint):
    async def scenario(scheduler: Scheduler) -> ServiceError:
        handle = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=LONG, ignore_eos=True))
        events = handle.events()
        await anext(events)
        await asyncio.to_thread(scheduler.engine.stop, 30)
        with pytest.raises(ServiceError) as stopped:
            async for _ in events:
                pass
        return stopped.value

    with running_engine(checkpoint) as scheduler, decode_paused(scheduler.engine):
        stopped = asyncio.run(scenario(scheduler))
        assert not scheduler.engine.alive and not scheduler.ready
    assert stopped.status == 503


def test_a_failing_detokenizer_fails_only_its_request(checkpoint, monkeypatch):
    from service.api import scheduler as scheduler_module

    real_push = scheduler_module.TextStream.push

    def push_failing_for_boom(self, token_id):
        if self._stop == ("boom",):
            raise UnicodeError("simulated detokenizer error")
        return real_push(self, token_id)

    monkeypatch.setattr(scheduler_module.TextStream, "push", push_failing_for_boom)

    async def scenario(scheduler: Scheduler):
        bad = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=5, stop=("boom",)))
        good = scheduler.submit(GenerationInput(prompt="1 2>3\n", max_new_tokens=5, ignore_eos=True))
        return await asyncio.gather(bad.result(), good.result(), return_exceptions=True)

    with running_engine(checkpoint) as scheduler:
        bad, good = asyncio.run(scenario(scheduler))
        assert scheduler.engine.alive and scheduler.engine.load() == (0, 0)
    assert isinstance(bad, ServiceError) and bad.status == 500
    assert isinstance(good, Completed) and len(good.tokens) == 5
