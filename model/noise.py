"""Counter-based random numbers: a request's draws are a pure function of (seed, step).

What it does: `CounterNoise` holds one seed and one step counter per row and
turns them into uniforms in (0, 1) with an integer hash, in plain tensor ops:
no `torch.Generator`, no state, no host sync. Row i's numbers at step t depend
on (seeds[i], steps[i], stream, index) only, so a request draws the same
numbers alone, in any batch, at any batch position, on CPU or GPU, and inside
`torch.compile` or a CUDA graph (which per-row generators cannot enter). This
is the idea behind Philox in cuRAND and behind the seeded samplers of vLLM and
SGLang; the hash here is a 32-bit integer finalizer (multiply-xorshift) kept in
int64 arithmetic that never overflows.

Also here: Gamma variates from those uniforms (Marsaglia and Tsang, a fixed
number of proposals so the op count is static) for the head's Beta draw.

What it does not do: cryptographic randomness, or reproduce the streams of
`torch.Generator` (the reference decode and training still accept generators;
both kinds of source give the same distributions, not the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays below 2**63, so
# int64 arithmetic never overflows (signed overflow is not defined for every
# backend torch compiles to).
_M1 = 0x7FEB352D
_M2 = 0x68E31DA5
_M3 = 0x4F6CDD1D
_M4 = 0x2C1B3C6D

# Streams keep the kinds of draw of one step apart.
ACTION_STREAM = 1  # the head's gate uniform and Beta draw
TOKEN_STREAM = 2

# Marsaglia-Tsang proposals per Gamma variate. With concentration >= 1 each is
# accepted with probability >= 0.95, so all four fail with probability < 1e-5;
# then the last proposal is used as is (see `gamma_from_uniforms`).
GAMMA_PROPOSALS = 4
UNIFORMS_PER_GAMMA = 3 * GAMMA_PROPOSALS + 1  # (normal pair, accept) per proposal + one for alpha < 1


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash of int64 values in [0, 2**32), elementwise."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    x = x ^ (x >> 16)
    return x


@dataclass(frozen=True)
class CounterNoise:
    """Per-row seeds and step counters, both (B,) int64 on the batch's device."""

    seeds: torch.Tensor
    steps: torch.Tensor

    @classmethod
    def for_rows(cls, seeds: list[int], steps: list[int] | int, device: torch.device | str = "cpu") -> CounterNoise:
        steps = [steps] * len(seeds) if isinstance(steps, int) else steps
        return cls(
            seeds=torch.tensor(seeds, dtype=torch.long, device=device),
            steps=torch.tensor(steps, dtype=torch.long, device=device),
        )

    def rows(self, index: torch.Tensor) -> CounterNoise:
        """The noise of a subset of rows (index (n,) long)."""
        return CounterNoise(self.seeds[index], self.steps[index])

    def advanced(self, by: int = 1) -> CounterNoise:
        return CounterNoise(self.seeds, self.steps + by)

    def uniform(self, stream: int, count: int) -> torch.Tensor:
        """(B, count) float32 uniforms strictly inside (0, 1), 23 bits each."""
        seed_lo = self.seeds & _MASK32
        seed_hi = (self.seeds >> 32) & _MASK32
        key = _mix(seed_lo ^ _mix(seed_hi ^ ((self.steps * _M3 + stream) & _MASK32)))  # (B,)
        index = torch.arange(count, device=self.seeds.device, dtype=torch.long)
        bits = _mix(_mix(key.unsqueeze(1) ^ ((index * _M4) & _MASK32).unsqueeze(0)) ^ 0x5BD1E995)  # (B, count)
        return ((bits >> 9).float() + 0.5) * (1.0 / (1 << 23))


def gamma_from_uniforms(concentration: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Gamma(concentration, 1) draws, shape (...,), from uniforms (..., UNIFORMS_PER_GAMMA).

    Marsaglia and Tsang (2000) for a >= 1 with normals by Box-Muller; for a < 1
    the draw for a + 1 is scaled by U^(1/a). The first accepted of
    GAMMA_PROPOSALS proposals is returned (the last one if none is: an
    event of probability < 1e-5 per draw that biases nothing measurable).
    """
    a = concentration.float()
    boosted = torch.where(a < 1, a + 1, a)
    d = (boosted - 1.0 / 3.0).unsqueeze(-1)  # (..., 1)
    c = 1.0 / torch.sqrt(9.0 * d)
    k = GAMMA_PROPOSALS
    u1, u2, u_accept = uniforms[..., 0:k], uniforms[..., k : 2 * k], uniforms[..., 2 * k : 3 * k]
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * torch.pi) * u2)  # (..., K)
    v = (1.0 + c * normal) ** 3
    v_safe = v.clamp_min(1e-30)
    accepted = (v > 0) & (torch.log(u_accept) < 0.5 * normal**2 + d - d * v_safe + d * torch.log(v_safe))
    # argmax of a bool returns the first True; with none, fall to the last proposal.
    first = torch.where(accepted.any(dim=-1), accepted.to(torch.uint8).argmax(dim=-1), k - 1)
    draw = (d * v_safe).gather(-1, first.unsqueeze(-1)).squeeze(-1)
    boost = uniforms[..., 3 * k] ** (1.0 / a)
    return torch.where(a < 1, draw * boost, draw)
