"""The checkpoint format: save, load and validate a served model.

A checkpoint is a directory:

    config.json, model.safetensors[, ...]   the LM, as `save_pretrained` writes it
    tokenizer.json, tokenizer_config.json   the tokenizer, likewise
    temperature_head.safetensors            the head's weights
    introllm.json                           the manifest: format version, head
                                            config (tau range and the head's
                                            inputs included), base
                                            model name, prompt format (plain
                                            or chat template; absent = plain),
                                            training summary

What it does: writes that directory, and loads it back after checking
everything, failing with a `CheckpointError` whose one-line message names the
file and what is wrong with it (missing, truncated, not JSON, not matching).
Every safetensors header is checked before any weight is read. Weights are
read from safetensors only: a directory holding pickled weights (.bin, .pt,
...) is refused outright, nothing is ever unpickled, and `trust_remote_code`
stays off unless the caller turns it on.

What it does not do: decide where checkpoints live or download anything; the
path is the operator's, never a request's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from model.checkpoint_files import (
    CONFIG_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    MANIFEST_FILE,
    CheckpointError,
    Manifest,
    check_files,
    lm_weight_files,
    read_manifest,
    reason,
    tokenizer_error,
    write_manifest,
)
from model.draft import DRAFT_STATISTICS, draft_summary_size
from model.lm import lm_hidden_size
from model.prompt_format import PLAIN, PromptFormat
from model.temperature_head import HeadConfig, TemperatureHead


@dataclass
class Checkpoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    head: TemperatureHead
    manifest: Manifest
    path: Path


def save_checkpoint(
    path: str | os.PathLike,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    head: TemperatureHead,
    *,
    base_model: str,
    training: dict[str, Any] | None = None,
    prompt_format: PromptFormat = PLAIN,
) -> Path:
    """Write the checkpoint directory (created if needed) and return its path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    state = {name: tensor.detach().float().cpu().contiguous() for name, tensor in head.state_dict().items()}
    save_file(state, str(path / HEAD_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    write_manifest(path, Manifest(FORMAT_VERSION, head.config, base_model, training or {}, prompt_format))
    # save_pretrained writes weights with mode 0600; a server running as
    # another user (the container's) must be able to read them.
    for item in path.iterdir():
        if item.is_file():
            item.chmod(0o644)
    return path


def _load_head(path: Path, config: HeadConfig, device: torch.device | str) -> TemperatureHead:
    head = TemperatureHead(config)
    expected = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    try:
        state = load_file(str(path / HEAD_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path / HEAD_FILE}: {reason(exc)}") from exc
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise CheckpointError(
            f"{path / HEAD_FILE} does not match the manifest's head config (hidden_size={config.hidden_size}): "
            f"expected tensors {expected}, found {found}"
        )
    head.load_state_dict(state)
    return head.to(device).eval()


def _load_config(path: Path, trust_remote_code: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"cannot read the LM config {path / CONFIG_FILE}: {reason(exc)}") from exc


def _load_tokenizer(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise tokenizer_error(path, exc) from exc


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    trust_remote_code: bool = False,
) -> Checkpoint:
    """Load and validate a checkpoint. The LM gets `dtype`; the head stays float32."""
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path)
    head = _load_head(path, manifest.head, device)
    # transformers raises many types (OSError, ValueError, KeyError, its own,
    # tokenizers' plain Exception) for a bad file; each step names its files.
    config = _load_config(path, trust_remote_code)
    tokenizer = _load_tokenizer(path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        weights = ", ".join(str(file) for file in lm_weight_files(path))
        raise CheckpointError(f"cannot load the LM from {weights} with {CONFIG_FILE}: {reason(exc)}") from exc
    lm_width = lm_hidden_size(model)
    if lm_width != manifest.head.hidden_size:
        raise CheckpointError(
            f"temperature head hidden_size {manifest.head.hidden_size} does not match the LM's hidden size {lm_width}: "
            f"{path / HEAD_FILE} (sized by {MANIFEST_FILE}) is for another LM than {CONFIG_FILE}"
        )
    if manifest.head.reads_draft and manifest.head.draft_size != draft_summary_size(lm_width):
        raise CheckpointError(
            f"temperature head draft_size {manifest.head.draft_size} in {path / MANIFEST_FILE} does not match the "
            f"draft summary of this LM ({draft_summary_size(lm_width)} = {len(DRAFT_STATISTICS)} statistics + "
            f"hidden size {lm_width})"
        )
    model = model.to(device).eval()
    return Checkpoint(model=model, tokenizer=tokenizer, head=head, manifest=manifest, path=path)
