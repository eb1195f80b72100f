"""Joint GRPO by coordinate ascent: the token policy and the temperature policy in turns.

What it does, per step:
  1. rollout: G completions for each of P training prompts, sampled with the
     learned per-token tau; per token the tau, gate, Beta draw and both
     log-probs are recorded (training/rollout.py);
  2. advantages: reward normalised within each prompt's group;
  3. update by the schedule ("lm:2,tau:1" = two LM steps, one head step;
     "lm+tau:1" = both policies on every step's rollouts): phase `lm` trains
     the LM on log softmax(logits_t / tau_t) with the head frozen; phase `tau`
     trains the head on log P(c_t) + c_t log Beta(z_t) with the LM frozen.
     Both use the clipped policy-ratio objective with token-level
     normalisation (DAPO-style, as TRL's default) and, for the LM, an optional
     KL penalty to the starting model (k3 estimator). Each phase has its own
     advantage: the group-normalised reward ("mean", standard GRPO), the
     analytic pass@k advantage of Pass@k Training (arXiv 2508.10751), which
     rewards a group for having at least one success among k, or their sum.

A head that reads a greedy draft (`--head-inputs hidden,tau_prev,draft`,
model/draft.py) gets one per prompt: sample 0 of each group is the prompt's
greedy draft (scored, logged, never trained on: no policy sampled it), and
samples 1..G-1 follow the head reading the draft's summary, exactly as
evaluation and serving count "n samples" (the draft is one of them).

The training signal for "hot" (`--tau-ladder 0.1,0.4,0.7,1.0`): in head
steps each group also gets one row per rung of a temperature ladder, each
keeping its rung for the whole completion (`rollout.LadderTemperature`). The
head's rows and the ladder's share one group advantage, so a hot rung that
solves what the head's cold rows miss gets a positive advantage. The head's
own rows keep the clipped ratio against the head that sampled them (1 at the
first update: behaviour = head); ladder rows are weighted by their advantage
alone, without a ratio (advantage-weighted regression, Peng et al. 2019):
the head's probability of a rung it would not pick is tiny (its log-density
per token is logged as `ladder_logprob`; about -5.7 at the start of the
bundled run), so an importance ratio against it would silence exactly the
rows that say "hot". By default only rows that beat their group pull
(`--ladder-weights positive`, max(A, 0)); with signed weights the failing
rows' push has no floor, and in 60-step trials it drove the gate towards 0
(the head then kept tau_0 for whole completions).

The head trained off-policy from the ladder (`--tau-objective best-rung`, issue 20's option 2(b)): once
the head's own rollouts cool, no advantage on them says "hot", and with the ladder rows in the same group the
head's rows still dominate its gradient. Here the head phase does not use its own samples' rewards at all.
Each problem's ladder rows (`--ladder-samples`, cycled over the rungs, e.g. 4 at 0.2 and 4 at 1.0) score
each rung by the head's objective computed per rung (`rung_scores`: mean reward, the unbiased pass@k
estimate, or their sum), and the head, with the LM frozen, maximises on every token of its own rows of that
problem (the states it will meet, reading that problem's draft) the log-probability of the rung's action,
update (gate 1) to z = the rung (clipped inside (0, 1), `RUNG_Z_MARGIN`), weighted by the rung's score above
the mean of the rungs' (`rung_weights`; with two rungs: the better rung, by half the gap). That is
advantage-weighted regression at the level of a problem, a contextual bandit whose arms are the rungs and
whose context is the draft: the head's mean tau on a problem moves towards the rung that wins there, whatever
it samples itself. Problems where the rungs tie
(neither solves, or both alike) weigh nothing. The LM phase is unchanged (its own rows, its advantage).

The head trained by the rungs' value (`--tau-objective rung-value`): the same rung scores, with the coldest
and hottest rungs at the head's tau_min and tau_max, but the head maximises the value of its expected tau
under a value linear between the rungs (`rung_value_update`) instead of the likelihood of the winner. A
middle rung (e.g. 0.1,0.5,1.0) lets the value bend: a problem where 0.5 beats both ends pulls the head there.
best-rung's optimum is the conditional mean of the rungs given what the head reads, so where the draft only
shifts the odds the head's tau moves little (the draft-best-rung trial: a per-problem tau gap of 0.09 for a
ranking of AUC 0.7); this objective is maximised at whichever rung wins on average for that draft, a decision
like the draft rule's.

The baseline the paper compares against is the same command with
`--rollout-temperature fixed:1.0` (or `entropy`): rollouts at that
temperature, every step an LM step, the head never touched.
It logs reward, accuracy, mean tau, gate rate (over all ranks), entropy and KL
(rank 0's share) per step (JSONL), evaluates on held-out prompts now and then,
saves checkpoints, and resumes from one: a GRPO checkpoint of the same task
records its step and the run continues from there. The task and its held-out
split are the ones recorded in the `init` checkpoint (training/task_record.py):
a task flag contradicting them stops the run unless `--task-override true`. On resume the optimiser
moments start afresh (they are not saved), and the KL reference is the
checkpoint the run (re)starts from.

What it does not do: top-k/top-p in rollouts (the log-probs would no longer
match), value functions, or sequence packing.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path

import torch
from tqdm import trange

from model import (
    LearnedTemperature,
    TemperatureController,
    TemperatureHead,
    lm_hidden_size,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from training import distributed
from training.common import JsonlLog, code_version, set_threads
from training.config import GRPOConfig, config_to_dict
from training.rollout import (
    LadderTemperature,
    RolloutBatch,
    ScoreFn,
    controller_from_spec,
    draft_completions,
    head_states,
    recompute_log_probs,
    sample_completions,
)
from training.start import (
    lm_to_save,
    prepare_lm,
    refuse_unservable_config,
    set_lm_trainable,
    trainable_lm_parameters,
    training_dtype,
)
from training.task_record import check_heldout, resolve_task

PHASES = ("lm", "tau", "lm+tau")
ADVANTAGES = ("mean", "pass@k", "mean+pass@k")
TAU_OBJECTIVES = ("grpo", "best-rung", "rung-value")
# The best-rung objective's target z is the rung's, clipped into [RUNG_Z_MARGIN, 1 - RUNG_Z_MARGIN]: a Beta (eps =
# 1) can pile up its density at a boundary without limit (log-density ~ log(1 / z) at z = the head's z_margin,
# 1e-4), so a rung at tau_min would outweigh every interior rung. In the micro test with rung 0.1 clipped at
# 1e-4 the head cooled on the problems the hot rung won as well as on the others.
RUNG_Z_MARGIN = 0.05


def parse_schedule(schedule: str) -> list[str]:
    """"lm:2,tau:1" -> ["lm", "lm", "tau"]: the phase of each step in one cycle.

    "lm+tau" is a step that updates the LM and then the head on the same rollouts."""
    phases: list[str] = []
    for part in schedule.split(","):
        name, _, count = part.strip().partition(":")
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r} in schedule {schedule!r} (phases: {', '.join(PHASES)})")
        n = int(count) if count else 1
        if n < 0:
            raise ValueError(f"negative count in schedule {schedule!r}")
        phases += [name] * n
    if not phases:
        raise ValueError(f"empty schedule {schedule!r}")
    return phases


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean_group) / (std_group + eps) for rewards (P, G); a group of equal rewards gets zeros."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def pass_at_k_advantages(correct: torch.Tensor, k: int) -> torch.Tensor:
    """Analytic pass@k group advantages (Pass@k Training, arXiv 2508.10751) for correct (P, G) in {0, 1}.

    The group's reward is pass@k: whether a random k-subset of its G samples
    holds a success. A sample's advantage is the expected pass@k of the
    k-subsets that contain it, minus the mean over all k-subsets, over the std
    of that Bernoulli:
        mean = 1 - C(n_neg, k) / C(G, k),  std = sqrt(mean (1 - mean))
        A_pos = (1 - mean) / std,  A_neg = (1 - mean - C(n_neg - 1, k - 1) / C(G - 1, k - 1)) / std
    A group whose every k-subset succeeds (or none does) gets zeros: nothing to
    learn about exploration there.
    """
    groups, size = correct.shape
    if not 1 <= k <= size:
        raise ValueError(f"pass@k needs 1 <= k <= group size, got k={k}, group size {size}")
    n_neg = (correct < 0.5).sum(dim=1).tolist()  # (P,)
    out = torch.zeros(groups, size, dtype=torch.float32, device=correct.device)
    total = comb(size, k)
    for g, neg in enumerate(n_neg):
        mean = 1.0 - comb(neg, k) / total
        std = (mean * (1.0 - mean)) ** 0.5
        if std < 1e-12:
            continue
        a_pos = (1.0 - mean) / std
        a_neg = (1.0 - mean - (comb(neg - 1, k - 1) / comb(size - 1, k - 1) if neg >= 1 else 0.0)) / std
        out[g] = torch.where(correct[g] >= 0.5, torch.tensor(a_pos), torch.tensor(a_neg))
    return out


def advantages_of(rewards: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    """Advantages (P, G) of rewards (P, G) by `kind`: "mean", "pass@k" (success = reward >= 1) or their sum."""
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r} (choose from {', '.join(ADVANTAGES)})")
    parts = kind.split("+")
    out = torch.zeros_like(rewards)
    if "mean" in parts:
        out = out + group_advantages(rewards)
    if "pass@k" in parts:
        out = out + pass_at_k_advantages((rewards >= 1.0).float(), k).to(rewards.device)
    return out


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    normalizer: float,
) -> torch.Tensor:
    """Summed clipped surrogate over the masked tokens, divided by `normalizer`.

    logp_* and mask (R, N); advantages (R,), broadcast over the row's tokens.
    Token-level normalisation: `normalizer` is the number of tokens in the
    whole batch (every rank), so long and short completions weigh per token.
    """
    ratio = importance_weights(logp_new, logp_old)
    adv = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -(surrogate * mask).sum() / normalizer


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def batch_advantages(
    batches: list[RolloutBatch], n_problems: int, group_size: int, kind: str = "mean", k: int = 4
) -> list[torch.Tensor]:
    """The advantage (by `kind`, see `advantages_of`) of every row of every batch, within its problem's group.

    A problem's group is its rows in `batches`, whatever their sample indices
    (a draft-reading head's rows start at 1; ladder rows follow); every problem
    must have `group_size` of them."""
    device = batches[0].rewards.device
    columns = sorted({s for b in batches for s in b.sample_index})
    if len(columns) != group_size:
        raise ValueError(f"expected {group_size} samples per problem, got sample indices {columns}")
    column = torch.tensor([columns.index(s) if s in columns else -1 for s in range(columns[-1] + 1)])
    rewards = torch.zeros(n_problems, group_size, device=device)
    for b in batches:
        rewards[b.problem_index, column[b.sample_index]] = b.rewards
    adv = advantages_of(rewards, kind, k)
    return [adv[b.problem_index, column[b.sample_index]] for b in batches]


def parse_ladder(spec: str) -> list[float]:
    """"0.1,0.4,0.7,1.0" -> [0.1, 0.4, 0.7, 1.0]; "" -> [] (no ladder)."""
    try:
        return [float(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"tau ladder must be comma-separated temperatures, got {spec!r}") from None


def importance_weights(logp_new: torch.Tensor, logp_behaviour: torch.Tensor) -> torch.Tensor:
    """Per-token ratio pi_new(a) / pi_behaviour(a) from log-probs (R, N): 1 where the behaviour is the head."""
    return torch.exp(logp_new - logp_behaviour)


def rollout_controller(spec: str, head: TemperatureHead) -> TemperatureController:
    """The rollout temperature: "learned" (the head), "fixed:<tau>" or "entropy" (EDT in the head's range)."""
    if spec.strip() == "learned-deterministic":
        # Its recorded log-prob is not that of a sampled action, so the head cannot be trained on it.
        raise ValueError("rollouts need a sampled temperature: use learned, fixed:<tau> or entropy")
    return controller_from_spec(spec, head)[1]


def step_phases(cfg: GRPOConfig) -> list[str]:
    """The schedule's phases; with a non-learned rollout temperature every step is an LM step
    (there is no temperature policy to train), so the baseline gets as many LM updates as steps."""
    if cfg.rollout_temperature != "learned":
        return ["lm"]
    return parse_schedule(cfg.schedule)


def set_phase(model: torch.nn.Module, head: TemperatureHead, phase: str) -> list[torch.nn.Parameter]:
    """Freeze the policy not being trained; return the parameters being trained (the LM's: its LoRA
    adapters when it has them, else all its weights)."""
    set_lm_trainable(model, phase == "lm")
    for p in head.parameters():
        p.requires_grad_(phase == "tau")
    return trainable_lm_parameters(model) if phase == "lm" else list(head.parameters())


def update(
    model, head, ref_model, batches: list[RolloutBatch], advantages: list[torch.Tensor], phase: str,
    cfg: GRPOConfig, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], device: torch.device,
) -> dict[str, float]:
    """One optimiser step of `phase` over all rollout batches; returns loss, entropy and KL."""
    local_tokens = float(sum(b.generation.mask.sum() for b in batches))
    n_tokens = distributed.all_reduce_sum(local_tokens, device)
    world = distributed.world_size()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "tau_entropy": 0.0, "ladder_logprob": 0.0, "ladder_tokens": 0.0}
    for batch, adv in zip(batches, advantages, strict=True):
        mask = batch.generation.mask.float()
        new = recompute_log_probs(model, head, batch)
        if phase == "lm":
            logp_new, logp_old = new.token_logprobs, batch.generation.token_logprobs
        else:
            logp_new, logp_old = new.temperature_logprobs, batch.generation.temperature_logprobs
        # Each rank's loss is scaled by world so that averaging gradients over
        # ranks gives the sum over all tokens / all tokens.
        if phase == "tau" and batch.behaviour == "ladder":
            # Advantage-weighted log-likelihood of the rung's action (see the module docstring). With
            # "positive" weights only rows that beat their group pull the head towards their rung:
            # pushing the likelihood of the others down has no floor.
            weight = adv.clamp_min(0.0) if cfg.ladder_weights == "positive" else adv
            loss = -(logp_new * weight.unsqueeze(1) * mask).sum() / (n_tokens / world)
            totals["ladder_logprob"] += float((logp_new.detach() * mask).sum())
            totals["ladder_tokens"] += float(mask.sum())
        else:
            loss = clipped_policy_loss(logp_new, logp_old, adv, mask, cfg.clip_eps, n_tokens / world)
        if ref_model is not None and phase == "lm":
            with torch.no_grad():
                ref = recompute_log_probs(ref_model, head, batch).token_logprobs
            kl = k3_kl(new.token_logprobs, ref)
            loss = loss + cfg.kl_coef * (kl * mask).sum() / (n_tokens / world)
            totals["kl"] += float((kl.detach() * mask).sum())
        if phase == "tau" and cfg.tau_entropy_coef:
            # Exploration bonus: keeps hot and cold draws coming where the reward has not yet told them apart.
            loss = loss - cfg.tau_entropy_coef * (new.temperature_entropy * mask).sum() / (n_tokens / world)
        loss.backward()
        totals["tau_entropy"] += float((new.temperature_entropy.detach() * mask).sum())
        totals["loss"] += float(loss.detach())
        totals["entropy"] += float((new.entropy * mask).sum())
    distributed.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    out = {
        "loss": totals["loss"],
        "entropy": totals["entropy"] / max(local_tokens, 1.0),
        "kl": totals["kl"] / max(local_tokens, 1.0),
        "tau_entropy": totals["tau_entropy"] / max(local_tokens, 1.0),
    }
    if totals["ladder_tokens"]:
        # The head's log-density of the rungs' actions per token (this rank's rows): how far off-policy they are.
        out["ladder_logprob"] = totals["ladder_logprob"] / totals["ladder_tokens"]
    return out


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of n samples with c successes: 1 - C(n - c, k) / C(n, k) (k capped at n)."""
    k = min(k, n)
    return 1.0 - comb(n - c, k) / comb(n, k) if n else 0.0


def rung_scores(ladder_rows: list[RolloutBatch], n_problems: int, ladder: LadderTemperature, kind: str,
                k: int, mean_weight: float = 1.0, draft_solved: torch.Tensor | None = None) -> torch.Tensor:
    """Each rung's score on each problem (P, K) from the ladder's rows: the objective `kind` names, per rung
    ("mean": mean reward; "pass@k": the unbiased pass@k estimate, k capped at the rung's rows; or their sum,
    the mean weighted by `mean_weight`). With `draft_solved` (P,) bool, whether each problem's greedy draft
    solves it, pass@k counts the draft as sample 0 of the k: 1 where it solves, else the pass@(k - 1) estimate
    of the rung's rows (`--rung-pass-with-draft`); the mean stays the rows' own."""
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r} (choose from {', '.join(ADVANTAGES)})")
    rungs = ladder.ladder
    rewards: list[list[list[float]]] = [[[] for _ in rungs] for _ in range(n_problems)]
    for b in ladder_rows:
        for i, s, r in zip(b.problem_index, b.sample_index, b.rewards.tolist(), strict=True):
            rewards[i][rungs.index(ladder.rung(s))].append(float(r))
    scores = torch.zeros(n_problems, len(rungs))
    parts = kind.split("+")
    for i, per_rung in enumerate(rewards):
        for j, rs in enumerate(per_rung):
            if not rs:
                raise ValueError(f"problem {i} has no ladder row at rung {rungs[j]}: ladder_samples must cover "
                                 "every rung")
            if "mean" in parts:
                scores[i, j] += mean_weight * sum(rs) / len(rs)
            if "pass@k" in parts:
                if draft_solved is None:
                    scores[i, j] += pass_at_k_estimate(len(rs), sum(r >= 1.0 for r in rs), k)
                elif bool(draft_solved[i]):
                    scores[i, j] += 1.0
                elif k > 1:
                    scores[i, j] += pass_at_k_estimate(len(rs), sum(r >= 1.0 for r in rs), k - 1)
    return scores


def solved_by_draft(draft_batches: list[RolloutBatch], n_problems: int) -> torch.Tensor:
    """(P,) bool: whether each problem's greedy draft earned the full reward."""
    solved = torch.zeros(n_problems, dtype=torch.bool)
    for b in draft_batches:
        for i, r in zip(b.problem_index, b.rewards.tolist(), strict=True):
            solved[i] = r >= 1.0
    return solved


def rung_weights(scores: torch.Tensor) -> torch.Tensor:
    """(P, K): each rung's score above the mean of its problem's rungs, floored at 0 (ties weigh nothing)."""
    return (scores - scores.mean(dim=1, keepdim=True)).clamp_min(0.0)


def best_rung_update(
    model, head: TemperatureHead, batches: list[RolloutBatch], weights: torch.Tensor, ladder: LadderTemperature,
    cfg: GRPOConfig, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], device: torch.device,
) -> dict[str, float]:
    """One head step off-policy from the ladder (`--tau-objective best-rung`, see the module docstring).

    On every token of the head's own rows `batches`, the loss is minus sum_k weights[problem, k] x
    log pi_head(gate = 1, z = rung k | h_t, tau_{t-1}, draft), over the batch's tokens (every rank). The
    LM must be frozen (`set_phase(..., "tau")`): only the head moves."""
    cfg_head = head.config
    z_rungs = cfg_head.tau_to_z(torch.tensor(ladder.ladder, dtype=torch.float32)).clamp(RUNG_Z_MARGIN,
                                                                                      1 - RUNG_Z_MARGIN)
    local_tokens = float(sum(b.generation.mask.sum() for b in batches))
    n_tokens = distributed.all_reduce_sum(local_tokens, device)
    world = distributed.world_size()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "tau_entropy": 0.0, "logprob": 0.0, "weight": 0.0}
    for batch in batches:
        mask = batch.generation.mask.float()
        states = head_states(model, head, batch)
        w = weights.to(mask.device)[batch.problem_index]  # (R, K)
        loss = torch.zeros((), device=mask.device)
        for k in range(len(ladder.ladder)):
            if not bool((w[:, k] > 0).any()):
                continue
            ones = torch.ones_like(states.tau_prev)
            logp = head.log_prob(states.hidden, ones, ones * z_rungs[k], states.tau_prev, batch.draft).squeeze(-1)
            loss = loss - (logp * w[:, k : k + 1] * mask).sum() / (n_tokens / world)
            totals["logprob"] += float((logp.detach() * w[:, k : k + 1] * mask).sum())
            totals["weight"] += float((w[:, k : k + 1] * mask).sum())
        if loss.requires_grad:
            loss.backward()
        with torch.no_grad():
            entropy = head.action_entropy(states.hidden, states.tau_prev, batch.draft).squeeze(-1)
        totals["tau_entropy"] += float((entropy * mask).sum())
        totals["loss"] += float(loss.detach())
    distributed.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    out = {"loss": totals["loss"], "tau_entropy": totals["tau_entropy"] / max(local_tokens, 1.0)}
    if totals["weight"]:
        # The head's weighted log-probability per token of the winning rungs' actions (this rank's rows).
        out["ladder_logprob"] = totals["logprob"] / totals["weight"]
    return out


def rung_value(scores: torch.Tensor, knots: torch.Tensor, hotness: torch.Tensor) -> torch.Tensor:
    """A problem's value of the head's tau, linear between the rungs' scores: scores (R, K) of rungs at
    `knots` (K,) ascending, in hotness units (0 = the coldest rung, 1 = the hottest), hotness (R, N) ->
    (R, N), relative to the coldest rung's score. With two rungs it is the hot-minus-cold gain x hotness."""
    value = torch.zeros_like(hotness)
    for j in range(len(knots) - 1):
        width = knots[j + 1] - knots[j]
        gain = (scores[:, j + 1] - scores[:, j]).unsqueeze(1)  # (R, 1)
        value = value + gain * (hotness - knots[j]).clamp(0.0, float(width)) / width
    return value


def rung_value_update(
    model, head: TemperatureHead, batches: list[RolloutBatch], scores: torch.Tensor, rungs: Sequence[float],
    cfg: GRPOConfig, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], device: torch.device,
) -> dict[str, float]:
    """One head step off-policy from a tau ladder by the rungs' value (`--tau-objective rung-value`).

    `scores` (P, K): each problem's score at each rung of `rungs` (ascending; the coldest is the head's
    tau_min, the hottest its tau_max). A problem's value of tau is taken as linear between the rungs
    (`rung_value`), and the value of the head's action at token t is that at E[tau_t] = P(update) tau(Beta
    mean) + (1 - P(update)) tau_{t-1}; with two rungs, gain x hotness_t, hotness_t = (E[tau_t] - tau_min) /
    (tau_max - tau_min). The loss is minus that, summed over the tokens of the head's own rows and divided by
    their count (every rank). Unlike best-rung's weighted likelihood, whose optimum is the conditional mean
    of the rungs (a head that moves its tau a little where it is unsure, which is everywhere), this
    objective is maximised at the rung worth most on average for the draft the head reads: it is decisive
    (a middle rung included, where the ladder has one), and a decisive Beta mean is a narrow Beta."""
    hc = head.config
    knots = (torch.tensor(rungs, dtype=torch.float32) - hc.tau_min) / (hc.tau_max - hc.tau_min)
    local_tokens = float(sum(b.generation.mask.sum() for b in batches))
    n_tokens = distributed.all_reduce_sum(local_tokens, device)
    world = distributed.world_size()
    optimizer.zero_grad(set_to_none=True)
    totals = {"loss": 0.0, "tau_entropy": 0.0, "tau_variance": 0.0}
    for batch in batches:
        mask = batch.generation.mask.float()
        states = head_states(model, head, batch)
        dist = head.distribution(states.hidden, states.tau_prev, batch.draft)
        expected_tau = dist.gate_prob * hc.z_to_tau(dist.beta_mean) + (1 - dist.gate_prob) * states.tau_prev
        hotness = ((expected_tau - hc.tau_min) / (hc.tau_max - hc.tau_min)).squeeze(-1)  # (R, N)
        value = rung_value(scores.to(mask.device)[batch.problem_index], knots.to(mask.device), hotness)
        # The Beta's variance alone, not the action's: penalising the gate's share of it (p Var + p (1 - p)
        # (mean - z_{t-1})^2) drove the gate to 0 in a trial (rate 0.07 by step 22), the head then keeping tau_0.
        total = dist.alpha + dist.beta
        variance = (dist.alpha * dist.beta / (total**2 * (total + 1))).squeeze(-1)  # (R, N)
        objective = value - cfg.tau_variance_coef * variance
        loss = -(objective * mask).sum() / (n_tokens / world)
        loss.backward()
        with torch.no_grad():
            entropy = head.action_entropy(states.hidden, states.tau_prev, batch.draft).squeeze(-1)
        totals["tau_entropy"] += float((entropy * mask).sum())
        totals["tau_variance"] += float((variance.detach() * mask).sum())
        totals["loss"] += float(loss.detach())
    distributed.average_gradients(params)
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    return {"loss": totals["loss"], "tau_entropy": totals["tau_entropy"] / max(local_tokens, 1.0),
            "tau_variance": totals["tau_variance"] / max(local_tokens, 1.0)}


def rung_metrics(batches: list[RolloutBatch], weights: torch.Tensor, ladder: Sequence[float],
                 device: torch.device) -> dict[str, float]:
    """Over every rank: the share of problems whose hottest rung wins (of those where a rung wins), and the
    head's mean sampled tau on its own rows of those problems minus on those whose coldest rung wins (the
    "reads the problem" gap (c) as training sees it; 0 where either set is empty)."""
    hot, cold = weights[:, ladder.index(max(ladder))] > 0, weights[:, ladder.index(min(ladder))] > 0
    sums = {"hot": float(hot.sum()), "won": float((weights > 0).any(dim=1).sum()),
            "tau_hot": 0.0, "tok_hot": 0.0, "tau_cold": 0.0, "tok_cold": 0.0}
    for b in batches:
        mask = b.generation.mask.float()
        tau = (b.generation.taus * mask).sum(dim=1)
        tokens = mask.sum(dim=1)
        h = hot[b.problem_index].float().to(mask.device)
        c = cold[b.problem_index].float().to(mask.device)
        sums["tau_hot"] += float((tau * h).sum())
        sums["tok_hot"] += float((tokens * h).sum())
        sums["tau_cold"] += float((tau * c).sum())
        sums["tok_cold"] += float((tokens * c).sum())
    sums = {k: distributed.all_reduce_sum(v, device) for k, v in sums.items()}
    gap = (sums["tau_hot"] / sums["tok_hot"] - sums["tau_cold"] / sums["tok_cold"]
           if sums["tok_hot"] and sums["tok_cold"] else 0.0)
    return {"rung_hot_share": sums["hot"] / max(sums["won"], 1.0), "rung_tau_gap": gap}


def head_stats(part_stats: dict[str, float], phase: str) -> dict[str, float]:
    """A head update's stats for the step's log: as they are in a head-only step; in a step that also updates
    the LM, which keeps the plain names (loss, entropy, KL), its loss as tau_loss and its head-only signals."""
    if phase == "tau":
        return part_stats
    signals = ("tau_entropy", "ladder_logprob", "tau_variance")
    return {"tau_loss": part_stats["loss"], **{k: part_stats[k] for k in signals if k in part_stats}}


def rollout_metrics(batches: list[RolloutBatch], device: torch.device) -> dict[str, float]:
    """Reward, accuracy, mean tau, gate rate and length over every rank's rollouts."""
    mask = torch.cat([b.generation.mask.flatten() for b in batches]).float()
    taus = torch.cat([b.generation.taus.flatten() for b in batches])
    gates = torch.cat([b.generation.gates.flatten() for b in batches])
    rewards = torch.cat([b.rewards for b in batches])
    sums = {
        "reward": float(rewards.sum()),
        "accuracy": float((rewards >= 1.0).float().sum()),
        "tau": float((taus * mask).sum()),
        "gate": float((gates * mask).sum()),
        "tokens": float(mask.sum()),
        "rows": float(rewards.numel()),
    }
    sums = {k: distributed.all_reduce_sum(v, device) for k, v in sums.items()}
    return {
        "reward": sums["reward"] / sums["rows"],
        "accuracy": sums["accuracy"] / sums["rows"],
        "mean_tau": sums["tau"] / sums["tokens"],
        "gate_rate": sums["gate"] / sums["tokens"],
        "completion_tokens": sums["tokens"] / sums["rows"],
    }


def mean_success(batches: list[RolloutBatch], device: torch.device) -> float:
    """Share of rows with reward >= 1 over every rank's `batches`."""
    hits = distributed.all_reduce_sum(float(sum(float((b.rewards >= 1.0).sum()) for b in batches)), device)
    rows = distributed.all_reduce_sum(float(sum(len(b.rewards) for b in batches)), device)
    return hits / max(rows, 1.0)


@dataclass
class TrainResult:
    """Where the checkpoint went, and this rank's final policies."""

    out: Path
    model: torch.nn.Module
    head: TemperatureHead


def train_grpo(cfg: GRPOConfig, score: ScoreFn | None = None) -> TrainResult:
    """Run GRPO from `cfg.init`; `score` replaces the task's reward (tests use a trivial one)."""
    rank, world, device = distributed.init()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    refuse_unservable_config(cfg.init)
    previous = read_manifest(cfg.init).training
    choice = resolve_task(cfg, previous, cfg.init)  # before the weights load: a contradiction fails fast
    task = choice.build(n_train=cfg.n_train)
    train_problems, heldout = task.split()
    check_heldout(cfg, previous, task, heldout, cfg.init)
    task_fields = choice.fields(train_problems, heldout, task)
    start = load_checkpoint(cfg.init, device=device, dtype=training_dtype(cfg.dtype, device))
    model, head, tokenizer = start.model, start.head, start.tokenizer
    prompt_format = start.manifest.prompt_format  # render prompts exactly as the warm start was trained
    # Resuming: a GRPO checkpoint of the same task records how far it got.
    same_task = (previous.get("task") == task_fields["task"]
                 and previous.get("task_name", "countdown") == task_fields["task_name"])
    first_step = int(previous.get("grpo_step", 0)) if same_task and cfg.resume else 0
    fresh_head = cfg.head.head_config(lm_hidden_size(model))
    new_inputs = bool(cfg.head.inputs) and fresh_head.inputs != head.config.inputs
    fresh = (cfg.reinit_head or new_inputs) and first_step == 0
    if fresh:
        # A fresh head with this run's prior and inputs (a resumed run keeps the head it trained).
        head = TemperatureHead(fresh_head).to(device)
    distributed.broadcast_parameters([model, head])
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    model = prepare_lm(model, cfg.lora, cfg.gradient_checkpointing)
    max_new = cfg.max_new_tokens or task.max_new_tokens
    if fresh and head.config.draft_linear:
        # Standardise the draft statistics by those of this LM's drafts of training prompts (the same on every rank).
        scale_problems = random.Random(cfg.seed).sample(train_problems, min(len(train_problems), 256))
        _, summaries = draft_completions(model, tokenizer, scale_problems, task=task, max_new_tokens=max_new,
                                         score=score, prompt_format=prompt_format)
        head.set_draft_scale(summaries)
    phases = step_phases(cfg)
    controller = rollout_controller(cfg.rollout_temperature, head)
    # A draft-reading head's group: sample 0 is the greedy draft, samples 1..G-1 follow the head.
    with_draft = head.reads_draft and isinstance(controller, LearnedTemperature)
    if with_draft and cfg.group_size < 2:
        raise ValueError("a draft-reading head needs group_size >= 2 (the draft is one of the group)")
    ladder = parse_ladder(cfg.tau_ladder)
    ladder_controller = LadderTemperature(ladder, head, cfg.group_size) if ladder else None
    ladder_rows = (cfg.ladder_samples or len(ladder)) if ladder else 0
    if cfg.ladder_weights not in ("positive", "signed"):
        raise ValueError(f"ladder_weights must be positive or signed, got {cfg.ladder_weights!r}")
    if cfg.tau_rows not in ("policy+ladder", "ladder") or (cfg.tau_rows == "ladder" and not ladder):
        raise ValueError(f"tau_rows must be policy+ladder or ladder (with a tau ladder), got {cfg.tau_rows!r}")
    if cfg.tau_objective not in TAU_OBJECTIVES:
        raise ValueError(f"tau_objective must be one of {', '.join(TAU_OBJECTIVES)}, got {cfg.tau_objective!r}")
    best_rung = cfg.tau_objective == "best-rung"
    rung_value = cfg.tau_objective == "rung-value"
    if rung_value and (len(set(ladder)) != len(ladder) or len(ladder) < 2 or ladder_rows < len(ladder)
                       or (min(ladder), max(ladder)) != (head.config.tau_min, head.config.tau_max)):
        raise ValueError("tau_objective rung-value needs a ladder of at least two distinct rungs from the head's "
                         f"tau_min to its tau_max ({head.config.tau_min:g} to {head.config.tau_max:g}; set "
                         "--head-tau-min and --head-tau-max), and ladder_samples of at least one row per rung")
    if rung_value and not isinstance(controller, LearnedTemperature):
        raise ValueError("tau_objective rung-value trains the head: it needs rollout temperature learned")
    if best_rung and (len(set(ladder)) < 2 or ladder_rows < len(ladder) or len(set(ladder)) != len(ladder)):
        raise ValueError("tau_objective best-rung needs a tau ladder of at least two distinct rungs and "
                         "ladder_samples of at least one row per rung")
    if best_rung and not isinstance(controller, LearnedTemperature):
        raise ValueError("tau_objective best-rung trains the head: it needs rollout temperature learned")
    if cfg.rung_pass_with_draft and not ((best_rung or rung_value) and with_draft):
        raise ValueError("rung_pass_with_draft counts the greedy draft in a rung's pass@k: it needs tau_objective "
                         "best-rung or rung-value and a head that reads the draft")
    for kind in (cfg.lm_advantage, cfg.tau_advantage):
        advantages_of(torch.zeros(1, cfg.group_size), kind, cfg.pass_k)  # fail before the first rollout
    # The draft statistics' linear path gets its own learning rate: its weights need changes of order 1
    # (a per-problem shift of the Beta logits), which head_lr would take thousands of steps to make.
    draft_params = list(head.draft_linear.parameters()) if head.draft_linear is not None else []
    head_groups = [{"params": [p for p in head.parameters() if all(p is not q for q in draft_params)]}]
    if draft_params:
        head_groups.append({"params": draft_params, "lr": cfg.head_lr * cfg.draft_lr_scale})
    optimizers = {
        "lm": torch.optim.AdamW(trainable_lm_parameters(model), lr=cfg.lm_lr, betas=(0.9, 0.99), weight_decay=0.0),
        "tau": torch.optim.AdamW(head_groups, lr=cfg.head_lr, betas=(0.9, 0.99), weight_decay=0.0),
    }
    out = Path(cfg.out)
    log = JsonlLog(out / "grpo_log.jsonl", enabled=rank == 0)
    # Carry the warm start's log along so the final folder holds the whole history.
    sft_log = Path(cfg.init) / "sft_log.jsonl"
    if rank == 0 and sft_log.is_file() and not (out / "sft_log.jsonl").exists():
        shutil.copy(sft_log, out / "sft_log.jsonl")
    prompts_per_rank = max(1, cfg.prompts_per_step // world)
    model.eval()  # no dropout in rollouts or in the recomputation: the log-probs must match
    history: list[dict] = []
    started = time.time()
    version = code_version()  # of the code that runs, not of whatever is checked out when it saves

    def save(step: int) -> None:
        if rank != 0:
            return
        stage = {"stage": "grpo", "config": config_to_dict(cfg), "seed": cfg.seed, "code_version": version,
                 "steps": step, "seconds": round(time.time() - started, 1), "world_size": world,
                 "final": history[-1] if history else {}}
        # A resumed run replaces its own record; a new run on top of a GRPO checkpoint (resume off) keeps it.
        stages = [s for s in previous.get("stages", []) if not cfg.resume or s.get("stage") != "grpo"] + [stage]
        training = {**previous, "stages": stages, **task_fields, "grpo_step": step}
        training.pop("evaluation", None)  # stale once the weights move
        saved = lm_to_save(model, getattr(torch, cfg.save_dtype))
        save_checkpoint(out, saved, tokenizer, head, base_model=start.manifest.base_model, training=training,
                        prompt_format=prompt_format)

    progress = trange(first_step, cfg.steps, desc="grpo", disable=rank != 0)
    for step in progress:
        phase = phases[step % len(phases)]
        rng = random.Random((cfg.seed * 1_000_003 + step) * 101 + rank)
        problems = rng.sample(train_problems, prompts_per_rank)
        t0 = time.time()
        rollout_args = dict(task=task, max_new_tokens=max_new, seed=cfg.seed, step=step * world + rank, score=score,
                            prompt_format=prompt_format)
        drafts, draft_batches = None, []
        if with_draft:
            draft_batches, drafts = draft_completions(model, tokenizer, problems, task=task, max_new_tokens=max_new,
                                                      score=score, prompt_format=prompt_format)
        batches = sample_completions(model, tokenizer, controller, problems, samples=cfg.group_size - with_draft,
                                     first_sample=int(with_draft), drafts=drafts, **rollout_args)
        explore = []
        if ladder_controller is not None and "tau" in phase:
            explore = sample_completions(model, tokenizer, ladder_controller, problems, samples=ladder_rows,
                                         first_sample=cfg.group_size, drafts=drafts, **rollout_args)
        stats: dict[str, float] = {}
        # Head first: its ratio is then exact (the LM that produced the hidden states has not moved), and
        # the LM's token log-probs use the recorded taus, so a head update cannot change the LM's ratio.
        for part in sorted(phase.split("+"), key=lambda name: name != "tau"):
            kind = cfg.lm_advantage if part == "lm" else cfg.tau_advantage
            own = cfg.group_size - with_draft  # the policy's rows per problem (the draft is not trained on)
            if part == "tau" and (rung_value or best_rung):
                solved = solved_by_draft(draft_batches, len(problems)) if cfg.rung_pass_with_draft else None
                scores = rung_scores(explore, len(problems), ladder_controller, kind, cfg.pass_k,
                                     cfg.rung_mean_weight, solved)
            if part == "tau" and rung_value:
                # The head moves towards the rung worth most on each problem, decisively; the LM is frozen.
                order = sorted(range(len(ladder)), key=lambda k: ladder[k])  # the rungs from cold to hot
                params = set_phase(model, head, part)
                for _ in range(cfg.updates_per_rollout):
                    part_stats = rung_value_update(model, head, batches, scores[:, order],
                                                   [ladder[k] for k in order], cfg, optimizers[part], params,
                                                   device)
                stats.update(rung_metrics(batches, rung_weights(scores), ladder, device))
                stats.update(head_stats(part_stats, phase))
                continue
            if part == "tau" and best_rung:
                # The head learns which rung wins each problem, on its own rows' tokens; the LM is frozen.
                weights = rung_weights(scores)
                params = set_phase(model, head, part)
                for _ in range(cfg.updates_per_rollout):
                    part_stats = best_rung_update(model, head, batches, weights, ladder_controller, cfg,
                                                  optimizers[part], params, device)
                stats.update(rung_metrics(batches, weights, ladder, device))
                stats.update(head_stats(part_stats, phase))
                continue
            if part == "tau" and explore:
                # The head learns from the ladder, with or without its own rows (tau_rows); the LM from its own.
                rows, group = (explore, ladder_rows) if cfg.tau_rows == "ladder" else (batches + explore,
                                                                                        own + ladder_rows)
            else:
                rows, group = batches, own
            advantages = batch_advantages(rows, len(problems), group, kind, cfg.pass_k)
            params = set_phase(model, head, part)
            for _ in range(cfg.updates_per_rollout):
                part_stats = update(model, head, ref_model, rows, advantages, part, cfg, optimizers[part], params,
                                    device)
            # One step may update both policies: the LM's loss, entropy and KL keep the plain names.
            stats.update(part_stats if part == "lm" else head_stats(part_stats, phase))
        set_phase(model, head, "none")
        record = {"stage": "grpo", "step": step, "phase": phase, **rollout_metrics(batches, device), **stats,
                  "seconds": round(time.time() - t0, 3)}
        if draft_batches:
            record["draft_accuracy"] = mean_success(draft_batches, device)
        if explore:
            record["ladder_accuracy"] = mean_success(explore, device)
        if rank == 0 and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
            # One sample per held-out problem; a draft-reading head's is the sample after the draft.
            eval_problems = heldout[: cfg.eval_problems]
            eval_drafts = None
            if with_draft:
                _, eval_drafts = draft_completions(model, tokenizer, eval_problems, task=task,
                                                   max_new_tokens=max_new, score=score, prompt_format=prompt_format)
            eval_batches = sample_completions(model, tokenizer, controller, eval_problems, samples=1, task=task,
                                              max_new_tokens=max_new, seed=cfg.seed + 1, score=score,
                                              prompt_format=prompt_format, first_sample=int(with_draft),
                                              drafts=eval_drafts)
            record["heldout_accuracy"] = float(torch.cat([b.rewards for b in eval_batches]).mean())
        history.append(record)
        log.write(record)
        progress.set_postfix(reward=f"{record['reward']:.3f}", tau=f"{record['mean_tau']:.2f}", phase=phase)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save(step + 1)
    # Data parallelism must leave every rank with the same weights; check it
    # rather than trust it, and say so in the log.
    in_sync = distributed.ranks_in_sync([model, head])
    log.write({"stage": "grpo", "event": "done", "world_size": world, "ranks_in_sync": in_sync,
               "weights_digest": distributed.weights_digest([model, head])})
    if not in_sync:
        raise RuntimeError("data-parallel ranks ended with different weights")
    save(cfg.steps)
    distributed.shutdown()
    return TrainResult(out=out, model=model, head=head)
