"""The greedy draft a draft-reading temperature head looks at before it samples.

What it does: decodes one greedy continuation of each prompt (`decode_draft`)
and summarises it (`summarise_draft`) into a fixed-size vector per prompt:
eight confidence statistics of the LM's own distribution along the greedy path
(tau = 1), then the mean of the last-layer hidden states that produced the
draft's tokens. Measured on the bundled Countdown model, these statistics
predict which problems need hot sampling (cross-validated AUC 0.76) where the
prompt's own last hidden state does not (0.48): the information that says
"explore here" is in the model's draft, not in its prompt.

The summary is generic for any Hugging Face causal LM (it reads only logits
and hidden states) and per row: a row's summary does not depend on the other
rows of its batch (up to float rounding of batched matmuls).

What it does not do: choose temperatures (the head reads the summary, see
`temperature_head.py`), or score the draft against a reward; with n samples per
prompt the draft is one of the n (returned as sample 0), so it is not an extra
decode in anyone's cost accounting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from model.controllers import FixedTemperature
from model.decode import Generation, SamplingParams, StepOutput, generate

# In this order in the summary vector; each is transformed to an O(1) scale (see `summarise_draft`).
DRAFT_STATISTICS = (
    "min_top1_prob",  # lowest probability of the chosen (top-1) token
    "mean_top1_prob",
    "neg_total_logprob",  # log1p(-sum of log top-1 probabilities): how unlikely the whole path is
    "max_entropy",  # nats
    "mean_entropy",
    "min_top1_margin",  # smallest top-1 minus top-2 probability
    "uncertain_steps",  # log1p(number of steps with top-1 probability below UNCERTAIN_BELOW)
    "length",  # log1p(tokens in the draft, EOS included)
)
UNCERTAIN_BELOW = 0.9


def draft_summary_size(hidden_size: int) -> int:
    """Width of the summary vector for an LM of hidden size d: the statistics, then d pooled dims."""
    return len(DRAFT_STATISTICS) + hidden_size


@dataclass
class Draft:
    """Greedy drafts of B prompts: the generation (B, N) and the summary (B, len(DRAFT_STATISTICS) + d)."""

    generation: Generation
    summary: torch.Tensor

    @property
    def statistics(self) -> torch.Tensor:
        """The confidence statistics alone, (B, len(DRAFT_STATISTICS))."""
        return self.summary[:, : len(DRAFT_STATISTICS)]


def step_confidence(logits: torch.Tensor) -> torch.Tensor:
    """(..., 3): top-1 probability, top-1 minus top-2 probability and entropy (nats) of softmax(logits (..., V))."""
    probs = torch.softmax(logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)
    return torch.stack([top2[..., 0], top2[..., 0] - top2[..., 1], entropy], dim=-1)


def summarise_draft(confidence: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summary (B, 8 + d) of drafts from their per-step `step_confidence` (B, N, 3), hidden (B, N, d) and
    mask (B, N).

    Step t's values are those of the forward that chose draft token t; masked
    steps (after EOS) are ignored. A row with no step at all gets zeros.
    """
    mask = mask.bool()
    steps = mask.sum(dim=1).clamp_min(1)  # (B,)
    top1, margin, entropy = confidence.float().unbind(dim=-1)  # (B, N) each
    big = torch.full_like(top1, math.inf)
    masked = mask.float()
    stats = torch.stack(
        [
            torch.where(mask, top1, big).amin(dim=1),
            (top1 * masked).sum(dim=1) / steps,
            torch.log1p(-(torch.log(top1.clamp_min(1e-30)) * masked).sum(dim=1)),
            torch.where(mask, entropy, -big).amax(dim=1),
            (entropy * masked).sum(dim=1) / steps,
            torch.where(mask, margin, big).amin(dim=1),
            torch.log1p(((top1 < UNCERTAIN_BELOW) & mask).float().sum(dim=1)),
            torch.log1p(mask.float().sum(dim=1)),
        ],
        dim=1,
    )  # (B, 8)
    pooled = (hidden.float() * masked.unsqueeze(-1)).sum(dim=1) / steps.unsqueeze(-1)  # (B, d)
    summary = torch.cat([stats, pooled], dim=1)
    empty = ~mask.any(dim=1, keepdim=True)
    return torch.where(empty, torch.zeros_like(summary), summary)


@torch.no_grad()
def decode_draft(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int = 0,
) -> Draft:
    """Greedy drafts of prompts (B, T) of equal length, and their summaries.

    The generation records tau 1.0 (the LM's own distribution, which the
    statistics read) and no temperature action; its tokens are the argmax.
    Only three numbers per step are kept of the logits, never (B, N, V).
    """
    confidence: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []

    def keep(step: StepOutput) -> None:
        confidence.append(step_confidence(step.logits))
        hidden.append(step.hidden.float())

    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, eos_token_id=eos_token_id)
    generation = generate(model, FixedTemperature(1.0), prompt_ids, params, pad_token_id=pad_token_id, observe=keep)
    summary = summarise_draft(torch.stack(confidence, dim=1), torch.stack(hidden, dim=1), generation.mask)
    return Draft(generation=generation, summary=summary)
