"""IntroLLM model core: the LM, its learned temperature head, the sampler,
reference decoding and the checkpoint format. Knows nothing of HTTP or
training loops.

`from model import X` imports X's module on first use (PEP 562), not every
module at once: the API process imports the torch-free ones (checkpoint_files,
head_config, layout, prompt_format, text_tokenizer, chat_template) and so never
loads torch, which the others import.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name -> the module that defines it.
_WHERE: dict[str, str] = {
    **dict.fromkeys(("Checkpoint", "load_checkpoint", "save_checkpoint"), "model.checkpoint"),
    **dict.fromkeys(
        (
            "CheckpointError",
            "CheckpointInfo",
            "FORMAT_VERSION",
            "Manifest",
            "read_checkpoint_info",
            "read_manifest",
            "write_manifest",
        ),
        "model.checkpoint_files",
    ),
    **dict.fromkeys(
        ("EntropyTemperature", "FixedTemperature", "LearnedTemperature", "TemperatureController", "constant_action"),
        "model.controllers",
    ),
    **dict.fromkeys(
        (
            "Generation",
            "SamplingParams",
            "StepOutput",
            "StepResult",
            "decode_step",
            "generate",
            "prefill",
            "sample_step",
        ),
        "model.decode",
    ),
    **dict.fromkeys(
        ("DRAFT_STATISTICS", "Draft", "decode_draft", "draft_summary_size", "summarise_draft"), "model.draft"
    ),
    **dict.fromkeys(("HeadConfig",), "model.head_config"),
    **dict.fromkeys(("AttentionLayout", "UnsupportedModelError"), "model.layout"),
    **dict.fromkeys(("LMOutput", "attention_layout", "forward", "lm_hidden_size", "new_cache"), "model.lm"),
    **dict.fromkeys(("CounterNoise",), "model.noise"),
    **dict.fromkeys(
        (
            "PLAIN",
            "PromptFormat",
            "PromptFormatError",
            "choose_prompt_format",
            "render_prompt",
            "render_text",
            "user_message",
        ),
        "model.prompt_format",
    ),
    **dict.fromkeys(("sample", "token_log_probs"), "model.sampling"),
    **dict.fromkeys(("ActionDistribution", "TemperatureAction", "TemperatureHead"), "model.temperature_head"),
    **dict.fromkeys(("TextTokenizer",), "model.text_tokenizer"),
    **dict.fromkeys(("TinyLMConfig", "build_char_tokenizer", "build_tiny_lm"), "model.tiny"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
