"""Per-row temperature control and token sampling for a batch of unrelated requests.

What it does: each row carries its own controller (learned, fixed or entropy,
optionally narrowed), generator, top-k, top-p and greedy flag. One step for
the batch:
  1. rows are grouped by controller spec; each group's controller picks tau
     for its rows, and the (n, 1) results are scattered back to (B, 1);
  2. one call to `model.sampling.sample` draws every row's token with per-row
     settings and per-row generators;
  3. token log-probs under each row's tau (`model.sampling.token_log_probs`).
Per generator the draws come in the same order as in `model.decode.sample_step`
(the controller's, then the token's), so a seeded request gets the same taus
and tokens alone, in any batch, and in the reference decode.

What it does not do: run the model, stop sequences, or validate requests
(specs arrive checked by the scheduler).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from model import (
    EntropyTemperature,
    FixedTemperature,
    LearnedTemperature,
    StepOutput,
    StepResult,
    TemperatureAction,
    TemperatureController,
    TemperatureHead,
    sample,
    token_log_probs,
)

TemperatureMode = Literal["learned", "fixed", "entropy"]


@dataclass(frozen=True)
class ControllerSpec:
    """How one request's temperature is chosen; hashable, so rows can be grouped by it.

    tau_range: the narrowing of the trained range asked for (learned, entropy),
    already resolved to both bounds; None keeps the trained range.
    """

    mode: TemperatureMode
    temperature: float | None = None
    tau_range: tuple[float, float] | None = None
    deterministic: bool = False

    def build(self, head: TemperatureHead) -> TemperatureController:
        if self.mode == "learned":
            return LearnedTemperature(head, deterministic=self.deterministic, tau_range=self.tau_range)
        if self.mode == "fixed":
            if self.temperature is None:
                raise ValueError("a fixed-temperature spec needs a temperature")
            return FixedTemperature(self.temperature)
        low, high = self.tau_range or (head.config.tau_min, head.config.tau_max)
        # EDT's tau_0 is the ceiling it approaches at high entropy: keep it inside the range.
        return EntropyTemperature(tau_0=min(max(1.0, low), high), tau_min=low, tau_max=high)


@dataclass
class RowSampler:
    """Everything that decides one row's draws; lives as long as its request."""

    spec: ControllerSpec
    controller: TemperatureController
    generator: torch.Generator
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False


def sample_rows(rows: Sequence[RowSampler], step: StepOutput, tau_prev: torch.Tensor) -> StepResult:
    """One sampling step for logits (B, V), hidden (B, d) and tau_prev (B, 1), row i by rows[i]."""
    action = _choose_per_group(rows, step, tau_prev)
    generators = [row.generator for row in rows]
    tokens = sample(
        step.logits,
        action.tau,
        generators,
        top_k=_per_row([row.top_k for row in rows], torch.long, step.logits.device),
        top_p=_per_row([row.top_p for row in rows], torch.float32, step.logits.device),
        greedy=_per_row([row.greedy for row in rows], torch.bool, step.logits.device),
    )
    logprobs = token_log_probs(step.logits, tokens, action.tau.squeeze(-1))
    return StepResult(tokens=tokens, action=action, token_logprobs=logprobs)


def _choose_per_group(rows: Sequence[RowSampler], step: StepOutput, tau_prev: torch.Tensor) -> TemperatureAction:
    groups: dict[ControllerSpec, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.spec, []).append(i)
    if len(groups) == 1:  # the common case: no gather, no scatter
        return rows[0].controller.choose(step.hidden, step.logits, tau_prev, [row.generator for row in rows])
    fields = {name: torch.empty_like(tau_prev, dtype=torch.float32) for name in ("tau", "gate", "z", "log_prob")}
    for members in groups.values():
        index = torch.tensor(members, dtype=torch.long, device=tau_prev.device)
        action = rows[members[0]].controller.choose(
            step.hidden[index], step.logits[index], tau_prev[index], [rows[i].generator for i in members]
        )
        for name, full in fields.items():
            full[index] = getattr(action, name).float()  # (n, 1) into (B, 1)
    return TemperatureAction(**fields)


def _per_row(values: list, dtype: torch.dtype, device: torch.device):
    """A Python scalar when every row agrees (no device work in `sample`), else a (B,) tensor."""
    first = values[0]
    if all(value == first for value in values):
        return first
    return torch.tensor(values, dtype=dtype, device=device)
