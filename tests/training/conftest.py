"""Fixtures for the trainer tests: a micro checkpoint and a few Countdown problems."""

from __future__ import annotations

import pytest
import torch

from model import HeadConfig, TemperatureHead, TinyLMConfig, build_char_tokenizer, build_tiny_lm, save_checkpoint
from training.tasks.countdown import CountdownConfig, Problem, split

# The same micro shape as the session `tiny_lm`: a rollout of a few dozen rows takes milliseconds.
MICRO_LM = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


@pytest.fixture(scope="session")
def micro_checkpoint(tmp_path_factory):
    """A random-init micro LM with the head at its prior, saved as a checkpoint (read-only for tests)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, MICRO_LM, seed=0)
    torch.manual_seed(0)
    head = TemperatureHead(HeadConfig(hidden_size=MICRO_LM.hidden_size))
    path = tmp_path_factory.mktemp("micro") / "init"
    return save_checkpoint(path, model, tokenizer, head, base_model="micro-test")


@pytest.fixture(scope="session")
def countdown_problems() -> list[Problem]:
    train, _ = split(CountdownConfig(), 50, 10, 0)
    return train
