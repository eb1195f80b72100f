"""The task a checkpoint records, and the task each command runs: the recorded one unless overridden.

What it does: `TaskChoice` is a task with its split (kind, settings, split
seed, held-out count); `TaskChoice.fields` is what sft and grpo write into the
manifest's training record (`task_name`, `task`, `split_seed`, `n_heldout`,
and `data`: problem counts, the JSONL files with theirs, and a digest of the
held-out problems). `resolve_task` gives grpo and eval the task recorded in
their `--init` / `--checkpoint`: a task flag the user gave that contradicts
the record is a `TaskRecordError` unless `task_override` is set (then the
flags win, on top of the record for the same kind of task), and the held-out
problems are checked against the recorded digest, so every command of a run
holds out the same problems. A checkpoint without a task record (the first
format) runs the task its flags give, Countdown by default, as it always did;
one whose record has no kind (the bundled checkpoint's) is Countdown.

What it does not do: read files other than the task's own, or train.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.tasks import Task, build_task
from training.tasks.countdown import CountdownConfig
from training.tasks.jsonl import JsonlTaskConfig

# The record's split fields, also flags of sft and grpo.
SPLIT_FIELDS = ("split_seed", "n_heldout")
DEFAULT_SPLIT_SEED = 1234
DEFAULT_N_HELDOUT = 500


class TaskRecordError(ValueError):
    """A task flag contradicting the checkpoint's recorded task, or held-out problems that moved; one line."""


@dataclass(frozen=True)
class TaskChoice:
    """A task and its split: what a command runs and what the manifest records."""

    name: str = "countdown"
    countdown: CountdownConfig = CountdownConfig()
    jsonl: JsonlTaskConfig = JsonlTaskConfig()
    split_seed: int = DEFAULT_SPLIT_SEED
    n_heldout: int = DEFAULT_N_HELDOUT

    def build(self, n_train: int = 0) -> Task:
        """The task; `n_train` train problems where it generates them (Countdown)."""
        return build_task(self.name, countdown=self.countdown, jsonl=self.jsonl, n_train=n_train,
                          n_heldout=self.n_heldout, split_seed=self.split_seed)

    def settings(self) -> dict[str, Any]:
        """The task's settings as recorded (Countdown's as they always were; JSONL files by absolute path)."""
        if self.name == "countdown":
            return asdict(self.countdown)
        files = {key: str(Path(value).resolve()) for key in ("train", "heldout") if (value := getattr(self.jsonl, key))}
        return {"name": self.name, **asdict(self.jsonl), **files}

    def fields(self, train: list, heldout: list, task: Task) -> dict[str, Any]:
        """The manifest's task fields for this choice, whose split was `train`, `heldout`."""
        return {"task_name": self.name, "task": self.settings(), "split_seed": self.split_seed,
                "n_heldout": self.n_heldout, "data": self._data(train, heldout, task)}

    def _data(self, train: list, heldout: list, task: Task) -> dict[str, Any]:
        data: dict[str, Any] = {"train_problems": len(train), "heldout_problems": len(heldout),
                                "heldout_digest": heldout_digest(task, heldout)}
        if self.name == "jsonl":
            separate = bool(self.jsonl.heldout)
            data["files"] = {"train": {"path": self.settings()["train"],
                                       "problems": len(train) + (0 if separate else len(heldout))}}
            if separate:
                data["files"]["heldout"] = {"path": self.settings()["heldout"], "problems": len(heldout)}
        return data


def heldout_digest(task: Task, heldout: list) -> str:
    """A fingerprint of the held-out problems (their prompts, in order), to tell when they moved."""
    digest = hashlib.sha256()
    for problem in heldout:
        digest.update(task.prompt(problem).encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def choice_from_config(cfg: Any) -> TaskChoice:
    """The task a command's flags give (sft's, or a command's on a checkpoint without a task record)."""
    return TaskChoice(name=cfg.task_name, countdown=cfg.task, jsonl=cfg.jsonl,
                      split_seed=getattr(cfg, "split_seed", DEFAULT_SPLIT_SEED),
                      n_heldout=getattr(cfg, "n_heldout", DEFAULT_N_HELDOUT))


def recorded_choice(training: dict[str, Any]) -> TaskChoice | None:
    """The task a manifest's training record names, or None when it records none (the first format)."""
    if "task" not in training:
        return None
    name = training.get("task_name", "countdown")  # the bundled checkpoint's record predates the kind
    settings = {k: v for k, v in dict(training["task"]).items() if k != "name"}
    countdown = CountdownConfig(**settings) if name == "countdown" else CountdownConfig()
    jsonl = JsonlTaskConfig(**settings) if name == "jsonl" else JsonlTaskConfig()
    return TaskChoice(name=name, countdown=countdown, jsonl=jsonl,
                      split_seed=int(training.get("split_seed", DEFAULT_SPLIT_SEED)),
                      n_heldout=int(training.get("n_heldout", DEFAULT_N_HELDOUT)))


def _asked(cfg: Any) -> list[str]:
    """The task flags (dest names) the user asked for: given on the command line, or set away from the default
    (a config built in code)."""
    defaults = type(cfg)()
    given = set(getattr(cfg, "flags_given", ()))
    names = ["task_name", *(f for f in SPLIT_FIELDS if hasattr(cfg, f))]
    names += [f"task_{f.name}" for f in dataclasses.fields(CountdownConfig)]
    names += [f"jsonl_{f.name}" for f in dataclasses.fields(JsonlTaskConfig)]
    return [n for n in names if n in given or _value(cfg, n) != _value(defaults, n)]


def _value(cfg: Any, name: str) -> Any:
    for prefix, part in (("task_", "task"), ("jsonl_", "jsonl")):
        if name.startswith(prefix) and name != "task_name":
            return getattr(getattr(cfg, part), name[len(prefix):])
    return getattr(cfg, name)


def _flag(name: str) -> str:
    return "--task" if name == "task_name" else "--" + name.replace("_", "-")


def _contradiction(name: str, asked: Any, record: TaskChoice) -> str | None:
    """Why the asked value of flag `name` contradicts the record, or None when it agrees (or does not apply)."""
    if name == "task_name":
        recorded: Any = record.name
    elif name in SPLIT_FIELDS:
        if name == "n_heldout" and record.name != "countdown":
            return None  # a JSONL task's split is its held-out file or fraction
        recorded = getattr(record, name)
    else:
        kind = "countdown" if name.startswith("task_") else "jsonl"
        if kind != record.name:
            return f"{_flag(name)} is a {kind} setting, and the recorded task is {record.name}"
        recorded = record.settings()[name.split("_", 1)[1]]
        if name in ("jsonl_train", "jsonl_heldout") and asked:
            asked = str(Path(asked).resolve())
    if asked == recorded:
        return None
    return f"{_flag(name)} {asked!r} contradicts the recorded {recorded!r}"


def _merged(cfg: Any, record: TaskChoice, asked: list[str]) -> TaskChoice:
    """The record with the asked flags applied (a different kind of task: the flags' task alone)."""
    if "task_name" in asked and cfg.task_name != record.name:
        return choice_from_config(cfg)
    countdown = dataclasses.replace(record.countdown, **{n[5:]: _value(cfg, n) for n in asked
                                                         if n.startswith("task_") and n != "task_name"})
    jsonl = dataclasses.replace(record.jsonl, **{n[6:]: _value(cfg, n) for n in asked if n.startswith("jsonl_")})
    split = {n: _value(cfg, n) for n in asked if n in SPLIT_FIELDS}
    return dataclasses.replace(record, countdown=countdown, jsonl=jsonl, **split)


def resolve_task(cfg: Any, training: dict[str, Any], source: str | Path) -> TaskChoice:
    """The task grpo or eval runs on a checkpoint whose training record is `training` (read from `source`)."""
    record = recorded_choice(training)
    if record is None:
        return choice_from_config(cfg)
    asked = _asked(cfg)
    problems = [p for n in asked if (p := _contradiction(n, _value(cfg, n), record))]
    if problems and not getattr(cfg, "task_override", False):
        raise TaskRecordError(
            f"{'; '.join(problems)} (the task recorded in {source}): drop the task flags to use the recorded task, "
            "or add --task-override true to change it")
    return _merged(cfg, record, asked) if problems else record


def check_heldout(cfg: Any, training: dict[str, Any], task: Task, heldout: list, source: str | Path) -> None:
    """Refuse held-out problems other than those the checkpoint recorded (a task file changed since)."""
    recorded = training.get("data", {}).get("heldout_digest")
    if recorded is None or getattr(cfg, "task_override", False):
        return  # an older record, or a task changed on purpose
    if heldout_digest(task, heldout) != recorded:
        raise TaskRecordError(
            f"the held-out problems of the task recorded in {source} are not the ones it recorded "
            f"({len(heldout)} now, {training['data'].get('heldout_problems')} then): a task file changed since; "
            "restore it, or add --task-override true to use it as it is")
