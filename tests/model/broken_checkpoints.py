"""Ways to break a saved checkpoint directory, one file at a time.

Shared by the unit tests of `load_checkpoint` and the tests of the console
command, which both check that each break is reported by naming the file.
Each entry: (case id, function breaking the directory in place, the file
name the error must mention).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from model import HeadConfig, TemperatureHead
from model.checkpoint import HEAD_FILE, MANIFEST_FILE

LM_FILE = "model.safetensors"


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_json(file: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def _head_of_another_width(path: Path) -> None:
    # Manifest and head weights agree with each other (width 32), not with the LM (64).
    head = TemperatureHead(HeadConfig(hidden_size=32))
    save_file({name: t.contiguous() for name, t in head.state_dict().items()}, str(path / HEAD_FILE))
    _edit_json(path / MANIFEST_FILE, lambda data: data["head"].update(hidden_size=32))


def _pickled_weights_only(path: Path) -> None:
    (path / LM_FILE).unlink()
    (path / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


BROKEN_CHECKPOINTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("lm-weights-truncated", lambda p: _truncate(p / LM_FILE), LM_FILE),
    ("lm-weights-not-safetensors", lambda p: (p / LM_FILE).write_bytes(b"not a safetensors file"), LM_FILE),
    ("lm-weights-missing", lambda p: (p / LM_FILE).unlink(), LM_FILE),
    ("head-weights-truncated", lambda p: _truncate(p / HEAD_FILE), HEAD_FILE),
    ("head-weights-missing", lambda p: (p / HEAD_FILE).unlink(), HEAD_FILE),
    ("head-width-not-matching-lm", _head_of_another_width, HEAD_FILE),
    ("pickled-weights-only", _pickled_weights_only, "pytorch_model.bin"),
    ("tokenizer-garbage", lambda p: (p / "tokenizer.json").write_text("{ this is not a tokenizer"), "tokenizer.json"),
    ("tokenizer-missing", lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json"),
    ("manifest-missing", lambda p: (p / MANIFEST_FILE).unlink(), MANIFEST_FILE),
    ("manifest-not-json", lambda p: (p / MANIFEST_FILE).write_text("format_version: 1"), MANIFEST_FILE),
    ("manifest-wrong-version", lambda p: _edit_json(p / MANIFEST_FILE, lambda d: d.update(format_version=99)),
     MANIFEST_FILE),
    ("manifest-missing-keys", lambda p: _edit_json(p / MANIFEST_FILE, lambda d: d.pop("head")), MANIFEST_FILE),
    ("config-not-json", lambda p: (p / "config.json").write_text("{ not json"), "config.json"),
    ("config-unknown-model-type", lambda p: _edit_json(p / "config.json", lambda d: d.update(model_type="nope")),
     "config.json"),
]
