"""Per-token sampling with a per-row temperature.

What it does: turns logits (B, V) and a temperature tau (B, 1) into token ids
(B,), with optional per-row top-k / top-p and greedy rows, drawing each row's
randomness from that row's own `torch.Generator` so a seed fixes a request's
tokens whatever else shares the batch. Also: token log-probabilities under a
per-token tau, which rollouts record and the trainer recomputes.

What it does not do: choose tau (see `controllers.py`), or apply repetition
penalties and the like.

How: with torch generators, the exponential-race form of categorical sampling
(argmax of p / q with q ~ Exp(1)), as in gpt-fast: no `multinomial`, no host
sync, and the same noise tensor serves every row whatever its tau, top-k or
top-p. With `CounterNoise` (model/noise.py), inverse-CDF sampling from one
counter-based uniform per row: no vocabulary-sized noise to generate, and
every op can be compiled or captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.noise import TOKEN_STREAM, CounterNoise

Generators = torch.Generator | Sequence[torch.Generator] | None
# Where a step's randomness comes from: torch generators (one, or one per row)
# or per-row counter-based noise (what the service engine uses).
RandomSource = Generators | CounterNoise


def scale_logits(logits: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """logits / tau in float32; logits (..., V), tau (..., 1) already guarded."""
    return logits.float() / tau.float()


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """log softmax(logits_t / tau_t)[token_t]: logits (..., V), tokens (...), tau (...) -> (...)."""
    scaled = scale_logits(logits, tau.unsqueeze(-1))
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def mask_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the top_k largest logits per row (top_k (B,), 0 = keep all)."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)  # (B,)
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, (k - 1).unsqueeze(-1))  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def mask_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p per row (top_p (B,), 1 = all)."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Ascending order: drop the low tail whose total mass is <= 1 - top_p; the
    # largest token is never dropped.
    drop_sorted = cumulative <= (1 - top_p).unsqueeze(-1)
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def exponential_noise(shape: tuple[int, int], generators: Generators, device: torch.device) -> torch.Tensor:
    """q ~ Exp(1) of shape (B, V); row i from generators[i] when given a sequence."""
    if generators is None or isinstance(generators, torch.Generator):
        return torch.empty(shape, device=device).exponential_(generator=generators)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
    return torch.cat([torch.empty((1, shape[1]), device=device).exponential_(generator=g) for g in generators])


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Token ids (B,) from probs (B, V) and one uniform (B, 1) per row: the first
    index whose cumulative probability reaches u * total. A token of probability
    0 adds nothing to the cumulative sum, so it can never be the first to reach it."""
    cumulative = probs.cumsum(dim=-1)  # (B, V)
    target = uniform * cumulative[:, -1:]  # total, not 1: float32 sums drift
    return torch.searchsorted(cumulative, target).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sample(
    logits: torch.Tensor,
    tau: torch.Tensor,
    generators: RandomSource = None,
    *,
    top_k: torch.Tensor | int = 0,
    top_p: torch.Tensor | float = 1.0,
    greedy: torch.Tensor | bool = False,
) -> torch.Tensor:
    """Token ids (B,) from logits (B, V) at temperature tau (B, 1).

    top_k, top_p and greedy may be scalars or per-row tensors (B,), so one call
    serves a batch of requests with different settings. Every row consumes the
    same amount of randomness (one Exp(1) vector) whatever its settings.
    """
    batch, vocab = logits.shape
    device = logits.device
    scaled = scale_logits(logits, tau)
    # Python scalars decide without touching the device; per-row tensors need
    # one check each (callers that batch requests pass tensors).
    if _any(top_k, lambda k: k > 0):
        scaled = mask_top_k(scaled, torch.as_tensor(top_k, device=device).expand(batch))
    if _any(top_p, lambda p: p < 1):
        scaled = mask_top_p(scaled, torch.as_tensor(top_p, dtype=torch.float32, device=device).expand(batch))
    probs = torch.softmax(scaled, dim=-1)
    if isinstance(generators, CounterNoise):
        sampled = inverse_cdf_sample(probs, generators.uniform(TOKEN_STREAM, 1))
    else:
        # Exp(1) can return exactly 0; a masked token (p = 0) would then give
        # 0/0 = NaN, which argmax would pick.
        noise = exponential_noise((batch, vocab), generators, device).clamp_min_(1e-20)
        sampled = torch.argmax(probs / noise, dim=-1)
    if isinstance(greedy, bool):
        return torch.argmax(logits, dim=-1) if greedy else sampled
    return torch.where(greedy.to(device), torch.argmax(logits, dim=-1), sampled)


def _any(value: torch.Tensor | float, predicate) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(predicate(value).any())
    return bool(predicate(value))
