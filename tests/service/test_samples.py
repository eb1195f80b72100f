"""n samples of one prompt in the engine (no HTTP): one prefill, n rows, each row seeded row_seed(seed, i)
and equal to the reference decode of that seed alone; the rows of a request are admitted, bounded and
cancelled together; with a draft-reading head, choice 0 is the greedy draft and the rest follow its summary."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from model import (
    CounterNoise,
    FixedTemperature,
    LearnedTemperature,
    SamplingParams,
    decode_draft,
    generate,
    load_checkpoint,
)
from service.api.scheduler import Completed, GenerationInput, encode_prompt
from service.engine.kv import SlotBatch
from service.errors import ServiceError
from service.messages import row_seed
from tests.service.support import (
    PROMPTS,
    decode_paused,
    reference,
    reference_tokens,
    save_draft_head_checkpoint,
)
from tests.service.test_engine import EAGER_AND_COMPILED, failures, run_all, running_engine, staggered_prompts

PROMPT = "3 5 7 2>24\n"


def choice_ids(result: Completed, choice: int) -> list[int]:
    return [t.token_id for t in result.by_choice[choice]]


def choice_taus(result: Completed, choice: int) -> torch.Tensor:
    return torch.tensor([t.tau for t in result.by_choice[choice]])


def test_row_seeds_keep_choice_0_on_the_request_seed_and_differ_per_row():
    assert row_seed(1234, 0) == 1234
    seeds = {row_seed(1234, i) for i in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert row_seed(2**63 - 1, 5) < 2**63


@EAGER_AND_COMPILED
@pytest.mark.parametrize("mode", ["learned", "fixed"])
def test_each_of_n_seeded_samples_equals_the_reference_of_its_row_seed_alone_and_among_other_requests(
    checkpoint, mode, compile
):
    fixed = mode == "fixed"
    target = GenerationInput(prompt=PROMPT, max_new_tokens=20, seed=1234, ignore_eos=True, n=4, mode=mode,
                             temperature=1.3 if fixed else None)
    others = [GenerationInput(prompt=p, max_new_tokens=5 + 3 * i, seed=i, ignore_eos=True)
              for i, p in enumerate(staggered_prompts(5))]
    with running_engine(checkpoint, max_running=8, prefill_token_budget=16, compile=compile) as scheduler:
        (alone,) = asyncio.run(run_all(scheduler, [target]))
        crowd = asyncio.run(run_all(scheduler, [*others[:2], target, *others[2:]]))[2]
    assert len(alone.finish.choices) == 4
    controller = FixedTemperature(1.3) if fixed else None
    for i in range(4):
        expected = reference(checkpoint, PROMPT, max_new_tokens=20, seed=row_seed(1234, i), stop_at_eos=False,
                             controller=controller)
        assert choice_ids(alone, i) == choice_ids(crowd, i) == reference_tokens(expected), i
        torch.testing.assert_close(choice_taus(alone, i), expected.taus[0])
        torch.testing.assert_close(choice_taus(crowd, i), choice_taus(alone, i))
        assert alone.finish.choices[i].seed == row_seed(1234, i)
        assert alone.finish.choices[i].text == checkpoint.tokenizer.decode(reference_tokens(expected),
                                                                          skip_special_tokens=True)
    assert len({tuple(choice_ids(alone, i)) for i in range(4)}) > 1  # the rows do not all draw alike
    assert alone.tokens == alone.by_choice[0]
    assert alone.finish.completion_tokens == 4 * 20 and alone.finish.prompt_tokens == len(
        encode_prompt(checkpoint.tokenizer, PROMPT))


def test_a_request_of_n_samples_prefills_its_prompt_once_where_n_requests_prefill_n_times(checkpoint, monkeypatch):
    prefilled: list[list[list[int]]] = []  # the prompts of each forward that prefills
    prefill, in_step = SlotBatch.prefill, SlotBatch.decode_and_prefill_then

    def counting_prefill(batch, prompts, *args, **kwargs):
        prefilled.append([list(p) for p in prompts])
        return prefill(batch, prompts, *args, **kwargs)

    def counting_in_step(batch, tokens, prompts, *args, **kwargs):  # prompts that join in a running step
        prefilled.append([list(p) for p in prompts])
        return in_step(batch, tokens, prompts, *args, **kwargs)

    monkeypatch.setattr(SlotBatch, "prefill", counting_prefill)
    monkeypatch.setattr(SlotBatch, "decode_and_prefill_then", counting_in_step)
    with running_engine(checkpoint, max_running=8) as scheduler:
        prefilled.clear()  # the warm-up's
        (shared,) = asyncio.run(run_all(scheduler, [GenerationInput(prompt=PROMPT, max_new_tokens=8, seed=3, n=8)]))
        shared_prompts = sum(len(batch) for batch in prefilled)
        prefilled.clear()
        separate = asyncio.run(run_all(scheduler, [
            GenerationInput(prompt=PROMPT, max_new_tokens=8, seed=row_seed(3, i)) for i in range(8)
        ]))
        separate_prompts = sum(len(batch) for batch in prefilled)
    assert shared_prompts == 1 and separate_prompts == 8
    for i, alone in enumerate(separate):  # the copied prefill gives each row what its own prefill gives
        assert choice_ids(shared, i) == [t.token_id for t in alone.tokens]
        assert shared.finish.choices[i].reason == alone.finish.reason


def test_the_rows_of_a_request_count_against_the_bounds_together(checkpoint):
    async def scenario(scheduler) -> None:
        engine = scheduler.engine
        with decode_paused(engine):
            # ignore_eos: a row whose first token is EOS would end at once and leave 3 running
            first = scheduler.submit(GenerationInput(prompt=PROMPT, max_new_tokens=50, n=4, ignore_eos=True))
            assert await asyncio.to_thread(engine.wait_until, lambda running, waiting: running == 4, 30)
            with pytest.raises(ServiceError) as refused:
                scheduler.submit(GenerationInput(prompt=PROMPT, max_new_tokens=50, n=3))  # 4 + 3 > 4 + 2
            assert refused.value.status == 429
            second = scheduler.submit(GenerationInput(prompt=PROMPT, max_new_tokens=50, n=2, ignore_eos=True))
            assert engine.load() == (4, 2)  # its two rows wait for slots together
            with pytest.raises(ServiceError) as too_many:
                scheduler.submit(GenerationInput(prompt=PROMPT, max_new_tokens=5, n=5))
            assert too_many.value.status == 422 and too_many.value.param == "n"
            first.cancel()
            second.cancel()
        await asyncio.to_thread(engine.wait_idle, 30)

    with running_engine(checkpoint, max_running=4, max_waiting=2) as scheduler:
        asyncio.run(scenario(scheduler))
        assert failures(scheduler, "cancelled") == 6  # every row of both requests, counted per choice
        assert scheduler.engine.load() == (0, 0)


def test_a_stop_string_ends_the_choice_that_writes_it_and_no_other(checkpoint):
    request = GenerationInput(prompt=PROMPT, max_new_tokens=30, seed=11, n=2, ignore_eos=True, mode="fixed",
                              temperature=2.0)
    with running_engine(checkpoint, max_running=8) as scheduler:
        (free,) = asyncio.run(run_all(scheduler, [request]))
        first, second = (end.text for end in free.finish.choices)
        stop = next(c for c in second if c not in first)  # written by choice 1 only
        (stopped,) = asyncio.run(run_all(scheduler, [replace(request, stop=(stop,))]))
        assert scheduler.engine.wait_idle(30)
    zero, one = stopped.finish.choices
    assert (zero.reason, zero.text, choice_ids(stopped, 0)) == ("length", first, choice_ids(free, 0))
    assert one.reason == "stop" and one.text == second[: second.index(stop)]
    assert stopped.finish.completion_tokens == 30 + len(stopped.by_choice[1]) < 60


# ---------------------------------------------------------------- a head that reads the greedy draft


@pytest.fixture(scope="module")
def draft_checkpoint(tmp_path_factory):
    path = save_draft_head_checkpoint(tmp_path_factory.mktemp("draft-n") / "draft-n", perturb_draft_linear=True)
    return load_checkpoint(path, "cpu", torch.float32)


def followers_reference(checkpoint, prompt: str, max_new_tokens: int, seed: int, choice: int):
    """Row `choice` > 0 of a learned request to a draft-reading head: the head reads the greedy draft's summary."""
    ids = torch.tensor([encode_prompt(checkpoint.tokenizer, prompt)])
    draft = decode_draft(checkpoint.model, ids, max_new_tokens, None)
    controller = LearnedTemperature(checkpoint.head).with_draft(draft.summary)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    return generate(checkpoint.model, controller, ids, params, CounterNoise.for_rows([row_seed(seed, choice)], 0))


# Its own graph (a head that reads a draft): compiled in whichever worker takes this file.
@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_with_a_draft_reading_head_choice_0_is_the_greedy_draft_and_the_others_follow_its_summary(
    draft_checkpoint, compile
):
    prompts = [PROMPT, PROMPTS[2]]
    requests = [GenerationInput(prompt=p, max_new_tokens=12, seed=40 + k, ignore_eos=True, n=4)
                for k, p in enumerate(prompts)]
    other = GenerationInput(prompt=PROMPTS[1], max_new_tokens=7, seed=9, ignore_eos=True, mode="fixed",
                            temperature=1.1)
    with running_engine(draft_checkpoint, max_running=8, compile=compile) as scheduler:
        results = asyncio.run(run_all(scheduler, [requests[0], other, requests[1]]))
        assert scheduler.engine.wait_idle(30)
    tau_min = draft_checkpoint.head.config.tau_min
    for request, result in zip(requests, [results[0], results[2]], strict=True):
        greedy = reference(draft_checkpoint, request.prompt, max_new_tokens=12, greedy=True, stop_at_eos=False,
                           controller=FixedTemperature(1.0))
        assert choice_ids(result, 0) == reference_tokens(greedy)
        assert all(t.tau == pytest.approx(tau_min) and not t.updated for t in result.by_choice[0])
        for i in range(1, 4):
            expected = followers_reference(draft_checkpoint, request.prompt, 12, request.seed, i)
            assert choice_ids(result, i) == reference_tokens(expected), (request.prompt, i)
            torch.testing.assert_close(choice_taus(result, i), expected.taus[0])
        assert all(t.tau > tau_min for i in range(1, 4) for t in result.by_choice[i])  # sampled, not the draft
    fixed = reference(draft_checkpoint, other.prompt, max_new_tokens=7, seed=9, stop_at_eos=False,
                      controller=FixedTemperature(1.1))
    assert [t.token_id for t in results[1].tokens] == reference_tokens(fixed)


def test_a_stop_string_cutting_the_draft_leaves_the_followers_reading_the_whole_draft(draft_checkpoint):
    budget = 160  # long enough that the reader's stop reaches the engine while the draft still decodes
    greedy = reference(draft_checkpoint, PROMPT, max_new_tokens=budget, greedy=True, stop_at_eos=False,
                       controller=FixedTemperature(1.0))
    draft_text = draft_checkpoint.tokenizer.decode(reference_tokens(greedy), skip_special_tokens=True)
    stop = draft_text[3]
    request = GenerationInput(prompt=PROMPT, max_new_tokens=budget, seed=40, ignore_eos=True, n=3, stop=(stop,))
    with running_engine(draft_checkpoint, max_running=8) as scheduler:
        (result,) = asyncio.run(run_all(scheduler, [request]))
        assert scheduler.engine.wait_idle(30)
    draft = result.finish.choices[0]
    assert draft.reason == "stop" and draft.text == draft_text[: draft_text.index(stop)]
    for i in range(1, 3):
        expected = followers_reference(draft_checkpoint, PROMPT, budget, 40, i)
        got = choice_ids(result, i)
        assert got == reference_tokens(expected)[: len(got)]
        torch.testing.assert_close(choice_taus(result, i), expected.taus[0, : len(got)])


def test_a_draft_reading_head_summary_changes_what_the_followers_draw(draft_checkpoint):
    """The followers' temperatures depend on the draft's summary (a zero summary gives other taus)."""
    ids = torch.tensor([encode_prompt(draft_checkpoint.tokenizer, PROMPT)])
    expected = followers_reference(draft_checkpoint, PROMPT, 12, 40, 1)
    blind = generate(draft_checkpoint.model,
                     LearnedTemperature(draft_checkpoint.head).with_draft(
                         torch.zeros((1, draft_checkpoint.head.config.draft_size))),
                     ids, SamplingParams(max_new_tokens=12), CounterNoise.for_rows([row_seed(40, 1)], 0))
    assert not torch.allclose(expected.taus, blind.taus)
