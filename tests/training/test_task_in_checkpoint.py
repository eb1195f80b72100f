"""Your own model without a chat template, your own task: the task lives in the checkpoint, the plain format
separates prompt and answer, the card describes this model, and user errors are one line with a status.

The model stands in for a user's (scripts/example_artifacts.py: a random tiny Qwen2 with a byte-level BPE
tokenizer) with its chat template removed, as base models ship; the task is list reversal from JSONL with the
`exact` reward and a held-out file of its own, as in issue #22. One module-scoped sft run feeds every test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from model import FixedTemperature, load_checkpoint, read_manifest
from scripts.example_artifacts import write_example_artifacts
from service.settings import DEFAULT_CHECKPOINT
from tests.training.test_own_model_end_to_end import run
from training.__main__ import main
from training.config import EvalConfig, GRPOConfig
from training.data import SolvedExamples
from training.model_card import write_model_card
from training.rollout import sample_completions
from training.task_record import TaskRecordError, check_heldout, recorded_choice, resolve_task
from training.tasks.countdown import CountdownConfig

REPO = Path(__file__).resolve().parents[2]
WORDS = ["yak", "cat", "box", "owl", "elm", "fig", "gnu", "hat"]
MICRO = ["--steps", "2", "--threads", "1"]
GRPO_MICRO = [*MICRO, "--prompts-per-step", "2", "--group-size", "2", "--eval-every", "0", "--save-every", "0",
              "--max-new-tokens", "4"]


def reversal_file(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        words = rng.sample(WORDS, 4)
        answer = " ".join(reversed(words))
        lines.append(json.dumps({"prompt": "Reverse the list: " + " ".join(words), "answer": answer,
                                 "solution": answer}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own-plain")
    model_dir, _ = write_example_artifacts(root / "artifacts")
    (model_dir / "chat_template.jinja").unlink()  # a base model: no chat template
    train, heldout = reversal_file(root / "train.jsonl", 12, 0), reversal_file(root / "heldout.jsonl", 3, 1)
    sft = root / "sft"
    run(["sft", "--init", str(model_dir), "--out", str(sft), "--task", "jsonl", "--jsonl-train", str(train),
         "--jsonl-heldout", str(heldout), "--jsonl-reward", "exact", "--jsonl-max-new-tokens", "6",
         "--batch-size", "2", "--eval-every", "0", *MICRO])
    return {"root": root, "model": model_dir, "train": train, "heldout": heldout, "sft": sft}


def training_command(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, *says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(text in lines[0] for text in says), lines[0]


def test_sft_records_the_task_its_files_and_a_newline_separator(own):
    manifest = read_manifest(own["sft"])
    training = manifest.training
    assert manifest.prompt_format.kind == "plain" and manifest.prompt_format.separator == "\n"
    assert training["task_name"] == "jsonl" and training["task"]["reward"] == "exact"
    assert training["task"]["heldout"] == str(own["heldout"].resolve()) and training["task"]["max_new_tokens"] == 6
    assert training["data"]["files"] == {"train": {"path": str(own["train"].resolve()), "problems": 12},
                                         "heldout": {"path": str(own["heldout"].resolve()), "problems": 3}}


def test_grpo_and_eval_read_the_task_from_the_checkpoint_without_task_flags(own):
    grpo = own["root"] / "grpo"
    run(["grpo", "--init", str(own["sft"]), "--out", str(grpo), *GRPO_MICRO])
    recorded, trained = read_manifest(own["sft"]).training, read_manifest(grpo).training
    # Not Countdown, not math-verify, not a 10% split of the train file: the sft run's task, same held-out problems.
    assert (trained["task_name"], trained["task"]) == (recorded["task_name"], recorded["task"])
    assert trained["data"]["heldout_digest"] == recorded["data"]["heldout_digest"]
    run(["eval", "--checkpoint", str(grpo), "--problems", "5", "--samples", "1", "--controllers", "fixed:1.0",
         "--draft-baselines", "false", "--plot-samples", "0", "--threads", "1"])
    report = json.loads((grpo / "eval" / "report.json").read_text())
    assert report["results"][0]["problems"] == 3  # the held-out file's three, though five were asked for


def test_a_task_flag_contradicting_the_record_stops_grpo_unless_overridden(own):
    refused = training_command("grpo", "--init", str(own["sft"]), "--out", str(own["root"] / "refused"),
                               "--jsonl-reward", "math-verify", *GRPO_MICRO)
    assert_one_line_error(refused, 2, "--jsonl-reward 'math-verify' contradicts the recorded 'exact'",
                          "--task-override true")
    assert not (own["root"] / "refused").exists()
    changed = own["root"] / "changed"
    run(["grpo", "--init", str(own["sft"]), "--out", str(changed), "--jsonl-reward", "math-verify",
         "--task-override", "true", *GRPO_MICRO])
    training = read_manifest(changed).training
    assert training["task"]["reward"] == "math-verify"
    assert training["task"]["heldout"] == str(own["heldout"].resolve())  # the rest of the record kept


def test_the_separator_ends_training_and_evaluation_prompts(own):
    checkpoint = load_checkpoint(own["sft"])
    task = recorded_choice(checkpoint.manifest.training).build()
    train, heldout = task.split()
    fmt, tokenizer = checkpoint.manifest.prompt_format, checkpoint.tokenizer
    inputs, labels = SolvedExamples(train[:1], task, tokenizer, fmt).batch(random.Random(0), 1)
    prompt_length = int((labels[0] == -100).sum())
    prompt = tokenizer.decode(inputs[0, :prompt_length])
    assert prompt == train[0].prompt + "\n"
    assert tokenizer.decode(inputs[0, prompt_length:], skip_special_tokens=True) == train[0].solution
    batches = sample_completions(checkpoint.model, tokenizer, FixedTemperature(1.0), heldout[:1], samples=1,
                                 task=task, max_new_tokens=2, seed=0, prompt_format=fmt)
    assert tokenizer.decode(batches[0].prompt_ids[0]) == heldout[0].prompt + "\n"


def test_the_model_card_describes_this_model_and_task(own):
    card = write_model_card(own["sft"], "sft as in the test").read_text()
    for fact in ("`Qwen2ForCausalLM` (qwen2): 2 layers, hidden size 64", "byte-level BPE", "EOS `<\\|im_end\\|>`",
                 "Fine-tuned from `model`", "problems from JSONL", "`exact`", "`train.jsonl` (12 lines)",
                 "`heldout.jsonl` (3 lines)", 'then "\\n" unless it already ends so'):
        assert fact in card, fact
    assert "Countdown" not in card


@pytest.mark.parametrize("case", ["bad_value", "missing_file", "malformed_jsonl", "system_prompt_without_template"])
def test_a_user_error_is_one_line_and_a_status(own, case):
    root = own["root"]
    if case == "bad_value":
        result, status, says = training_command("sft", "--steps", "many"), 2, ["--steps", "invalid int value"]
    elif case == "missing_file":
        result = training_command("sft", "--task", "jsonl", "--jsonl-train", str(root / "nowhere.jsonl"))
        status, says = 3, ["task file not found", "nowhere.jsonl"]
    elif case == "malformed_jsonl":
        bad = root / "bad.jsonl"
        bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"\n{"answer": "b"}\n')
        result = training_command("sft", "--task", "jsonl", "--jsonl-train", str(bad))
        status, says = 3, ["2 malformed line(s)", "bad.jsonl:2: not valid JSON", "bad.jsonl:3: 'prompt'"]
    else:
        result = training_command("sft", "--init", str(own["model"]), "--task", "jsonl", "--jsonl-train",
                                  str(own["train"]), "--system-prompt", "Be brief.", "--out", str(root / "x"))
        status, says = 2, ["--system-prompt needs a chat template", "chat_template.jinja"]
    assert_one_line_error(result, status, *says)


def test_eval_refuses_another_task_in_one_line(own, capsys):
    assert main(["eval", "--checkpoint", str(own["sft"]), "--task", "countdown"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--task 'countdown' contradicts the recorded 'jsonl'" in error


def test_held_out_problems_edited_since_sft_are_refused(own, tmp_path):
    training = read_manifest(own["sft"]).training
    edited = tmp_path / "heldout.jsonl"
    edited.write_text(own["heldout"].read_text().replace("yak", "emu"))
    training["task"]["heldout"] = str(edited)
    choice = resolve_task(EvalConfig(), training, "sft")
    task = choice.build()
    with pytest.raises(TaskRecordError, match="not the ones it recorded"):
        check_heldout(EvalConfig(), training, task, task.split()[1], "sft")


def test_the_bundled_record_reads_as_its_countdown_task_and_default_flags_keep_it():
    training = read_manifest(DEFAULT_CHECKPOINT).training
    recorded = recorded_choice(training)
    assert recorded.name == "countdown" and recorded.countdown == CountdownConfig()
    assert (recorded.split_seed, recorded.n_heldout) == (1234, 500)
    assert resolve_task(GRPOConfig(), training, "bundled") == recorded
    with pytest.raises(TaskRecordError, match="--task-max-target 50 contradicts the recorded 99"):
        resolve_task(GRPOConfig(task=CountdownConfig(max_target=50)), training, "bundled")
    # Without a task record (the first checkpoint format) the flags decide, as they always did.
    assert resolve_task(GRPOConfig(task=CountdownConfig(max_target=50)), {}, "old").countdown.max_target == 50
