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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from model.draft import DRAFT_STATISTICS, draft_summary_size
from model.lm import lm_hidden_size
from model.prompt_format import PLAIN, PromptFormat, PromptFormatError
from model.temperature_head import HeadConfig, TemperatureHead

FORMAT_VERSION = 1
MANIFEST_FILE = "introllm.json"
HEAD_FILE = "temperature_head.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
LM_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says why."""


@dataclass
class Manifest:
    format_version: int
    head: HeadConfig
    base_model: str
    training: dict[str, Any] = field(default_factory=dict)
    # How prompts were rendered in training; the server renders them the same way.
    prompt_format: PromptFormat = PLAIN

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "base_model": self.base_model,
            "head": self.head.to_dict(),
            "tau_range": [self.head.tau_min, self.head.tau_max],
            "prompt_format": self.prompt_format.to_dict(),
            "training": self.training,
        }


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


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """(Re)write a checkpoint's manifest, e.g. to record an evaluation of its weights."""
    target = Path(path) / MANIFEST_FILE
    target.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    target.chmod(0o644)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and check the manifest alone (cheap: no weights are read)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"missing file {MANIFEST_FILE} in checkpoint {path}")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path} is not valid JSON: {exc}") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format version {version!r} in {manifest_path} (this code reads {FORMAT_VERSION})"
        )
    try:
        head = HeadConfig.from_dict(data["head"])
        # Checkpoints written before prompt formats were recorded are plain text.
        prompt_format = PromptFormat.from_dict(data["prompt_format"]) if "prompt_format" in data else PLAIN
        return Manifest(version, head, str(data["base_model"]), dict(data.get("training", {})), prompt_format)
    except KeyError as exc:
        raise CheckpointError(f"invalid manifest {manifest_path}: missing key {exc}") from exc
    except (TypeError, ValueError, AttributeError, PromptFormatError) as exc:
        raise CheckpointError(f"invalid manifest {manifest_path}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """An underlying library error on one line (some span paragraphs), short enough for a log line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def _check_files(path: Path) -> None:
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise CheckpointError(
            f"refusing non-safetensors weights in {path}: {', '.join(pickled)} (only .safetensors files are loaded)"
        )
    for name in (CONFIG_FILE, HEAD_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"missing file {name} in checkpoint {path}")
    if not any((path / name).is_file() for name in LM_WEIGHT_FILES):
        raise CheckpointError(f"missing file {LM_WEIGHT_FILES[0]} in checkpoint {path}: no LM weights")
    # Headers first: a truncated or foreign file is reported by name before
    # any loader (whose errors name neither the file nor the problem) sees it.
    for weights in (path / HEAD_FILE, *_lm_weight_files(path)):
        _check_safetensors_header(weights)


def _lm_weight_files(path: Path) -> list[Path]:
    single = path / LM_WEIGHT_FILES[0]
    if single.is_file():
        return [single]
    index = path / LM_WEIGHT_FILES[1]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"invalid shard index {index}: {_reason(exc)}") from exc
    for shard in shards:
        if not (path / shard).is_file():
            raise CheckpointError(f"missing file {shard} in checkpoint {path}: named by {index.name}")
    return [path / shard for shard in shards]


def _check_safetensors_header(file: Path) -> None:
    """Parse the header and check that the file covers every tensor it lists (reads no tensor data)."""
    try:
        with safe_open(str(file), framework="pt") as weights:
            weights.keys()
    except Exception as exc:  # safetensors raises its own error types, OSError for unreadable files
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated?): {_reason(exc)}") from exc


def _load_head(path: Path, config: HeadConfig, device: torch.device | str) -> TemperatureHead:
    head = TemperatureHead(config)
    expected = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    try:
        state = load_file(str(path / HEAD_FILE))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path / HEAD_FILE}: {_reason(exc)}") from exc
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise CheckpointError(
            f"{path / HEAD_FILE} does not match the manifest's head config (hidden_size={config.hidden_size}): "
            f"expected tensors {expected}, found {found}"
        )
    head.load_state_dict(state)
    return head.to(device).eval()


@dataclass
class CheckpointInfo:
    """A checkpoint without its weights: what a server's API side needs (tokenizer, limits, tau range)."""

    manifest: Manifest
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    path: Path


def read_checkpoint_info(path: str | os.PathLike, *, trust_remote_code: bool = False) -> CheckpointInfo:
    """Check a checkpoint as `load_checkpoint` does (every weight file's header included) and load
    everything but the weights. Fails with the same `CheckpointError`s."""
    path = Path(path)
    manifest = read_manifest(path)
    _check_files(path)
    config = _load_config(path, trust_remote_code)
    tokenizer = _load_tokenizer(path, trust_remote_code)
    return CheckpointInfo(manifest=manifest, tokenizer=tokenizer, config=config, path=path)


def _load_config(path: Path, trust_remote_code: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"cannot read the LM config {path / CONFIG_FILE}: {_reason(exc)}") from exc


def _load_tokenizer(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        missing = "" if (path / TOKENIZER_FILE).is_file() else f"missing file {TOKENIZER_FILE}; "
        raise CheckpointError(f"cannot load the tokenizer {path / TOKENIZER_FILE}: {missing}{_reason(exc)}") from exc


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
    _check_files(path)
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
        weights = ", ".join(str(file) for file in _lm_weight_files(path))
        raise CheckpointError(f"cannot load the LM from {weights} with {CONFIG_FILE}: {_reason(exc)}") from exc
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
