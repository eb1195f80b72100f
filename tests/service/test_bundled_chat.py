"""Chat with the bundled model as people type it: the recorded plain format ends the message as training did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from model import read_manifest
from service.settings import DEFAULT_CHECKPOINT
from tests.service.support import LiveServer, settings_for, start_server, stop_server

PROBLEM = "3 5 7 2>24"  # reach 42 from 3, 5, 7 and 2, typed without the trailing newline of the task's prompts


@pytest.fixture(scope="module")
def bundled() -> Iterator[LiveServer]:
    live = start_server(settings_for(DEFAULT_CHECKPOINT, warm_up=False))
    yield live
    stop_server(live)


def test_the_bundled_manifest_records_the_newline_its_prompts_end_with():
    assert read_manifest(DEFAULT_CHECKPOINT).prompt_format.separator == "\n"


def test_a_chat_message_without_the_newline_gets_the_answer_of_the_newline_prompt(bundled):
    with bundled.client() as client:
        chat = client.post("/v1/chat/completions", json={
            "model": DEFAULT_CHECKPOINT.name, "messages": [{"role": "user", "content": PROBLEM}],
            "max_tokens": 48, "seed": 7}).json()
        raw = client.post("/v1/generate", json={"prompt": PROBLEM + "\n", "max_new_tokens": 48, "seed": 7}).json()
        typed_with_newline = client.post("/v1/chat/completions", json={
            "model": DEFAULT_CHECKPOINT.name, "messages": [{"role": "user", "content": PROBLEM + "\n"}],
            "max_tokens": 48, "seed": 7}).json()
    answer = chat["choices"][0]["message"]["content"]
    # Before the separator was recorded the model saw "...>24" and wrote 7s up to the token limit.
    assert chat["choices"][0]["finish_reason"] == "stop" and not answer.startswith("7777")
    assert answer == raw["text"] and chat["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]
    # A message that already ends with the newline is not given a second one.
    assert typed_with_newline["choices"][0]["message"]["content"] == answer
    assert typed_with_newline["usage"]["prompt_tokens"] == raw["usage"]["prompt_tokens"]
