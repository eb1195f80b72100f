"""The JSONL task: reading problems (malformed lines named by number), splits, and its three rewards."""

from __future__ import annotations

import json

import pytest

from training.tasks import JsonlTask, JsonlTaskConfig, JsonlTaskError, Task, build_task
from training.tasks.countdown import CountdownConfig
from training.tasks.jsonl import last_boxed, math_verify_reward, read_problems


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return path


def problems_file(tmp_path, count: int = 20):
    return write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1),
                                                          "solution": f"\\boxed{{{i + 1}}}"}) for i in range(count)])


@pytest.mark.parametrize("completion", [
    "The answer is $\\frac{1}{2}$.",
    "0.5",
    "1/2",
    "So we get \\boxed{\\frac{1}{2}}",
    "First 1, then \\boxed{0.5}",
])
def test_math_verify_accepts_equivalent_forms_of_one_half(completion):
    assert math_verify_reward("\\frac{1}{2}", completion).reward == 1.0


@pytest.mark.parametrize("reference", ["\\frac{1}{2}", "0.5", "1/2"])
def test_math_verify_reads_the_reference_in_any_form(reference):
    assert math_verify_reward(reference, "$\\boxed{\\frac{1}{2}}$").reward == 1.0


def test_math_verify_rejects_a_wrong_boxed_answer():
    assert math_verify_reward("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}").reason == "wrong_answer"


@pytest.mark.parametrize("completion", ["", "I do not know.", "#$%^&*(", "\\boxed{"])
def test_math_verify_gives_no_reward_to_no_answer_or_garbage(completion):
    verdict = math_verify_reward("7", completion)
    assert verdict.reward == 0.0
    assert verdict.reason in ("no_answer", "wrong_answer")


def test_a_boxed_answer_wins_over_earlier_numbers():
    assert math_verify_reward("12", "3 + 4 = 7, times 2 is 14, minus 2: \\boxed{12}").reward == 1.0


def test_exact_reward_normalises_case_spaces_dollars_and_a_final_period(tmp_path):
    task = JsonlTask(JsonlTaskConfig(train=str(problems_file(tmp_path)), reward="exact"), split_seed=0)
    problem = read_problems(tmp_path / "p.jsonl")[0]  # answer "1"
    assert task.score(problem, "working...\n $1$. ").reward == 1.0
    assert task.score(problem, "so \\boxed{1} and then 2").reward == 1.0
    assert task.score(problem, "0.999").reward == 0.0
    assert task.score(problem, "").reason == "no_answer"


def test_regex_reward_compares_the_first_group(tmp_path):
    task = JsonlTask(JsonlTaskConfig(train=str(problems_file(tmp_path)), reward="regex",
                                     answer_regex=r"ANSWER:\s*(\S+)"), split_seed=0)
    problem = read_problems(tmp_path / "p.jsonl")[2]  # answer "3"
    assert task.score(problem, "blah ANSWER: 3").reward == 1.0
    assert task.score(problem, "blah ANSWER: 4").reward == 0.0
    assert task.score(problem, "3").reason == "no_answer"


def test_a_regex_reward_without_a_regex_is_refused():
    with pytest.raises(JsonlTaskError, match="--jsonl-answer-regex"):
        JsonlTaskConfig(train="x.jsonl", reward="regex")


def test_malformed_lines_are_reported_with_their_numbers(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"prompt": "ok", "answer": "1"}),
        "{not json",
        "",
        json.dumps({"prompt": "no answer"}),
        json.dumps(["a", "list"]),
        json.dumps({"prompt": "", "answer": "2"}),
        json.dumps({"prompt": "p", "answer": 3, "solution": 4}),
    ])
    with pytest.raises(JsonlTaskError) as error:
        read_problems(path)
    message = str(error.value)
    assert "5 malformed line(s)" in message
    for number, what in [(2, "not valid JSON"), (4, "'answer'"), (5, "JSON object"), (6, "'prompt'"),
                         (7, "'solution'")]:
        assert f"{path}:{number}: " in message and what in message
    assert f"{path}:1:" not in message and f"{path}:3:" not in message


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(JsonlTaskError, match="not found"):
        read_problems(tmp_path / "nope.jsonl")


def test_numbers_as_answers_are_read_as_text(tmp_path):
    path = write_lines(tmp_path / "n.jsonl", [json.dumps({"prompt": "p", "answer": 0.5})])
    assert read_problems(path)[0].answer == "0.5"


def test_the_heldout_fraction_is_a_fixed_disjoint_split(tmp_path):
    config = JsonlTaskConfig(train=str(problems_file(tmp_path)), heldout_fraction=0.25)
    train, heldout = JsonlTask(config, split_seed=3).split()
    again_train, again_heldout = JsonlTask(config, split_seed=3).split()
    assert len(heldout) == 5 and len(train) == 15
    assert heldout == again_heldout and train == again_train
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert JsonlTask(config, split_seed=4).split()[1] != heldout


def test_a_heldout_file_is_used_whole(tmp_path):
    heldout_file = write_lines(tmp_path / "h.jsonl", [json.dumps({"prompt": "held", "answer": "1"})])
    config = JsonlTaskConfig(train=str(problems_file(tmp_path)), heldout=str(heldout_file))
    train, heldout = JsonlTask(config, split_seed=0).split()
    assert len(train) == 20 and [p.prompt for p in heldout] == ["held"]


def test_both_tasks_implement_the_interface(tmp_path):
    jsonl = build_task("jsonl", countdown=CountdownConfig(), jsonl=JsonlTaskConfig(train=str(problems_file(tmp_path))),
                       n_train=0, n_heldout=0, split_seed=0)
    countdown = build_task("countdown", countdown=CountdownConfig(), jsonl=JsonlTaskConfig(), n_train=5, n_heldout=2,
                           split_seed=0)
    for task in (jsonl, countdown):
        assert isinstance(task, Task)
        train, _ = task.split()
        assert task.prompt(train[0]) and task.targets(train[0])
        assert task.score(train[0], task.targets(train[0])[0]).reward == 1.0
    assert jsonl.token_classes("x") is None and countdown.token_classes("1+2=3\n") is not None
    with pytest.raises(ValueError, match="unknown task"):
        build_task("mmlu", countdown=CountdownConfig(), jsonl=JsonlTaskConfig(), n_train=0, n_heldout=0, split_seed=0)


def test_last_boxed_balances_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None


def test_math_verify_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_verify_reward, "1/2", "\\boxed{0.5}").result().reward == 1.0


def test_the_task_flag_selects_the_task_and_the_nested_flags_still_work():
    import argparse

    from training.config import SFTConfig, add_config_arguments, config_from_namespace

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    args = parser.parse_args(["--task", "jsonl", "--jsonl-train", "x.jsonl", "--jsonl-reward", "exact",
                              "--task-max-target", "50", "--lora-rank", "8"])
    cfg = config_from_namespace(SFTConfig, args)
    assert (cfg.task_name, cfg.jsonl.train, cfg.jsonl.reward) == ("jsonl", "x.jsonl", "exact")
    assert cfg.task.max_target == 50 and cfg.lora.rank == 8
    assert config_from_namespace(SFTConfig, parser.parse_args([])).task_name == "countdown"


def test_sft_needs_at_least_one_worked_solution(tmp_path):
    from model import build_char_tokenizer
    from training.data import SolvedExamples

    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "p", "answer": "1"})] * 3)
    task = JsonlTask(JsonlTaskConfig(train=str(path), heldout_fraction=0.0), split_seed=0)
    with pytest.raises(ValueError, match="worked solution"):
        SolvedExamples(task.split()[0], task, build_char_tokenizer())
