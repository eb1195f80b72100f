"""Reference decoding with a per-token temperature: prefill, then one step at a time.

What it does: the single-request (or equal-length batch) reference that every
faster path must agree with. Each step:
  1. the controller reads the step's hidden state and picks tau_t (B, 1);
  2. a token is sampled from softmax(logits_t / tau_t) (top-k/top-p optional);
  3. tau_t, the gate, the Beta draw and both log-probs are recorded.
`sample_step` is that step as a pure function, shared with the service engine
and the trainer's rollouts so they cannot drift apart.

What it does not do: padding or continuous batching (rows share one prompt
length and advance together), stop strings, or text. The KV cache is an
explicit object created here or passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from model.controllers import TemperatureController
from model.lm import forward, new_cache
from model.noise import CounterNoise
from model.sampling import RandomSource, sample, token_log_probs
from model.temperature_head import TemperatureAction


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn. top_k = 0 and top_p = 1 disable those filters
    (training rollouts must keep them off so the trainer's log-probs match)."""

    max_new_tokens: int
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError("need top_k >= 0 and 0 < top_p <= 1")


@dataclass
class StepOutput:
    """What one forward gives the sampler: logits (B, V) and hidden (B, d)."""

    logits: torch.Tensor
    hidden: torch.Tensor


@dataclass
class StepResult:
    """One decode step: tokens (B,), the temperature action, token log-probs (B,)."""

    tokens: torch.Tensor
    action: TemperatureAction
    token_logprobs: torch.Tensor


@dataclass
class Generation:
    """Everything a decode produced, (B, N) per field, N = steps taken.

    Positions at or after `lengths[i]` are padding (token `pad_token_id`,
    values 0). `lengths` counts the EOS token when one was produced.
    """

    tokens: torch.Tensor
    taus: torch.Tensor
    gates: torch.Tensor
    z: torch.Tensor
    token_logprobs: torch.Tensor
    temperature_logprobs: torch.Tensor
    lengths: torch.Tensor
    finish_reasons: list[str]
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def mask(self) -> torch.Tensor:
        """(B, N) bool, True on generated (non-padding) positions."""
        steps = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)


def _last(output) -> StepOutput:
    return StepOutput(logits=output.logits[:, -1].float(), hidden=output.hidden[:, -1])


def prefill(model: PreTrainedModel, prompt_ids: torch.Tensor, cache: Cache | None) -> StepOutput:
    """Run the prompt (B, T) through the model, filling `cache`; return the last position."""
    return _last(forward(model, prompt_ids, cache=cache, last_only=True))


def decode_step(
    model: PreTrainedModel, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache
) -> StepOutput:
    """Feed one token per row (B,) at positions (B,) and append to `cache`."""
    output = forward(model, tokens.unsqueeze(1), cache=cache, position_ids=positions.unsqueeze(1), last_only=True)
    return _last(output)


def sample_step(
    controller: TemperatureController,
    step: StepOutput,
    tau_prev: torch.Tensor,
    generators: RandomSource,
    params: SamplingParams,
) -> StepResult:
    """Choose tau_t, then sample the token at tau_t; record both log-probs.

    The token log-prob is log softmax(logits / tau_t)[token], without top-k or
    top-p: the token policy's probability, which is what training uses.
    """
    action = controller.choose(step.hidden, step.logits, tau_prev, generators)
    tokens = sample(
        step.logits, action.tau, generators, top_k=params.top_k, top_p=params.top_p, greedy=params.greedy
    )
    logprobs = token_log_probs(step.logits, tokens, action.tau.squeeze(-1))
    return StepResult(tokens=tokens, action=action, token_logprobs=logprobs)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    controller: TemperatureController,
    prompt_ids: torch.Tensor,
    params: SamplingParams,
    generators: RandomSource = None,
    *,
    use_cache: bool = True,
    pad_token_id: int = 0,
    keep_logits: bool = False,
    observe: Callable[[StepOutput], None] | None = None,
) -> Generation:
    """Decode up to `max_new_tokens` per row from prompts (B, T) of equal length.

    A row stops at EOS; the loop stops when every row has. `use_cache=False`
    recomputes the whole sequence at each step (the check on the cache).
    `generators` given as `CounterNoise` is the noise of the first new token;
    new token t draws from its counters advanced by t. `observe` is
    called with each step's logits and hidden state before its token is drawn.
    """
    batch, prompt_len = prompt_ids.shape
    device = prompt_ids.device
    cache = new_cache() if use_cache else None

    # 1) prefill
    step = prefill(model, prompt_ids, cache)
    tau = controller.initial_tau(batch, device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), params.max_new_tokens, dtype=torch.long, device=device)
    records: list[StepResult] = []
    logits_seen: list[torch.Tensor] = []

    for t in range(params.max_new_tokens):
        # 2) choose tau and sample, per row
        source = generators.advanced(t) if isinstance(generators, CounterNoise) else generators
        result = sample_step(controller, step, tau, source, params)
        result.tokens = torch.where(finished, pad_token_id, result.tokens)
        records.append(result)
        if keep_logits:
            logits_seen.append(step.logits)
        if observe is not None:
            observe(step)
        tau = result.action.tau
        if params.eos_token_id is not None:
            hit_eos = (result.tokens == params.eos_token_id) & ~finished
            lengths = torch.where(hit_eos, t + 1, lengths)
            finished |= hit_eos
            if bool(finished.all()):
                break
        if t + 1 == params.max_new_tokens:
            break
        # 3) feed the sampled tokens back
        if use_cache:
            positions = torch.full((batch,), prompt_len + t, dtype=torch.long, device=device)
            step = decode_step(model, result.tokens, positions, cache)
        else:
            so_far = torch.cat([prompt_ids, torch.stack([r.tokens for r in records], dim=1)], dim=1)
            step = _last(forward(model, so_far, last_only=True))

    generation = Generation(
        tokens=torch.stack([r.tokens for r in records], dim=1),
        taus=torch.cat([r.action.tau for r in records], dim=1),
        gates=torch.cat([r.action.gate for r in records], dim=1),
        z=torch.cat([r.action.z for r in records], dim=1),
        token_logprobs=torch.stack([r.token_logprobs for r in records], dim=1),
        temperature_logprobs=torch.cat([r.action.log_prob for r in records], dim=1),
        lengths=lengths.clamp(max=len(records)),
        finish_reasons=["eos" if done else "length" for done in finished.tolist()],
        logits=logits_seen,
    )
    # Zero the padding so sums and means over a row need no mask by mistake.
    pad = ~generation.mask
    for name in ("taus", "gates", "z", "token_logprobs", "temperature_logprobs"):
        getattr(generation, name).masked_fill_(pad, 0.0)
    return generation
