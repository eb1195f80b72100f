"""Small pieces every training command shares: JSONL logging, code version, threads, seeding."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch


class JsonlLog:
    """Appends one JSON object per line; a no-op on ranks other than 0."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


# What `code_version` calls the code: the packages training runs, and the pinned dependencies.
CODE_PATHS = ("model", "training", "pyproject.toml")


def code_version() -> str:
    """The git commit of this code (with '-dirty' for uncommitted changes to it), or 'unknown'.

    Only the code counts: `make default-model` deletes the bundled checkpoint before training
    into it, and a deleted data file does not make the code that ran any different."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def seeded_generator(device: torch.device, *parts: int) -> torch.Generator:
    """A generator whose seed is a deterministic function of `parts` (seed, step, row, ...)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)
