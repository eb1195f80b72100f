"""The second bundled checkpoint: the bundled LM with a head that reads its greedy draft (`make draft-default-model`).

Its card claims two things a server of it must show: the LM is the default checkpoint's, unchanged (only the
head was trained), and the head reads the problem through the draft: the samples that follow a draft run hotter
where that draft is wrong. The second is checked over HTTP on held-out problems of the bundled task, with the
task's own verifier; the serving mechanics (choice 0 is the draft, n decodes) are tests/service/test_draft_head.py's.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load_file

from model import read_manifest
from service.settings import DEFAULT_CHECKPOINT
from tests.service.support import LiveServer, settings_for, start_server, stop_server
from training.tasks.countdown import DEFAULT_CONFIG, format_prompt, reward, split

DRAFT_CHECKPOINT = DEFAULT_CHECKPOINT.parent / "introllm-countdown-tiny-draft"
PROBLEMS = 48  # the first held-out problems: 18 whose greedy draft is right, 30 whose draft is wrong


@pytest.fixture(scope="module")
def draft_server() -> Iterator[LiveServer]:
    live = start_server(settings_for(DRAFT_CHECKPOINT, warm_up=False))
    yield live
    stop_server(live)


def test_the_draft_checkpoint_is_the_default_lm_with_a_draft_reading_head():
    manifest = read_manifest(DRAFT_CHECKPOINT)
    assert manifest.head.inputs == ("hidden", "tau_prev", "draft")
    assert read_manifest(DEFAULT_CHECKPOINT).head.inputs == ("hidden",)
    draft_lm = load_file(DRAFT_CHECKPOINT / "model.safetensors")
    default_lm = load_file(DEFAULT_CHECKPOINT / "model.safetensors")
    assert draft_lm.keys() == default_lm.keys()
    assert all(torch.equal(draft_lm[name], default_lm[name]) for name in default_lm)


def test_samples_after_a_wrong_draft_run_hotter_than_after_a_right_one(draft_server):
    _, heldout = split(DEFAULT_CONFIG, 0, PROBLEMS, read_manifest(DRAFT_CHECKPOINT).training["split_seed"])
    after_right, after_wrong = [], []
    with draft_server.client() as client:
        for problem in heldout:
            reply = client.post("/v1/generate", json={
                "prompt": format_prompt(problem), "n": 2, "max_new_tokens": 64, "seed": 3,
                "return_temperatures": True})
            assert reply.status_code == 200, reply.text
            draft, follower = reply.json()["choices"]
            mean_tau = statistics.mean(token["temperature"] for token in follower["tokens"])
            (after_right if reward(problem, draft["text"]) > 0 else after_wrong).append(mean_tau)
    assert len(after_right) >= 8 and len(after_wrong) >= 8
    # Measured here: 0.41 after a right draft, 0.66 after a wrong one (over the first 100: 0.42 and 0.69).
    assert statistics.mean(after_wrong) > statistics.mean(after_right) + 0.1
