"""A tiny from-scratch causal LM and a character-level tokenizer.

What it does: builds a few-million-parameter Llama-architecture model with
random weights and a character tokenizer (printable ASCII plus newline) that
`AutoTokenizer.from_pretrained` loads offline. Training starts from these and
the tests use them, so nothing is ever downloaded.

What it does not do: train anything, or pick a task format; the tokenizer is
task-agnostic and maps characters outside its alphabet to `<unk>`.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
# Printable ASCII (space included) plus newline: enough for any task we generate
# and for a person typing a prompt at the service.
ALPHABET = "\n" + "".join(ch for ch in string.printable if ch.isprintable())


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of the tiny model. Defaults give about 3.2M parameters."""

    hidden_size: int = 256  # width of the residual stream
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 4  # key/value heads (fewer than num_heads = grouped-query attention)
    intermediate_size: int = 768  # MLP width
    max_position_embeddings: int = 512  # longest sequence
    rope_theta: float = 10000.0  # rotary embedding base


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character, special tokens first."""
    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + list(ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    # `[\s\S]` and not `.`: the regex engine's `.` skips newlines and `(?s)` is rejected.
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=_regex(r"[\s\S]"), behavior="isolated")
    # Fuse, or decode would join characters with spaces.
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def build_tiny_lm(
    tokenizer: PreTrainedTokenizerFast, config: TinyLMConfig | None = None, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama model sized by `config`, vocabulary from `tokenizer`."""
    config = config or TinyLMConfig()
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(hf_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def tiny_config_dict(config: TinyLMConfig) -> dict:
    return asdict(config)
