"""Service test fixtures: a tiny random checkpoint shared by the session, and a default server per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model import Checkpoint, build_char_tokenizer, build_tiny_lm, load_checkpoint
from tests.model.own_models import save_with_head
from tests.service.support import TEST_LM, LiveServer, settings_for, start_server, stop_server


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A random tiny checkpoint whose head varies tau with the hidden state (read-only for tests)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, TEST_LM, seed=0)
    return save_with_head(tmp_path_factory.mktemp("ckpt") / "tiny-test", model, tokenizer)


@pytest.fixture(scope="session")
def checkpoint(checkpoint_dir) -> Checkpoint:
    """The same checkpoint loaded in the test process, for reference decoding."""
    return load_checkpoint(checkpoint_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def server(checkpoint_dir) -> Iterator[LiveServer]:
    """A server with default test settings, shared by a module's tests."""
    live = start_server(settings_for(checkpoint_dir))
    yield live
    stop_server(live)


