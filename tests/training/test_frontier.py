"""The draft baselines (hedge, draft rule), the learned point's targets, and a draft-reading head's evaluation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model import (
    DRAFT_STATISTICS,
    HeadConfig,
    TemperatureHead,
    draft_summary_size,
    load_checkpoint,
    save_checkpoint,
)
from training.config import EvalConfig
from training.evaluate import pool_rounds, result_from_outcomes, run_evaluation, wilson_interval
from training.frontier import (
    MIN_TAU_GAP,
    TOLERANCE,
    DraftRule,
    auc,
    draft_rule_results,
    fit_draft_check,
    fit_draft_rule,
    hedges,
    nearest_below,
    targets,
)


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_a_hedge_is_the_draft_then_samples_one_on_of_the_fixed_tau():
    draft = torch.tensor([1, 0, 0])
    fixed = {"fixed 0.5": torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 1]])}
    out = hedges(draft, fixed)
    assert list(out) == ["hedge 0.5"]
    assert out["hedge 0.5"].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]


def test_with_rounds_the_draft_is_sample_zero_of_every_round():
    draft = torch.tensor([1, 0])
    fixed = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [0, 1]]])  # (P=2, R=2, k=2)
    assert hedges(draft, {"fixed 0.5": fixed})["hedge 0.5"].tolist() == [[[1, 1], [1, 0]], [[0, 1], [0, 1]]]
    rule = DraftRule(mean=[0.0] * len(DRAFT_STATISTICS), std=[1.0] * len(DRAFT_STATISTICS),
                     weights=[1.0] + [0.0] * (len(DRAFT_STATISTICS) - 1), bias=0.0, cold=0.1, hot=1.0,
                     train_problems=2, train_auc=1.0)
    stats = torch.zeros(2, len(DRAFT_STATISTICS))
    stats[0, 0], stats[1, 0] = 5.0, -5.0  # problem 0 hot, problem 1 cold
    cold, hot = torch.zeros(2, 2, 3, dtype=torch.long), torch.ones(2, 2, 3, dtype=torch.long)
    chosen = draft_rule_results(rule, stats, draft, cold, hot, thresholds=(0.5,))["draft rule p>0.5"]
    assert chosen.tolist() == [[[1, 1, 1], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]]]


def test_the_draft_rule_learns_a_separable_rule_and_picks_hot_or_cold_per_problem():
    torch.manual_seed(0)
    n = 200
    stats = torch.randn(n, len(DRAFT_STATISTICS))
    needs_hot = stats[:, 0] < 0  # the lowest top-1 probability says "explore"
    cold = torch.where(needs_hot.unsqueeze(1), torch.zeros(n, 4, dtype=torch.long), torch.ones(n, 4, dtype=torch.long))
    hot = torch.where(needs_hot.unsqueeze(1), torch.ones(n, 4, dtype=torch.long), torch.zeros(n, 4, dtype=torch.long))
    rule = fit_draft_rule(stats, cold, hot, 0.1, 1.0)
    assert rule.train_problems == n and rule.train_auc > 0.99
    assert rule.weights[0] < 0 and abs(rule.weights[0]) > max(abs(w) for w in rule.weights[1:])
    draft = torch.zeros(n, dtype=torch.long)
    out = draft_rule_results(rule, stats, draft, cold, hot, thresholds=(0.5,))
    chosen = out["draft rule p>0.5"]
    assert chosen.shape == (n, 4) and torch.all(chosen[:, 0] == 0)  # sample 0 is the draft
    # Nearly every problem got the tau that solves it (the L2 penalty softens the boundary a little).
    assert float((chosen[:, 1:] == 1).all(dim=1).float().mean()) > 0.95
    assert json.loads(json.dumps(rule.to_dict()))["statistics"] == list(DRAFT_STATISTICS)


def test_the_draft_check_sends_problems_hot_where_the_draft_looks_wrong():
    torch.manual_seed(0)
    n = 200
    stats = torch.randn(n, len(DRAFT_STATISTICS))
    draft = (stats[:, 1] > 0).long()  # a confident draft (high mean top-1 probability) is right
    check = fit_draft_check(stats, draft, 0.1, 1.0)
    assert check.label == "draft fails" and check.train_problems == n and check.train_auc > 0.99
    assert check.weights[1] < 0 and abs(check.weights[1]) > max(abs(w) for i, w in enumerate(check.weights) if i != 1)
    cold, hot = torch.zeros(n, 4, dtype=torch.long), torch.ones(n, 4, dtype=torch.long)
    chosen = draft_rule_results(check, stats, draft, cold, hot, thresholds=(0.5,), family="draft check")
    assert list(chosen) == ["draft check p>0.5"]
    rows = chosen["draft check p>0.5"]
    assert torch.equal(rows[:, 0], draft)  # sample 0 is the draft
    # Hot samples (1s here) where the draft is wrong, cold (0s) where it is right.
    assert float((rows[:, 1:].float().mean(dim=1) == 1 - draft.float()).float().mean()) > 0.95
    assert json.loads(json.dumps(check.to_dict()))["label"] == "draft fails"
    with pytest.raises(ValueError, match="cannot fit the draft check"):
        fit_draft_check(stats, torch.ones(n, dtype=torch.long), 0.1, 1.0)


def test_the_draft_rule_refuses_data_without_both_labels():
    stats = torch.randn(10, len(DRAFT_STATISTICS))
    zeros = torch.zeros(10, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="cannot fit"):
        fit_draft_rule(stats, zeros, zeros, 0.1, 1.0)


def test_auc_counts_ties_half():
    assert auc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1.0, 1.0, 0.0])) == 1.0
    assert auc(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == 0.5


def _result(name: str, rows: list, taus: list[float] | None = None):
    return result_from_outcomes(name, torch.tensor(rows), per_problem_tau=taus)


def test_rounds_pool_each_problems_accuracy_and_share_of_rounds_solved():
    # Problem 0 solved in round 0 only, problem 1 in both rounds, problem 2 never.
    pooled = result_from_outcomes("fixed 1.0", torch.tensor([[[1, 0], [0, 0]], [[1, 1], [0, 1]], [[0, 0], [0, 0]]]))
    assert (pooled.repeats, pooled.samples, pooled.problems) == (2, 2, 3)
    assert pooled.per_problem_accuracy == pytest.approx([0.25, 0.75, 0.0])
    assert pooled.per_problem_pass == pytest.approx([0.5, 1.0, 0.0])
    assert pooled.avg_at_k == pytest.approx(1 / 3) and pooled.pass_at_k == pytest.approx(0.5)
    assert pooled.pass_at_k_ci[0] < 0.5 < pooled.pass_at_k_ci[1]
    # One round is the plain result: pass is solved or not, with Wilson's interval.
    one = result_from_outcomes("fixed 1.0", torch.tensor([[1, 0], [1, 1], [0, 0]]))
    assert one.repeats == 1 and one.per_problem_pass == [1.0, 1.0, 0.0]
    assert one.pass_at_k_ci == pytest.approx(wilson_interval(2, 3))
    # Pooling two one-round results stacks their rounds.
    again = pool_rounds([one, result_from_outcomes("fixed 1.0", torch.tensor([[0, 0], [0, 1], [0, 0]]))])
    assert again.correct == [[[1, 0], [0, 0]], [[1, 1], [0, 1]], [[0, 0], [0, 0]]]
    assert again.pass_at_k == pytest.approx(pooled.pass_at_k)


def test_target_b_on_pass_uses_each_problems_share_of_rounds_solved():
    fixed = [_result("fixed 0.1", [[[1, 1], [1, 1]], [[0, 0], [0, 0]]]),
             _result("fixed 1.0", [[[1, 0], [0, 0]], [[0, 1], [1, 0]]])]  # pass 0.5 and 1.0: 0.75
    learned = _result("learned", [[[1, 1], [1, 1]], [[0, 1], [0, 0]]])  # pass 1.0 and 0.5: 0.75
    pass_row = next(r for r in targets(learned, {}, fixed, {}, "fixed 0.1", "fixed 1.0")
                    if r["target"].startswith("(b) pass"))
    assert pass_row["against"] == "fixed 1.0" and pass_row["diff"] == pytest.approx(0.0) and pass_row["met"]


def test_nearest_below_takes_the_highest_pass_not_above_the_learned_point():
    learned = _result("learned", [[1, 0], [1, 0], [0, 1], [0, 0]])  # pass 0.75
    cold = _result("fixed 0.1", [[1, 1], [0, 0], [0, 0], [0, 0]])  # pass 0.25
    warm = _result("fixed 0.5", [[1, 1], [1, 1], [0, 0], [0, 0]])  # pass 0.5 (avg 0.5: not dominated by hot)
    hot = _result("fixed 1.0", [[1, 0], [1, 0], [1, 0], [1, 0]])  # pass 1.0
    assert nearest_below(learned, [cold, warm, hot]).name == "fixed 0.5"
    assert nearest_below(_result("learned", [[0, 0]] * 4), [cold, warm]) is None


def test_nearest_below_skips_a_dominated_hot_setting_past_the_curves_best_pass():
    """Past its best pass@k the fixed curve falls back (both avg@k and pass@k drop): such a setting, dominated by a
    colder one, is not the curve, even when its pass@k is nearer below the learned one's."""
    learned = _result("learned", [[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])  # pass 0.6
    warm = _result("fixed 0.5", [[1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])  # avg 0.33, pass 0.4
    hot = _result("fixed 0.6", [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]])  # avg 0.27, pass 0.8
    past = _result("fixed 1.4", [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])  # avg 0.2, pass 0.6
    assert nearest_below(learned, [warm, hot, past]).name == "fixed 0.5"
    assert nearest_below(learned, [warm, past]).name == "fixed 1.4"  # nothing dominates it there


def test_targets_report_each_family_both_ends_and_the_tau_gap():
    fixed = [_result("fixed 0.1", [[1, 1], [1, 1], [0, 0], [0, 0]]),
             _result("fixed 1.0", [[1, 0], [0, 1], [1, 0], [0, 0]])]
    learned = _result("learned", [[1, 1], [1, 1], [1, 0], [0, 0]])  # avg 0.625, pass 0.75
    outcomes = {"only fixed 1.0 solves": {"taus": [1.2, 1.0]}, "fixed 0.1 solves all": {"taus": [0.2, 0.3]}}
    rows = targets(learned, {"fixed": fixed}, fixed, outcomes, "fixed 0.1", "fixed 1.0")
    above = rows[0]  # fixed 1.0 has the learned pass@k (0.75) and avg@k 0.375
    assert above["against"] == "fixed 1.0" and above["diff"] == pytest.approx(0.25) and above["met"] is False
    both = [r for r in rows if r["target"].startswith("(b)")]
    assert [r["against"] for r in both] == ["fixed 0.1", "fixed 1.0"]
    assert both[0]["diff"] == pytest.approx(0.125) and both[1]["diff"] == pytest.approx(0.0)
    assert all(r["met"] for r in both) and TOLERANCE == 0.01
    gap = rows[-1]
    assert gap["target"].startswith("(c)") and gap["diff"] == pytest.approx(0.85) and gap["met"]
    assert gap["ci"][0] < gap["diff"] < gap["ci"][1] and MIN_TAU_GAP == 0.2


def test_a_draft_heads_learned_result_is_the_draft_plus_k_minus_1_head_samples(micro_checkpoint, tmp_path):
    start = load_checkpoint(micro_checkpoint)
    d = start.model.config.hidden_size
    torch.manual_seed(0)
    head = TemperatureHead(HeadConfig(hidden_size=d, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(d)))
    checkpoint = save_checkpoint(tmp_path / "draft", start.model, start.tokenizer, head, base_model="micro-test")
    cfg = EvalConfig(checkpoint=str(checkpoint), problems=5, samples=3,
                     controllers="fixed:0.1,fixed:1.0,learned,learned-deterministic", plot_samples=2, threads=1,
                     draft_rule_problems=20, draft_rule_samples=2)
    report = run_evaluation(cfg)
    names = [r.name for r in report.results]
    assert names == ["fixed 0.1", "fixed 1.0", "learned", "learned (deterministic)", "hedge 0.1", "hedge 1.0"]
    # The random micro model solves nothing, so no train problem says which tau wins: the rule is skipped, said so.
    assert "not_fitted" in report.draft_rule and "Draft rule: not fitted" in report.markdown
    data = json.loads((checkpoint / "eval" / "report.json").read_text(), parse_constant=_refuse)  # strict JSON
    assert all(r["mean_tau"] is None for r in data["results"] if r["name"].startswith("hedge"))
    learned = next(r for r in data["results"] if r["name"] == "learned")
    assert learned["samples"] == 3 and 0.1 <= learned["mean_tau"] <= 2.0
    assert [t["target"][:3] for t in data["targets"]][:3] == ["(a)", "(a)", "(b)"]
    # The deterministic head gets the same targets, against the same baselines, from its own samples.
    deterministic = next(r for r in data["results"] if r["name"] == "learned (deterministic)")
    assert [t["target"] for t in data["deterministic_targets"]] == [t["target"] for t in data["targets"]]
    for row in data["deterministic_targets"]:
        if "learned" in row:
            assert row["learned"] == [deterministic["avg_at_k"], deterministic["pass_at_k"]]
    assert "The same targets for the head's noise-free choice" in report.markdown
    assert (checkpoint / "eval" / "frontier.png").stat().st_size > 0
    assert (checkpoint / "eval" / "tau_along_solutions.png").stat().st_size > 0
    assert "![avg@3 against pass@3](frontier.png)" in report.markdown


def test_evaluating_an_old_head_with_the_draft_baselines_keeps_its_learned_rows(micro_checkpoint, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(micro_checkpoint, checkpoint)
    report = run_evaluation(EvalConfig(checkpoint=str(checkpoint), problems=4, samples=2,
                                       controllers="fixed:0.1,fixed:1.0,learned", plot_samples=0, threads=1,
                                       draft_rule_problems=10, draft_rule_samples=1))
    learned = next(r for r in report.results if r.name == "learned")
    assert learned.samples == 2 and len(learned.correct) == 4
    assert [r.name for r in report.results if r.name.startswith("hedge")] == ["hedge 0.1", "hedge 1.0"]


def test_each_round_draws_its_own_noise_and_round_zero_is_the_single_round_eval(micro_checkpoint, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(micro_checkpoint, checkpoint)

    def learned(repeats: int):
        report = run_evaluation(EvalConfig(checkpoint=str(checkpoint), problems=4, samples=2, repeats=repeats,
                                           controllers="fixed:1.0,learned", plot_samples=0, threads=1,
                                           draft_baselines=False, write_manifest=False))
        return next(r for r in report.results if r.name == "learned"), report

    one, _ = learned(1)
    two, report = learned(2)
    assert two.repeats == 2 and torch.tensor(two.correct).shape == (4, 2, 2)
    assert "in 2 independent rounds" in report.markdown
    # The head's draws differ between the rounds, else pooling would add nothing: with round 0 the one-round
    # evaluation, round 1's tau per problem (twice the pooled mean less round 0's) is another.
    round_one = [2 * p - o for p, o in zip(two.per_problem_tau, one.per_problem_tau, strict=True)]
    assert all(0.1 <= t <= 2.0 for t in round_one)
    assert round_one != pytest.approx(one.per_problem_tau, abs=1e-4)
    row = next(r for r in json.loads((checkpoint / "eval" / "report.json").read_text())["results"]
               if r["name"] == "learned")
    assert row["repeats"] == 2 and all(0 <= c <= 4 for c in row["correct_per_problem"])
    assert len(row["pass_per_problem"]) == 4


def test_evaluation_refuses_fewer_than_one_round(micro_checkpoint):
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        run_evaluation(EvalConfig(checkpoint=str(micro_checkpoint), repeats=0))
