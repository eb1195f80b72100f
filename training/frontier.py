"""The avg@k / pass@k frontier of one model: the draft baselines, the learned point's targets, the plot.

What it does, from per-sample outcomes (P, k), or (P, R, k) for R rounds, that `evaluate.py` collected:
  - `hedges`: the greedy draft (sample 0) plus samples 1..k-1 of each fixed
    tau: problem-blind, k decodes;
  - `DraftRule`: a logistic rule on the draft's confidence statistics
    (model/draft.py), fitted on train-split problems to say "hot beats cold
    here" (`fit_draft_rule`, the draft rule), or "the draft is wrong here"
    (`fit_draft_check`, the draft check: labelled by the draft's own reward,
    so every train problem counts and no sampling is needed), and
    `draft_rule_results`: per threshold, the draft plus samples 1..k-1 of the
    cold or the hot tau per problem: hand-made versions of what a
    draft-reading head should learn, also k decodes. The check's label follows
    the evaluation's accounting (a right draft at sample 0 already secures
    pass@k); on the bundled model its curve lies on the draft rule's;
  - `targets`: (a) the learned point against each family (fixed, hedge, draft
    rule, draft check) at the family's setting nearest below it in pass@k (the highest
    pass@k not above the learned one, among the settings no other setting
    dominates; among equals, the best avg@k), on avg@k
    with a paired 95% interval; (b) the learned point against the best fixed
    avg@k and the best fixed pass@k, within `TOLERANCE`; (c) the learned mean
    tau on problems only the hot tau solves minus that on problems the cold
    tau solves every time;
  - `plot_frontier`: avg@k against pass@k for all of it.

What it does not do: sample (it reuses the evaluation's samples: sample s
draws the same noise under every controller) or train anything but the
eight-weight logistic rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from model import DRAFT_STATISTICS

# The families of baselines built on the greedy draft, by the names of their rows ("<family> <setting>").
DRAFT_FAMILIES = ("hedge", "draft rule", "draft check")

# Target (b) allows the learned point this much below the best fixed tau; target (c) asks this much hotter.
TOLERANCE = 0.01
MIN_TAU_GAP = 0.2
Z_95 = 1.959964


def _per_problem(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A value per problem (P,) shaped to broadcast over outcomes like `like` ((P, k) or (P, R, k))."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _as_sample_zero(draft_correct: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The draft's outcome (P,) as sample 0 of outcomes shaped like `like`: the greedy draft is the same in
    every round."""
    return _per_problem(draft_correct, like).expand_as(like[..., :1])


def hedges(draft_correct: torch.Tensor, fixed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """"hedge <tau>" -> outcomes (P, [R,] k): the draft's outcome (P,) as sample 0, then samples 1..k-1 of
    each fixed result ("fixed <tau>" -> (P, [R,] k))."""
    return {name.replace("fixed", "hedge", 1): torch.cat([_as_sample_zero(draft_correct, c), c[..., 1:]], dim=-1)
            for name, c in fixed.items()}


@dataclass
class DraftRule:
    """P(label | draft statistics) = sigmoid(w . (x - mean) / std + b) on `DRAFT_STATISTICS`; the label is
    "hot beats cold" (the draft rule) or "draft fails" (the draft check), either one a reason to sample hot."""

    mean: list[float]
    std: list[float]
    weights: list[float]
    bias: float
    cold: float
    hot: float
    train_problems: int
    train_auc: float
    label: str = "hot beats cold"

    def prob_hot(self, statistics: torch.Tensor) -> torch.Tensor:
        """(P,) probabilities for draft statistics (P, len(DRAFT_STATISTICS))."""
        x = (statistics.float() - torch.tensor(self.mean)) / torch.tensor(self.std)
        return torch.sigmoid(x @ torch.tensor(self.weights) + self.bias)

    def to_dict(self) -> dict:
        return {"statistics": list(DRAFT_STATISTICS), "mean": self.mean, "std": self.std, "weights": self.weights,
                "bias": self.bias, "cold": self.cold, "hot": self.hot, "train_problems": self.train_problems,
                "train_auc": self.train_auc, "label": self.label}


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos.unsqueeze(1) - neg.unsqueeze(0)
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def fit_draft_rule(statistics: torch.Tensor, cold_correct: torch.Tensor, hot_correct: torch.Tensor,
                   cold: float, hot: float, l2: float = 1e-2) -> DraftRule:
    """Fit the rule on train problems: statistics (P, S); cold/hot outcomes (P, m). Problems where the two
    temperatures tie carry no label and are left out; label 1 where hot solved more samples."""
    cold_acc, hot_acc = cold_correct.float().mean(dim=1), hot_correct.float().mean(dim=1)
    keep = cold_acc != hot_acc
    x, y = statistics[keep].float(), (hot_acc[keep] > cold_acc[keep]).float()
    if len(y) < 2 or y.min() == y.max():
        raise ValueError(f"cannot fit the draft rule: {len(y)} train problems where cold and hot differ, "
                         "all with the same winner (use more draft_rule_problems)")
    return _fit_logistic(x, y, l2, cold=cold, hot=hot, label="hot beats cold")


def fit_draft_check(statistics: torch.Tensor, draft_correct: torch.Tensor, cold: float, hot: float,
                    l2: float = 1e-2) -> DraftRule:
    """Fit the draft check on train problems: statistics (P, S), the draft's outcome (P,); label 1 where the
    draft fails (sample hot there)."""
    y = 1.0 - draft_correct.float()
    if len(y) < 2 or y.min() == y.max():
        raise ValueError(f"cannot fit the draft check: {len(y)} train drafts, all "
                         f"{'wrong' if len(y) and y.min() > 0 else 'right'}")
    return _fit_logistic(statistics.float(), y, l2, cold=cold, hot=hot, label="draft fails")


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, **rule) -> DraftRule:
    """L2-penalised logistic regression of labels y (N,) on standardised x (N, S), by LBFGS."""
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return DraftRule(mean=mean.tolist(), std=std.tolist(), weights=w.tolist(), bias=float(b),
                     train_problems=len(y), train_auc=auc(z @ w + b, y), **rule)


def draft_rule_results(rule: DraftRule, statistics: torch.Tensor, draft_correct: torch.Tensor,
                       cold_correct: torch.Tensor, hot_correct: torch.Tensor,
                       thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                       family: str = "draft rule") -> dict[str, torch.Tensor]:
    """"<family> p><t>" -> outcomes (P, [R,] k): the draft, then samples 1..k-1 of the hot tau where the
    rule's probability exceeds t, else of the cold tau (outcomes (P, [R,] k) each)."""
    p_hot = rule.prob_hot(statistics)
    out = {}
    for t in thresholds:
        hot = _per_problem(p_hot > t, cold_correct)
        rest = torch.where(hot, hot_correct[..., 1:], cold_correct[..., 1:])
        out[f"{family} p>{t:g}"] = torch.cat([_as_sample_zero(draft_correct, rest), rest], dim=-1)
    return out


def _paired(a: list[float], b: list[float]) -> tuple[float, tuple[float, float]]:
    diff = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diff)
    mean = sum(diff) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / max(n - 1, 1))
    half = Z_95 * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def dominated(r, family: list) -> bool:
    """Whether another setting of the family has a higher avg@k than `r` at no lower pass@k."""
    return any(q.avg_at_k > r.avg_at_k and q.pass_at_k >= r.pass_at_k for q in family)


def nearest_below(learned, family: list):
    """The family's setting with the highest pass@k not above the learned one (among equals the best avg@k),
    of the settings on the family's curve: a dominated one (the hot end past the best pass@k, where both avg@k
    and pass@k fall, e.g. fixed 1.4 below fixed 0.6) is not the curve; None when every setting's pass@k is above
    the learned one."""
    below = [r for r in family if r.pass_at_k <= learned.pass_at_k + 1e-12 and not dominated(r, family)]
    return max(below, key=lambda r: (r.pass_at_k, r.avg_at_k)) if below else None


def targets(learned, families: dict[str, list], fixed: list, outcomes: dict[str, dict], cold_name: str,
            hot_name: str) -> list[dict]:
    """The issue's targets for the learned result, each with its interval and verdict (see the module docstring)."""
    rows: list[dict] = []
    for family, members in families.items():
        match = nearest_below(learned, members) if members else None
        if match is None:
            rows.append({"target": f"(a) above the {family} curve", "against": "-", "met": False,
                         "note": f"learned pass@k is below every {family} setting on its curve"})
            continue
        diff, ci = _paired(learned.per_problem_accuracy, match.per_problem_accuracy)
        rows.append({"target": f"(a) above the {family} curve", "against": match.name,
                     "learned": [learned.avg_at_k, learned.pass_at_k], "other": [match.avg_at_k, match.pass_at_k],
                     "metric": "avg@k", "diff": diff, "ci": list(ci), "met": ci[0] > 0})
    for metric in ("avg_at_k", "pass_at_k"):
        best = max(fixed, key=lambda r: getattr(r, metric))
        if metric == "avg_at_k":
            diff, ci = _paired(learned.per_problem_accuracy, best.per_problem_accuracy)
        else:
            diff, ci = _paired(learned.per_problem_pass, best.per_problem_pass)
        rows.append({"target": f"(b) {metric.replace('_at_k', '@k')} within {TOLERANCE} of the best fixed",
                     "against": best.name, "metric": metric.replace("_at_k", "@k"),
                     "learned": [learned.avg_at_k, learned.pass_at_k], "other": [best.avg_at_k, best.pass_at_k],
                     "diff": diff, "ci": list(ci), "met": diff >= -TOLERANCE})
    hot_group, cold_group = f"only {hot_name} solves", f"{cold_name} solves all"
    taus_hot = [t for t in outcomes.get(hot_group, {}).get("taus", []) if not math.isnan(t)]
    taus_cold = [t for t in outcomes.get(cold_group, {}).get("taus", []) if not math.isnan(t)]
    if taus_hot and taus_cold:
        gap = sum(taus_hot) / len(taus_hot) - sum(taus_cold) / len(taus_cold)

        def var(v):
            m = sum(v) / len(v)
            return sum((x - m) ** 2 for x in v) / max(len(v) - 1, 1) / len(v)

        half = Z_95 * math.sqrt(var(taus_hot) + var(taus_cold))
        rows.append({"target": f"(c) mean tau on '{hot_group}' minus on '{cold_group}' >= {MIN_TAU_GAP}",
                     "against": cold_group, "metric": "mean tau", "diff": gap, "ci": [gap - half, gap + half],
                     "met": gap >= MIN_TAU_GAP})
    return rows


def _pair(values: list[float] | None) -> str:
    return f"{values[0]:.3f}, {values[1]:.3f}" if values else "-"


def targets_markdown(rows: list[dict], k: int) -> list[str]:
    lines = ["| target | against | learned (avg, pass) | other (avg, pass) | difference [95% CI] | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "diff" not in r:
            lines.append(f"| {r['target']} | - | - | - | {r['note']} | no |")
            continue
        lines.append(f"| {r['target']} | {r['against']} | {_pair(r.get('learned'))} | {_pair(r.get('other'))} | "
                     f"{r['metric'].replace('@k', f'@{k}')} {r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] | "
                     f"{'yes' if r['met'] else 'no'} |")
    return lines


def plot_frontier(results: list, path: Path, k: int) -> str:
    """avg@k against pass@k: fixed, hedge and draft-rule curves, the other controllers as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    styles = {"fixed ": ("tab:blue", "o", "fixed tau"), "hedge ": ("tab:gray", "s", "hedge: draft + fixed tau"),
              "draft rule ": ("tab:green", "^", "draft rule: draft + cold/hot by a logistic rule"),
              "draft check ": ("tab:olive", "v", "draft check: draft + hot where the draft looks wrong")}
    for prefix, (colour, marker, label) in styles.items():
        # Each family in the order of its setting (tau or threshold), so the line is its trade-off curve.
        family = sorted((r for r in results if r.name.startswith(prefix)),
                        key=lambda r: float(r.name.rsplit(maxsplit=1)[-1].removeprefix("p>")))
        if not family:
            continue
        ax.plot([r.pass_at_k for r in family], [r.avg_at_k for r in family], marker=marker, color=colour,
                label=label, linewidth=1, markersize=4)
        if prefix == "fixed ":
            for r in family:
                ax.annotate(r.name.split()[1], (r.pass_at_k, r.avg_at_k), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    others = [r for r in results if not any(r.name.startswith(p) for p in styles)]
    for r, colour in zip(others, ("tab:red", "tab:purple", "tab:orange", "black"), strict=False):
        ax.scatter([r.pass_at_k], [r.avg_at_k], color=colour, marker="*" if "learned" in r.name else "D", s=120,
                   label=r.name, zorder=3)
    return finish_frontier_plot(fig, ax, path, k, "Held-out frontier: higher and further right is better", dpi=110)


def finish_frontier_plot(fig, ax, path: Path, k: int, title: str, dpi: int) -> str:
    """Axes labels (pass@k across, avg@k up), grid and legend; save to `path` and close."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(f"pass@{k} (held-out)")
    ax.set_ylabel(f"avg@{k} (held-out)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return str(path)
