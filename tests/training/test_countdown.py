"""Behavioural tests for the Countdown task: format, generation, solver, reward, labels."""

from __future__ import annotations

import random

import pytest

from training.tasks.countdown import (
    CountdownConfig,
    Problem,
    Step,
    Verdict,
    check,
    decode_number,
    encode_number,
    format_completion,
    format_prompt,
    make_problem,
    max_completion_chars,
    problem_key,
    random_solution,
    reward,
    solutions,
    split,
    token_classes,
)

REASONS = {"ok", "malformed", "unknown_number", "division_by_zero", "invalid_op", "wrong_result", "wrong_answer"}
# Numbers 3 5 7 2, target 42; e.g. 3*2=6, 7*6=42.
PROBLEM = Problem(numbers=(3, 5, 7, 2), target=42)


def test_encode_decode_round_trip_and_digit_order() -> None:
    assert encode_number(35) == "53"
    assert encode_number(0) == "0"
    assert decode_number("53") == 35
    for n in [*range(0, 2000), 10**30 + 7]:
        assert decode_number(encode_number(n)) == n


@pytest.mark.parametrize("bad", ["", "50", "1a", "-1", " 1", "\u0663", "1.0"])
def test_decode_rejects_non_canonical_or_non_digit_text(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_number(bad)


def test_prompt_and_completion_format() -> None:
    assert format_prompt(Problem((3, 15, 7, 2), 42)) == "3 51 7 2>24\n"
    steps = [Step(3, "*", 2, 6), Step(7, "*", 6, 42)]
    assert format_completion(steps) == "3*2=6\n7*6=24\nA24\n"


def test_generated_problems_are_solvable_and_reference_solutions_get_full_reward() -> None:
    config = CountdownConfig()
    rng = random.Random(1234)
    for _ in range(200):
        problem = make_problem(rng, config)
        assert len(problem.numbers) == config.num_numbers
        assert all(config.min_number <= n <= config.max_number for n in problem.numbers)
        assert config.min_target <= problem.target <= config.max_target
        assert problem.target not in problem.numbers
        assert len(solutions(problem, config)) >= config.min_solutions
        completion = format_completion(random_solution(problem, rng, config))
        assert len(completion) <= max_completion_chars(config)
        assert check(problem, completion, config) == Verdict(1.0, "ok")


def test_target_never_equals_an_input_even_when_the_range_allows_it() -> None:
    config = CountdownConfig(min_target=1, max_target=9)
    rng = random.Random(5)
    for _ in range(100):
        problem = make_problem(rng, config)
        assert 1 <= problem.target <= 9
        assert problem.target not in problem.numbers


def test_every_enumerated_solution_is_accepted_by_the_checker() -> None:
    sols = solutions(PROBLEM)
    assert len(sols) >= 3
    assert [Step(3, "*", 2, 6), Step(7, "*", 6, 42)] in sols
    for sol in sols:
        assert reward(PROBLEM, format_completion(sol)) == 1.0


def test_solutions_waste_no_steps_and_have_no_duplicates() -> None:
    rng = random.Random(11)
    for problem in [PROBLEM, Problem((4, 4, 2, 2), 12)] + [make_problem(rng) for _ in range(30)]:
        sols = solutions(problem)
        assert len({tuple(s) for s in sols}) == len(sols)
        for sol in sols:
            pending: list[int] = []  # intermediate results not yet consumed
            for step in sol:
                for operand in (step.left, step.right):
                    if operand in pending:
                        pending.remove(operand)
                pending.append(step.result)
            assert pending == [problem.target], sol


def test_min_solutions_knob_is_respected() -> None:
    config = CountdownConfig(min_solutions=5)
    rng = random.Random(7)
    for _ in range(30):
        assert len(solutions(make_problem(rng, config), config)) >= 5


def test_split_is_deterministic_and_heldout_disjoint_from_train() -> None:
    config = CountdownConfig()
    train, heldout = split(config, n_train=300, n_heldout=100, seed=3)
    assert (train, heldout) == split(config, n_train=300, n_heldout=100, seed=3)
    assert len(train) == 300 and len(heldout) == 100
    heldout_keys = {problem_key(p) for p in heldout}
    assert len(heldout_keys) == 100
    assert not heldout_keys & {problem_key(p) for p in train}
    assert split(config, n_train=300, n_heldout=100, seed=4) != (train, heldout)
    # Held-out set does not depend on how much training data is requested.
    assert split(config, n_train=10, n_heldout=100, seed=3)[1] == heldout


def test_alternative_hand_written_solution_is_accepted() -> None:
    # Operands in non-canonical order: the solver never emits this text, the checker must verify it.
    completion = "2*3=6\n6*7=24\nA24\n"
    assert completion not in {format_completion(s) for s in solutions(PROBLEM)}
    assert check(PROBLEM, completion) == Verdict(1.0, "ok")
    # A different tree: (5+3-2)*7.
    assert check(PROBLEM, "5+3=8\n8-2=6\n7*6=24\nA24\n") == Verdict(1.0, "ok")


def test_missing_final_newline_and_trailing_whitespace_are_accepted() -> None:
    assert check(PROBLEM, "3*2=6\n7*6=24\nA24").reason == "ok"
    assert check(PROBLEM, "3*2=6\n7*6=24\nA24\n\n  \n").reason == "ok"


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "hello",
        "3*2=6\n7*6=24\n",  # no answer line
        "3*2=6\n7*6=24\nA24\nxyz",  # trailing garbage
        "3*2=6\n7*6=24\nA",  # empty answer
        "3*2=6\n\n7*6=24\nA24\n",  # blank line between steps
        "3 * 2=6\n7*6=24\nA24\n",  # spaces inside a step
        "3*2=60\n7*6=24\nA24\n",  # non-canonical number (trailing zero)
        "3x2=6\n7*6=24\nA24\n",  # unknown operator
        "3*2=\u0666\n7*6=24\nA24\n",  # non-ASCII digit
    ],
)
def test_malformed_output_is_rejected(completion: str) -> None:
    assert check(PROBLEM, completion) == Verdict(0.0, "malformed")


def test_division_by_zero_is_reported() -> None:
    assert check(PROBLEM, "7/0=0\nA24\n") == Verdict(0.0, "division_by_zero")


@pytest.mark.parametrize(
    "completion",
    [
        "9*3=72\nA72\n",  # 9 is not an input
        "3*3=9\n9+5=41\nA41\n",  # input 3 used twice
        "3*2=6\n6*6=63\nA63\n",  # intermediate 6 used twice
        "3*2=6\n7*6=24\n42+5=74\nA74\n",  # 42 written in normal digit order reads as 24
    ],
)
def test_unavailable_or_reused_numbers_are_rejected(completion: str) -> None:
    assert check(PROBLEM, completion) == Verdict(0.0, "unknown_number")


@pytest.mark.parametrize(
    "completion",
    [
        "3-5=2\nA2\n",  # non-positive subtraction
        "5-5=0\nA0\n",  # zero result
        "7/2=3\nA3\n",  # inexact division
    ],
)
def test_illegal_operations_are_rejected(completion: str) -> None:
    problem = Problem((3, 5, 5, 7, 2), 42)
    assert check(problem, completion) == Verdict(0.0, "invalid_op")


def test_results_over_max_value_are_rejected() -> None:
    config = CountdownConfig(max_value=40, max_target=40)
    assert check(PROBLEM, "3*2=6\n7*6=24\nA24\n", config) == Verdict(0.0, "invalid_op")


def test_wrong_intermediate_result_is_rejected() -> None:
    assert check(PROBLEM, "3*2=7\n7*7=94\nA94\n") == Verdict(0.0, "wrong_result")
    assert check(PROBLEM, "3*2=6\n7*6=34\nA34\n") == Verdict(0.0, "wrong_result")


@pytest.mark.parametrize(
    "completion",
    [
        "3*2=6\n7*6=24\nA14\n",  # answer differs from the last result
        "3*2=6\n7+6=31\nA31\n",  # consistent, but 13 is not the target
        "A24\n",  # answer with no work
    ],
)
def test_answer_mismatch_is_rejected(completion: str) -> None:
    assert check(PROBLEM, completion) == Verdict(0.0, "wrong_answer")


def _garbage(rng: random.Random) -> str:
    valid = "3*2=6\n7*6=24\nA24\n"
    kind = rng.randrange(3)
    if kind == 0:  # task alphabet: most likely to reach deep parser branches
        return "".join(rng.choice("0123456789+-*/=A\n ") for _ in range(rng.randrange(40)))
    if kind == 1:  # mutate a valid completion
        chars = list(valid)
        for _ in range(rng.randrange(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice("0123456789+-*/=A\n\r\u00e9")
        return "".join(chars)
    # arbitrary unicode, plus the occasional huge number
    text = "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(30)))
    return text if rng.random() < 0.8 else "9" * 5000 + "*1=" + text


def test_check_and_token_classes_never_raise_on_garbage() -> None:
    rng = random.Random(0)
    for _ in range(500):
        text = _garbage(rng)
        verdict = check(PROBLEM, text)
        assert verdict.reason in REASONS
        assert verdict.reward == (1.0 if verdict.reason == "ok" else 0.0)
        assert len(token_classes(text)) == len(text)


def test_token_classes_label_choices_computations_and_format() -> None:
    text = "3*2=6\n7*6=24\nA24\n"
    expected = (
        ["choice"] * 3
        + ["format", "compute", "format"]
        + ["choice"] * 3
        + ["format", "compute", "compute", "format"]
        + ["format", "answer", "answer", "format"]
    )
    assert token_classes(text) == expected
    assert token_classes("") == []
    assert token_classes("3*2\nA?") == ["choice"] * 3 + ["format", "format", "format"]
