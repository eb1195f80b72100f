"""A checkpoint's files, read without torch: the manifest, config.json, the tokenizer, weight headers.

What it does: the checkpoint directory's names, `CheckpointError`, the
manifest (`Manifest`, `read_manifest`, `write_manifest`), the checks made
before any weight is read (no pickled weights; config, head and LM weight
files present; every safetensors header complete), and `read_checkpoint_info`:
all of it plus config.json as JSON and the tokenizer (model/text_tokenizer.py),
which is what the API process needs. Each failure is one line naming the file.

What it does not do: load weights or build the model (model/checkpoint.py,
which imports torch and transformers and uses these checks first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.head_config import HeadConfig
from model.layout import text_config
from model.prompt_format import PLAIN, PromptFormat, PromptFormatError
from model.text_tokenizer import TOKENIZER_FILE, TextTokenizer

FORMAT_VERSION = 1
MANIFEST_FILE = "introllm.json"
HEAD_FILE = "temperature_head.safetensors"
CONFIG_FILE = "config.json"
LM_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own bound on a header


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
        raise CheckpointError(f"invalid manifest {manifest_path}: {reason(exc)}") from exc


def reason(exc: BaseException) -> str:
    """An underlying library error on one line (some span paragraphs), short enough for a log line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def check_files(path: Path) -> None:
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
    for weights in (path / HEAD_FILE, *lm_weight_files(path)):
        _check_safetensors_header(weights)


def lm_weight_files(path: Path) -> list[Path]:
    single = path / LM_WEIGHT_FILES[0]
    if single.is_file():
        return [single]
    index = path / LM_WEIGHT_FILES[1]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"invalid shard index {index}: {reason(exc)}") from exc
    for shard in shards:
        if not (path / shard).is_file():
            raise CheckpointError(f"missing file {shard} in checkpoint {path}: named by {index.name}")
    return [path / shard for shard in shards]


def _check_safetensors_header(file: Path) -> None:
    """Parse the header and check that the file covers every tensor it lists (reads no tensor data).

    Read here rather than with `safetensors.safe_open`, which imports torch for framework="pt": the
    API process checks every weight file's header without it. The format: an 8-byte little-endian
    header size, a JSON header of {name: {dtype, shape, data_offsets: [begin, end]}}, then the data,
    which the tensors' offsets must cover exactly (safetensors refuses a file otherwise)."""
    try:
        with file.open("rb") as stream:
            size = int.from_bytes(stream.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError(f"header size {size} out of range")
            header = json.loads(stream.read(size))
            data_size = file.stat().st_size - 8 - size
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        if data_size < 0 or max(ends, default=0) != data_size:
            raise ValueError(f"the tensors' data needs {max(ends, default=0)} bytes, the file holds {data_size}")
    except Exception as exc:  # OSError, JSON, a malformed header's KeyError/TypeError/ValueError
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated?): {reason(exc)}") from exc


@dataclass
class CheckpointInfo:
    """A checkpoint without its weights: what a server's API side needs (tokenizer, config.json, manifest)."""

    manifest: Manifest
    tokenizer: TextTokenizer
    config: dict[str, Any]  # config.json as JSON: read with `context_length`, checked with the layout's refusal
    path: Path


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Check a checkpoint as `load_checkpoint` does (every weight file's header included) and read
    everything but the weights, without torch or transformers. Fails with `CheckpointError`s naming the
    file; a config.json only transformers can judge (an unknown model type) is the engine process's."""
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path)
    return CheckpointInfo(manifest=manifest, tokenizer=read_tokenizer(path), config=read_config(path), path=path)


def read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the LM config {file}: {reason(exc)}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"cannot read the LM config {file}: not a JSON object")
    return config


def read_tokenizer(path: Path) -> TextTokenizer:
    try:
        return TextTokenizer.from_folder(path)
    except Exception as exc:  # tokenizers raises a plain Exception for a broken tokenizer.json
        raise tokenizer_error(path, exc) from exc


def tokenizer_error(path: Path, exc: BaseException) -> CheckpointError:
    """The one line for a tokenizer that does not load, whichever library failed to load it."""
    missing = "" if (path / TOKENIZER_FILE).is_file() else f"missing file {TOKENIZER_FILE}; "
    return CheckpointError(f"cannot load the tokenizer {path / TOKENIZER_FILE}: {missing}{reason(exc)}")


# config.json names for the context in some model types (transformers maps them to max_position_embeddings).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "context_length", "model_max_length")


def context_length(config: Mapping[str, Any]) -> int | None:
    """The LM's context, as `config.max_position_embeddings` reads it (the decoder's own in a nested
    config; under its other names in GPT-2-like configs), if the config says."""
    for settings in (text_config(config), config):
        for key in CONTEXT_KEYS:
            value = settings.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
