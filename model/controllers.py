"""Temperature controllers: who picks tau at each step, behind one interface.

What it does: `learned` (the IntroLLM head), `fixed` (one given tau) and
`entropy` (EDT, arXiv 2403.14541: tau = tau_0 * N^(theta / H_t)) all take the
step's hidden state (B, d), logits (B, V) and previous tau (B, 1) and return a
`TemperatureAction` of (B, 1) tensors, so decoding, serving and evaluation
compare them on exactly the same code path.

What it does not do: sample tokens (see `sampling.py`) or hold per-request
state; tau_prev is passed in by the decode loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from model.sampling import RandomSource
from model.temperature_head import TemperatureAction, TemperatureHead


class TemperatureController(Protocol):
    """Picks the temperature for one decode step of a batch."""

    name: str

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        """tau before the first step, (B, 1)."""
        ...

    def choose(
        self, hidden: torch.Tensor, logits: torch.Tensor, tau_prev: torch.Tensor, generators: RandomSource
    ) -> TemperatureAction:
        """The action for this step: tau (B, 1) applied to `logits`, gate, z, log_prob."""
        ...


def constant_action(tau: torch.Tensor, gate: torch.Tensor) -> TemperatureAction:
    # Non-learned controllers have no temperature policy to differentiate: no
    # Beta draw was made (z is NaN) and log_prob is 0.
    return TemperatureAction(tau=tau, gate=gate, z=torch.full_like(tau, float("nan")), log_prob=torch.zeros_like(tau))


@dataclass
class LearnedTemperature:
    """The head's policy. `deterministic` serves without noise (gate p > 0.5, Beta mean);
    `tau_range` optionally narrows the trained range at serving time (the
    recorded log_prob is then no longer that of the applied tau). A head that
    reads a greedy draft needs `draft`, the summary of each row's draft (B, F)
    (`model.decode_draft`); `with_draft` binds it for a batch."""

    head: TemperatureHead
    deterministic: bool = False
    tau_range: tuple[float, float] | None = None
    name: str = "learned"
    draft: torch.Tensor | None = None

    def with_draft(self, draft: torch.Tensor | None) -> LearnedTemperature:
        return replace(self, draft=draft)

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch, 1), self.head.config.tau_init, device=device)

    def choose(self, hidden, logits, tau_prev, generators) -> TemperatureAction:
        if self.deterministic:
            action = self.head.choose_deterministic(hidden, tau_prev, self.draft)
        else:
            action = self.head.sample(hidden, tau_prev, generators, self.draft)
        if self.tau_range is not None:
            action.tau = action.tau.clamp(*self.tau_range)
        return action


@dataclass
class FixedTemperature:
    """One tau for every token (the GRPO default)."""

    tau: float
    name: str = "fixed"

    def __post_init__(self) -> None:
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"fixed temperature must be positive and finite, got {self.tau}")

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch, 1), self.tau, device=device)

    def choose(self, hidden, logits, tau_prev, generators) -> TemperatureAction:
        tau = torch.full_like(tau_prev, self.tau, dtype=torch.float32)
        return constant_action(tau, torch.zeros_like(tau))


@dataclass
class EntropyTemperature:
    """EDT: tau_t = tau_0 * base^(theta / H_t), H_t the entropy (nats) of softmax(logits_t).

    Low entropy (a forced token) drives tau towards 0, high entropy towards
    tau_0; the result is clamped into [tau_min, tau_max]. The temperature is
    recomputed at every step, so every step counts as an update.
    """

    tau_0: float = 1.0
    theta: float = 0.1
    base: float = 0.8
    tau_min: float = 0.1
    tau_max: float = 2.0
    name: str = "entropy"

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch, 1), self.tau_0, device=device)

    def choose(self, hidden, logits, tau_prev, generators) -> TemperatureAction:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1, keepdim=True)  # (B, 1)
        # entropy -> 0 gives an exponent -> inf and base^inf -> 0: clamp keeps it finite.
        exponent = (self.theta / entropy.clamp_min(1e-6)).clamp(max=1e4)
        tau = (self.tau_0 * self.base**exponent).clamp(self.tau_min, self.tau_max)
        return constant_action(tau, torch.ones_like(tau))
