"""Countdown-style arithmetic task: problem generation, exhaustive solver, text format, reward.

Given a few small numbers and a target, the model writes arithmetic steps that combine
the numbers into the target. Each step is a "choice" (which two available numbers, which
operator) followed by a forced "computation" (the result), which is what makes the task
useful for studying a learned per-token sampling temperature.

Rules: ops are + - * /. Subtraction needs left > right (no zero or negative values),
division needs right != 0 and an exact quotient (right == 1 is accepted by the checker).
Every input number and every intermediate result may be used at most once (multiset);
not all numbers must be used; no result may exceed ``config.max_value``.

Text format (character level, every number written with its digits REVERSED, i.e.
least-significant digit first, because small transformers learn carrying arithmetic
far better that way; "0" is the only encoding that may end in 0):

    prompt:      "<n1> <n2> ... <nk>><target>\\n"       numbers 3,5,7,2 target 42 -> "3 5 7 2>24\\n"
    completion:  one "<left><op><right>=<result>\\n" line per step, then "A<answer>\\n"
                 e.g. "5+3=8\\n8-2=6\\n7*6=24\\nA24\\n"    (5+3=8, 8-2=6, 7*6=42, answer 42)

The checker parses and verifies (it never compares against a reference string), accepts
any operand order, trivial steps (x*1) and unused side results, accepts a missing final
newline and trailing whitespace, and rejects non-canonical numbers ("50" for 5).

`CountdownTask` is this module behind the task interface (training/tasks/base.py).

Not done here: tokenisation, model/training code, I/O, partial credit (reward is 0 or 1).
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from training.tasks.base import Verdict

OPS: tuple[str, ...] = ("+", "-", "*", "/")
ANSWER_MARKER = "A"
_DIGITS = frozenset("0123456789")
# Explicit [0-9]: `\d` would also match non-ASCII digits, which int() happily accepts.
_STEP_RE = re.compile(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)")
_ANSWER_RE = re.compile(ANSWER_MARKER + r"([0-9]+)")


@dataclass(frozen=True)
class CountdownConfig:
    num_numbers: int = 4  # numbers per problem
    min_number: int = 1  # smallest number given
    max_number: int = 9  # largest number given
    max_value: int = 999  # bound on every intermediate result
    min_target: int = 10  # smallest target
    max_target: int = 99  # largest target
    # Difficulty knob: at least this many distinct solutions (2 removes the ~27% of problems
    # that have a single solution, which leave no room for useful exploration).
    min_solutions: int = 2

    def __post_init__(self) -> None:
        if self.num_numbers < 2:
            raise ValueError("num_numbers must be >= 2")
        # min_number >= 1 keeps all values positive, which the subtraction rule relies on.
        if not 1 <= self.min_number <= self.max_number <= self.max_value:
            raise ValueError("need 1 <= min_number <= max_number <= max_value")
        if not 1 <= self.min_target <= self.max_target <= self.max_value:
            raise ValueError("need 1 <= min_target <= max_target <= max_value")
        if self.min_solutions < 1:
            raise ValueError("min_solutions must be >= 1")


DEFAULT_CONFIG = CountdownConfig()


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int


# Verdict reasons: ok | malformed | unknown_number | division_by_zero | invalid_op | wrong_result | wrong_answer


def encode_number(n: int) -> str:
    """Non-negative integer -> reversed decimal digits (35 -> "53")."""
    if n < 0:
        raise ValueError(f"cannot encode negative number {n}")
    return str(n)[::-1]


def decode_number(s: str) -> int:
    """Inverse of encode_number; raises ValueError on anything encode_number cannot produce."""
    if not s or any(c not in _DIGITS for c in s) or (len(s) > 1 and s[-1] == "0"):
        raise ValueError(f"not a reversed-digit number: {s[:20]!r}")
    return int(s[::-1])  # int() itself raises ValueError beyond ~4300 digits


def apply_op(left: int, op: str, right: int) -> int | None:
    """Result of ``left op right`` under the task rules, or None if the step is illegal."""
    if op == "+":
        return left + right
    if op == "*":
        return left * right
    if op == "-":
        return left - right if left > right else None
    if op == "/":
        return left // right if right != 0 and left % right == 0 else None
    return None


def _moves(a: int, b: int, max_value: int) -> list[Step]:
    """Steps the solver considers for a pair: canonical order (larger first) for + and *, and
    no identity steps (x*1, x/1), so that the solution list is not flooded with trivial
    variants. The checker still accepts those variants."""
    hi, lo = max(a, b), min(a, b)
    out = [Step(hi, "+", lo, hi + lo)]
    if lo != 1:
        out.append(Step(hi, "*", lo, hi * lo))
    if hi > lo:
        out.append(Step(hi, "-", lo, hi - lo))
    if lo != 1 and hi % lo == 0:
        out.append(Step(hi, "/", lo, hi // lo))
    return [s for s in out if s.result <= max_value]


def _walk(
    pool: list[tuple[int, bool]], max_value: int, stop_at: int | None, prefix: tuple[Step, ...] = ()
) -> Iterator[tuple[tuple[Step, ...], bool]]:
    """Yield every step sequence as (steps, clean). Pool entries are (value, is_intermediate);
    a sequence is clean when its last result is the only unconsumed intermediate, i.e. no
    step was wasted. Recursion stops after a clean hit of ``stop_at``."""
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
            clean = not any(inter for _, inter in rest)
            for step in _moves(pool[i][0], pool[j][0], max_value):
                steps = prefix + (step,)
                yield steps, clean
                if not (clean and step.result == stop_at):
                    yield from _walk(rest + [(step.result, True)], max_value, stop_at, steps)


@lru_cache(maxsize=4096)
def _reachable(sorted_numbers: tuple[int, ...], max_value: int) -> frozenset[int]:
    # Cached per multiset: there are few distinct multisets (495 for 4 numbers in 1..9).
    pool = [(n, False) for n in sorted_numbers]
    return frozenset(steps[-1].result for steps, clean in _walk(pool, max_value, None) if clean)


def solutions(problem: Problem, config: CountdownConfig = DEFAULT_CONFIG, limit: int = 10_000) -> list[list[Step]]:
    """Distinct clean step sequences (no wasted steps, canonical operand order, no identity
    steps) whose last result is the target, in deterministic search order, at most ``limit``."""
    found: dict[tuple[Step, ...], None] = {}  # ordered set: duplicate inputs give duplicate paths
    pool = [(n, False) for n in problem.numbers]
    for steps, clean in _walk(pool, config.max_value, problem.target):
        if clean and steps[-1].result == problem.target and steps not in found:
            found[steps] = None
            if len(found) >= limit:
                break
    return [list(s) for s in found]


def random_solution(problem: Problem, rng: random.Random, config: CountdownConfig = DEFAULT_CONFIG) -> list[Step]:
    """Uniform over all solutions, not just the shortest: demonstrations then cover many
    different choice points, which is what the learned temperature should discover."""
    sols = solutions(problem, config)
    if not sols:
        raise ValueError(f"unsolvable problem {problem}")
    return rng.choice(sols)


def make_problem(rng: random.Random, config: CountdownConfig = DEFAULT_CONFIG) -> Problem:
    """Random numbers, then a target drawn uniformly among the values they can reach in range
    (so rare, hard targets are as likely as easy ones), never equal to an input."""
    for _ in range(10_000):
        numbers = tuple(rng.randint(config.min_number, config.max_number) for _ in range(config.num_numbers))
        candidates = sorted(
            v
            for v in _reachable(tuple(sorted(numbers)), config.max_value)
            if config.min_target <= v <= config.max_target and v not in numbers
        )
        rng.shuffle(candidates)
        for target in candidates:
            problem = Problem(numbers, target)
            if (
                config.min_solutions == 1
                or len(solutions(problem, config, limit=config.min_solutions)) >= config.min_solutions
            ):
                return problem
    raise ValueError(f"config admits (almost) no problems: {config}")


def problem_key(problem: Problem) -> tuple[tuple[int, ...], int]:
    """Order-insensitive identity of a problem (numbers as a multiset, plus target)."""
    return tuple(sorted(problem.numbers)), problem.target


def split(config: CountdownConfig, n_train: int, n_heldout: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, heldout). Held-out problems are distinct; train is i.i.d. (may repeat) but never
    shares a problem_key with held-out. Separate RNG streams keep the held-out set fixed when
    n_train changes, and vice versa."""
    heldout_rng = random.Random(f"countdown-heldout-{seed}")
    train_rng = random.Random(f"countdown-train-{seed}")
    budget = 100 * (n_train + n_heldout) + 1000  # fail loudly instead of looping forever
    heldout: list[Problem] = []
    keys: set[tuple[tuple[int, ...], int]] = set()
    while len(heldout) < n_heldout:
        budget -= 1
        if budget < 0:
            raise ValueError("problem space too small for the requested held-out size")
        problem = make_problem(heldout_rng, config)
        if problem_key(problem) not in keys:
            keys.add(problem_key(problem))
            heldout.append(problem)
    train: list[Problem] = []
    while len(train) < n_train:
        budget -= 1
        if budget < 0:
            raise ValueError("held-out set covers (almost) the whole problem space")
        problem = make_problem(train_rng, config)
        if problem_key(problem) not in keys:
            train.append(problem)
    return train, heldout


def format_prompt(problem: Problem) -> str:
    return " ".join(map(encode_number, problem.numbers)) + ">" + encode_number(problem.target) + "\n"


def format_completion(steps: list[Step]) -> str:
    if not steps:
        raise ValueError("a completion needs at least one step")
    e = encode_number
    lines = [f"{e(s.left)}{s.op}{e(s.right)}={e(s.result)}\n" for s in steps]
    return "".join(lines) + ANSWER_MARKER + e(steps[-1].result) + "\n"


def max_completion_chars(config: CountdownConfig = DEFAULT_CONFIG) -> int:
    """Upper bound on a valid completion's length: each step consumes one pool entry, so at
    most num_numbers - 1 steps, each with three numbers of <= len(max_value) digits + 3 chars."""
    width = len(str(config.max_value))
    return (config.num_numbers - 1) * (3 * width + 3) + len(str(config.max_target)) + 2


def _number(s: str) -> int | None:
    try:
        return decode_number(s)
    except ValueError:
        return None


def check(problem: Problem, completion: str, config: CountdownConfig = DEFAULT_CONFIG) -> Verdict:
    """Parse and verify a completion step by step; the first error found decides the reason."""
    pool = list(problem.numbers)
    last: int | None = None
    lines = completion.split("\n")
    for idx, line in enumerate(lines):
        if line.startswith(ANSWER_MARKER):
            match = _ANSWER_RE.fullmatch(line)
            answer = _number(match.group(1)) if match else None
            # The sampler may or may not emit an end marker; only non-whitespace after is garbage.
            if answer is None or "\n".join(lines[idx + 1 :]).strip():
                return Verdict(0.0, "malformed")
            if last is None or answer != last or answer != problem.target:
                return Verdict(0.0, "wrong_answer")
            return Verdict(1.0, "ok")
        match = _STEP_RE.fullmatch(line)
        if match is None:
            return Verdict(0.0, "malformed")
        left, op, right, stated = (
            _number(match.group(1)),
            match.group(2),
            _number(match.group(3)),
            _number(match.group(4)),
        )
        if left is None or right is None or stated is None:
            return Verdict(0.0, "malformed")
        # Checked before availability (0 is never available) so this mistake gets its own label.
        if op == "/" and right == 0:
            return Verdict(0.0, "division_by_zero")
        for operand in (left, right):  # remove one at a time: "5*5" needs two 5s
            if operand not in pool:
                return Verdict(0.0, "unknown_number")
            pool.remove(operand)
        result = apply_op(left, op, right)
        if result is None or result > config.max_value:
            return Verdict(0.0, "invalid_op")
        if stated != result:
            return Verdict(0.0, "wrong_result")
        pool.append(result)
        last = result
    return Verdict(0.0, "malformed")  # no answer line


def reward(problem: Problem, completion: str, config: CountdownConfig = DEFAULT_CONFIG) -> float:
    return check(problem, completion, config).reward


def _line_classes(line: str) -> list[str]:
    if line.startswith(ANSWER_MARKER):
        return ["format"] + ["answer" if c in _DIGITS else "format" for c in line[1:]]
    eq = line.find("=")
    if eq < 0:
        return ["choice"] * len(line)
    return ["choice"] * eq + ["format"] + ["compute"] * (len(line) - eq - 1)


def token_classes(completion: str) -> list[str]:
    """One label per character: "choice" (operands and operator), "compute" (digits after '='),
    "answer" (answer digits), "format" ('=', newlines, answer marker). Best effort on junk."""
    labels: list[str] = []
    for line in completion.split("\n"):  # not splitlines(): it also splits on \r, \x0b, ...
        labels.extend(_line_classes(line))
        labels.append("format")
    labels.pop()  # split() yields one more piece than there are newlines
    return labels


class CountdownTask:
    """Countdown behind the task interface: generated splits, every valid solution a target."""

    name = "countdown"

    def __init__(self, config: CountdownConfig, n_train: int, n_heldout: int, split_seed: int) -> None:
        self.config = config
        self.n_train, self.n_heldout, self.split_seed = n_train, n_heldout, split_seed
        self.max_new_tokens = max_completion_chars(config) + 1  # + EOS

    def split(self) -> tuple[list[Problem], list[Problem]]:
        return split(self.config, self.n_train, self.n_heldout, self.split_seed)

    def prompt(self, problem: Problem) -> str:
        return format_prompt(problem)

    def targets(self, problem: Problem) -> list[str]:
        return [format_completion(steps) for steps in solutions(problem, self.config)]

    def score(self, problem: Problem, completion: str) -> Verdict:
        return check(problem, completion, self.config)

    def token_classes(self, completion: str) -> list[str]:
        return token_classes(completion)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}


def _print_stats(config: CountdownConfig, n: int = 500, seed: int = 0) -> None:
    rng = random.Random(seed)
    counts: list[int] = []
    good_first: list[float] = []
    lengths: list[float] = []
    for _ in range(n):
        problem = make_problem(rng, config)
        sols = solutions(problem, config)
        nums = problem.numbers
        first_moves = {
            s
            for i in range(len(nums))
            for j in range(i + 1, len(nums))
            for s in _moves(nums[i], nums[j], config.max_value)
        }
        counts.append(len(sols))
        good_first.append(len({s[0] for s in sols}) / len(first_moves))
        lengths.append(statistics.mean(len(s) for s in sols))
    print(config)
    print(f"problems: {n}  max_completion_chars: {max_completion_chars(config)}")
    print(
        f"solutions/problem: mean {statistics.mean(counts):.1f}  median "
        f"{statistics.median(counts)}  min {min(counts)}  max {max(counts)}  "
        f"single-solution {sum(c == 1 for c in counts) / n:.1%}"
    )
    print(
        f"fraction of valid first moves that still reach the target: "
        f"mean {statistics.mean(good_first):.1%}  median {statistics.median(good_first):.1%}"
    )
    print(f"mean solution length (steps): {statistics.mean(lengths):.2f}")


if __name__ == "__main__":
    _print_stats(DEFAULT_CONFIG)
