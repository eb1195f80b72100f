"""Bring your own model and data, end to end: a local Qwen2 chat model and a JSONL file -> sft -> grpo -> eval
-> the server answers /v1/chat/completions (openai client, streaming and not) and /v1/generate.

The artefacts stand in for a user's (scripts/example_artifacts.py): a random tiny Qwen2 model with a BPE
tokenizer trained on the fly and a ChatML template, and a few dozen arithmetic problems. One module-scoped
run feeds every assertion; the commands are the README's, at micro sizes.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import openai
import pytest

from model import load_checkpoint, read_manifest, render_prompt, user_message
from scripts.example_artifacts import write_example_artifacts
from tests.service.support import settings_for, start_server, stop_server
from training.__main__ import main
from training.data import encode_prompt
from training.task_record import recorded_choice

SYSTEM_PROMPT = "Put the final answer in \\boxed{}."
TASK_FLAGS = ["--task", "jsonl", "--jsonl-heldout-fraction", "0.2", "--jsonl-max-new-tokens", "12", "--threads", "1"]


def run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("own")
    model_dir, problems = write_example_artifacts(root / "artifacts")
    task = [*TASK_FLAGS, "--jsonl-train", str(problems)]
    sft, grpo = root / "runs" / "sft", root / "runs" / "qwen-tiny-temperature"
    run(["sft", "--init", str(model_dir), "--out", str(sft), *task, "--system-prompt", SYSTEM_PROMPT,
         "--steps", "4", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1", "--eval-every", "0"])
    run(["grpo", "--init", str(sft), "--out", str(grpo), *task, "--steps", "2", "--prompts-per-step", "2",
         "--group-size", "2", "--eval-every", "0", "--save-every", "0"])
    report = run(["eval", "--checkpoint", str(grpo), "--problems", "3", "--samples", "2",
                  "--controllers", "fixed:1.0,learned", "--plot-samples", "0", "--threads", "1"])
    return {"model": model_dir, "problems": problems, "sft": sft, "grpo": grpo, "report": report}


@pytest.fixture(scope="module")
def server(trained):
    live = start_server(settings_for(trained["grpo"], max_prompt_tokens=256))
    yield live
    stop_server(live)


def test_sft_records_the_models_chat_template_and_the_system_prompt(trained):
    fmt = read_manifest(trained["sft"]).prompt_format
    template = (Path(trained["model"]) / "chat_template.jinja").read_text()
    assert fmt.kind == "chat" and fmt.chat_template == template and fmt.system_prompt == SYSTEM_PROMPT


def test_grpo_keeps_the_format_and_records_the_jsonl_task(trained):
    manifest = read_manifest(trained["grpo"])
    assert manifest.prompt_format == read_manifest(trained["sft"]).prompt_format
    assert manifest.training["task_name"] == "jsonl"
    assert manifest.training["task"]["reward"] == "math-verify"
    assert [r["step"] for r in map(json.loads, (trained["grpo"] / "grpo_log.jsonl").read_text().splitlines())
            if "step" in r] == [0, 1]


def test_eval_reports_every_controller_on_the_heldout_problems(trained):
    report = json.loads((trained["grpo"] / "eval" / "report.json").read_text())
    # The hedge (the greedy draft, then samples of fixed 1.0) comes with the draft baselines; the draft rule
    # needs both of its taus (0.1 and 1.0) in the grid and says why it was not fitted.
    assert [r["name"] for r in report["results"]] == ["fixed 1.0", "learned", "hedge 1.0"]
    assert "not both fixed taus" in report["draft_rule"]["not_fitted"]
    assert all(r["problems"] == 3 and r["samples"] == 2 for r in report["results"])
    assert "text" in report["token_classes"]  # the JSONL task has no classes of its own
    assert "| learned |" in trained["report"]


def _openai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_prompts_are_rendered_exactly_as_in_training(server, trained):
    checkpoint = load_checkpoint(trained["grpo"])
    task = recorded_choice(checkpoint.manifest.training).build()
    problem = task.split()[1][0]
    trained_ids = encode_prompt(checkpoint.tokenizer, task, problem, checkpoint.manifest.prompt_format)
    assert checkpoint.tokenizer.decode(trained_ids).startswith("<|im_start|>system\n" + SYSTEM_PROMPT)
    reply = _openai(server).chat.completions.create(
        model="qwen-tiny-temperature", messages=[{"role": "user", "content": task.prompt(problem)}], max_tokens=4,
        temperature=0, extra_body={"ignore_eos": True})
    assert reply.usage.prompt_tokens == len(trained_ids)
    assert reply.usage.prompt_tokens == len(render_prompt(checkpoint.manifest.prompt_format, checkpoint.tokenizer,
                                                          user_message(task.prompt(problem))))


def test_the_openai_client_chats_without_and_with_streaming(server):
    client = _openai(server)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    plain = client.chat.completions.create(model="qwen-tiny-temperature", messages=messages, max_tokens=6,
                                           temperature=0, extra_body={"ignore_eos": True})
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert plain.object == "chat.completion" and plain.usage.completion_tokens == 6
    assert len(choice.model_extra["temperatures"]) == 6
    chunks = list(client.chat.completions.create(
        model="qwen-tiny-temperature", messages=messages, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert sum(len(c.choices[0].model_extra["temperatures"]) for c in chunks if c.choices) == 6
    assert chunks[-1].usage.completion_tokens == 6


def test_the_learned_temperature_drives_chat_by_default(server):
    reply = _openai(server).chat.completions.create(
        model="qwen-tiny-temperature", messages=[{"role": "user", "content": "Simplify 4/8."}], max_tokens=5,
        seed=1, extra_body={"ignore_eos": True})
    assert reply.model_extra["temperature"]["mode"] == "learned"
    assert all(0.0 < t <= 10.0 for t in reply.choices[0].model_extra["temperatures"])


def test_the_native_generate_route_answers_too(server):
    with server.client() as client:
        response = client.post("/v1/generate", json={"prompt": "What is 1 + 1?", "max_new_tokens": 3,
                                                     "ignore_eos": True})
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_a_chat_ending_with_an_assistant_message_is_refused(server):
    with pytest.raises(openai.UnprocessableEntityError):
        _openai(server).chat.completions.create(
            model="qwen-tiny-temperature", messages=[{"role": "assistant", "content": "hi"}], max_tokens=2)
