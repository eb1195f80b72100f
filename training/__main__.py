"""Command line: `python -m training <sft|grpo|eval|compare|card> [--flag value ...]`.

Every field of the command's dataclass config (training/config.py) is a flag,
nested ones prefixed: `--task-max-target 50`, `--model-hidden-size 128`,
`--head-tau-max 1.5`; `--help` describes each. Runs data-parallel under
`torchrun --nproc_per_node N`.

A known user error stops the command with one line on stderr and no
traceback: status 2 for a usage error (a bad flag or value, a task flag that
contradicts the checkpoint's recorded task, a prompt format the tokenizer
cannot do), 3 for an input that cannot be used (a missing or malformed task
file, a missing or broken checkpoint or model folder). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from model import CheckpointError, PromptFormatError, UnsupportedModelError
from training.config import (
    CardConfig,
    CompareConfig,
    EvalConfig,
    GRPOConfig,
    SFTConfig,
    add_config_arguments,
    config_from_namespace,
)
from training.task_record import TaskRecordError
from training.tasks import JsonlTaskError

COMMANDS = {"sft": SFTConfig, "grpo": GRPOConfig, "eval": EvalConfig, "compare": CompareConfig, "card": CardConfig}
USAGE_ERROR = 2
INPUT_ERROR = 3
EPILOG = ("Exit status: 0 done, 2 a usage error (bad flag or value, a task flag contradicting the checkpoint's "
          "task), 3 an input that cannot be used (task file, checkpoint or model folder, a model whose attention "
          "layers the server cannot serve).")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage summary is a --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def one_line(exc: BaseException) -> str:
    """The error's message on one line: a multi-line one (every malformed line of a file) joined by '; '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(line if line.endswith(":") else line + ";" for line in lines).rstrip(";") or type(exc).__name__


def exit_status(exc: BaseException) -> int | None:
    """The documented status of a known user error, or None for a bug (which keeps its traceback)."""
    # An unservable model is the model folder's fault, as it is for the server (which exits 3 too).
    if isinstance(exc, JsonlTaskError | CheckpointError | UnsupportedModelError | FileNotFoundError
                  | NotADirectoryError):
        return INPUT_ERROR
    if isinstance(exc, TaskRecordError | PromptFormatError | ValueError):
        # Every check of a flag's value raises ValueError (configs, schedules, advantages, dtypes).
        return USAGE_ERROR
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m training", description=__doc__.splitlines()[0], epilog=EPILOG)
    sub = parser.add_subparsers(dest="_subcommand", required=True, parser_class=OneLineParser)
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip()
        add_config_arguments(sub.add_parser(name, help=doc.splitlines()[0], description=doc, epilog=EPILOG,
                                            formatter_class=argparse.RawDescriptionHelpFormatter), cls)
    return parser


def run(command: str, config) -> None:
    if command == "sft":
        from training.sft import train_sft

        print(train_sft(config))
    elif command == "grpo":
        from training.grpo import train_grpo

        result = train_grpo(config)
        if os.environ.get("RANK", "0") == "0":
            print(result.out)
    elif command == "eval":
        from training.evaluate import run_evaluation

        print(run_evaluation(config).markdown)
    elif command == "compare":
        from training.compare import run_comparison

        print(run_comparison(config))
    else:
        from training.model_card import write_model_card

        print(write_model_card(config.checkpoint, config.command))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args._subcommand
    # transformers' weight-loading bars would be the only other lines on stderr: a known error is one line.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        run(command, config_from_namespace(COMMANDS[command], args))
    except Exception as exc:
        status = exit_status(exc)
        if status is None:
            raise
        print(f"python -m training {command}: error: {one_line(exc)}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
