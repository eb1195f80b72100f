"""One forward of any Hugging Face causal LM that returns logits and the last hidden state.

What it does: runs the model once and hands back both the logits and the
last decoder layer's hidden state (after the final norm: the state that
produced those logits), which the temperature head reads. Works for any
`AutoModelForCausalLM`, since it uses the model's own forward
(`output_hidden_states=True`) rather than re-assembling decoder and LM head,
so final-logit soft-capping and the like are kept.

What it does not do: sampling, temperatures or caching policy; the KV cache is
an explicit object the caller creates (`new_cache`) and passes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache


@dataclass
class LMOutput:
    """logits (B, T', V) and hidden (B, T', d), T' = T or 1 with `last_only`."""

    logits: torch.Tensor
    hidden: torch.Tensor


def new_cache() -> Cache:
    """An empty KV cache. Built without the model config on purpose: a
    config-built cache trims sliding-window layers, which breaks row merges."""
    return DynamicCache()


def lm_hidden_size(model: PreTrainedModel) -> int:
    """Width of the hidden state that feeds the LM head."""
    return int(model.get_output_embeddings().weight.shape[-1])


def forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    *,
    cache: Cache | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    last_only: bool = False,
    logits_at: torch.Tensor | None = None,
) -> LMOutput:
    """Logits and last hidden state for input_ids (B, T) in one pass.

    With `cache`, the new keys and values are appended to it in place.
    `last_only` computes logits for the last position only (prefill);
    `logits_at` (n,), for the given sequence positions only (logits (B, n, V);
    hidden stays (B, T, d)): right-padded prompts whose last tokens differ.
    position_ids (B, T) must be given whenever rows are not all at the same
    position: transformers 5 infers them from the cache length alone.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=cache is not None,
        output_hidden_states=True,
        logits_to_keep=logits_at if logits_at is not None else 1 if last_only else 0,
    )
    hidden = out.hidden_states[-1]
    if last_only:
        hidden = hidden[:, -1:]
    return LMOutput(logits=out.logits, hidden=hidden)
