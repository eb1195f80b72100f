"""Compare trained models on one held-out split: the fixed-tau frontier, the learned point, paired tests.

What it does: reads the `eval/report.json` of several checkpoints (evaluated
by `evaluate.py` on the same held-out problems with the same seeds, so
problem i is the same problem in every report) and writes
  - comparison.md / comparison.json: one frontier table per model (a row per
    controller: avg@k and pass@k with 95% intervals), and the paper's tests
    with paired 95% intervals over problems:
      (a) the reference model's learned tau against every other model at that
          model's own best fixed decode tau, on avg@k and on pass@k; and (a')
          the training effect alone: both at their own best fixed tau;
      (b) the reference's learned tau against its own best fixed tau (within
          `TOLERANCE`), on both metrics;
      (c) whether the reference's head is hotter on choice tokens than on
          computed ones;
  - frontier.png: avg@k against pass@k, each model's fixed-tau curve with its
    learned (and entropy) point;
and copies each model's report and GRPO log under out/models/<name>/ so what
a model card cites can be committed without the weights.

What it does not do: sample (run `eval` first) or judge beyond the rules above.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from training.config import CompareConfig, config_to_dict
from training.evaluate import mean_interval
from training.frontier import DRAFT_FAMILIES, finish_frontier_plot

# Target (b) allows the learned point this much below the best fixed tau.
TOLERANCE = 0.01


@dataclass
class ModelReport:
    name: str
    checkpoint: str
    rollout: str  # the rollout temperature it was trained with
    samples: int
    rows: list[dict]
    token_classes: dict[str, dict[str, float]]

    def row(self, name: str) -> dict | None:
        return next((r for r in self.rows if r["name"] == name), None)

    @property
    def fixed(self) -> list[dict]:
        """Fixed-tau rows, coldest first."""
        rows = [r for r in self.rows if r["name"].startswith("fixed ")]
        return sorted(rows, key=lambda r: float(r["name"].split()[1]))

    def best_fixed(self, metric: str) -> dict:
        return max(self.fixed, key=lambda r: r[metric])


def parse_models(spec: str) -> list[tuple[str, str]]:
    """"joint=ckpt/a,fixed-1.0=runs/b" -> [(name, path), ...]."""
    models = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected name=checkpoint, got {item!r}")
        models.append((name, path))
    if len({n for n, _ in models}) != len(models):
        raise ValueError(f"model names must be distinct: {spec!r}")
    if not models:
        raise ValueError("no models to compare")
    return models


def load_report(name: str, checkpoint: str) -> ModelReport:
    path = Path(checkpoint) / "eval" / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `python -m training eval --checkpoint {checkpoint}` first")
    data = json.loads(path.read_text())
    rows = data["results"]
    if any("correct_per_problem" not in r for r in rows):
        raise ValueError(f"{path} has no per-problem results (written by an older `eval`): evaluate again")
    manifest = json.loads((Path(checkpoint) / "introllm.json").read_text())
    stages = manifest.get("training", {}).get("stages", [])
    grpo = next((s for s in reversed(stages) if s.get("stage") == "grpo"), {})
    rollout = grpo.get("config", {}).get("rollout_temperature", "learned" if grpo else "none")
    return ModelReport(name=name, checkpoint=str(checkpoint), rollout=rollout, samples=int(rows[0]["samples"]),
                       rows=rows, token_classes=data.get("token_classes", {}))


def _pass_per_problem(row: dict) -> list[float]:
    """Each problem's share of rounds solved; a report from before rounds has only the correct counts."""
    return row.get("pass_per_problem") or [float(x > 0) for x in row["correct_per_problem"]]


def paired_difference(a: dict, b: dict, samples: int, metric: str) -> dict:
    """Mean and 95% interval over problems of a - b on avg@k (per-problem accuracy) or pass@k (solved or not)."""
    if len(a["correct_per_problem"]) != len(b["correct_per_problem"]):
        raise ValueError("reports cover different numbers of problems; evaluate on the same split")
    if metric == "avg_at_k":
        # Correct counts over all of a row's rounds (EvalConfig.repeats): divide by its samples x rounds.
        diffs = [x / (samples * a.get("repeats", 1)) - y / (samples * b.get("repeats", 1))
                 for x, y in zip(a["correct_per_problem"], b["correct_per_problem"], strict=True)]
    else:
        diffs = [x - y for x, y in zip(_pass_per_problem(a), _pass_per_problem(b), strict=True)]
    low, high = mean_interval(diffs)
    return {"diff": sum(diffs) / len(diffs), "ci": [low, high]}


def targets(reference: ModelReport, others: list[ModelReport]) -> dict:
    """Tests (a), (b) and (c) of the module docstring, with their verdicts."""
    learned = reference.row("learned")
    if learned is None:
        raise ValueError(f"model {reference.name!r} has no 'learned' row to test")
    result: dict = {"reference": reference.name, "a": [], "a_lm": [], "b": {}, "c": {}}
    for metric in ("avg_at_k", "pass_at_k"):
        for other in others:
            # The training effect alone: both LMs at their own best fixed decode tau.
            mine, theirs = reference.best_fixed(metric), other.best_fixed(metric)
            d = paired_difference(mine, theirs, reference.samples, metric)
            result["a_lm"].append({"metric": metric, "against": other.name, "best_fixed": theirs["name"],
                                   "own_best_fixed": mine["name"], "learned": mine[metric], "fixed": theirs[metric],
                                   **d, "met": d["diff"] >= 0})
            d = paired_difference(learned, theirs, reference.samples, metric)
            result["a"].append({"metric": metric, "against": other.name, "best_fixed": theirs["name"],
                                "learned": learned[metric], "fixed": theirs[metric], **d, "met": d["diff"] >= 0})
        own = reference.best_fixed(metric)
        d = paired_difference(learned, own, reference.samples, metric)
        result["b"][metric] = {"best_fixed": own["name"], "learned": learned[metric], "fixed": own[metric], **d,
                               "met": d["diff"] >= -TOLERANCE}
    classes = reference.token_classes
    if "choice" in classes and "compute" in classes:
        choice, compute = classes["choice"]["mean_tau"], classes["compute"]["mean_tau"]
        result["c"] = {"choice_tau": choice, "compute_tau": compute, "met": choice > compute}
    return result


def _interval(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _signed(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def to_markdown(reports: list[ModelReport], result: dict, plot: str) -> str:
    k = reports[0].samples
    names = {"avg_at_k": f"avg@{k}", "pass_at_k": f"pass@{k}"}
    lines = [f"Held-out problems: {len(reports[0].rows[0]['correct_per_problem'])}, {k} samples each, the same "
             "problems and seeds for every model; 95% intervals over problems (paired for differences).", ""]
    lines += [f"| model (rollout tau in training) | decode controller | avg@{k} | 95% CI | pass@{k} | 95% CI | "
              "mean tau |", "|---|---|---|---|---|---|---|"]
    for rep in reports:
        # The draft baselines stay in each model's own report: this table is the fixed grid.
        others = [r for r in rep.rows
                  if not r["name"].startswith(("fixed ", *(f"{family} " for family in DRAFT_FAMILIES)))]
        for r in rep.fixed + others:
            lines.append(f"| {rep.name} ({rep.rollout}) | {r['name']} | {r['avg_at_k']:.3f} | "
                         f"{_interval(r['avg_at_k_ci'])} | {r['pass_at_k']:.3f} | {_interval(r['pass_at_k_ci'])} | "
                         f"{r['mean_tau']:.3f} |")
    ref = result["reference"]
    lines += ["", f"### (a) {ref} with its learned tau vs each model at that model's best fixed decode tau", "",
              "| metric | against | its best fixed tau | learned | fixed | learned - fixed [95% CI] | met |",
              "|---|---|---|---|---|---|---|"]
    for row in result["a"]:
        lines.append(f"| {names[row['metric']]} | {row['against']} | {row['best_fixed']} | {row['learned']:.3f} | "
                     f"{row['fixed']:.3f} | {_signed(row)} | {'yes' if row['met'] else 'no'} |")
    lines += ["", f"### (a') the training effect alone: {ref} at its own best fixed tau vs each model at its best",
              "",
              "| metric | against | their best fixed tau | our best fixed tau | ours | theirs "
              "| ours - theirs [95% CI] |",
              "|---|---|---|---|---|---|---|"]
    for row in result["a_lm"]:
        lines.append(f"| {names[row['metric']]} | {row['against']} | {row['best_fixed']} | {row['own_best_fixed']} | "
                     f"{row['learned']:.3f} | {row['fixed']:.3f} | {_signed(row)} |")
    lines += ["", f"### (b) {ref}: learned tau vs its own best fixed tau (met if within {TOLERANCE})", "",
              "| metric | best fixed tau | learned | fixed | learned - fixed [95% CI] | met |",
              "|---|---|---|---|---|---|"]
    for metric, row in result["b"].items():
        lines.append(f"| {names[metric]} | {row['best_fixed']} | {row['learned']:.3f} | {row['fixed']:.3f} | "
                     f"{_signed(row)} | {'yes' if row['met'] else 'no'} |")
    c = result["c"]
    if c:
        lines += ["", f"### (c) {ref}: mean tau on choice tokens {c['choice_tau']:.3f}, on computed tokens "
                  f"{c['compute_tau']:.3f}: {'met' if c['met'] else 'not met'} (hotter on choices is the paper's "
                  "pattern)"]
    if plot:
        lines += ["", f"![avg@{k} against pass@{k}: fixed-tau curves and learned points]({plot})"]
    return "\n".join(lines) + "\n"


def plot_frontier(reports: list[ModelReport], path: Path) -> str:
    """avg@k (y) against pass@k (x): a line through each model's fixed-tau points, its learned point as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = reports[0].samples
    fig, ax = plt.subplots(figsize=(8, 6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for rep, colour in zip(reports, colours * 4, strict=False):
        fixed = rep.fixed
        xs, ys = [r["pass_at_k"] for r in fixed], [r["avg_at_k"] for r in fixed]
        ax.plot(xs, ys, "-o", color=colour, markersize=4, linewidth=1.2, label=f"{rep.name}: fixed tau")
        for r in fixed:
            ax.annotate(r["name"].split()[1], (r["pass_at_k"], r["avg_at_k"]), fontsize=7, color=colour,
                        xytext=(3, 3), textcoords="offset points")
        learned = rep.row("learned")
        if learned is not None and rep.rollout == "learned":
            ax.errorbar([learned["pass_at_k"]], [learned["avg_at_k"]],
                        xerr=[[learned["pass_at_k"] - learned["pass_at_k_ci"][0]],
                              [learned["pass_at_k_ci"][1] - learned["pass_at_k"]]],
                        yerr=[[learned["avg_at_k"] - learned["avg_at_k_ci"][0]],
                              [learned["avg_at_k_ci"][1] - learned["avg_at_k"]]],
                        fmt="*", markersize=16, color=colour, ecolor=colour, elinewidth=0.8, capsize=3,
                        label=f"{rep.name}: learned tau")
        deterministic = rep.row("learned (deterministic)")
        if deterministic is not None and rep.rollout == "learned":
            ax.plot([deterministic["pass_at_k"]], [deterministic["avg_at_k"]], "D", color=colour, markersize=7,
                    label=f"{rep.name}: learned tau, deterministic")
        entropy = next((r for r in rep.rows if r["name"].startswith("entropy")), None)
        if entropy is not None:
            ax.plot([entropy["pass_at_k"]], [entropy["avg_at_k"]], "x", color=colour, markersize=9,
                    label=f"{rep.name}: entropy (EDT)")
    title = "Fixed-tau trade-off curves and learned points (up and right is better)"
    return finish_frontier_plot(fig, ax, path, k, title, dpi=120)


def run_comparison(cfg: CompareConfig) -> str:
    models = parse_models(cfg.models)
    reports = [load_report(name, path) for name, path in models]
    if len({len(r.rows[0]["correct_per_problem"]) for r in reports}) != 1 or len({r.samples for r in reports}) != 1:
        raise ValueError("every report must cover the same problems with the same number of samples")
    reference = next((r for r in reports if r.name == cfg.reference), None) if cfg.reference else reports[0]
    if reference is None:
        raise ValueError(f"reference {cfg.reference!r} is not one of {[n for n, _ in models]}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    result = targets(reference, [r for r in reports if r is not reference])
    plot = plot_frontier(reports, out / "frontier.png")
    markdown = to_markdown(reports, result, Path(plot).name)
    (out / "comparison.md").write_text(markdown)
    summary = {"config": config_to_dict(cfg), "targets": result,
               "models": [{"name": r.name, "checkpoint": r.checkpoint, "rollout": r.rollout,
                           "rows": [{k: v for k, v in row.items() if k != "correct_per_problem"} for row in r.rows]}
                          for r in reports]}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.copy_reports:
        for rep in reports:
            target = out / "models" / rep.name
            target.mkdir(parents=True, exist_ok=True)
            source = Path(rep.checkpoint)
            for name in ("eval/report.json", "eval/report.md", "grpo_log.jsonl", "introllm.json"):
                if (source / name).is_file() and (source / name).resolve() != (target / Path(name).name).resolve():
                    shutil.copy(source / name, target / Path(name).name)
    return markdown
