"""The head trained off-policy from ladder rollouts (`--tau-objective best-rung`), on micro models.

The micro random-init LM never solves Countdown, so the rewards are set by hand (the rung that "wins" each
problem) or come from a trivial `score`.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from model import HeadConfig, LearnedTemperature, TemperatureHead, draft_summary_size, load_checkpoint
from training import grpo
from training.config import GRPOConfig, HeadPrior
from training.grpo import (
    best_rung_update,
    rung_scores,
    rung_value,
    rung_value_update,
    rung_weights,
    set_phase,
    train_grpo,
)
from training.model_card import write_model_card
from training.rollout import LadderTemperature, draft_completions, head_states, sample_completions
from training.tasks.countdown import CountdownConfig, Problem, Verdict

TASK = CountdownConfig()


def digit_fraction(problem: Problem, text: str) -> Verdict:
    if not text:
        return Verdict(0.0, "malformed")
    return Verdict(sum(ch in "0123456789" for ch in text) / len(text), "ok")


def _draft_head(hidden_size: int) -> TemperatureHead:
    """A draft-reading head whose prior sits between the rungs (tau_0 and the Beta mean at 0.55)."""
    torch.manual_seed(0)
    return TemperatureHead(HeadConfig(hidden_size=hidden_size, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(hidden_size), draft_linear=8, tau_init=0.55))


def test_rung_scores_and_weights_pick_the_rung_that_wins_each_problem(micro_checkpoint, countdown_problems):
    start = load_checkpoint(micro_checkpoint)
    model, tokenizer = start.model, start.tokenizer
    ladder = LadderTemperature([0.1, 1.0], start.head, 4)
    rows = sample_completions(model, tokenizer, ladder, countdown_problems[:3], samples=4, first_sample=4,
                              task=TASK, max_new_tokens=4, seed=0)
    # problem 0: only the hot rung solves (1 of 2); problem 1: the cold rung solves both, the hot one of 2;
    # problem 2: neither.
    wins = {(0, 5): 1.0, (1, 4): 1.0, (1, 6): 1.0, (1, 5): 1.0}
    for b in rows:
        rows_of = zip(b.problem_index, b.sample_index, strict=True)
        b.rewards = torch.tensor([wins.get((i, s), 0.0) for i, s in rows_of])
    scores = rung_scores(rows, 3, ladder, "mean+pass@k", k=2)
    torch.testing.assert_close(scores, torch.tensor([[0.0, 1.5], [2.0, 1.5], [0.0, 0.0]]))
    torch.testing.assert_close(rung_scores(rows, 3, ladder, "mean", k=2),
                               torch.tensor([[0.0, 0.5], [1.0, 0.5], [0.0, 0.0]]))
    torch.testing.assert_close(rung_weights(scores), torch.tensor([[0.0, 0.75], [0.25, 0.0], [0.0, 0.0]]))
    # A mean weight of 2 counts the cold rung's sure wins of problem 1 twice against the hot rung's pass@2.
    torch.testing.assert_close(rung_scores(rows, 3, ladder, "mean+pass@k", k=2, mean_weight=2.0),
                               torch.tensor([[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]))


def test_a_solved_draft_takes_the_hot_rungs_pass_gain_away(micro_checkpoint, countdown_problems):
    start = load_checkpoint(micro_checkpoint)
    ladder = LadderTemperature([0.1, 1.0], start.head, 4)
    rows = sample_completions(start.model, start.tokenizer, ladder, countdown_problems[:3], samples=4, first_sample=4,
                              task=TASK, max_new_tokens=4, seed=0)
    # Each problem: the hot rung solves one of its two rows, the cold rung none. Problem 0's draft solves it.
    for b in rows:
        b.rewards = torch.tensor([float(s == 5) for s in b.sample_index])
    draft_solved = torch.tensor([True, False, False])
    scores = rung_scores(rows, 3, ladder, "mean+pass@k", k=2, draft_solved=draft_solved)
    # Problem 0: pass is 1 at both rungs (the draft is one of the k), so hot gains only its mean (0.5).
    # Problems 1, 2: the draft fails, so a rung's pass@2 is that of one of its rows: 0.5 hot, 0 cold.
    torch.testing.assert_close(scores, torch.tensor([[1.0, 1.5], [0.0, 1.0], [0.0, 1.0]]))
    # Without the draft, every problem's hot rung has the same pass@2 gain.
    torch.testing.assert_close(rung_scores(rows, 3, ladder, "mean+pass@k", k=2),
                               torch.tensor([[0.0, 1.5], [0.0, 1.5], [0.0, 1.5]]))
    # The mean part never counts the draft.
    torch.testing.assert_close(rung_scores(rows, 3, ladder, "mean", k=2, draft_solved=draft_solved),
                               torch.tensor([[0.0, 0.5], [0.0, 0.5], [0.0, 0.5]]))


HOT, COLD = {0, 1, 2}, {3, 4, 5}


def _hot_and_cold_rollouts(micro_checkpoint, countdown_problems, make_head):
    """Six problems, the head's own rows of each (after the draft) and a 0.2/1.0 ladder's rows, rewarded so that
    the hot rung (odd samples) solves problems HOT and the cold rung (even samples) problems COLD."""
    start = load_checkpoint(micro_checkpoint)
    model, tokenizer = start.model, start.tokenizer
    head = make_head(model.config.hidden_size)
    problems = countdown_problems[:6]
    _, summaries = draft_completions(model, tokenizer, problems, task=TASK, max_new_tokens=8)
    head.set_draft_scale(summaries)
    own = sample_completions(model, tokenizer, LearnedTemperature(head), problems, samples=3, first_sample=1,
                             drafts=summaries, task=TASK, max_new_tokens=8, seed=0)
    ladder = LadderTemperature([0.2, 1.0], head, 4)
    rows = sample_completions(model, tokenizer, ladder, problems, samples=4, first_sample=4, drafts=summaries,
                              task=TASK, max_new_tokens=8, seed=0)
    for b in rows:
        rows_of = zip(b.problem_index, b.sample_index, strict=True)
        b.rewards = torch.tensor([float((s % 2 == 1) == (i in HOT)) for i, s in rows_of])
    return model, head, own, ladder, rows


def _head_optimizer(head: TemperatureHead, params, cfg: GRPOConfig) -> torch.optim.Optimizer:
    """As the trainer's: the draft statistics' linear path (a per-problem shift) learns at draft_lr_scale x."""
    draft = list(head.draft_linear.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if all(p is not q for q in draft)]},
                              {"params": draft, "lr": cfg.head_lr * cfg.draft_lr_scale}], lr=cfg.head_lr)


def _mean_tau(model, head, batches, problems: set[int]) -> float:
    """The head's expected tau (gate-weighted Beta mean, else tau_{t-1}) over its own rows' tokens of `problems`."""
    total, tokens = 0.0, 0.0
    with torch.no_grad():
        for b in batches:
            states = head_states(model, head, b)
            dist = head.distribution(states.hidden, states.tau_prev, b.draft)
            cfg = head.config
            tau = dist.gate_prob * cfg.z_to_tau(dist.beta_mean) + (1 - dist.gate_prob) * states.tau_prev
            keep = torch.tensor([i in problems for i in b.problem_index]).float().unsqueeze(1) * b.generation.mask
            total += float((tau.squeeze(-1) * keep).sum())
            tokens += float(keep.sum())
    return total / tokens


def test_best_rung_updates_warm_the_head_where_the_hot_rung_wins_and_cool_it_elsewhere(micro_checkpoint,
                                                                                     countdown_problems):
    model, head, own, ladder, rows = _hot_and_cold_rollouts(micro_checkpoint, countdown_problems, _draft_head)
    hot, cold = HOT, COLD
    weights = rung_weights(rung_scores(rows, 6, ladder, "mean+pass@k", k=2))
    assert (weights[:3, 1] > 0).all() and (weights[3:, 0] > 0).all()
    before_hot, before_cold = _mean_tau(model, head, own, hot), _mean_tau(model, head, own, cold)
    lm_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = GRPOConfig(head_lr=1e-2)
    params = set_phase(model, head, "tau")
    optimizer = _head_optimizer(head, params, cfg)
    for _ in range(8):
        stats = best_rung_update(model, head, own, weights, ladder, cfg, optimizer, params, torch.device("cpu"))
        assert math.isfinite(stats["loss"]) and math.isfinite(stats["ladder_logprob"])
    after_hot, after_cold = _mean_tau(model, head, own, hot), _mean_tau(model, head, own, cold)
    assert after_hot > before_hot + 0.1 and after_cold < before_cold - 0.05
    assert all(torch.equal(p, lm_before[n]) for n, p in model.named_parameters())  # the LM stays frozen


def _steps(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "event" not in r]


def _micro(init, out, **overrides) -> GRPOConfig:
    settings = dict(init=str(init), out=str(out), steps=2, prompts_per_step=3, group_size=3, n_train=50,
                    n_heldout=5, eval_every=0, save_every=0, threads=1, max_new_tokens=6, schedule="lm+tau:1",
                    head=HeadPrior(inputs="hidden,tau_prev,draft"), tau_ladder="0.1,1.0", ladder_samples=4,
                    tau_advantage="mean+pass@k", pass_k=2, lm_lr=1e-3, head_lr=1e-2)
    return GRPOConfig(**{**settings, **overrides})


def test_the_option_off_never_takes_the_best_rung_step_and_on_it_logs_its_signal(micro_checkpoint, tmp_path,
                                                                                monkeypatch):
    calls = []
    original = grpo.best_rung_update
    monkeypatch.setattr(grpo, "best_rung_update", lambda *a, **k: calls.append(1) or original(*a, **k))
    train_grpo(_micro(micro_checkpoint, tmp_path / "off"), score=digit_fraction)
    assert calls == []
    off = _steps(tmp_path / "off" / "grpo_log.jsonl")
    assert all("rung_tau_gap" not in r for r in off)
    train_grpo(_micro(micro_checkpoint, tmp_path / "on", tau_objective="best-rung"), score=digit_fraction)
    assert len(calls) == 2
    on = _steps(tmp_path / "on" / "grpo_log.jsonl")
    for r in on:
        assert 0 <= r["rung_hot_share"] <= 1 and math.isfinite(r["rung_tau_gap"]) and math.isfinite(r["tau_loss"])
        assert 0 <= r["ladder_accuracy"] <= 1
    # The LM phase is the same in both runs: the first step's LM rollouts (before any update) agree.
    assert on[0]["reward"] == off[0]["reward"] and on[0]["mean_tau"] == off[0]["mean_tau"]
    manifest = json.loads((tmp_path / "on" / "introllm.json").read_text())
    assert manifest["training"]["stages"][-1]["config"]["tau_objective"] == "best-rung"


@pytest.mark.parametrize("overrides", [dict(tau_ladder=""), dict(tau_ladder="1.0"), dict(ladder_samples=1),
                                       dict(tau_objective="bandit")])
def test_best_rung_without_a_ladder_to_compare_fails_before_training(overrides, micro_checkpoint, tmp_path):
    settings = {"tau_objective": "best-rung", **overrides}
    with pytest.raises(ValueError, match="tau_objective"):
        train_grpo(_micro(micro_checkpoint, tmp_path / "bad", **settings), score=digit_fraction)


# --- the rungs' value (`--tau-objective rung-value`) -------------------------------------------------


def _two_rung_head(hidden_size: int) -> TemperatureHead:
    """A draft-reading head whose range is the ladder's two rungs, its prior halfway between them."""
    torch.manual_seed(0)
    return TemperatureHead(HeadConfig(hidden_size=hidden_size, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(hidden_size), draft_linear=8, tau_min=0.2,
                                      tau_max=1.0, tau_init=0.6))


def test_the_rung_value_is_linear_between_the_rungs_scores():
    hotness = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    # Two rungs: the hot-minus-cold gain times the hotness.
    torch.testing.assert_close(rung_value(torch.tensor([[0.5, 2.0]]), torch.tensor([0.0, 1.0]), hotness),
                               1.5 * hotness)
    # Three rungs, the middle one best: the value rises to it, then falls to the hot rung's (cold's = 0).
    value = rung_value(torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([0.0, 0.5, 1.0]), hotness)
    torch.testing.assert_close(value, torch.tensor([[0.0, 0.5, 1.0, 0.75, 0.5]]))


def test_rung_value_updates_send_the_head_decisively_to_the_rung_that_wins_each_problem(micro_checkpoint,
                                                                                       countdown_problems):
    model, head, own, ladder, rows = _hot_and_cold_rollouts(micro_checkpoint, countdown_problems, _two_rung_head)
    hot, cold = HOT, COLD
    scores = rung_scores(rows, 6, ladder, "mean+pass@k", k=2)  # (6, 2): columns 0.2, 1.0
    assert ladder.ladder == [0.2, 1.0]
    assert (scores[:3, 1] > scores[:3, 0]).all() and (scores[3:, 1] < scores[3:, 0]).all()
    before_hot, before_cold = _mean_tau(model, head, own, hot), _mean_tau(model, head, own, cold)
    lm_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = GRPOConfig(head_lr=1e-2)
    params = set_phase(model, head, "tau")
    optimizer = _head_optimizer(head, params, cfg)
    for _ in range(24):
        stats = rung_value_update(model, head, own, scores, [0.2, 1.0], cfg, optimizer, params, torch.device("cpu"))
        assert math.isfinite(stats["loss"]) and math.isfinite(stats["tau_entropy"])
    after_hot, after_cold = _mean_tau(model, head, own, hot), _mean_tau(model, head, own, cold)
    # From about 0.6 on both, to a gap of more than half the range (the micro LM's drafts of some problems
    # are too alike for every problem to reach its rung).
    assert after_hot > before_hot + 0.05 and after_cold < before_cold - 0.2
    assert after_hot - after_cold > 0.4, (before_hot, before_cold, after_hot, after_cold)
    assert all(torch.equal(p, lm_before[n]) for n, p in model.named_parameters())  # the LM stays frozen


def test_a_middle_rung_that_wins_draws_the_heads_tau_to_the_middle(micro_checkpoint, countdown_problems):
    model, head, own, _, _ = _hot_and_cold_rollouts(micro_checkpoint, countdown_problems, _two_rung_head)
    # Rungs 0.2, 0.6, 1.0: the middle one is worth most on problems HOT, the cold one on problems COLD.
    scores = torch.tensor([[0.0, 1.0, 0.2]] * 3 + [[1.0, 0.0, 0.0]] * 3)
    cfg = GRPOConfig(head_lr=1e-2)
    params = set_phase(model, head, "tau")
    optimizer = _head_optimizer(head, params, cfg)
    for _ in range(24):
        rung_value_update(model, head, own, scores, [0.2, 0.6, 1.0], cfg, optimizer, params, torch.device("cpu"))
    middle, cold = _mean_tau(model, head, own, HOT), _mean_tau(model, head, own, COLD)
    # The middle problems stay near 0.6 (a two-rung value would have sent them to an end), the others cool.
    assert 0.45 < middle < 0.75 and cold < 0.45 and middle - cold > 0.15, (middle, cold)


def test_the_variance_penalty_narrows_the_heads_tau_where_no_rung_wins(micro_checkpoint, countdown_problems):
    model, head, own, _, _ = _hot_and_cold_rollouts(micro_checkpoint, countdown_problems, _two_rung_head)
    ties = torch.zeros(6, 2)  # no value either way: only the penalty moves the head
    variances = {}
    for coef in (0.0, 1.0):
        trained = copy.deepcopy(head)
        cfg = GRPOConfig(head_lr=1e-2, tau_variance_coef=coef)
        params = set_phase(model, trained, "tau")
        optimizer = torch.optim.AdamW(params, lr=cfg.head_lr, weight_decay=0.0)  # as the trainer's
        first = rung_value_update(model, trained, own, ties, [0.2, 1.0], cfg, optimizer, params, torch.device("cpu"))
        for _ in range(10):
            last = rung_value_update(model, trained, own, ties, [0.2, 1.0], cfg, optimizer, params,
                                     torch.device("cpu"))
        variances[coef] = (first["tau_variance"], last["tau_variance"])
    assert variances[0.0][1] == pytest.approx(variances[0.0][0])  # no value, no penalty: nothing moves
    assert variances[1.0][1] < 0.5 * variances[1.0][0]


@pytest.mark.parametrize(("ladder", "with_draft"), [("0.1,1.0", False), ("1.0,0.5,0.1", False), ("0.1,1.0", True)])
def test_a_rung_value_run_logs_its_signal_and_records_the_objective(ladder, with_draft, micro_checkpoint, tmp_path):
    head = HeadPrior(inputs="hidden,tau_prev,draft", tau_min=0.1, tau_max=1.0, tau_init=0.55)
    train_grpo(_micro(micro_checkpoint, tmp_path / "run", tau_objective="rung-value", head=head, tau_ladder=ladder,
                      ladder_samples=6, rung_pass_with_draft=with_draft), score=digit_fraction)
    for r in _steps(tmp_path / "run" / "grpo_log.jsonl"):
        assert 0 <= r["rung_hot_share"] <= 1 and math.isfinite(r["rung_tau_gap"]) and math.isfinite(r["tau_loss"])
    manifest = json.loads((tmp_path / "run" / "introllm.json").read_text())
    assert manifest["training"]["stages"][-1]["config"]["tau_objective"] == "rung-value"
    assert manifest["training"]["stages"][-1]["config"]["rung_pass_with_draft"] is with_draft
    assert (manifest["head"]["tau_min"], manifest["head"]["tau_max"]) == (0.1, 1.0)


def test_the_card_of_a_head_only_rung_value_run_says_the_lm_was_frozen_and_how_the_head_learned(
        micro_checkpoint, tmp_path):
    head = HeadPrior(inputs="hidden,tau_prev,draft", tau_min=0.1, tau_max=1.0, tau_init=0.55)
    out = tmp_path / "run"
    train_grpo(_micro(micro_checkpoint, out, tau_objective="rung-value", head=head, ladder_samples=6,
                      schedule="tau:1", rung_mean_weight=2.0, rung_pass_with_draft=True), score=digit_fraction)
    recipe = next(line for line in write_model_card(out, "make x").read_text().splitlines()
                  if line.startswith("GRPO recipe:"))
    assert "the LM frozen, head lr" in recipe and "LM lr" not in recipe
    assert ("train the head off-policy from them by the rungs' value, score 2 x mean + pass@2, the draft counted in "
            "each rung's pass@k" in recipe)
    assert "(6 rows a problem" in recipe and "clipped ratio" not in recipe


@pytest.mark.parametrize("overrides", [dict(tau_ladder="0.1,1.0"), dict(tau_ladder="0.1,0.5,1.0"),
                                       dict(tau_ladder="0.1,0.5,0.5,2.0"),
                                       dict(tau_ladder="0.1,0.5,2.0", ladder_samples=2),
                                       dict(tau_ladder="0.1,1.0", head=HeadPrior(inputs="hidden,tau_prev,draft",
                                                                                 tau_max=1.0), ladder_samples=1)])
def test_rung_value_needs_distinct_rungs_from_the_heads_ends_before_training(overrides, micro_checkpoint, tmp_path):
    # The default head's range is 0.1 to 2.0: a 0.1/1.0 ladder is not its ends.
    settings = {"tau_objective": "rung-value", **overrides}
    with pytest.raises(ValueError, match="tau_objective rung-value"):
        train_grpo(_micro(micro_checkpoint, tmp_path / "bad", **settings), score=digit_fraction)


@pytest.mark.parametrize("overrides", [dict(tau_objective="grpo"),
                                       dict(head=HeadPrior(inputs="hidden,tau_prev", tau_min=0.1, tau_max=1.0))])
def test_counting_the_draft_in_a_rungs_pass_needs_a_rung_objective_and_a_draft(overrides, micro_checkpoint, tmp_path):
    settings = {"tau_objective": "rung-value", "tau_ladder": "0.1,1.0", "ladder_samples": 4,
                "head": HeadPrior(inputs="hidden,tau_prev,draft", tau_min=0.1, tau_max=1.0, tau_init=0.55),
                "rung_pass_with_draft": True, **overrides}
    with pytest.raises(ValueError, match="rung_pass_with_draft"):
        train_grpo(_micro(micro_checkpoint, tmp_path / "bad", **settings), score=digit_fraction)
