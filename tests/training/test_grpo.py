"""Behavioural tests for GRPO (and the SFT warm start and CLI around it), on micro models.

The micro random-init LM never solves Countdown, so the learning tests swap
the task's reward for a trivial one through the `score` hook.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model import (
    FixedTemperature,
    HeadConfig,
    LearnedTemperature,
    TemperatureHead,
    TinyLMConfig,
    draft_summary_size,
    load_checkpoint,
    save_checkpoint,
)
from training.config import (
    GRPOConfig,
    HeadPrior,
    SFTConfig,
    add_config_arguments,
    config_from_namespace,
    config_to_dict,
)
from training.distributed import weights_digest
from training.grpo import (
    advantages_of,
    batch_advantages,
    clipped_policy_loss,
    group_advantages,
    importance_weights,
    k3_kl,
    parse_ladder,
    parse_schedule,
    pass_at_k_advantages,
    rollout_controller,
    set_phase,
    train_grpo,
    update,
)
from training.rollout import LadderTemperature, draft_completions, recompute_log_probs, sample_completions
from training.sft import train_sft
from training.tasks.countdown import CountdownConfig, Problem, Verdict, split

REPO = Path(__file__).resolve().parents[2]
TASK = CountdownConfig()
MICRO_LM = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def digit_fraction(problem: Problem, text: str) -> Verdict:
    """A reward a random model learns in seconds: the fraction of generated characters that are digits."""
    if not text:
        return Verdict(0.0, "malformed")
    return Verdict(sum(ch in "0123456789" for ch in text) / len(text), "ok")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_records(records: list[dict]) -> list[dict]:
    return [r for r in records if "event" not in r]


def micro_grpo(init: Path, out: Path, **overrides) -> GRPOConfig:
    settings = dict(init=str(init), out=str(out), steps=2, prompts_per_step=4, group_size=4, n_train=50,
                    n_heldout=5, eval_every=0, save_every=0, threads=1, max_new_tokens=8)
    return GRPOConfig(**{**settings, **overrides})


# --- advantages, loss, KL, schedule ---------------------------------------------------------------


def test_group_advantages_normalise_each_group_by_its_unbiased_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    # Group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
    # Group 2: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1 / sqrt(3).
    s1, s2 = 0.5 + 1e-4, 1 / math.sqrt(3) + 1e-4
    expected = torch.tensor([[0.75 / s1, -0.25 / s1, -0.25 / s1, -0.25 / s1],
                             [0.5 / s2, 0.5 / s2, -0.5 / s2, -0.5 / s2]])
    assert adv.shape == rewards.shape
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(2), rtol=0, atol=1e-5)


def test_identical_rewards_give_zero_advantage():
    rewards = torch.tensor([[0.7, 0.7, 0.7], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    adv = group_advantages(rewards)
    assert adv.shape == (3, 3)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert adv[2, 0] > 0 and adv[2, 1] < 0
    # A group of one has no spread to normalise by: zero, not NaN.
    assert torch.equal(group_advantages(torch.tensor([[3.0], [5.0]])), torch.zeros(2, 1))


def test_clipped_policy_loss_clips_the_ratio_in_the_pessimistic_direction():
    eps = 0.2
    log = math.log
    # Per row: ratio 1.5 (above 1 + eps), ratio 0.5 (below 1 - eps), and a masked token with a wild ratio.
    logp_old = torch.zeros(2, 3)
    logp_new = torch.tensor([[log(1.5), log(0.5), 5.0], [log(1.5), log(0.5), -5.0]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    loss = clipped_policy_loss(logp_new, logp_old, advantages, mask, eps, normalizer=4.0)
    # A > 0: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5; A < 0: min(-1.5, -1.2) = -1.5 and min(-0.5, -0.8) = -0.8.
    expected = -(1.2 + 0.5 - 1.5 - 0.8) / 4.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    grad = logp_new.grad
    # Clipped terms (A > 0 above 1 + eps, A < 0 below 1 - eps) and masked tokens get no gradient.
    assert grad[0, 0] == 0 and grad[1, 1] == 0
    assert grad[0, 2] == 0 and grad[1, 2] == 0
    # Unclipped terms: d(-ratio * A / 4) / d logp = -ratio * A / 4.
    assert grad[0, 1].item() == pytest.approx(-0.5 * 1.0 / 4.0)
    assert grad[1, 0].item() == pytest.approx(-1.5 * -1.0 / 4.0)


def test_clipped_policy_loss_ignores_masked_tokens_and_divides_by_the_normalizer():
    torch.manual_seed(0)
    logp_new, logp_old = -torch.rand(3, 5), -torch.rand(3, 5)
    advantages = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float)
    loss = clipped_policy_loss(logp_new, logp_old, advantages, mask, 0.2, normalizer=1.0)
    garbage = torch.where(mask.bool(), logp_new, torch.full_like(logp_new, 30.0))
    assert clipped_policy_loss(garbage, logp_old, advantages, mask, 0.2, 1.0).item() == pytest.approx(loss.item())
    assert clipped_policy_loss(logp_new, logp_old, advantages, mask, 0.2, 8.0).item() == pytest.approx(loss.item() / 8)
    # Equal log-probs: ratio 1, so the loss is -sum(A * tokens) / normalizer.
    same = clipped_policy_loss(logp_old, logp_old, advantages, mask, 0.2, 2.0)
    assert same.item() == pytest.approx(-(0.5 * 2 - 1.0 * 5 + 2.0 * 1) / 2.0)


def test_k3_kl_is_zero_for_equal_log_probs_and_positive_otherwise():
    logp = torch.tensor([-0.1, -1.0, -3.0, -7.0])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(4))
    other = logp + torch.tensor([0.5, -0.5, 2.0, -0.01])
    assert bool((k3_kl(logp, other) > 0).all())


def _pass_at_k_by_enumeration(correct: list[int], k: int) -> list[float]:
    """Every k-subset of the group: its reward is 1 if it holds a success; a sample's advantage is the mean
    reward of the subsets containing it minus the mean over all subsets, over the std of that reward."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    reward = {s: float(any(correct[i] for i in s)) for s in subsets}
    mean = sum(reward.values()) / len(subsets)
    std = math.sqrt(mean * (1 - mean))
    if std == 0:
        return [0.0] * len(correct)
    return [(sum(reward[s] for s in subsets if i in s) / sum(1 for s in subsets if i in s) - mean) / std
            for i in range(len(correct))]


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_pass_at_k_advantages_match_enumerating_every_k_subset(k):
    groups = [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0],
              [0] * 8, [1] * 8]
    adv = pass_at_k_advantages(torch.tensor(groups, dtype=torch.float), k)
    expected = torch.tensor([_pass_at_k_by_enumeration(g, k) for g in groups])
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    # Each group's advantages sum to zero, as a baseline subtraction must.
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(len(groups)), rtol=0, atol=1e-5)


def test_pass_at_k_weighs_hard_groups_and_ignores_groups_every_k_subset_solves():
    adv = pass_at_k_advantages(torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0], [1.0, 1, 1, 1, 1, 0, 0, 0]]), k=4)
    # With 5 of 8 correct every 4-subset holds a success: nothing to learn about exploration.
    assert torch.equal(adv[1], torch.zeros(8))
    assert adv[0, 0] > 0 and bool((adv[0, 1:] < 0).all())
    # k = 1 is the plain (biased-std) mean advantage: pass@1 is accuracy.
    rewards = torch.tensor([[1.0, 0, 1, 0, 0, 0]])
    p = 2 / 6
    torch.testing.assert_close(pass_at_k_advantages(rewards, 1), (rewards - p) / math.sqrt(p * (1 - p)))


def test_advantage_kinds_combine_mean_and_pass_at_k():
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]])
    torch.testing.assert_close(advantages_of(rewards, "mean", 2), group_advantages(rewards))
    torch.testing.assert_close(advantages_of(rewards, "pass@k", 2), pass_at_k_advantages(rewards, 2))
    torch.testing.assert_close(advantages_of(rewards, "mean+pass@k", 2),
                               group_advantages(rewards) + pass_at_k_advantages(rewards, 2))
    with pytest.raises(ValueError, match="unknown advantage"):
        advantages_of(rewards, "max", 2)
    with pytest.raises(ValueError, match="k"):
        advantages_of(rewards, "pass@k", 5)


def test_rollout_controller_parses_learned_fixed_and_entropy(head):
    assert isinstance(rollout_controller("learned", head), LearnedTemperature)
    fixed = rollout_controller("fixed:0.7", head)
    assert isinstance(fixed, FixedTemperature) and fixed.tau == 0.7
    entropy = rollout_controller("entropy", head)
    assert (entropy.tau_min, entropy.tau_max) == (head.config.tau_min, head.config.tau_max)
    for bad in ("fixed", "fixed:x", "fixed:0", "hot", "learned:1"):
        with pytest.raises(ValueError):
            rollout_controller(bad, head)


def test_parse_schedule_expands_counts_in_order():
    assert parse_schedule("lm+tau:2") == ["lm+tau", "lm+tau"]
    assert parse_schedule("lm:2,tau:1") == ["lm", "lm", "tau"]
    assert parse_schedule("tau:1, lm:3") == ["tau", "lm", "lm", "lm"]
    assert parse_schedule("lm") == ["lm"]


@pytest.mark.parametrize("bad", ["", "lm:0", "lm:-1", "head:1", "lm:2,foo", "lm:x", "lm:1,,tau:1"])
def test_bad_schedules_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_schedule(bad)


# --- rollouts and their recomputation ---------------------------------------------------------------


@pytest.fixture()
def rollout(tiny_lm, tokenizer, head, countdown_problems):
    """A learned-controller rollout of 3 problems x 4 samples, in batches of 5 rows (so groups straddle batches)."""
    problems = countdown_problems[:3]
    assert tiny_lm.training is False
    batches = sample_completions(tiny_lm, tokenizer, LearnedTemperature(head), problems, samples=4, task=TASK,
                                 max_new_tokens=24, seed=3, batch_rows=5)
    assert [len(b.texts) for b in batches] == [5, 5, 2]
    return problems, batches


def test_recomputed_log_probs_match_the_sampler_on_generated_tokens(rollout, tiny_lm, head):
    _, batches = rollout
    gates = torch.cat([b.generation.gates[b.generation.mask] for b in batches])
    assert 0 < float(gates.mean()) < 1, "both gate outcomes should occur, so the Beta term is exercised"
    for batch in batches:
        gen = batch.generation
        mask = gen.mask
        with torch.no_grad():
            new = recompute_log_probs(tiny_lm, head, batch)
        assert new.token_logprobs.shape == gen.tokens.shape == new.temperature_logprobs.shape
        torch.testing.assert_close(new.token_logprobs[mask], gen.token_logprobs[mask], rtol=0, atol=1e-5)
        torch.testing.assert_close(new.temperature_logprobs[mask], gen.temperature_logprobs[mask], rtol=0, atol=1e-5)
        assert bool(torch.isfinite(new.token_logprobs).all()) and bool(torch.isfinite(new.entropy).all())


def test_recomputed_temperature_log_probs_depend_on_the_head(rollout, tiny_lm, head):
    """The check above is meaningful: another head gives other temperature log-probs for the same actions."""
    _, batches = rollout
    other = copy.deepcopy(head)
    with torch.no_grad():
        other.fc2.weight.mul_(-1)
        new = recompute_log_probs(tiny_lm, other, batches[0])
    mask = batches[0].generation.mask
    assert (new.temperature_logprobs[mask] - batches[0].generation.temperature_logprobs[mask]).abs().max() > 1e-2


def test_batch_advantages_normalise_within_each_problem_across_batches(rollout):
    problems, batches = rollout
    # Problem 0: only sample 0 succeeds. Problem 1: all succeed. Others: all fail.
    for b in batches:
        b.rewards = torch.tensor([float((p == 0 and s == 0) or p == 1) for p, s in
                                  zip(b.problem_index, b.sample_index, strict=True)])
    advantages = batch_advantages(batches, len(problems), group_size=4)
    for b, adv in zip(batches, advantages, strict=True):
        assert adv.shape == b.rewards.shape
        for p, s, a in zip(b.problem_index, b.sample_index, adv.tolist(), strict=True):
            if p == 0:
                assert a == pytest.approx(0.75 / (0.5 + 1e-4) if s == 0 else -0.25 / (0.5 + 1e-4))
            else:
                assert a == 0.0


# --- the draft-reading head and the temperature ladder -----------------------------------------------


def _draft_head(hidden_size: int) -> TemperatureHead:
    torch.manual_seed(0)
    head = TemperatureHead(HeadConfig(hidden_size=hidden_size, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(hidden_size)))
    with torch.no_grad():
        head.fc2.weight.normal_(0, 0.5)
    return head


@pytest.fixture()
def draft_rollout(tiny_lm, tokenizer, countdown_problems):
    """3 problems: each one's greedy draft (sample 0), 4 head samples reading it (1..4), 3 ladder rows (5..7)."""
    problems = countdown_problems[:3]
    head = _draft_head(tiny_lm.config.hidden_size)
    drafts, summaries = draft_completions(tiny_lm, tokenizer, problems, task=TASK, max_new_tokens=16)
    rows = sample_completions(tiny_lm, tokenizer, LearnedTemperature(head), problems, samples=4, first_sample=1,
                              drafts=summaries, task=TASK, max_new_tokens=16, seed=3, batch_rows=5)
    ladder = sample_completions(tiny_lm, tokenizer, LadderTemperature([0.2, 1.0, 1.8], head, 5), problems,
                                samples=3, first_sample=5, drafts=summaries, task=TASK, max_new_tokens=16, seed=3)
    return problems, head, summaries, drafts, rows, ladder


def test_importance_weights_are_one_when_the_behaviour_is_the_head(draft_rollout, tiny_lm):
    _, head, summaries, _, rows, _ = draft_rollout
    for batch in rows:
        assert batch.behaviour == "policy" and batch.draft is not None
        mask = batch.generation.mask
        with torch.no_grad():
            new = recompute_log_probs(tiny_lm, head, batch)
        weights = importance_weights(new.temperature_logprobs, batch.generation.temperature_logprobs)
        torch.testing.assert_close(weights[mask], torch.ones_like(weights[mask]), rtol=0, atol=1e-4)
        # and they are not 1 for another head: the recomputation really reads the recorded actions
        other = copy.deepcopy(head)
        with torch.no_grad():
            other.fc2.weight.mul_(-1)
            moved = importance_weights(recompute_log_probs(tiny_lm, other, batch).temperature_logprobs,
                                       batch.generation.temperature_logprobs)
        assert (moved[mask] - 1).abs().max() > 1e-2


def test_the_draft_is_sample_zero_and_the_head_rows_read_their_problems_draft(draft_rollout):
    problems, _, summaries, drafts, rows, _ = draft_rollout
    assert summaries.shape[0] == len(problems)
    assert sorted(i for b in drafts for i in b.problem_index) == [0, 1, 2]
    assert {s for b in drafts for s in b.sample_index} == {0} and all(b.behaviour == "draft" for b in drafts)
    assert {s for b in rows for s in b.sample_index} == {1, 2, 3, 4}
    for b in rows:
        torch.testing.assert_close(b.draft, summaries[b.problem_index])


def test_ladder_rows_keep_their_rung_for_the_whole_completion_as_an_update_at_every_token(draft_rollout):
    _, head, _, _, _, ladder = draft_rollout
    for batch in ladder:
        gen = batch.generation
        assert batch.behaviour == "ladder"
        for row, sample in enumerate(batch.sample_index):
            n = int(gen.lengths[row])
            rung = [0.2, 1.0, 1.8][sample - 5]
            assert gen.taus[row, :n].tolist() == pytest.approx([rung] * n, abs=1e-5)
            assert gen.gates[row, :n].tolist() == [1.0] * n
            assert head.config.z_to_tau(gen.z[row, :n]).tolist() == pytest.approx([rung] * n, abs=1e-5)


def test_advantages_group_a_problems_rows_whatever_their_sample_indices(draft_rollout):
    problems, _, _, _, rows, ladder = draft_rollout
    for b in rows + ladder:  # only ladder rung 0.2 (sample 5) succeeds
        b.rewards = torch.tensor([float(s == 5) for s in b.sample_index])
    advantages = batch_advantages(rows + ladder, len(problems), group_size=7)
    for b, adv in zip(rows + ladder, advantages, strict=True):
        for s, a in zip(b.sample_index, adv.tolist(), strict=True):
            assert (a > 0) == (s == 5) and a != 0
    with pytest.raises(ValueError, match="expected 4 samples"):
        batch_advantages(rows + ladder, len(problems), group_size=4)


def test_ladder_rows_pull_the_heads_temperatures_towards_the_rewarded_rung(micro_checkpoint, countdown_problems):
    """Advantage-weighted updates on ladder rows: when only the coldest rung succeeds, the head's
    probability of choosing it rises (and the LM stays frozen)."""
    start = load_checkpoint(micro_checkpoint)
    model, tokenizer = start.model, start.tokenizer
    head = _draft_head(model.config.hidden_size)
    problems = countdown_problems[:6]
    _, summaries = draft_completions(model, tokenizer, problems, task=TASK, max_new_tokens=8)
    ladder = sample_completions(model, tokenizer, LadderTemperature([0.2, 1.0, 1.8], head, 0), problems, samples=3,
                                task=TASK, max_new_tokens=8, seed=0, drafts=summaries)
    for b in ladder:
        b.rewards = torch.tensor([float(s == 0) for s in b.sample_index])
    cold = [b for b in ladder if 0 in b.sample_index]

    def cold_logprob() -> float:
        with torch.no_grad():
            total = 0.0
            for b in cold:
                rows = [r for r, s in enumerate(b.sample_index) if s == 0]
                logp = recompute_log_probs(model, head, b).temperature_logprobs[rows]
                total += float((logp * b.generation.mask[rows]).sum() / b.generation.mask[rows].sum())
            return total / len(cold)

    before_lm, before = _snapshot(model), cold_logprob()
    cfg = GRPOConfig(head_lr=1e-2)
    params = set_phase(model, head, "tau")
    optimizer = torch.optim.AdamW(params, lr=cfg.head_lr)
    for _ in range(5):
        update(model, head, None, ladder, batch_advantages(ladder, len(problems), 3), "tau", cfg, optimizer, params,
               torch.device("cpu"))
    assert cold_logprob() > before + 1.0
    assert _changed(model, before_lm) == []


def test_parse_ladder():
    assert parse_ladder("0.1, 0.4,1.0") == [0.1, 0.4, 1.0] and parse_ladder("") == []
    with pytest.raises(ValueError, match="comma-separated"):
        parse_ladder("hot,cold")


def test_a_ladder_rung_outside_the_heads_range_is_refused(head):
    with pytest.raises(ValueError, match="outside the head's range"):
        LadderTemperature([0.05, 1.0], head, 0)


def test_a_draft_head_run_samples_drafts_and_ladder_rows_and_trains_the_head(micro_checkpoint, tmp_path):
    cfg = micro_grpo(micro_checkpoint, tmp_path / "run", steps=2, schedule="lm+tau:1", group_size=4,
                     head=HeadPrior(inputs="hidden,tau_prev,draft"), tau_ladder="0.3,1.5", lm_lr=1e-3, head_lr=1e-2,
                     eval_every=2, eval_problems=3)
    result = train_grpo(cfg, score=digit_fraction)
    steps = step_records(read_log(tmp_path / "run" / "grpo_log.jsonl"))
    assert [r["phase"] for r in steps] == ["lm+tau", "lm+tau"]
    for r in steps:
        assert 0 <= r["draft_accuracy"] <= 1 and 0 <= r["ladder_accuracy"] <= 1
        assert math.isfinite(r["ladder_logprob"]) and math.isfinite(r["tau_loss"])
    assert "heldout_accuracy" in steps[-1]
    saved = load_checkpoint(tmp_path / "run")
    assert saved.head.reads_draft and saved.manifest.head.inputs == ("hidden", "tau_prev", "draft")
    init = load_checkpoint(micro_checkpoint)
    assert weights_digest([result.model]) != weights_digest([init.model])
    # A resumed run keeps its draft head rather than starting another.
    again = train_grpo(micro_grpo(tmp_path / "run", tmp_path / "more", steps=3, schedule="lm+tau:1", group_size=4,
                                  head=HeadPrior(inputs="hidden,tau_prev,draft"), tau_ladder="0.3,1.5"),
                       score=digit_fraction)
    assert again.head.reads_draft


# --- one update, per phase ---------------------------------------------------------------------------


def _fresh_policy_and_rollout(micro_checkpoint, problems):
    start = load_checkpoint(micro_checkpoint)
    model, head, tokenizer = start.model, start.head, start.tokenizer
    batches = sample_completions(model, tokenizer, LearnedTemperature(head), problems[:4], samples=4, task=TASK,
                                 max_new_tokens=8, seed=0, score=digit_fraction)
    rewards = torch.cat([b.rewards for b in batches])
    assert float(rewards.std()) > 0, "the update needs rewards that vary within groups"
    return model, head, batches


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, p in module.named_parameters() if not torch.equal(p, before[name])]


@pytest.mark.parametrize("phase", ["tau", "lm"])
def test_update_trains_only_the_policy_of_its_phase(phase, micro_checkpoint, countdown_problems):
    model, head, batches = _fresh_policy_and_rollout(micro_checkpoint, countdown_problems)
    cfg = GRPOConfig(lm_lr=1e-3, head_lr=1e-3)
    advantages = batch_advantages(batches, 4, 4)
    model_before, head_before = _snapshot(model), _snapshot(head)
    params = set_phase(model, head, phase)
    trained, frozen = (model, head) if phase == "lm" else (head, model)
    assert {id(p) for p in params} == {id(p) for p in trained.parameters()}
    optimizers = {"lm": torch.optim.AdamW(model.parameters(), lr=cfg.lm_lr),
                  "tau": torch.optim.AdamW(head.parameters(), lr=cfg.head_lr)}
    stats = update(model, head, None, batches, advantages, phase, cfg, optimizers[phase], params,
                   torch.device("cpu"))
    assert math.isfinite(stats["loss"]) and stats["entropy"] > 0
    frozen_before, trained_before = (head_before, model_before) if phase == "lm" else (model_before, head_before)
    assert _changed(frozen, frozen_before) == []
    assert all(p.grad is None for p in frozen.parameters())
    assert _changed(trained, trained_before) != []


def test_kl_to_the_reference_is_zero_at_the_start_and_grows_after_an_lm_step(micro_checkpoint, countdown_problems):
    model, head, batches = _fresh_policy_and_rollout(micro_checkpoint, countdown_problems)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    cfg = GRPOConfig(lm_lr=1e-2, kl_coef=0.1)
    advantages = batch_advantages(batches, 4, 4)
    params = set_phase(model, head, "lm")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lm_lr)
    first = update(model, head, ref, batches, advantages, "lm", cfg, optimizer, params, torch.device("cpu"))
    second = update(model, head, ref, batches, advantages, "lm", cfg, optimizer, params, torch.device("cpu"))
    assert first["kl"] == 0.0
    assert second["kl"] > 0.0


# --- end-to-end micro runs ---------------------------------------------------------------------------


def test_lm_phase_increases_a_trivially_learnable_reward(micro_checkpoint, tmp_path):
    cfg = micro_grpo(micro_checkpoint, tmp_path / "run", steps=30, prompts_per_step=4, group_size=8,
                     schedule="lm:1", lm_lr=3e-3, seed=0)
    result = train_grpo(cfg, score=digit_fraction)
    records = read_log(tmp_path / "run" / "grpo_log.jsonl")
    assert records[-1]["event"] == "done" and records[-1]["ranks_in_sync"] is True
    steps = step_records(records)
    assert [r["step"] for r in steps] == list(range(30))
    assert {r["phase"] for r in steps} == {"lm"}
    rewards = [r["reward"] for r in steps]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # Random init: about 10 of ~100 characters are digits. Measured: ~0.12 -> ~0.85 in 30 steps
    # (and -> ~0.01 with the advantage sign flipped).
    assert first < 0.25
    assert last > first + 0.35
    # The returned model is the one saved, and it writes mostly digits.
    saved = load_checkpoint(tmp_path / "run")
    assert weights_digest([saved.model, saved.head]) == records[-1]["weights_digest"]
    assert weights_digest([result.model, result.head]) == records[-1]["weights_digest"]
    assert saved.manifest.training["grpo_step"] == 30


def test_tau_phase_learns_to_cool_down_when_reward_favours_the_greedy_text(micro_checkpoint, tmp_path, tokenizer,
                                                                          countdown_problems):
    """With the LM frozen, only the temperature can raise agreement with the LM's own greedy output."""
    start = load_checkpoint(micro_checkpoint)
    model = start.model
    # Sharpen the random LM (tied embeddings) so that tau matters: at tau 1 about 5% of characters match
    # the greedy decode, at tau 0.1 all of them.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(3.0)
    init = save_checkpoint(tmp_path / "sharp", model, start.tokenizer, start.head, base_model="micro-sharp")
    cfg = micro_grpo(init, tmp_path / "run", steps=30, prompts_per_step=4, group_size=8, schedule="tau:1",
                     head_lr=1e-2, seed=0)
    train, _ = split(cfg.task, cfg.n_train, cfg.n_heldout, cfg.split_seed)
    greedy_batches = sample_completions(model, start.tokenizer, FixedTemperature(1.0), train, samples=1, task=TASK,
                                        max_new_tokens=cfg.max_new_tokens, seed=0, greedy=True)
    greedy = {train[i]: text for b in greedy_batches for i, text in zip(b.problem_index, b.texts, strict=True)}

    def agreement(problem: Problem, text: str) -> Verdict:
        target = greedy[problem]
        return Verdict(sum(a == b for a, b in zip(text, target, strict=False)) / len(target), "ok")

    result = train_grpo(cfg, score=agreement)
    steps = step_records(read_log(tmp_path / "run" / "grpo_log.jsonl"))
    assert {r["phase"] for r in steps} == {"tau"}
    rewards = [r["reward"] for r in steps]
    taus = [r["mean_tau"] for r in steps]
    # Measured: reward ~0.07 -> ~0.98 and mean tau ~1.0 -> ~0.2 (tau rises instead with the sign flipped).
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.4
    assert sum(taus[-5:]) / 5 < sum(taus[:5]) / 5 - 0.3
    # The LM never moved.
    assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize("spec,tau", [("fixed:0.7", 0.7), ("entropy", None)])
def test_fixed_rollout_temperature_trains_only_the_lm_and_records_that_tau(spec, tau, micro_checkpoint, tmp_path):
    """The paper's baseline: GRPO at a fixed (or EDT) temperature. The default schedule asks for head
    steps; with no temperature policy every step is an LM step and the head stays the warm start's."""
    cfg = micro_grpo(micro_checkpoint, tmp_path / "run", steps=3, rollout_temperature=spec, lm_lr=1e-3,
                     head_lr=1e-2)
    assert "tau" in cfg.schedule
    result = train_grpo(cfg, score=digit_fraction)
    steps = step_records(read_log(tmp_path / "run" / "grpo_log.jsonl"))
    assert [r["phase"] for r in steps] == ["lm", "lm", "lm"]
    if tau is not None:
        assert all(r["mean_tau"] == pytest.approx(tau) and r["gate_rate"] == 0.0 for r in steps)
    else:  # EDT recomputes tau at every token, inside the head's range
        assert all(r["gate_rate"] == 1.0 and 0.1 <= r["mean_tau"] <= 2.0 for r in steps)
    init = load_checkpoint(micro_checkpoint)
    assert weights_digest([result.head]) == weights_digest([init.head])
    assert weights_digest([result.model]) != weights_digest([init.model])
    saved = load_checkpoint(tmp_path / "run")
    assert saved.manifest.training["stages"][-1]["config"]["rollout_temperature"] == spec
    assert weights_digest([saved.head]) == weights_digest([init.head])


def test_lm_plus_tau_step_updates_both_policies_from_one_rollout(micro_checkpoint, tmp_path):
    cfg = micro_grpo(micro_checkpoint, tmp_path / "run", steps=2, schedule="lm+tau:1", tau_advantage="mean+pass@k",
                     pass_k=2, lm_lr=1e-3, head_lr=1e-2)
    result = train_grpo(cfg, score=digit_fraction)
    steps = step_records(read_log(tmp_path / "run" / "grpo_log.jsonl"))
    assert [r["phase"] for r in steps] == ["lm+tau", "lm+tau"]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["tau_loss"]) for r in steps)
    init = load_checkpoint(micro_checkpoint)
    assert weights_digest([result.head]) != weights_digest([init.head])
    assert weights_digest([result.model]) != weights_digest([init.model])


def test_head_entropy_bonus_keeps_the_temperature_policy_spread(micro_checkpoint, countdown_problems):
    """With every advantage zero, only the bonus moves the head, and it must raise the action entropy."""
    model, head, batches = _fresh_policy_and_rollout(micro_checkpoint, countdown_problems)
    cfg = GRPOConfig(head_lr=3e-2, tau_entropy_coef=1.0)
    zeros = [torch.zeros_like(b.rewards) for b in batches]
    params = set_phase(model, head, "tau")
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr)
    first = update(model, head, None, batches, zeros, "tau", cfg, optimizer, params, torch.device("cpu"))
    for _ in range(10):
        last = update(model, head, None, batches, zeros, "tau", cfg, optimizer, params, torch.device("cpu"))
    assert last["tau_entropy"] > first["tau_entropy"] + 0.05
    # Without the bonus the same zero advantages leave the head where it is.
    _, still, _ = _fresh_policy_and_rollout(micro_checkpoint, countdown_problems)
    before = _snapshot(still)
    params = set_phase(model, still, "tau")
    update(model, still, None, batches, zeros, "tau", GRPOConfig(head_lr=3e-2), torch.optim.SGD(params, lr=0.1),
           params, torch.device("cpu"))
    assert _changed(still, before) == []


def test_reinit_head_starts_from_the_runs_prior_and_a_resume_keeps_the_trained_head(micro_checkpoint, tmp_path):
    prior = HeadPrior(init_gate_prob=0.1, init_concentration=3.0)
    fresh = tmp_path / "fresh"
    train_grpo(micro_grpo(micro_checkpoint, fresh, steps=1, schedule="lm:1", reinit_head=True, head=prior),
               score=digit_fraction)  # an LM step only: the saved head is the new prior
    saved = load_checkpoint(fresh)
    assert (saved.head.config.init_gate_prob, saved.head.config.init_concentration) == (0.1, 3.0)
    dist = saved.head.distribution(torch.randn(3, MICRO_LM.hidden_size))
    torch.testing.assert_close(dist.gate_prob, torch.full((3, 1), 0.1))
    torch.testing.assert_close(dist.alpha + dist.beta, torch.full((3, 1), 3.0))
    # A head trained for a step, then "resumed" at that step with the same flags: no step runs, and the
    # head saved is the trained one, not a new prior.
    trained = tmp_path / "trained"
    first = train_grpo(micro_grpo(micro_checkpoint, trained, steps=1, schedule="tau:1", reinit_head=True, head=prior,
                                  head_lr=1e-2), score=digit_fraction)
    assert weights_digest([first.head]) != weights_digest([saved.head])
    again = train_grpo(micro_grpo(trained, trained, steps=1, schedule="tau:1", reinit_head=True, head=prior),
                       score=digit_fraction)
    assert weights_digest([again.head]) == weights_digest([first.head])


@pytest.mark.parametrize("field,value", [("rollout_temperature", "warm"), ("tau_advantage", "pass@8"),
                                         ("lm_advantage", "pass@k")])
def test_bad_rollout_temperature_or_advantage_fails_before_training(field, value, micro_checkpoint, tmp_path):
    overrides = {field: value} | ({"pass_k": 9} if field == "lm_advantage" else {})
    with pytest.raises(ValueError):
        train_grpo(micro_grpo(micro_checkpoint, tmp_path / "run", **overrides), score=digit_fraction)
    assert not (tmp_path / "run" / "grpo_log.jsonl").exists()


def test_resumed_run_continues_from_the_saved_step(micro_checkpoint, tmp_path):
    out = tmp_path / "run"
    train_grpo(micro_grpo(micro_checkpoint, out, steps=2), score=digit_fraction)
    assert load_checkpoint(out).manifest.training["grpo_step"] == 2
    first_run = read_log(out / "grpo_log.jsonl")
    train_grpo(micro_grpo(out, out, steps=4), score=digit_fraction)
    records = read_log(out / "grpo_log.jsonl")
    new = records[len(first_run):]
    assert [r.get("step") for r in new] == [2, 3, None]
    assert new[-1]["event"] == "done"
    manifest = load_checkpoint(out).manifest.training
    assert manifest["grpo_step"] == 4
    assert [s["stage"] for s in manifest["stages"]] == ["grpo"]
    # Step 2 of an uninterrupted run sees the same weights and the same random streams, so the same rollout.
    straight = tmp_path / "straight"
    train_grpo(micro_grpo(micro_checkpoint, straight, steps=3), score=digit_fraction)
    step2 = step_records(read_log(straight / "grpo_log.jsonl"))[2]
    for key in ("reward", "mean_tau", "gate_rate", "completion_tokens"):
        assert new[0][key] == step2[key]


def test_a_run_with_resume_off_starts_at_step_zero_on_top_of_a_finished_run_and_keeps_its_record(micro_checkpoint,
                                                                                                  tmp_path):
    first = tmp_path / "joint"
    train_grpo(micro_grpo(micro_checkpoint, first, steps=2), score=digit_fraction)
    second = tmp_path / "head-only"
    train_grpo(micro_grpo(first, second, steps=2, schedule="tau:1", resume=False), score=digit_fraction)
    assert [r["step"] for r in step_records(read_log(second / "grpo_log.jsonl"))] == [0, 1]
    training = load_checkpoint(second).manifest.training
    assert training["grpo_step"] == 2
    assert [(s["stage"], s["config"]["schedule"]) for s in training["stages"] if s["stage"] == "grpo"] == [
        ("grpo", "lm:1,tau:1"), ("grpo", "tau:1")]
    # The head-only run moved the head only: the LM is the first run's.
    assert weights_digest([load_checkpoint(second).model]) == weights_digest([load_checkpoint(first).model])


def test_grpo_told_to_change_the_recorded_task_starts_at_step_zero(micro_checkpoint, tmp_path):
    first = tmp_path / "first"
    train_grpo(micro_grpo(micro_checkpoint, first, steps=1), score=digit_fraction)
    assert load_checkpoint(first).manifest.training["grpo_step"] == 1
    other_task = CountdownConfig(max_target=50)
    train_grpo(micro_grpo(first, tmp_path / "second", steps=1, task=other_task, task_override=True),
               score=digit_fraction)
    records = read_log(tmp_path / "second" / "grpo_log.jsonl")
    assert [r.get("step") for r in records] == [0, None]
    training = load_checkpoint(tmp_path / "second").manifest.training
    assert training["grpo_step"] == 1 and training["task"] == config_to_dict(other_task)


# --- data parallel, through the command line -----------------------------------------------------------

DDP_ENTRY = textwrap.dedent("""
    # The real command line, with the Countdown reward swapped for one a random model can earn
    # (otherwise every advantage is zero and no weight would move).
    import sys

    from training.__main__ import main
    from training.tasks.countdown import CountdownTask, Verdict

    def digit_fraction(task, problem, text):
        return Verdict(sum(ch in "0123456789" for ch in text) / len(text) if text else 0.0, "ok")

    CountdownTask.score = digit_fraction
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("mode,flags,phases", [
    ("joint", ["--schedule", "lm:1,tau:1"], ["lm", "tau"]),
    ("joint-both", ["--schedule", "lm+tau:1", "--tau-advantage", "mean+pass@k", "--pass-k", "2"],
     ["lm+tau", "lm+tau"]),
    ("fixed", ["--rollout-temperature", "fixed:1.0"], ["lm", "lm"]),
    ("draft-ladder", ["--schedule", "lm+tau:1", "--head-inputs", "hidden,tau_prev,draft", "--tau-ladder", "0.3,1.5"],
     ["lm+tau", "lm+tau"]),
])
def test_two_process_data_parallel_run_keeps_ranks_in_sync(mode, flags, phases, micro_checkpoint, tmp_path):
    entry = tmp_path / "ddp_entry.py"
    entry.write_text(DDP_ENTRY)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(entry),
               "grpo", "--init", str(micro_checkpoint), "--out", str(out), "--steps", "2", *flags,
               "--lm-lr", "1e-3", "--head-lr", "1e-3", "--prompts-per-step", "4", "--group-size",
               "4", "--max-new-tokens", "8", "--n-train", "100", "--n-heldout", "10", "--eval-every", "0",
               "--save-every", "0", "--threads", "1"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_log(out / "grpo_log.jsonl")
    done = records[-1]
    assert done["event"] == "done" and done["world_size"] == 2 and done["ranks_in_sync"] is True
    # Only rank 0 logs: one record per step.
    assert [r["phase"] for r in step_records(records)] == phases
    saved = load_checkpoint(out)
    init = load_checkpoint(micro_checkpoint)
    assert weights_digest([saved.model, saved.head]) == done["weights_digest"]
    # The policies the mode trains moved, so the in-sync check compared weights that gradient averaging had
    # to keep equal; the fixed-tau baseline never touches the head.
    assert weights_digest([saved.model]) != weights_digest([init.model])
    assert (weights_digest([saved.head]) != weights_digest([init.head])) == (mode != "fixed")
    assert saved.manifest.training["stages"][-1]["world_size"] == 2


# --- SFT warm start ------------------------------------------------------------------------------------


def test_sft_micro_run_lowers_the_loss_and_saves_a_checkpoint_with_the_prior_head(tmp_path):
    cfg = SFTConfig(out=str(tmp_path / "sft"), steps=30, batch_size=16, lr=3e-3, warmup_steps=5, n_train=200,
                    n_heldout=20, eval_every=0, log_every=5, threads=1, model=MICRO_LM)
    assert train_sft(cfg) == tmp_path / "sft"
    records = read_log(tmp_path / "sft" / "sft_log.jsonl")
    assert [r["step"] for r in records] == [0, 5, 10, 15, 20, 25, 29]
    losses = [r["loss"] for r in records]
    assert losses[0] > 4.0  # about log(vocabulary) at random init
    assert losses[-1] < losses[0] - 1.0
    ckpt = load_checkpoint(tmp_path / "sft")
    assert ckpt.model.config.hidden_size == MICRO_LM.hidden_size
    assert ckpt.model.config.num_hidden_layers == MICRO_LM.num_layers
    # The head is its prior: the same action distribution for any hidden state.
    prior = ckpt.head.config
    assert (prior.init_gate_prob, prior.tau_init) == (cfg.head.init_gate_prob, cfg.head.tau_init)
    dist = ckpt.head.distribution(torch.randn(6, MICRO_LM.hidden_size) * 5)
    torch.testing.assert_close(dist.gate_prob, torch.full((6, 1), cfg.head.init_gate_prob))
    torch.testing.assert_close(dist.beta_mean, prior.tau_to_z(torch.full((6, 1), prior.tau_init)))
    torch.testing.assert_close(dist.alpha + dist.beta, torch.full((6, 1), prior.init_concentration))
    training = ckpt.manifest.training
    stage = training["stages"][0]
    assert stage["stage"] == "sft" and stage["steps"] == 30
    assert stage["config"] == config_to_dict(cfg)
    assert stage["seed"] == cfg.seed
    assert isinstance(stage["code_version"], str) and stage["code_version"]
    assert training["task"] == config_to_dict(cfg)["task"] and training["split_seed"] == cfg.split_seed


# --- command line ---------------------------------------------------------------------------------------


def test_command_line_help_lists_commands_and_nested_flags(capsys):
    from training.__main__ import main

    with pytest.raises(SystemExit) as top:
        main(["--help"])
    assert top.value.code == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("sft", "grpo", "eval"))
    proc = subprocess.run([sys.executable, "-m", "training", "grpo", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for flag in ("--task-max-target", "--group-size", "--schedule", "--kl-coef", "--init"):
        assert flag in proc.stdout


def test_nested_flags_build_nested_configs():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, GRPOConfig)
    args = parser.parse_args(["--task-max-target", "50", "--group-size", "3", "--schedule", "tau:2", "--lm-lr", "1e-4"])
    cfg = config_from_namespace(GRPOConfig, args)
    assert cfg.task == CountdownConfig(max_target=50)
    assert (cfg.group_size, cfg.schedule, cfg.lm_lr) == (3, "tau:2", 1e-4)
    assert cfg.steps == GRPOConfig().steps  # unset flags keep their defaults
