"""Problems from JSONL files, rewarded by an answer checker: bring your own data.

File format: one JSON object per line,
    {"prompt": "What is 3 + 4?", "answer": "7", "solution": "3 + 4 = 7. The answer is $\\boxed{7}$."}
`prompt` and `answer` are required (`answer` a string or a number), `solution`
(a worked completion SFT trains on) is optional; other keys are ignored, blank
lines are allowed. A malformed line is an error naming the file and the line
number (all of them, up to a few dozen): no line is ever skipped silently.

Splits: the held-out problems come from their own file (`heldout`), or are a
fraction of the training file drawn with a fixed seed, so sft, grpo and eval
see the same held-out set.

Rewards (1 correct, 0 not), the `reward` flag:
  - "math-verify" (default): Hugging Face's math-verify parses the reference
    and the completion (LaTeX, \\boxed{...}, plain numbers and expressions)
    and checks equivalence: \\frac{1}{2}, 0.5 and 1/2 are one answer;
  - "exact": the completion's answer (the last \\boxed{...}, else its last
    non-empty line) equals the reference after normalisation (case, spaces,
    surrounding $ and a final period dropped);
  - "regex": `answer_regex` is searched in the completion; its first group
    (or the whole match) is compared with the reference as in "exact".

What it does not do: tokenise, render prompts (the prompt format does), or
label tokens by class (no interpretability classes for free-form text).
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.tasks.base import Verdict

REWARDS = ("math-verify", "exact", "regex")
MATH_VERIFY_TIMEOUT_S = 5  # per parse and per check: sympy can take very long on adversarial text
MAX_REPORTED_ERRORS = 20


class JsonlTaskError(ValueError):
    """A task file that cannot be used; the message names the file and, for a bad line, its number."""


@dataclass(frozen=True)
class JsonlTaskConfig:
    """Where the problems are and how completions are checked (flags --jsonl-train, --jsonl-reward, ...)."""

    train: str = ""  # the problems file (required with --task jsonl)
    heldout: str = ""  # a held-out file; empty = `heldout_fraction` of `train`, drawn with the split seed
    heldout_fraction: float = 0.1  # without a held-out file: this fraction of `train` is held out
    reward: str = "math-verify"  # math-verify | exact | regex
    answer_regex: str = ""  # with reward "regex": group 1 (or the whole match) is the answer
    max_new_tokens: int = 256  # bound on each rollout and evaluation completion

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise JsonlTaskError(f"unknown reward {self.reward!r} (use one of {', '.join(REWARDS)})")
        if self.reward == "regex":
            if not self.answer_regex:
                raise JsonlTaskError("reward 'regex' needs --jsonl-answer-regex")
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise JsonlTaskError(f"--jsonl-answer-regex {self.answer_regex!r} is not a regex: {exc}") from exc
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise JsonlTaskError("heldout_fraction must be in [0, 1)")
        if self.max_new_tokens < 1:
            raise JsonlTaskError("max_new_tokens must be >= 1")


@dataclass(frozen=True)
class JsonlProblem:
    prompt: str
    answer: str
    solution: str = ""
    source: str = ""  # "file:line", for messages


def _problem(record: Any, where: str) -> JsonlProblem:
    """One parsed line as a problem, or a JsonlTaskError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise JsonlTaskError(f"{where}: expected a JSON object, found {type(record).__name__}")
    prompt, answer, solution = record.get("prompt"), record.get("answer"), record.get("solution", "")
    if not isinstance(prompt, str) or not prompt.strip():
        raise JsonlTaskError(f"{where}: 'prompt' must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float) or not str(answer).strip():
        raise JsonlTaskError(f"{where}: 'answer' must be a non-empty string or a number")
    if solution is None:
        solution = ""
    if not isinstance(solution, str):
        raise JsonlTaskError(f"{where}: 'solution' must be a string when given")
    return JsonlProblem(prompt=prompt, answer=str(answer).strip(), solution=solution, source=where)


def read_problems(path: str | Path) -> list[JsonlProblem]:
    """Every problem of a JSONL file; raises JsonlTaskError listing each malformed line by number."""
    path = Path(path)
    if not path.is_file():
        raise JsonlTaskError(f"task file not found: {path}")
    problems: list[JsonlProblem] = []
    errors: list[str] = []
    with path.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    problems.append(_problem(json.loads(line), where))
                except json.JSONDecodeError as exc:
                    errors.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
                except JsonlTaskError as exc:
                    errors.append(str(exc))
        except UnicodeDecodeError as exc:
            raise JsonlTaskError(f"{path}: not UTF-8 text after line {len(problems) + len(errors)}: {exc}") from exc
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise JsonlTaskError(f"{len(errors)} malformed line(s) in {path}:\n" + "\n".join(shown) + more)
    if not problems:
        raise JsonlTaskError(f"{path} holds no problems")
    return problems


# ---------------------------------------------------------------- answers

_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def normalise(answer: str) -> str:
    """Case and runs of spaces folded; surrounding $ and a final period dropped."""
    text = " ".join(answer.split()).lower()
    text = text[:-1] if text.endswith(".") else text
    return text.strip().strip("$").strip()


def extracted_answer(completion: str) -> str | None:
    """The completion's answer for "exact": the last \\boxed{...}, else its last non-empty line."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


def math_verify_reward(answer: str, completion: str) -> Verdict:
    """math-verify's equivalence of the reference and the completion's final answer."""
    from math_verify import parse, verify  # imported here: it loads sympy, which only this reward needs

    # math-verify's time limits use SIGALRM, which only the main thread may set: elsewhere, none.
    limit = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(answer, parsing_timeout=limit)
    if not gold:  # a bare reference the parser did not take: read it as LaTeX
        gold = parse(f"${answer}$", parsing_timeout=limit)
    if not gold:
        return Verdict(0.0, "unparsable_reference")
    predicted = parse(completion, parsing_timeout=limit)
    if not predicted:
        return Verdict(0.0, "no_answer")
    return Verdict(1.0, "ok") if verify(gold, predicted, timeout_seconds=limit) else Verdict(0.0, "wrong_answer")


def match_reward(answer: str, found: str | None) -> Verdict:
    if found is None or not found.strip():
        return Verdict(0.0, "no_answer")
    return Verdict(1.0, "ok") if normalise(found) == normalise(answer) else Verdict(0.0, "wrong_answer")


class JsonlTask:
    """Problems from JSONL, behind the task interface (training/tasks/base.py)."""

    name = "jsonl"

    def __init__(self, config: JsonlTaskConfig, split_seed: int) -> None:
        if not config.train:
            raise JsonlTaskError("--task jsonl needs --jsonl-train <file.jsonl>")
        self.config = config
        self.split_seed = split_seed
        self.max_new_tokens = config.max_new_tokens
        self._pattern = re.compile(config.answer_regex) if config.reward == "regex" else None

    def split(self) -> tuple[list[JsonlProblem], list[JsonlProblem]]:
        problems = read_problems(self.config.train)
        if self.config.heldout:
            return problems, read_problems(self.config.heldout)
        order = list(range(len(problems)))
        random.Random(f"jsonl-heldout-{self.split_seed}").shuffle(order)
        n_heldout = round(self.config.heldout_fraction * len(problems))
        if self.config.heldout_fraction > 0 and len(problems) > 1:
            n_heldout = min(max(1, n_heldout), len(problems) - 1)
        held = set(order[:n_heldout])
        return ([p for i, p in enumerate(problems) if i not in held],
                [p for i, p in enumerate(problems) if i in held])

    def prompt(self, problem: JsonlProblem) -> str:
        return problem.prompt

    def targets(self, problem: JsonlProblem) -> list[str]:
        return [problem.solution] if problem.solution else []

    def score(self, problem: JsonlProblem, completion: str) -> Verdict:
        if self.config.reward == "math-verify":
            return math_verify_reward(problem.answer, completion)
        if self._pattern is not None:
            match = self._pattern.search(completion)
            found = None if match is None else (match.group(1) if match.groups() else match.group(0))
            return match_reward(problem.answer, found)
        return match_reward(problem.answer, extracted_answer(completion))

    def token_classes(self, completion: str) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}
