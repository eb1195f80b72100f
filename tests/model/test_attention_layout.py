"""`attention_layout`: each layer's window read from the config as transformers reads it, windows as long as
the context counted as global, and what a key/value cache cannot serve refused in one line naming it."""

from __future__ import annotations

import pytest
from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from model import UnsupportedModelError, attention_layout, build_char_tokenizer
from tests.model.own_models import mamba, rwkv


@pytest.mark.parametrize(
    ("config", "windows", "described"),
    [
        (LlamaConfig(num_hidden_layers=2), (None, None), "global"),
        (MistralConfig(num_hidden_layers=2, sliding_window=32), (32, 32), "sliding window 32"),
        (Phi3Config(num_hidden_layers=2, sliding_window=100), (100, 100), "sliding window 100"),
        (Gemma2Config(num_hidden_layers=4, sliding_window=32), (32, None, 32, None),
         "mixed: 2 global, 2 sliding window 32"),
        (Gemma3TextConfig(num_hidden_layers=7, sliding_window=32), (32,) * 5 + (None, 32),
         "mixed: 1 global, 6 sliding window 32"),
        (Qwen2Config(num_hidden_layers=3), (None, None, None), "global"),  # use_sliding_window off
        (Qwen2Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=32, max_window_layers=1),
         (None, 32, 32), "mixed: 1 global, 2 sliding window 32"),
    ],
    ids=["llama", "mistral", "phi3", "gemma2", "gemma3", "qwen2", "qwen2-sliding"],
)
def test_each_layers_window_comes_from_layer_types_or_the_window_settings(config, windows, described):
    layout = attention_layout(config)
    assert layout.windows == windows
    assert layout.describe() == described


def test_a_window_at_least_as_long_as_the_context_is_global():
    stock = attention_layout(MistralConfig(num_hidden_layers=2))  # sliding_window 4096
    assert stock.windows == (4096, 4096) and not stock.is_global
    assert stock.within(512).is_global and stock.within(4096).is_global
    assert stock.within(4097).windows == (4096, 4096)
    gemma = attention_layout(Gemma2Config(num_hidden_layers=2, sliding_window=64)).within(64)
    assert gemma.is_global and gemma.window_of() == {"sliding_attention": None, "full_attention": None}


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (LlamaConfig(num_hidden_layers=2, layer_types=["full_attention", "linear_attention"]),
         "layer 1 is 'linear_attention'"),
        (LlamaConfig(num_hidden_layers=2, layer_types=["chunked_attention", "full_attention"]),
         "layer 0 is 'chunked_attention'"),
        (Qwen2Config(num_hidden_layers=2, layer_types=["full_attention", "conv"]), "layer 1 is 'conv'"),
    ],
    ids=["linear-attention", "chunked-attention", "convolution"],
)
def test_layers_a_key_value_cache_cannot_hold_are_refused_by_name(config, named):
    with pytest.raises(UnsupportedModelError, match=named) as refused:
        attention_layout(config)
    assert "\n" not in str(refused.value)


def test_recurrent_models_are_refused_from_their_config_or_their_class():
    tokenizer = build_char_tokenizer()
    with pytest.raises(UnsupportedModelError, match="mamba layer 0 is 'linear_attention'"):
        attention_layout(mamba(tokenizer).config)
    model = rwkv(tokenizer)
    attention_layout(model.config)  # RWKV's config names no layer types: only the class says it is stateful
    with pytest.raises(UnsupportedModelError, match="rwkv keeps a recurrent state"):
        attention_layout(model.config, model)
