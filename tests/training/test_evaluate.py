"""Frontier evaluation and the cross-model comparison, on the micro checkpoint and on hand-made reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import load_checkpoint
from training.compare import TOLERANCE, load_report, paired_difference, parse_models, run_comparison, targets
from training.config import CompareConfig, EvalConfig, GRPOConfig
from training.evaluate import run_evaluation
from training.grpo import train_grpo
from training.model_card import write_model_card
from training.tasks.countdown import Verdict

REPO = Path(__file__).resolve().parents[2]
GRID = "fixed:0.1,fixed:0.5,fixed:1.0,fixed:1.4"


def test_frontier_table_has_one_row_per_grid_point_with_per_problem_counts(micro_checkpoint, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(micro_checkpoint, checkpoint)
    cfg = EvalConfig(checkpoint=str(checkpoint), problems=6, samples=3,
                     controllers=GRID + ",entropy,learned,learned-deterministic", plot_samples=0, threads=1,
                     draft_baselines=False)
    report = run_evaluation(cfg)
    names = [r.name for r in report.results]
    assert names == ["fixed 0.1", "fixed 0.5", "fixed 1.0", "fixed 1.4", "entropy (EDT)", "learned",
                     "learned (deterministic)"]
    data = json.loads((checkpoint / "eval" / "report.json").read_text())
    assert [r["name"] for r in data["results"]] == names
    for row in data["results"]:
        counts = row["correct_per_problem"]
        assert len(counts) == 6 and all(0 <= c <= 3 for c in counts)
        assert row["avg_at_k"] == pytest.approx(sum(counts) / (6 * 3))
        assert row["pass_at_k"] == pytest.approx(sum(c > 0 for c in counts) / 6)
    fixed = {r["name"]: r["mean_tau"] for r in data["results"] if r["name"].startswith("fixed")}
    assert fixed == pytest.approx({"fixed 0.1": 0.1, "fixed 0.5": 0.5, "fixed 1.0": 1.0, "fixed 1.4": 1.4})
    # The manifest keeps the table but not the per-problem counts.
    manifest = json.loads((checkpoint / "introllm.json").read_text())
    assert all("correct_per_problem" not in r for r in manifest["training"]["evaluation"]["results"])
    assert "| fixed 1.4 |" in report.markdown
    # Every problem lands in exactly one outcome group, with the learned head's tau on it.
    groups = data["problem_outcomes"]
    assert sum(g["problems"] for g in groups.values()) == 6
    assert all(0.1 <= g["mean_tau"] <= 2.0 for g in groups.values())
    assert "Learned policy by problem" in report.markdown


def _row(name: str, correct: list[int], samples: int = 4, tau: float = 1.0) -> dict:
    n = len(correct)
    return {"name": name, "samples": samples, "correct_per_problem": correct, "mean_tau": tau,
            "avg_at_k": sum(correct) / (n * samples), "avg_at_k_ci": [0.0, 1.0],
            "pass_at_k": sum(c > 0 for c in correct) / n, "pass_at_k_ci": [0.0, 1.0]}


def _write_report(folder: Path, rows: list[dict], rollout: str, classes: dict | None = None) -> Path:
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "report.json").write_text(json.dumps({"results": rows, "token_classes": classes or {}}))
    stages = [{"stage": "grpo", "config": {"rollout_temperature": rollout}}]
    (folder / "introllm.json").write_text(json.dumps({"training": {"stages": stages}}))
    (folder / "grpo_log.jsonl").write_text('{"step": 0}\n')
    return folder


def test_paired_difference_pairs_problems_for_avg_and_pass():
    a, b = _row("a", [4, 0, 2, 1]), _row("b", [2, 1, 0, 1])
    avg = paired_difference(a, b, 4, "avg_at_k")
    assert avg["diff"] == pytest.approx(((4 - 2) + (0 - 1) + (2 - 0) + 0) / 4 / 4)
    assert avg["ci"][0] < avg["diff"] < avg["ci"][1]
    solved = paired_difference(a, b, 4, "pass_at_k")
    assert solved["diff"] == pytest.approx((0 - 1 + 1 + 0) / 4)


def test_paired_difference_reads_rounds_from_the_reports_own_counts():
    # Two rounds of 2 samples: counts over 4 samples, and each problem's share of rounds solved.
    a = {**_row("a", [4, 1], samples=2), "repeats": 2, "pass_per_problem": [1.0, 0.5]}
    b = _row("b", [2, 0], samples=2)  # one round
    assert paired_difference(a, b, 2, "avg_at_k")["diff"] == pytest.approx(((1 - 1) + (0.25 - 0)) / 2)
    assert paired_difference(a, b, 2, "pass_at_k")["diff"] == pytest.approx(((1 - 1) + (0.5 - 0)) / 2)


def test_targets_compare_the_learned_point_with_each_models_best_fixed_tau(tmp_path):
    joint = _write_report(tmp_path / "joint", [
        _row("fixed 0.3", [4, 4, 0, 0], tau=0.3), _row("fixed 1.0", [2, 2, 1, 1], tau=1.0),
        _row("learned", [4, 3, 1, 1], tau=0.6)], "learned",
        {"choice": {"mean_tau": 0.9}, "compute": {"mean_tau": 0.2}})
    fixed = _write_report(tmp_path / "fixed", [
        _row("fixed 0.3", [4, 4, 1, 0], tau=0.3), _row("fixed 1.0", [3, 2, 1, 1], tau=1.0)], "fixed:1.0")
    reports = [load_report("joint", str(joint)), load_report("fixed", str(fixed))]
    assert reports[1].rollout == "fixed:1.0"
    result = targets(reports[0], reports[1:])
    by_metric = {row["metric"]: row for row in result["a"]}
    # The baseline's best avg@4 is fixed 0.3 (9/16 vs 7/16); its best pass@4 is fixed 1.0 (4/4).
    assert by_metric["avg_at_k"]["best_fixed"] == "fixed 0.3"
    assert by_metric["avg_at_k"]["diff"] == pytest.approx((9 - 9) / 16)
    assert by_metric["avg_at_k"]["met"] is True
    assert by_metric["pass_at_k"]["best_fixed"] == "fixed 1.0"
    assert by_metric["pass_at_k"]["diff"] == pytest.approx(0.0) and by_metric["pass_at_k"]["met"] is True
    # The LMs alone, each at its best fixed tau: avg 8/16 against 9/16, pass 4/4 against 4/4.
    lm_only = {row["metric"]: row for row in result["a_lm"]}
    assert lm_only["avg_at_k"]["own_best_fixed"] == "fixed 0.3"
    assert lm_only["avg_at_k"]["diff"] == pytest.approx(-1 / 16)
    assert lm_only["pass_at_k"]["diff"] == pytest.approx(0.0)
    # Against its own curve: best avg@4 is fixed 0.3 (8/16) < learned 9/16; best pass@4 fixed 1.0 = learned.
    assert result["b"]["avg_at_k"]["best_fixed"] == "fixed 0.3" and result["b"]["avg_at_k"]["met"] is True
    assert result["b"]["pass_at_k"]["diff"] == pytest.approx(0.0)
    assert result["c"] == {"choice_tau": 0.9, "compute_tau": 0.2, "met": True}


def test_target_b_fails_when_the_learned_point_is_below_the_curve_by_more_than_the_tolerance(tmp_path):
    joint = _write_report(tmp_path / "joint", [
        _row("fixed 0.3", [4, 4, 4, 0]), _row("fixed 1.0", [1, 1, 1, 1]), _row("learned", [3, 3, 3, 0])], "learned")
    result = targets(load_report("joint", str(joint)), [])
    assert result["b"]["avg_at_k"]["diff"] == pytest.approx(-3 / 16)
    assert -3 / 16 < -TOLERANCE
    assert result["b"]["avg_at_k"]["met"] is False
    assert result["b"]["pass_at_k"]["met"] is False  # 3/4 solved against 4/4


def test_compare_command_writes_table_plot_and_copies_reports(tmp_path):
    joint = _write_report(tmp_path / "joint", [_row("fixed 0.3", [4, 0]), _row("fixed 1.0", [2, 1]),
                                               _row("entropy (EDT)", [2, 1]), _row("learned", [3, 1])], "learned")
    fixed = _write_report(tmp_path / "fixed", [_row("fixed 0.3", [4, 0]), _row("fixed 1.0", [1, 1])], "fixed:1.0")
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "training", "compare", "--models",
                           f"joint={joint},fixed-1.0={fixed}", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "comparison.md").read_text()
    # One row per controller per model, then the tests.
    assert table.count("| joint (learned) |") == 4 and table.count("| fixed-1.0 (fixed:1.0) |") == 2
    assert "### (a)" in table and "### (b)" in table and "frontier.png" in table
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["targets"]["reference"] == "joint"
    for name in ("joint", "fixed-1.0"):
        assert (out / "models" / name / "report.json").is_file()
        assert (out / "models" / name / "grpo_log.jsonl").is_file()


def test_compare_refuses_reports_of_different_problem_sets(tmp_path):
    a = _write_report(tmp_path / "a", [_row("fixed 1.0", [1, 2]), _row("learned", [1, 1])], "learned")
    b = _write_report(tmp_path / "b", [_row("fixed 1.0", [1, 2, 3])], "fixed:1.0")
    with pytest.raises(ValueError, match="same problems"):
        run_comparison(CompareConfig(models=f"a={a},b={b}", out=str(tmp_path / "out")))
    with pytest.raises(ValueError):
        parse_models("a=x,a=y")
    with pytest.raises(FileNotFoundError, match="eval"):
        run_comparison(CompareConfig(models=f"a={tmp_path}", out=str(tmp_path / "out")))


def test_model_card_states_the_recipe_and_embeds_the_comparison(micro_checkpoint, tmp_path):
    out = tmp_path / "run"
    cfg_overrides = dict(init=str(micro_checkpoint), out=str(out), steps=1, prompts_per_step=2, group_size=2,
                         n_train=20, n_heldout=5, eval_every=0, save_every=0, threads=1, max_new_tokens=4,
                         schedule="lm+tau:1", tau_advantage="mean+pass@k", pass_k=2)
    train_grpo(GRPOConfig(**cfg_overrides), score=lambda problem, text: Verdict(float(len(text) % 2), "ok"))
    assert load_checkpoint(out).manifest.training["grpo_step"] == 1
    (out / "eval" / "comparison").mkdir(parents=True)
    (out / "eval" / "comparison" / "comparison.md").write_text("| model | x |\n![plot](frontier.png)\n")
    (out / "eval" / "ablations").mkdir(parents=True)
    (out / "eval" / "ablations" / "comparison.md").write_text("| model | x |\n")
    card = write_model_card(out, "make default-model").read_text()
    assert "[eval/ablations/comparison.md](eval/ablations/comparison.md)" in card
    assert "schedule `lm+tau:1`" in card and "head advantage `mean+pass@k` (k = 2)" in card
    assert "## Joint training vs fixed-temperature GRPO" in card
    assert "![plot](eval/comparison/frontier.png)" in card


def test_model_card_lists_each_trial_with_its_learned_point_and_targets(micro_checkpoint, tmp_path):
    out = tmp_path / "run"
    train_grpo(GRPOConfig(init=str(micro_checkpoint), out=str(out), steps=1, prompts_per_step=2, group_size=2,
                          n_train=20, n_heldout=5, eval_every=0, save_every=0, threads=1, max_new_tokens=4),
               score=lambda problem, text: Verdict(float(len(text) % 2), "ok"))
    trial = out / "eval" / "trials" / "draft-x"
    (trial / "eval").mkdir(parents=True)
    stages = [{"stage": "grpo", "steps": 240, "config": {"tau_ladder": "0.1,1.0", "ladder_weights": "positive",
                                                         "schedule": "lm+tau:1"}}]
    (trial / "introllm.json").write_text(json.dumps({"head": {"inputs": ["hidden", "draft"]},
                                                      "training": {"stages": stages}}))
    rows = [_row("learned", [4, 0]), _row("learned (deterministic)", [3, 1])]
    targets_rows = [{"target": "(a) above the fixed curve", "diff": 0.05, "ci": [0.01, 0.09], "met": True},
                    {"target": "(a) above the draft rule curve", "diff": -0.01, "ci": [-0.02, 0.0], "met": False},
                    {"target": "(c) mean tau gap", "diff": 0.3, "ci": [0.2, 0.4], "met": True}]
    (trial / "eval" / "report.json").write_text(json.dumps({"results": rows, "targets": targets_rows}))
    on_top = out / "eval" / "trials" / "head-only"  # a head-only run on top of a joint run: two GRPO stages
    (on_top / "eval").mkdir(parents=True)
    stages = [{"stage": "grpo", "steps": 240, "config": {"schedule": "lm+tau:1"}},
              {"stage": "grpo", "steps": 120, "config": {"tau_ladder": "0.1,1.0", "ladder_samples": 8,
                                                          "tau_objective": "rung-value", "schedule": "tau:1",
                                                          "rung_pass_with_draft": True}}]
    (on_top / "introllm.json").write_text(json.dumps({"head": {"inputs": ["hidden", "draft"], "tau_min": 0.1,
                                                               "tau_max": 1.0}, "training": {"stages": stages}}))
    (on_top / "eval" / "report.json").write_text(json.dumps({"results": rows, "targets": targets_rows[1:]}))
    notes = out / "eval" / "trials" / "short"
    notes.mkdir()
    (notes / "README.md").write_text("# notes\n")
    card = write_model_card(out, "make default-model").read_text()
    assert "## Trials of a draft-reading head" in card and "1 of 2 land above" in card
    row = next(line for line in card.splitlines() if line.startswith("| [head-only]"))
    assert ("inputs `hidden,draft`, tau range [0.1, 1], ladder `0.1,1.0` (8 rows a problem; head off-policy by the "
            "rungs' value, the draft counted in each rung's pass@k, LM frozen); 120 steps, the last with schedule "
            "`tau:1` on top of the bundled model's joint run" in row)
    row = next(line for line in card.splitlines() if line.startswith("| [draft-x]"))
    assert "inputs `hidden,draft`, ladder `0.1,1.0` (positive weights); 240 steps" in row
    assert ("| 0.500 / 0.500 | 0.500 / 1.000 | +0.050 [+0.010, +0.090] | -0.010 [-0.020, +0.000] | "
            "+0.300 [+0.200, +0.400] |" in row)
    assert "[eval/trials/short/README.md](eval/trials/short/README.md)" in card
