"""Held-out evaluation: learned temperature vs fixed and heuristic temperatures.

What it does: on the checkpoint's held-out problems (of the task it records,
training/task_record.py; flags that contradict it need `--task-override
true`; prompts rendered with the checkpoint's recorded prompt format), samples k
completions per problem for each temperature controller (fixed tau values,
the entropy heuristic EDT, the learned head) through the same decode path and
the same per-row seeds, and reports
  - avg@k (mean accuracy over the k samples) and pass@k (any of k correct),
    each with a 95% interval over problems (normal for avg@k, Wilson for
    pass@k), and the learned policy's paired difference to the best fixed tau;
  - the interpretability analysis: the learned policy's mean tau and gate rate
    by token class (Countdown: choice / compute / answer / format / eos; a task
    without classes: text / eos);
  - a PNG of tau along a few sampled solutions.

With a greedy draft (always for a head that reads one, and whenever the
draft baselines are on), each problem's greedy draft is decoded once as its
sample 0. A draft-reading head's "learned" result is that draft plus k - 1
samples of the head (samples 1..k-1): k decodes, like every other row. The
draft gives problem-blind and hand-made baselines at the same cost, built
from the same samples (sample s draws the same noise under every controller):
  - hedge <tau>: the draft plus samples 1..k-1 of fixed tau, for each tau of
    the grid;
  - draft rule p><t>: a logistic rule on the draft's statistics, fitted on
    train-split problems (label: hot beat cold there), choosing per problem the
    cold or the hot tau of `draft_rule_taus` for samples 1..k-1, one row per
    probability threshold t;
  - draft check p><t>: the same choice by a logistic rule fitted on the same
    train problems' drafts alone (label: the draft is wrong), hot where
    P(wrong) > t;
and the targets: the learned point against each family at the nearest
setting at or below its pass@k ("above the curve"), against the best fixed
tau at both ends, and its mean tau on problems only hot sampling solves
against problems cold sampling solves every time. A PNG of the frontier (avg@k
against pass@k) shows all of it.
It writes report.json and report.md, and can record the table in the
checkpoint's manifest.

What it does not do: train, or compare across different checkpoints.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from model import (
    DRAFT_STATISTICS,
    FixedTemperature,
    TemperatureController,
    TemperatureHead,
    load_checkpoint,
    read_manifest,
    write_manifest,
)
from training.common import set_threads
from training.config import EvalConfig, config_to_dict
from training.frontier import (
    DRAFT_FAMILIES,
    DraftRule,
    draft_rule_results,
    fit_draft_check,
    fit_draft_rule,
    hedges,
    plot_frontier,
    targets,
    targets_markdown,
)
from training.rollout import RolloutBatch, controller_from_spec, draft_completions, sample_completions
from training.task_record import check_heldout, resolve_task
from training.tasks import Task

Z_95 = 1.959964
# ControllerResult fields kept out of the JSON rows (report.json has the counts per problem instead).
PER_PROBLEM_FIELDS = ("per_problem_accuracy", "per_problem_pass", "correct", "per_problem_tau")


@dataclass
class ControllerResult:
    name: str
    problems: int
    samples: int
    avg_at_k: float
    avg_at_k_ci: tuple[float, float]
    pass_at_k: float
    pass_at_k_ci: tuple[float, float]
    mean_tau: float
    gate_rate: float
    # Independent rounds of k samples per problem (EvalConfig.repeats); avg@k and pass@k are each problem's
    # mean over its rounds, then the mean over problems.
    repeats: int = 1
    per_problem_accuracy: list[float] = field(repr=False, default_factory=list)
    # Per problem: the share of its rounds in which any of the k samples was correct (0 or 1 for one round).
    per_problem_pass: list[float] = field(repr=False, default_factory=list)
    # (P, R, k) 0/1: sample s of round r of problem i correct; and mean tau per problem (NaN where nothing
    # was sampled by tau).
    correct: list[list[list[int]]] = field(repr=False, default_factory=list)
    per_problem_tau: list[float] = field(repr=False, default_factory=list)


@dataclass
class EvalReport:
    results: list[ControllerResult]
    token_classes: dict[str, dict[str, float]]
    learned_vs_best_fixed: dict[str, float]
    plot: str
    markdown: str
    problem_outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    targets: list[dict] = field(default_factory=list)
    draft_rule: dict = field(default_factory=dict)
    draft_check: dict = field(default_factory=dict)
    frontier_plot: str = ""
    # The same targets for the head's noise-free choice (the server's `deterministic_temperature`).
    deterministic_targets: list[dict] = field(default_factory=list)

    def to_dict(self, per_problem: bool = False) -> dict:
        """The report as JSON; `per_problem` adds each controller's correct count per problem, which
        paired comparisons across models need (report.json has it, the manifest does not)."""
        rows = []
        for r in self.results:
            # NaN (not tracked: the draft baselines' mean tau) is null, so report.json stays strict JSON.
            row = {k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in asdict(r).items() if k not in PER_PROBLEM_FIELDS}
            if per_problem:  # correct samples over all rounds, and the share of rounds solved
                row["correct_per_problem"] = [round(a * r.samples * r.repeats) for a in r.per_problem_accuracy]
                row["pass_per_problem"] = r.per_problem_pass
            rows.append(row)
        return {"results": rows, "token_classes": self.token_classes, "problem_outcomes": self.problem_outcomes,
                "learned_vs_best_fixed": self.learned_vs_best_fixed, "plot": self.plot, "targets": self.targets,
                "draft_rule": self.draft_rule, "draft_check": self.draft_check, "frontier_plot": self.frontier_plot,
                "deterministic_targets": self.deterministic_targets}


def mean_interval(values: list[float]) -> tuple[float, float]:
    """95% normal interval for the mean of per-problem values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return (mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z_95 * sd / math.sqrt(n)
    return (mean - half, mean + half)


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + Z_95**2 / n
    centre = (p + Z_95**2 / (2 * n)) / denom
    half = Z_95 * math.sqrt(p * (1 - p) / n + Z_95**2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def build_controllers(spec: str, head: TemperatureHead) -> list[tuple[str, TemperatureController]]:
    """"fixed:0.3,entropy,learned" -> named controllers (see `controller_from_spec`)."""
    return [controller_from_spec(item, head) for item in spec.split(",") if item.strip()]


def summarise(name: str, batches: list[RolloutBatch], n_problems: int, samples: int) -> ControllerResult:
    """avg@k, pass@k and the per-sample outcomes of `batches` (one round: sample indices 0..samples-1). Mean
    tau and gate rate count the rows a temperature controller sampled, not a greedy draft among them."""
    correct = torch.zeros(n_problems, samples, dtype=torch.long)
    tau_sum = gate_sum = tokens = 0.0
    problem_tau = torch.zeros(n_problems)
    problem_tokens = torch.zeros(n_problems)
    for b in batches:
        for row, (i, s) in enumerate(zip(b.problem_index, b.sample_index, strict=True)):
            correct[i, s] = int(b.rewards[row] >= 1.0)
        if b.behaviour == "draft":
            continue
        mask = b.generation.mask
        tau_sum += float(b.generation.taus[mask].sum())
        gate_sum += float(b.generation.gates[mask].sum())
        tokens += float(mask.sum())
        problem_tau.index_add_(0, torch.tensor(b.problem_index), (b.generation.taus * mask).sum(dim=1).float().cpu())
        problem_tokens.index_add_(0, torch.tensor(b.problem_index), mask.sum(dim=1).float().cpu())
    return result_from_outcomes(name, correct, mean_tau=tau_sum / max(tokens, 1.0),
                                gate_rate=gate_sum / max(tokens, 1.0),
                                per_problem_tau=(problem_tau / problem_tokens).tolist())


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def pool_rounds(rounds: list[ControllerResult]) -> ControllerResult:
    """One result from independent rounds of the same controller on the same problems: the outcomes stacked
    (P, R, k), each problem's tau the mean of its rounds', mean tau and gate rate the rounds' mean."""
    if len(rounds) == 1:
        return rounds[0]
    correct = torch.cat([torch.tensor(r.correct) for r in rounds], dim=1)
    per_problem_tau = [_nanmean(list(taus)) for taus in zip(*(r.per_problem_tau for r in rounds), strict=True)]
    return result_from_outcomes(rounds[0].name, correct, mean_tau=_nanmean([r.mean_tau for r in rounds]),
                                gate_rate=_nanmean([r.gate_rate for r in rounds]), per_problem_tau=per_problem_tau)


def result_from_outcomes(name: str, correct: torch.Tensor, mean_tau: float = float("nan"),
                         gate_rate: float = float("nan"), per_problem_tau: list[float] | None = None
                         ) -> ControllerResult:
    """A result from per-sample outcomes in {0, 1}: (P, k) for one round or (P, R, k) for R rounds. With
    one round pass@k's interval is Wilson's; with several, a problem's pass is the share of its rounds
    solved and the interval is the normal one over problems, like avg@k's."""
    if correct.dim() == 2:
        correct = correct.unsqueeze(1)
    n_problems, repeats, samples = correct.shape
    per_problem = correct.float().mean(dim=(1, 2)).tolist()
    per_problem_pass = (correct.sum(dim=2) > 0).float().mean(dim=1).tolist()
    pass_at_k = sum(per_problem_pass) / n_problems
    pass_ci = (wilson_interval(round(pass_at_k * n_problems), n_problems) if repeats == 1
               else mean_interval(per_problem_pass))
    return ControllerResult(
        name=name, problems=n_problems, samples=samples,
        avg_at_k=sum(per_problem) / n_problems, avg_at_k_ci=mean_interval(per_problem),
        pass_at_k=pass_at_k, pass_at_k_ci=pass_ci,
        mean_tau=mean_tau, gate_rate=gate_rate, repeats=repeats, per_problem_accuracy=per_problem,
        per_problem_pass=per_problem_pass, correct=correct.tolist(), per_problem_tau=per_problem_tau or [],
    )


def token_labels(tokenizer, token_ids: list[int], task: Task) -> tuple[list[str], list[str]]:
    """Per generated token: its text and its class. A token's class is that of
    its first character in the completion text ("text" for a task without
    classes); special tokens get "eos" or "special" (their text is not part of
    the completion)."""
    special = set(tokenizer.all_special_ids)
    pieces = [tokenizer.decode([i]) for i in token_ids]
    text = "".join(p for i, p in zip(token_ids, pieces, strict=True) if i not in special)
    char_labels = task.token_classes(text) or ["text"] * len(text)
    labels, offset = [], 0
    for i, piece in zip(token_ids, pieces, strict=True):
        if i in special:
            labels.append("eos" if i == tokenizer.eos_token_id else "special")
            continue
        labels.append(char_labels[offset] if offset < len(char_labels) else "format")
        offset += len(piece)
    return pieces, labels


def problem_groups(results: list[ControllerResult]) -> tuple[str, str, dict[str, list[int]]]:
    """Problems grouped by how the coldest fixed tau and the fixed tau with the best pass@k fare on them:
    "<cold> solves all" (every sample at the coldest tau correct), "only <hot> solves" (none at the
    coldest, some at the hot one), "neither solves", and "mixed"; returns (cold name, hot name, groups)."""
    fixed = sorted((r for r in results if r.name.startswith("fixed ")), key=lambda r: float(r.name.split()[1]))
    if len(fixed) < 2:
        return "", "", {}
    cold, hot = fixed[0], max(fixed[1:], key=lambda r: r.pass_at_k)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (c, h) in enumerate(zip(cold.per_problem_accuracy, hot.per_problem_accuracy, strict=True)):
        name = (f"{cold.name} solves all" if c == 1.0 else f"only {hot.name} solves" if c == 0 and h > 0
                else "neither solves" if c == 0 else "mixed")
        groups[name].append(i)
    return cold.name, hot.name, dict(sorted(groups.items()))


def tau_by_problem_outcome(results: list[ControllerResult], learned: ControllerResult | None) -> dict:
    """The learned policy's mean tau (a mean over problems of each problem's mean tau over its sampled
    tokens, a greedy draft left out) and accuracy on the groups of `problem_groups`. A head that reads the
    problem should be cold on the first group and hot on the second; one that ignores it shows the same
    tau everywhere."""
    cold, hot, groups = problem_groups(results)
    if learned is None or not groups:
        return {}
    by_name = {r.name: r for r in results}

    def mean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / max(len(values), 1)

    return {name: {"problems": len(ids),
                   "mean_tau": mean([learned.per_problem_tau[i] for i in ids]),
                   "learned_avg": mean([learned.per_problem_accuracy[i] for i in ids]),
                   "cold_avg": mean([by_name[cold].per_problem_accuracy[i] for i in ids]),
                   "hot_avg": mean([by_name[hot].per_problem_accuracy[i] for i in ids])}
            for name, ids in groups.items()}


def _rows(batches: list[RolloutBatch]):
    """(batch, row, generated ids) of every sampled row; a greedy draft (no temperature policy) is left out."""
    for b in batches:
        if b.behaviour == "draft":
            continue
        for row in range(len(b.texts)):
            yield b, row, b.generation.tokens[row, : int(b.generation.lengths[row])].tolist()


def tau_by_token_class(batches: list[RolloutBatch], tokenizer, task: Task) -> dict[str, dict[str, float]]:
    """Mean tau and gate rate of the learned policy by the class of the token it sampled (draft rows left out)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # tau, gate, count
    for b, row, ids in _rows(batches):
        _, labels = token_labels(tokenizer, ids, task)
        for t, label in enumerate(labels):
            acc = sums[label]
            acc[0] += float(b.generation.taus[row, t])
            acc[1] += float(b.generation.gates[row, t])
            acc[2] += 1
    return {label: {"mean_tau": s[0] / s[2], "gate_rate": s[1] / s[2], "tokens": int(s[2])}
            for label, s in sorted(sums.items())}


def plot_tau_along_solutions(batches: list[RolloutBatch], tokenizer, problems, count: int, path: Path,
                             task: Task, groups: dict[str, list[int]] | None = None) -> str:
    """One panel per sampled completion: tau at each generated token, coloured by class.

    With `groups` (name -> problem indices, `problem_groups`), the panels alternate between the first
    two groups given (the problems only hot sampling solves, and those cold sampling solves every
    time), each titled with its group: a head that reads the problem shows it here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first: dict[int, tuple] = {}
    for b, r, ids in _rows(batches):  # each problem's first sampled completion
        if b.problem_index[r] not in first:
            first[b.problem_index[r]] = (b, r, ids)
    group_of: dict[int, str] = {}
    if groups:
        picks = [[i for i in ids if i in first] for ids in list(groups.values())[:2]]
        order = [i for pair in zip(*picks, strict=False) for i in pair]  # alternate between the two groups
        for name, ids in list(groups.items())[:2]:
            group_of.update((i, name) for i in ids)
    else:
        order = sorted(first)
    rows = [first[i] for i in order[:count]]
    colours = {"choice": "tab:orange", "compute": "tab:blue", "answer": "tab:green", "format": "tab:gray",
               "text": "tab:purple", "eos": "tab:red", "special": "black"}
    # One tau scale for every panel, so hot and cold samples compare at a glance.
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.2 * len(rows)), squeeze=False, sharey=True)
    for ax, (b, r, ids) in zip(axes[:, 0], rows, strict=True):
        pieces, labels = token_labels(tokenizer, ids, task)
        n = len(ids)
        taus = b.generation.taus[r, :n].tolist()
        ax.plot(range(n), taus, color="black", linewidth=0.8)
        ax.scatter(range(n), taus, c=[colours[lab] for lab in labels], s=28, zorder=3)
        ax.set_xticks(range(n))
        ax.set_xticklabels([repr(p)[1:-1] for p in pieces], fontsize=7, family="monospace")
        verdict = "correct" if float(b.rewards[r]) >= 1 else b.reasons[r]
        prompt = task.prompt(problems[b.problem_index[r]]).strip()
        prompt = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        group = group_of.get(b.problem_index[r])
        ax.set_title(f"prompt {prompt!r}  ({verdict})" + (f"  [{group}]" if group else ""), fontsize=9)
        ax.set_ylabel("tau")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in colours.items()]
    fig.legend(handles=handles, loc="upper right", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def to_markdown(report: EvalReport, n: int, k: int, repeats: int = 1) -> str:
    pooled = (f", in {repeats} independent rounds (a problem's avg@{k} and pass@{k} are the means over its "
              "rounds)" if repeats > 1 else "")
    lines = [f"Held-out problems: {n}, samples per problem: {k}{pooled}; 95% intervals over problems.", "",
             f"| controller | avg@{k} | 95% CI | pass@{k} | 95% CI | mean tau | gate rate |",
             "|---|---|---|---|---|---|---|"]
    def row(r: ControllerResult) -> str:
        tau = "-" if math.isnan(r.mean_tau) else f"{r.mean_tau:.3f}"
        gate = "-" if math.isnan(r.gate_rate) else f"{r.gate_rate:.3f}"
        return (f"| {r.name} | {r.avg_at_k:.3f} | [{r.avg_at_k_ci[0]:.3f}, {r.avg_at_k_ci[1]:.3f}] | "
                f"{r.pass_at_k:.3f} | [{r.pass_at_k_ci[0]:.3f}, {r.pass_at_k_ci[1]:.3f}] | {tau} | {gate} |")

    drafted = tuple(f"{family} " for family in DRAFT_FAMILIES)
    lines += [row(r) for r in report.results if not r.name.startswith(drafted)]
    baselines = [r for r in report.results if r.name.startswith(drafted)]
    if baselines:
        lines += ["", f"Baselines with the greedy draft as sample 0 (samples 1..{k - 1} reused from the fixed rows "
                  "above: the same seeds; mean tau and gate rate not tracked):", "",
                  f"| baseline | avg@{k} | 95% CI | pass@{k} | 95% CI | mean tau | gate rate |",
                  "|---|---|---|---|---|---|---|"] + [row(r) for r in baselines]
    rule = report.draft_rule
    if rule.get("not_fitted"):
        lines += ["", f"Draft rule: not fitted ({rule['not_fitted']})."]
    elif rule:
        weights = ", ".join(f"{name} {w:+.2f}" for name, w in zip(rule["statistics"], rule["weights"], strict=True))
        lines += ["", f"Draft rule: P(hot {rule['hot']:g} beats cold {rule['cold']:g}) = sigmoid(w . standardised "
                  f"statistics + {rule['bias']:+.2f}), fitted on {rule['train_problems']} train-split problems "
                  f"where the two differ (train AUC {rule['train_auc']:.2f}); w: {weights}."]
    check = report.draft_check
    if check:
        weights = ", ".join(f"{name} {w:+.2f}" for name, w in zip(check["statistics"], check["weights"], strict=True))
        lines += ["", f"Draft check: P(the draft is wrong) = sigmoid(w . standardised statistics "
                  f"{check['bias']:+.2f}), fitted on the drafts of {check['train_problems']} train-split problems "
                  f"(train AUC {check['train_auc']:.2f}); hot {check['hot']:g} where it exceeds p, else cold "
                  f"{check['cold']:g}; w: {weights}."]
    if report.targets:
        lines += ["", "Targets (paired 95% intervals over problems; (a) compares with each family's setting of "
                  f"the highest pass@{k} not above the learned one):", ""] + targets_markdown(report.targets, k)
    if report.deterministic_targets:
        lines += ["", "The same targets for the head's noise-free choice, `learned (deterministic)` (update where "
                  "P(update) > 0.5, to the Beta mean; the server's `deterministic_temperature`):", ""]
        lines += targets_markdown(report.deterministic_targets, k)
    if report.frontier_plot:
        lines += ["", f"![avg@{k} against pass@{k}](frontier.png)"]
    d = report.learned_vs_best_fixed
    if d:
        lines += ["", f"Learned minus best fixed tau ({d['best_fixed_avg']}) on avg@{k}, paired over problems: "
                  f"{d['avg_diff']:+.3f} [{d['avg_diff_ci'][0]:+.3f}, {d['avg_diff_ci'][1]:+.3f}]; "
                  f"minus best fixed ({d['best_fixed_pass']}) on pass@{k}: {d['pass_diff']:+.3f} "
                  f"[{d['pass_diff_ci'][0]:+.3f}, {d['pass_diff_ci'][1]:+.3f}]."]
    lines += ["", "Learned policy by token class:", "",
              "| class | tokens | mean tau | gate rate |", "|---|---|---|---|"]
    for label, s in report.token_classes.items():
        lines.append(f"| {label} | {s['tokens']} | {s['mean_tau']:.3f} | {s['gate_rate']:.3f} |")
    if report.problem_outcomes:
        lines += ["", "Learned policy by problem (grouped by the coldest fixed tau and the fixed tau with the best "
                  f"pass@{k}):", "", f"| problems | count | learned mean tau | learned avg@{k} | coldest avg@{k} | "
                  f"hot avg@{k} |", "|---|---|---|---|---|---|"]
        for name, g in report.problem_outcomes.items():
            lines.append(f"| {name} | {g['problems']} | {g['mean_tau']:.3f} | {g['learned_avg']:.3f} | "
                         f"{g['cold_avg']:.3f} | {g['hot_avg']:.3f} |")
    return "\n".join(lines) + "\n"


def paired_comparison(results: list[ControllerResult]) -> dict:
    learned = next((r for r in results if r.name == "learned"), None)
    fixed = [r for r in results if r.name.startswith("fixed")]
    if learned is None or not fixed:
        return {}
    best_avg = max(fixed, key=lambda r: r.avg_at_k)
    best_pass = max(fixed, key=lambda r: r.pass_at_k)
    avg_diff = [a - b for a, b in zip(learned.per_problem_accuracy, best_avg.per_problem_accuracy, strict=True)]
    pass_diff = [a - b for a, b in zip(learned.per_problem_pass, best_pass.per_problem_pass, strict=True)]
    return {
        "best_fixed_avg": best_avg.name, "avg_diff": sum(avg_diff) / len(avg_diff),
        "avg_diff_ci": mean_interval(avg_diff),
        "best_fixed_pass": best_pass.name, "pass_diff": sum(pass_diff) / len(pass_diff),
        "pass_diff_ci": mean_interval(pass_diff),
    }


def _fixed_tau(name: str) -> float:
    return float(name.split()[1])


def fit_rule_on_train(cfg: EvalConfig, ckpt, task: Task, cold: float, hot: float) -> tuple[DraftRule, DraftRule]:
    """The draft rule and the draft check, fitted on the first `draft_rule_problems` train-split problems:
    each one's draft statistics and whether the draft solves it, and `draft_rule_samples` samples at the
    cold and at the hot tau (the rule's labels)."""
    train, _ = task.split()
    problems = train[: cfg.draft_rule_problems]
    args = dict(task=task, max_new_tokens=task.max_new_tokens, batch_rows=cfg.batch_rows,
                prompt_format=ckpt.manifest.prompt_format)
    drafted, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **args)
    draft_correct = torch.tensor(summarise("draft", drafted, len(problems), 1).correct)[:, 0, 0]
    statistics = summaries[:, : len(DRAFT_STATISTICS)]
    outcomes = []
    for tau in (cold, hot):
        batches = sample_completions(ckpt.model, ckpt.tokenizer, FixedTemperature(tau), problems,
                                     samples=cfg.draft_rule_samples, seed=cfg.seed + 1, **args)
        fit = summarise(f"fixed {tau}", batches, len(problems), cfg.draft_rule_samples)
        outcomes.append(torch.tensor(fit.correct)[:, 0])  # (P, m): one round
    return (fit_draft_rule(statistics, outcomes[0], outcomes[1], cold, hot),
            fit_draft_check(statistics, draft_correct, cold, hot))


def run_evaluation(cfg: EvalConfig) -> EvalReport:
    if cfg.repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {cfg.repeats}")
    set_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    training = read_manifest(cfg.checkpoint).training
    choice = resolve_task(cfg, training, cfg.checkpoint)  # before the weights load: a contradiction fails fast
    if "n_heldout" not in training:  # a checkpoint without a split record: enough held-out problems
        choice = replace(choice, n_heldout=max(cfg.problems, choice.n_heldout))
    # Train problems only for fitting the draft rule (Countdown's held-out split does not depend on their number).
    task = choice.build(n_train=cfg.draft_rule_problems if cfg.draft_baselines else 0)
    _, heldout = task.split()
    check_heldout(cfg, training, task, heldout, cfg.checkpoint)
    ckpt = load_checkpoint(cfg.checkpoint, device=device)
    problems = heldout[: cfg.problems]
    out = Path(cfg.out or Path(cfg.checkpoint) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    max_new = task.max_new_tokens
    args = dict(task=task, max_new_tokens=max_new, seed=cfg.seed, batch_rows=cfg.batch_rows,
                prompt_format=ckpt.manifest.prompt_format)
    reads_draft = ckpt.head.reads_draft
    draft_batches, drafts = [], None
    if reads_draft or cfg.draft_baselines:
        if cfg.samples < 2:
            raise ValueError("the greedy draft is one of the samples: evaluate with samples >= 2")
        draft_batches, drafts = draft_completions(ckpt.model, ckpt.tokenizer, problems, task=task,
                                                  max_new_tokens=max_new, batch_rows=cfg.batch_rows,
                                                  prompt_format=ckpt.manifest.prompt_format)
    results, learned_batches = [], None
    for name, controller in build_controllers(cfg.controllers, ckpt.head):
        rounds = []
        # Same seed for every controller: each (problem, sample) row of a round draws the same random
        # numbers, which makes the comparison paired. Round r draws from step r of the row seeds.
        for round_index in range(cfg.repeats):
            if reads_draft and name.startswith("learned"):
                # The draft is sample 0 (greedy: the same in every round); the head samples 1..k-1 reading
                # it: k decodes in all.
                batches = draft_batches + sample_completions(
                    ckpt.model, ckpt.tokenizer, controller, problems, samples=cfg.samples - 1, first_sample=1,
                    drafts=drafts, step=round_index, **args)
            else:
                batches = sample_completions(ckpt.model, ckpt.tokenizer, controller, problems,
                                             samples=cfg.samples, step=round_index, **args)
            rounds.append(summarise(name, batches, len(problems), cfg.samples))
            if name == "learned" and round_index == 0:
                learned_batches = batches  # the token-class table and the plot read the first round
        results.append(pool_rounds(rounds))
    draft_rule: dict = {}
    draft_check: dict = {}
    if cfg.draft_baselines:
        draft_correct = torch.tensor(summarise("draft", draft_batches, len(problems), cfg.samples).correct)[:, 0, 0]
        fixed = {r.name: torch.tensor(r.correct) for r in results if r.name.startswith("fixed ")}
        results += [result_from_outcomes(name, c) for name, c in hedges(draft_correct, fixed).items()]
        cold, hot = (float(t) for t in cfg.draft_rule_taus.split(","))
        by_tau = {_fixed_tau(name): c for name, c in fixed.items()}
        try:
            if cold not in by_tau or hot not in by_tau:
                raise ValueError(f"draft_rule_taus {cfg.draft_rule_taus!r} are not both fixed taus of the controllers")
            rule, check = fit_rule_on_train(cfg, ckpt, task, cold, hot)
        except ValueError as exc:  # e.g. a model that solves nothing: no problem says which tau wins
            draft_rule = {"not_fitted": str(exc)}
        else:
            draft_rule, draft_check = rule.to_dict(), check.to_dict()
            stats = drafts[:, : len(DRAFT_STATISTICS)]
            for family, fitted in (("draft rule", rule), ("draft check", check)):
                chosen = draft_rule_results(fitted, stats, draft_correct, by_tau[cold], by_tau[hot], family=family)
                results += [result_from_outcomes(name, c) for name, c in chosen.items()]
    learned = next((r for r in results if r.name == "learned"), None)
    classes = tau_by_token_class(learned_batches, ckpt.tokenizer, task) if learned_batches else {}
    plot = ""
    if learned_batches and cfg.plot_samples:
        cold_name, hot_name, groups = problem_groups(results)
        shown = {name: groups[name] for name in (f"only {hot_name} solves", f"{cold_name} solves all")
                 if name in groups}
        plot = plot_tau_along_solutions(learned_batches, ckpt.tokenizer, problems, cfg.plot_samples,
                                        out / "tau_along_solutions.png", task, shown or None)
    outcomes = tau_by_problem_outcome(results, learned)
    target_rows: list[dict] = []
    deterministic_rows: list[dict] = []
    fixed_results = [r for r in results if r.name.startswith("fixed ")]
    if learned is not None and fixed_results:
        families = {"fixed": fixed_results,
                    **{family: [r for r in results if r.name.startswith(f"{family} ")] for family in DRAFT_FAMILIES}}
        families = {k: v for k, v in families.items() if v}
        cold_name, hot_name, groups = problem_groups(results)

        def targets_of(result: ControllerResult) -> list[dict]:
            tau_groups = {name: {"taus": [result.per_problem_tau[i] for i in ids]} for name, ids in groups.items()}
            return targets(result, families, fixed_results, tau_groups, cold_name, hot_name)

        target_rows = targets_of(learned)
        deterministic = next((r for r in results if r.name == "learned (deterministic)"), None)
        if deterministic is not None:
            deterministic_rows = targets_of(deterministic)
    frontier = plot_frontier(results, out / "frontier.png", cfg.samples) if fixed_results else ""
    report = EvalReport(results=results, token_classes=classes, learned_vs_best_fixed=paired_comparison(results),
                        plot=plot, markdown="", problem_outcomes=outcomes, targets=target_rows,
                        draft_rule=draft_rule, draft_check=draft_check, frontier_plot=frontier,
                        deterministic_targets=deterministic_rows)
    report.markdown = to_markdown(report, len(problems), cfg.samples, cfg.repeats)
    # One line of JSON: the per-problem counts make an indented file needlessly long.
    full = {"config": config_to_dict(cfg), **report.to_dict(per_problem=True)}
    (out / "report.json").write_text(json.dumps(full) + "\n")
    (out / "report.md").write_text(report.markdown)
    if cfg.write_manifest:
        manifest = read_manifest(cfg.checkpoint)
        manifest.training["evaluation"] = {"config": config_to_dict(cfg), **report.to_dict()}
        write_manifest(cfg.checkpoint, manifest)
    return report
