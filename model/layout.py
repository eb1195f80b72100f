"""Which attention each decoder layer runs, and the refusal of what a KV cache cannot hold; no torch.

What it does: `AttentionLayout` (per layer: global or a sliding window of how
many tokens), `UnsupportedModelError`, `check_layer_types` (one line naming the
first layer type that is neither global nor sliding attention), and
`refuse_declared_layer_types`, which applies that check to a config.json read
as plain JSON: the API process refuses such a model (Mamba's
"linear_attention", ...) before the engine process loads a weight.

What it does not do: infer layer types from window settings, or see a model
that keeps a recurrent state without naming its layers (RWKV): that is
model/lm.py's `attention_layout`, which the engine process runs on the
loaded config and model, with transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GLOBAL, SLIDING = "full_attention", "sliding_attention"  # transformers' names in `config.layer_types`
SERVED_LAYER_TYPES = (GLOBAL, SLIDING)


class UnsupportedModelError(ValueError):
    """A model the KV cache cannot serve; the message (one line) names the layer type at fault."""


@dataclass(frozen=True)
class AttentionLayout:
    """Per decoder layer: its attention type (`GLOBAL` or `SLIDING`) and window (tokens; None: global).

    A query at position p of a layer with window w attends to positions p-w+1..p
    (transformers' `sliding_window_overlay`: w tokens, itself included).
    """

    layer_types: tuple[str, ...]
    windows: tuple[int | None, ...]

    def within(self, context: int) -> AttentionLayout:
        """The layout for sequences of at most `context` tokens: a window that long or longer is global."""
        windows = tuple(None if w is None or w >= context else w for w in self.windows)
        return AttentionLayout(self.layer_types, windows)

    def window_of(self) -> dict[str, int | None]:
        """Each layer type's window; a layer type has one window (`SLIDING`'s is the config's `sliding_window`)."""
        return dict(zip(self.layer_types, self.windows, strict=True))

    @property
    def is_global(self) -> bool:
        return all(w is None for w in self.windows)

    def describe(self) -> str:
        """For a log line: 'global', 'sliding window 32', or 'mixed: 1 global, 3 sliding window 32'."""
        kinds = sorted(set(self.windows), key=lambda w: -1 if w is None else w)
        names = ["global" if w is None else f"sliding window {w}" for w in kinds]
        if len(kinds) == 1:
            return names[0]
        counts = [sum(1 for w in self.windows if w == kind) for kind in kinds]
        return "mixed: " + ", ".join(f"{n} {name}" for n, name in zip(counts, names, strict=True))


def check_layer_types(model_type: str, names: list[str]) -> None:
    for index, name in enumerate(names):
        if name not in SERVED_LAYER_TYPES:
            raise UnsupportedModelError(
                f"{model_type} layer {index} is {name!r}: the KV cache serves {GLOBAL} and {SLIDING} layers only"
            )


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder's settings: a multimodal config nests them (`text_config`), as transformers'
    `get_text_config(decoder=True)` finds them."""
    for key in ("text_config", "decoder", "language_config"):
        nested = config.get(key)
        if isinstance(nested, Mapping):
            return nested
    return config


def refuse_declared_layer_types(config: Mapping[str, Any]) -> None:
    """Raise UnsupportedModelError when config.json's `layer_types` (or `kv_sharing_modes`) name
    layers a KV cache cannot serve; a config that names none passes (the engine checks the model)."""
    text = text_config(config)
    model_type = str(text.get("model_type") or config.get("model_type") or "model")
    declared = text.get("layer_types")
    if isinstance(declared, list):
        check_layer_types(model_type, [str(name) for name in declared])
    if "reuse" in (text.get("kv_sharing_modes") or ()):
        raise UnsupportedModelError(f"{model_type}: layers that reuse another layer's keys and values cannot be served")
