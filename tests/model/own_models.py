"""Tiny random models of other architectures than the bundled Llama, one per attention layout, and
checkpoints of them written as training writes them.

Shared by the tests of `model.attention_layout`, the slot cache, the server and training start:
  - `sliding_mistral`: every layer a sliding window (Mistral), `WINDOW` tokens unless told; `sliding_phi3`
    the same from Phi-3's config; `global_then_sliding_qwen2`, Qwen2's `use_sliding_window`;
  - `mixed_gemma2` / `mixed_gemma3`: sliding layers mixed with global ones (Gemma 2 alternates,
    runs eager attention with soft-capping; Gemma 3 text runs sdpa with a rope per layer type);
  - `mamba` and `rwkv`: recurrent-state models a key/value cache cannot serve (Mamba's config names
    its layers `linear_attention`; RWKV's names none, only the model class says it is stateful).
Nothing is downloaded: configs are built here, vocabularies are the character tokenizer's.

`train_through_the_cli` runs sft -> grpo -> eval on one of them at micro sizes; `save_with_head` writes
one with random weights and a random head through training's own checkpoint writer (faster).

What it does not do: train anything to be good at anything.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MambaConfig,
    MambaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    RwkvConfig,
    RwkvForCausalLM,
)

from model import HeadConfig, TemperatureHead, lm_hidden_size, save_checkpoint

WINDOW = 16  # shorter than the prompts and outputs of the tests that use it
CONTEXT = 256


def _attention_shape(tokenizer: PreTrainedTokenizerFast) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=CONTEXT,
        # Wider than the default 0.02: well-separated logits, so no greedy near-tie flips with float rounding.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def _seeded(build: Callable[[], PreTrainedModel], seed: int) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def sliding_mistral(tokenizer: PreTrainedTokenizerFast, window: int = WINDOW, seed: int = 0) -> MistralForCausalLM:
    config = MistralConfig(num_hidden_layers=2, sliding_window=window, **_attention_shape(tokenizer))
    return _seeded(lambda: MistralForCausalLM(config), seed)


def mixed_gemma2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Gemma2ForCausalLM:
    """Layers: sliding, global (Gemma 2's alternation)."""
    config = Gemma2Config(num_hidden_layers=2, sliding_window=WINDOW, **_attention_shape(tokenizer))
    return _seeded(lambda: Gemma2ForCausalLM(config), seed)


def mixed_gemma3(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Gemma3ForCausalLM:
    """Layers: sliding, sliding, global (Gemma 3's pattern, shortened from 5:1)."""
    config = Gemma3TextConfig(num_hidden_layers=3, sliding_window=WINDOW, sliding_window_pattern=3,
                              **_attention_shape(tokenizer))
    return _seeded(lambda: Gemma3ForCausalLM(config), seed)


def sliding_phi3(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Phi3ForCausalLM:
    """Phi-3 style: no layer types, a `sliding_window` on every layer."""
    config = Phi3Config(num_hidden_layers=2, sliding_window=WINDOW, **_attention_shape(tokenizer))
    return _seeded(lambda: Phi3ForCausalLM(config), seed)


def global_then_sliding_qwen2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """Qwen2 with `use_sliding_window`: global below `max_window_layers`, sliding above."""
    config = Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                         **_attention_shape(tokenizer))
    return _seeded(lambda: Qwen2ForCausalLM(config), seed)


def global_qwen2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """Qwen2 as usually configured: every layer global (grouped-query attention, rotary positions)."""
    config = Qwen2Config(num_hidden_layers=2, **_attention_shape(tokenizer))
    return _seeded(lambda: Qwen2ForCausalLM(config), seed)


def gpt2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2: global attention, learned absolute positions, a fused QKV projection."""
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=CONTEXT,
                        initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return _seeded(lambda: GPT2LMHeadModel(config), seed)


def mamba(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> MambaForCausalLM:
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=32, state_size=4, num_hidden_layers=2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return _seeded(lambda: MambaForCausalLM(config), seed)


def rwkv(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> RwkvForCausalLM:
    config = RwkvConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, context_length=CONTEXT,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _seeded(lambda: RwkvForCausalLM(config), seed)


def save_model_folder(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    """A local Hugging Face model folder, as a user brings to `sft --init`."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_through_the_cli(root: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    """The README's own-model commands at micro sizes (a few seconds): the model folder and a JSONL of
    arithmetic problems -> sft -> grpo -> eval. Returns the grpo checkpoint, which the server loads."""
    from scripts.example_artifacts import arithmetic_problems, write_problems
    from training.__main__ import main

    folder = save_model_folder(root / "model", model, tokenizer)
    problems = write_problems(root / "problems.jsonl", arithmetic_problems())
    task = ["--task", "jsonl", "--jsonl-train", str(problems), "--jsonl-heldout-fraction", "0.2",
            "--jsonl-max-new-tokens", "12", "--threads", "1"]
    sft, grpo = root / "sft", root / "grpo"
    commands = [
        ["sft", "--init", str(folder), "--out", str(sft), *task, "--steps", "4", "--batch-size", "4", "--lr", "3e-3",
         "--warmup-steps", "1", "--eval-every", "0"],
        ["grpo", "--init", str(sft), "--out", str(grpo), *task, "--steps", "2", "--prompts-per-step", "2",
         "--group-size", "2", "--eval-every", "0", "--save-every", "0"],
        ["eval", "--checkpoint", str(grpo), "--problems", "2", "--samples", "2", "--controllers", "fixed:1.0,learned",
         "--plot-samples", "0", "--threads", "1"],
    ]
    for argv in commands:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv) == 0, argv
    return grpo


def save_with_head(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A serveable checkpoint (training's writer, `save_checkpoint`) with a random head whose tau varies
    with the hidden state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = TemperatureHead(HeadConfig(hidden_size=lm_hidden_size(model)))
        with torch.no_grad():
            head.fc2.weight.normal_(0, 0.5)
    return save_checkpoint(path, model, tokenizer, head, base_model=path.name)
