"""Command line: `python -m training <sft|grpo|eval|compare|card> [--flag value ...]`.

Every field of the command's dataclass config (training/config.py) is a flag,
nested ones prefixed: `--task-max-target 50`, `--model-hidden-size 128`,
`--head-tau-max 1.5`. Runs data-parallel under `torchrun --nproc_per_node N`.
"""

from __future__ import annotations

import argparse
import os
import sys

from training.config import (
    CardConfig,
    CompareConfig,
    EvalConfig,
    GRPOConfig,
    SFTConfig,
    add_config_arguments,
    config_from_namespace,
)

COMMANDS = {"sft": SFTConfig, "grpo": GRPOConfig, "eval": EvalConfig, "compare": CompareConfig, "card": CardConfig}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="_subcommand", required=True)
    for name, cls in COMMANDS.items():
        add_config_arguments(sub.add_parser(name, help=(cls.__doc__ or "").splitlines()[0]), cls)
    args = parser.parse_args(argv)
    config = config_from_namespace(COMMANDS[args._subcommand], args)
    if args._subcommand == "sft":
        from training.sft import train_sft

        print(train_sft(config))
    elif args._subcommand == "grpo":
        from training.grpo import train_grpo

        result = train_grpo(config)
        if os.environ.get("RANK", "0") == "0":
            print(result.out)
    elif args._subcommand == "eval":
        from training.evaluate import run_evaluation

        print(run_evaluation(config).markdown)
    elif args._subcommand == "compare":
        from training.compare import run_comparison

        print(run_comparison(config))
    else:
        from training.model_card import write_model_card

        print(write_model_card(config.checkpoint, config.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
