"""Per-row temperature control and token sampling for a batch of unrelated requests.

What it does: each row carries its own controller (learned, fixed or entropy,
optionally narrowed), top-k, top-p and greedy flag; its randomness is
counter-based (`model.noise.CounterNoise`: the request's seed and its token
index), passed in for the whole batch. One step for the batch:
  1. rows are grouped by controller spec; each group's controller picks tau
     for its rows, and the (n, 1) results are scattered back to (B, 1);
  2. one call to `model.sampling.sample` draws every row's token with per-row
     settings;
  3. token log-probs under each row's tau (`model.sampling.token_log_probs`).
The engine's decode steps run `sample_in_step` instead: the same for any mix
of unfiltered learned and fixed rows, as one compiled graph after their
forward (`step_inputs` says whether a batch fits it).
A row's draws depend on (seed, token index) only, so a seeded request gets the
same taus and tokens alone, in any batch, and in the reference decode given
the same `CounterNoise`. Every step is a fixed sequence of batched tensor ops:
no per-row loop, no host sync unless rows disagree on top-k, top-p or greedy.

A checkpoint whose head reads a greedy draft of the prompt (model/draft.py)
answers a learned-mode request with that greedy draft as its first sample:
its tokens are the argmax, reported at tau_min (the coldest the head can
choose) with no update, as evaluation counts a draft-reading head's first
sample. Rows 1..n-1 of such a request (`ControllerSpec.follows_draft`) are
sampled by the head reading the draft's summary, passed per row to
`sample_rows` (`draft`, (B, F)); the engine drafts and summarises.

Seeds of n samples: row i of a request with seed s draws with
`row_seed(s, i)` (service/messages.py): s itself for row 0 (so n = 1 is unchanged), and
(s + i * 0x9E3779B97F4A7C15) mod 2^63 for i > 0 (a Weyl step of the golden
ratio: distinct for every i < 2^63, and touching both 32-bit halves that
`CounterNoise` hashes). A seeded request of n samples therefore returns
exactly the n requests of one sample seeded row_seed(s, 0..n-1).

What it does not do: run the model, stop sequences, or validate requests
(specs arrive checked by the scheduler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model import (
    CounterNoise,
    EntropyTemperature,
    FixedTemperature,
    LearnedTemperature,
    StepOutput,
    StepResult,
    TemperatureAction,
    TemperatureController,
    TemperatureHead,
    constant_action,
    sample,
    token_log_probs,
)
from service.messages import ControllerSpec


def build_controller(spec: ControllerSpec, head: TemperatureHead) -> TemperatureController:
    """The controller rows of `spec` draw their temperatures with, for this checkpoint's head."""
    if serves_greedy_draft(spec, head):
        return FixedTemperature(head.config.tau_min)  # with RowSampler.greedy: the argmax (module docstring)
    if spec.mode == "learned":
        return LearnedTemperature(head, deterministic=spec.deterministic, tau_range=spec.tau_range)
    if spec.mode == "fixed":
        if spec.temperature is None:
            raise ValueError("a fixed-temperature spec needs a temperature")
        return FixedTemperature(spec.temperature)
    low, high = spec.tau_range or (head.config.tau_min, head.config.tau_max)
    # EDT's tau_0 is the ceiling it approaches at high entropy: keep it inside the range.
    return EntropyTemperature(tau_0=min(max(1.0, low), high), tau_min=low, tau_max=high)


def serves_greedy_draft(spec: ControllerSpec, head: TemperatureHead) -> bool:
    """Whether rows of `spec` are the greedy draft (a learned request to a draft-reading head, but not the rows that
    follow its draft; see the module docstring): their sampler must be greedy."""
    return spec.mode == "learned" and head.reads_draft and not spec.follows_draft


@dataclass
class RowSampler:
    """Everything that decides one row's draws; lives as long as its request."""

    spec: ControllerSpec
    controller: TemperatureController
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False


def sample_rows(
    rows: Sequence[RowSampler],
    step: StepOutput,
    tau_prev: torch.Tensor,
    noise: CounterNoise,
    *,
    draft: torch.Tensor | None = None,
) -> StepResult:
    """One sampling step for logits (B, V), hidden (B, d) and tau_prev (B, 1), row i by rows[i] and noise row i.
    draft (B, F): the draft summary each row's head reads (a draft-reading head only; rows that read none
    may hold anything there).

    The grouped path, for any rows: the engine runs it for batches that `sample_in_step` does not fit
    (filters, greedy or entropy rows), and it gives the rows that do fit the same results.
    """
    top_k = _per_row([row.top_k for row in rows], torch.long, step.logits.device)
    top_p = _per_row([row.top_p for row in rows], torch.float32, step.logits.device)
    greedy = _per_row([row.greedy for row in rows], torch.bool, step.logits.device)
    action = _choose_per_group(rows, step, tau_prev, noise, draft)
    tokens = sample(step.logits, action.tau, noise, top_k=top_k, top_p=top_p, greedy=greedy)
    logprobs = token_log_probs(step.logits, tokens, action.tau.squeeze(-1))
    return StepResult(tokens=tokens, action=action, token_logprobs=logprobs)


def sample_in_step(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    head: TemperatureHead,
    tau_prev: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    fixed_tau: torch.Tensor,
    learned: torch.Tensor,
    deterministic: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    draft: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """`LearnedTemperature.choose` or `FixedTemperature.choose`, then an unfiltered draw, for any mix of
    rows, row by row, as one pure tensor function: the engine compiles it as one graph run after each step's
    forward (`kv.SlotBatch.decode_then`), for every batch whose rows sample unfiltered, learned (sampled
    or deterministic) or at a fixed temperature (uncompiled, the engine calls the same function eagerly).

    logits (B, V), hidden (B, d), tau_prev (B, 1); per row (B, 1): the learned range low/high, fixed_tau,
    and bool flags learned and deterministic; seeds and steps (B,). Every row runs the head (a small MLP;
    a fixed row's result is discarded): `torch.where` picks, so each row gets exactly what the function of
    its own kind gives it alone. Returns (tokens, tau, gate, z, temperature log-prob, token log-prob)."""
    noise = CounterNoise(seeds, steps)
    drawn = head.sample(hidden, tau_prev, noise, draft)
    chosen = head.choose_deterministic(hidden, tau_prev, draft)
    action = TemperatureAction(**{
        name: torch.where(deterministic, getattr(chosen, name), getattr(drawn, name))
        for name in ("tau", "gate", "z", "log_prob")
    })
    head_tau = torch.minimum(torch.maximum(action.tau, low), high)
    tau = torch.where(learned, head_tau, fixed_tau)
    fixed = constant_action(fixed_tau, torch.zeros_like(fixed_tau))
    gate, z, log_prob = (torch.where(learned, mine, theirs) for mine, theirs in (
        (action.gate, fixed.gate), (action.z, fixed.z), (action.log_prob, fixed.log_prob)))
    tokens = sample(logits, tau, noise)
    return tokens, tau, gate, z, log_prob, token_log_probs(logits, tokens, tau.squeeze(-1))


def step_inputs(
    rows: Sequence[RowSampler], head: TemperatureHead, tau_prev: torch.Tensor, noise: CounterNoise,
    draft: torch.Tensor | None,
) -> tuple[tuple, bool]:
    """The arguments of `sample_in_step` after logits and hidden for these rows, and whether its result is
    theirs: False when a row needs what it does not do (top-k, top-p, greedy, the entropy controller); the
    arguments are then valid placeholders (every row fixed at tau 1), so the step keeps its one graph and
    its tokens are drawn again by `sample_rows`."""
    device = tau_prev.device
    fits = all(
        not (row.top_k or row.top_p < 1.0 or row.greedy) and row.spec.mode in ("learned", "fixed") for row in rows
    )
    if fits:
        learned = [row.spec.mode == "learned" for row in rows]
        bounds = [
            row.spec.tau_range or (head.config.tau_min, head.config.tau_max) if is_learned else (1.0, 1.0)
            for row, is_learned in zip(rows, learned, strict=True)
        ]
        fixed = [1.0 if is_learned else row.spec.temperature for row, is_learned in zip(rows, learned, strict=True)]
        deterministic = [is_learned and row.spec.deterministic for row, is_learned in zip(rows, learned, strict=True)]
    else:
        learned = deterministic = [False] * len(rows)
        bounds, fixed = [(1.0, 1.0)] * len(rows), [1.0] * len(rows)
    def column(values: list, dtype: torch.dtype) -> torch.Tensor:
        # (B, 1), a tensor of its own: views of one tensor would have strides and offsets that the compiled
        # step guards on (equal sizes are assumed equal symbols), and another batch size would break them.
        return torch.tensor(values, dtype=dtype, device=device).unsqueeze(-1)

    low, high = column([b[0] for b in bounds], torch.float32), column([b[1] for b in bounds], torch.float32)
    args = (
        head, tau_prev, low, high, column(fixed, torch.float32), column(learned, torch.bool),
        column(deterministic, torch.bool), noise.seeds, noise.steps, draft,
    )
    return args, fits


def sampled_result(outputs: tuple[torch.Tensor, ...]) -> StepResult:
    """The StepResult of `sample_in_step`'s outputs."""
    tokens, tau, gate, z, log_prob, logprobs = outputs
    return StepResult(tokens=tokens, action=TemperatureAction(tau, gate, z, log_prob), token_logprobs=logprobs)


def _choose_per_group(
    rows: Sequence[RowSampler], step: StepOutput, tau_prev: torch.Tensor, noise: CounterNoise,
    draft: torch.Tensor | None,
) -> TemperatureAction:
    groups: dict[ControllerSpec, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.spec, []).append(i)
    if len(groups) == 1:  # the common case: no gather, no scatter
        return _reading(rows[0].controller, draft).choose(step.hidden, step.logits, tau_prev, noise)
    fields = {name: torch.empty_like(tau_prev, dtype=torch.float32) for name in ("tau", "gate", "z", "log_prob")}
    for members in groups.values():
        index = torch.tensor(members, dtype=torch.long, device=tau_prev.device)
        controller = _reading(rows[members[0]].controller, None if draft is None else draft[index])
        action = controller.choose(
            step.hidden[index], step.logits[index], tau_prev[index], noise.rows(index)
        )
        for name, full in fields.items():
            full[index] = getattr(action, name).float()  # (n, 1) into (B, 1)
    return TemperatureAction(**fields)


def _reading(controller: TemperatureController, draft: torch.Tensor | None) -> TemperatureController:
    """The controller with the rows' draft summaries bound, when it is a head that reads them."""
    if draft is not None and isinstance(controller, LearnedTemperature) and controller.head.reads_draft:
        return controller.with_draft(draft)
    return controller


def _per_row(values: list, dtype: torch.dtype, device: torch.device):
    """A Python scalar when every row agrees (no device work in `sample`), else a (B,) tensor."""
    first = values[0]
    if all(value == first for value in values):
        return first
    return torch.tensor(values, dtype=dtype, device=device)
