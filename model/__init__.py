"""IntroLLM model core: the LM, its learned temperature head, the sampler,
reference decoding and the checkpoint format. Knows nothing of HTTP or
training loops."""

from model.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    CheckpointInfo,
    Manifest,
    load_checkpoint,
    read_checkpoint_info,
    read_manifest,
    save_checkpoint,
    write_manifest,
)
from model.controllers import (
    EntropyTemperature,
    FixedTemperature,
    LearnedTemperature,
    TemperatureController,
    constant_action,
)
from model.decode import Generation, SamplingParams, StepOutput, StepResult, decode_step, generate, prefill, sample_step
from model.draft import DRAFT_STATISTICS, Draft, decode_draft, draft_summary_size, summarise_draft
from model.lm import (
    AttentionLayout,
    LMOutput,
    UnsupportedModelError,
    attention_layout,
    forward,
    lm_hidden_size,
    new_cache,
)
from model.noise import CounterNoise
from model.prompt_format import (
    PLAIN,
    PromptFormat,
    PromptFormatError,
    choose_prompt_format,
    render_prompt,
    render_text,
    user_message,
)
from model.sampling import sample, token_log_probs
from model.temperature_head import ActionDistribution, HeadConfig, TemperatureAction, TemperatureHead
from model.tiny import TinyLMConfig, build_char_tokenizer, build_tiny_lm

__all__ = [
    "DRAFT_STATISTICS",
    "Draft",
    "FORMAT_VERSION",
    "ActionDistribution",
    "AttentionLayout",
    "Checkpoint",
    "CounterNoise",
    "CheckpointError",
    "EntropyTemperature",
    "FixedTemperature",
    "Generation",
    "HeadConfig",
    "LMOutput",
    "LearnedTemperature",
    "Manifest",
    "PLAIN",
    "PromptFormat",
    "PromptFormatError",
    "SamplingParams",
    "StepOutput",
    "StepResult",
    "TemperatureAction",
    "TemperatureController",
    "TemperatureHead",
    "TinyLMConfig",
    "UnsupportedModelError",
    "attention_layout",
    "build_char_tokenizer",
    "build_tiny_lm",
    "choose_prompt_format",
    "constant_action",
    "decode_draft",
    "decode_step",
    "draft_summary_size",
    "forward",
    "generate",
    "lm_hidden_size",
    "load_checkpoint",
    "read_checkpoint_info",
    "CheckpointInfo",
    "new_cache",
    "prefill",
    "read_manifest",
    "render_prompt",
    "render_text",
    "sample",
    "sample_step",
    "save_checkpoint",
    "summarise_draft",
    "token_log_probs",
    "user_message",
    "write_manifest",
]
