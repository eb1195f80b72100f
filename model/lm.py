"""One forward of any Hugging Face causal LM that returns logits and the last hidden state.

What it does: runs the model once and hands back both the logits and the
last decoder layer's hidden state (after the final norm: the state that
produced those logits), which the temperature head reads. Works for any
`AutoModelForCausalLM`, since it uses the model's own forward
(`output_hidden_states=True`) rather than re-assembling decoder and LM head,
so final-logit soft-capping and the like are kept.

`attention_layout` reads which attention each decoder layer runs (global or
a sliding window of how many tokens) from the config, as transformers' own
cache does, and refuses in one line, naming the layer type, what a cache of
keys and values cannot hold: linear-attention, state-space and other
recurrent layers, chunked or compressed attention, layers sharing another
layer's cache. Serving (service/engine/kv.py) and training start both call it.

What it does not do: sampling, temperatures or caching policy; the KV cache is
an explicit object the caller creates (`new_cache`) and passes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, get_layer_types_and_kwargs

from model.layout import GLOBAL, SLIDING, AttentionLayout, UnsupportedModelError, check_layer_types


def attention_layout(config: PretrainedConfig, model: PreTrainedModel | None = None) -> AttentionLayout:
    """Each decoder layer's attention, from `config.layer_types` or, without them, the window settings
    (`sliding_window`), as `DynamicCache(config=...)` reads them. Raises UnsupportedModelError naming the
    first layer type a cache of keys and values cannot serve; with `model`, also a recurrent-state model
    whose config names no layer types (RWKV, xLSTM)."""
    text = config.get_text_config(decoder=True)
    model_type = getattr(text, "model_type", "") or type(text).__name__
    declared = getattr(text, "layer_types", None)
    if declared is not None:  # checked first: reading other types' settings can fail (chunk sizes)
        check_layer_types(model_type, list(declared))
    if "reuse" in (getattr(text, "kv_sharing_modes", None) or ()):
        raise UnsupportedModelError(f"{model_type}: layers that reuse another layer's keys and values cannot be served")
    names, kwargs = get_layer_types_and_kwargs(text)  # per layer; inferred from the window settings if undeclared
    check_layer_types(model_type, names)
    if model is not None and _keeps_own_state(model):
        raise UnsupportedModelError(
            f"{model_type} keeps a recurrent state: the KV cache serves {GLOBAL} and {SLIDING} layers only"
        )
    windows = []
    for name, extra in zip(names, kwargs, strict=True):
        window = extra.get("sliding_window") if name == SLIDING else None
        if name == SLIDING and not (isinstance(window, int) and window >= 1):
            raise UnsupportedModelError(f"{model_type}: a {SLIDING} layer needs sliding_window >= 1, got {window!r}")
        windows.append(window)
    return AttentionLayout(tuple(names), tuple(windows))


def _keeps_own_state(model: PreTrainedModel) -> bool:
    """Whether transformers decodes this model without a DynamicCache: a recurrent state (RWKV, xLSTM, Mamba)
    or a cache of its own. transformers 5.24 marked stateful classes `_is_stateful`; 5.25 dropped the mark,
    and `_supports_default_dynamic_cache` (what generate() asks before it builds a DynamicCache, in both) is
    the one signal left for a class whose config names no layer types."""
    if getattr(model, "_is_stateful", False):
        return True
    supports_dynamic_cache = getattr(model, "_supports_default_dynamic_cache", None)
    return callable(supports_dynamic_cache) and not supports_dynamic_cache()


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
