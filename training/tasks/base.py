"""The task interface: what training and evaluation need from a task, and nothing more.

What it does: `Task` is the protocol every task implements (Countdown in
`countdown_task.py`, JSONL files in `jsonl.py`):
  - `split()`: the problems of the train and held-out splits (fixed by a seed
    or by files, so every command sees the same held-out set);
  - `prompt(problem)`: the prompt text, rendered later as a user message by the
    checkpoint's prompt format (model/prompt_format.py);
  - `targets(problem)`: worked completions SFT may train on (one is drawn per
    example), empty when the problem has none;
  - `score(problem, completion)`: a `Verdict`, by parsing and checking the
    completion (never by comparing with a reference string alone);
  - `max_new_tokens`: the generation budget of rollouts and evaluation;
  - `token_classes(completion)`: optional per-character labels for the
    interpretability analysis (`None` when the task has none);
  - `describe()`: the task's settings, recorded in the checkpoint manifest.

What it does not do: tokenise or sample (training/data.py, training/rollout.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Verdict:
    reward: float
    reason: str  # "ok" when correct; otherwise the task's own label of what went wrong


@runtime_checkable
class Task(Protocol):
    name: str
    max_new_tokens: int

    def split(self) -> tuple[Sequence[Any], Sequence[Any]]: ...

    def prompt(self, problem: Any) -> str: ...

    def targets(self, problem: Any) -> Sequence[str]: ...

    def score(self, problem: Any, completion: str) -> Verdict: ...

    def token_classes(self, completion: str) -> list[str] | None: ...

    def describe(self) -> dict[str, Any]: ...
