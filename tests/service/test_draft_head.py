"""Serving a checkpoint whose temperature head reads a greedy draft of the prompt.

Such a head is trained to choose the temperatures of the samples that follow
the draft; with n samples, choice 0 is the draft and the others follow its
summary (tests/service/test_samples.py checks them against the reference);
with one sample per request the service returns the draft itself
(the argmax at every step, reported at tau_min with no update), as evaluation
counts a draft-reading head's first sample. Fixed and entropy modes sample as
for any checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from model import (
    FixedTemperature,
    load_checkpoint,
)
from tests.service.support import (
    LiveServer,
    reference,
    reference_tokens,
    save_draft_head_checkpoint,
    settings_for,
    start_server,
    stop_server,
)

PROMPT = "12 34>56\n"


@pytest.fixture(scope="module")
def draft_checkpoint_dir(tmp_path_factory) -> Path:
    return save_draft_head_checkpoint(tmp_path_factory.mktemp("draft") / "draft-test")


@pytest.fixture(scope="module")
def draft_server(draft_checkpoint_dir) -> Iterator[LiveServer]:
    live = start_server(settings_for(draft_checkpoint_dir))
    yield live
    stop_server(live)


def post(server: LiveServer, body: dict) -> httpx.Response:
    with server.client() as client:
        return client.post("/v1/generate", json=body)


def test_a_learned_request_gets_the_greedy_draft_at_tau_min(draft_server, draft_checkpoint_dir):
    checkpoint = load_checkpoint(draft_checkpoint_dir, "cpu", torch.float32)
    body = {"prompt": PROMPT, "max_new_tokens": 12, "ignore_eos": True, "return_temperatures": True}
    first, second = post(draft_server, {**body, "seed": 1}).json(), post(draft_server, {**body, "seed": 2}).json()
    greedy = reference(checkpoint, PROMPT, max_new_tokens=12, seed=0, greedy=True, stop_at_eos=False,
                       controller=FixedTemperature(1.0))
    assert [t["id"] for t in first["tokens"]] == reference_tokens(greedy)
    assert first["text"] == second["text"]  # the seed does not matter: there is no randomness in a draft
    tau_min = checkpoint.head.config.tau_min
    assert all(t["temperature"] == pytest.approx(tau_min) and not t["temperature_updated"] for t in first["tokens"])
    assert first["temperature"]["mode"] == "learned" and first["temperature"]["updates"] == 0


def test_fixed_mode_samples_as_for_any_checkpoint(draft_server, draft_checkpoint_dir):
    checkpoint = load_checkpoint(draft_checkpoint_dir, "cpu", torch.float32)
    reply = post(draft_server, {"prompt": PROMPT, "max_new_tokens": 12, "ignore_eos": True, "seed": 5,
                                "temperature_mode": "fixed", "temperature": 1.3}).json()
    expected = reference(checkpoint, PROMPT, max_new_tokens=12, seed=5, stop_at_eos=False,
                         controller=FixedTemperature(1.3))
    assert reply["text"] == checkpoint.tokenizer.decode(reference_tokens(expected))
    assert reply["temperature"]["mean"] == pytest.approx(1.3)


def test_with_n_samples_choice_0_is_the_greedy_draft_and_the_others_sample(draft_server, draft_checkpoint_dir):
    checkpoint = load_checkpoint(draft_checkpoint_dir, "cpu", torch.float32)
    reply = post(draft_server, {"prompt": PROMPT, "max_new_tokens": 12, "ignore_eos": True, "seed": 3, "n": 4,
                                "return_temperatures": True}).json()
    greedy = reference(checkpoint, PROMPT, max_new_tokens=12, seed=0, greedy=True, stop_at_eos=False,
                       controller=FixedTemperature(1.0))
    draft, *samples = reply["choices"]
    assert [t["id"] for t in draft["tokens"]] == reference_tokens(greedy)
    tau_min = checkpoint.head.config.tau_min
    assert all(t["temperature"] == pytest.approx(tau_min) for t in draft["tokens"])
    assert all(t["temperature"] > tau_min for sample in samples for t in sample["tokens"])  # the head chose
    assert reply["usage"]["completion_tokens"] == 4 * 12  # the draft is one of the n: n decodes
