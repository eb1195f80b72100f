"""Tasks behind one interface (base.py): `countdown` (generated in code) and `jsonl` (your own problems).

`build_task(name, ...)` selects one by the `--task` flag's value; `TASKS` names them.
"""

from __future__ import annotations

from training.tasks.base import Task, Verdict
from training.tasks.countdown import CountdownConfig, CountdownTask
from training.tasks.jsonl import JsonlTask, JsonlTaskConfig, JsonlTaskError

TASKS = ("countdown", "jsonl")


def build_task(name: str, *, countdown: CountdownConfig, jsonl: JsonlTaskConfig, n_train: int, n_heldout: int,
               split_seed: int) -> Task:
    """The task called `name`, configured by its own config (the other one is ignored)."""
    if name == "countdown":
        return CountdownTask(countdown, n_train, n_heldout, split_seed)
    if name == "jsonl":
        return JsonlTask(jsonl, split_seed)
    raise ValueError(f"unknown task {name!r} (use one of {', '.join(TASKS)})")


__all__ = ["TASKS", "CountdownTask", "JsonlTask", "JsonlTaskConfig", "JsonlTaskError", "Task", "Verdict",
           "build_task"]
