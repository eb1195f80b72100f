"""Dataclass configs for each training command, and their command-line form.

What it does: one dataclass per command (`SFTConfig`, `GRPOConfig`,
`EvalConfig`), nested dataclasses for the tasks (Countdown, JSONL), the tiny
model's shape, the head's prior and LoRA, and `parse_config` turning
`--group-size 8 --task jsonl --jsonl-train p.jsonl` style flags into them. The
resolved config is saved in every checkpoint.

What it does not do: read environment variables or files.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from model import DRAFT_STATISTICS, HeadConfig, TinyLMConfig, draft_summary_size
from training.tasks.countdown import CountdownConfig
from training.tasks.jsonl import JsonlTaskConfig

# `--task NAME` selects the task; its settings are the nested `--task-...` (Countdown) or `--jsonl-...` flags.
TASK_FLAG = {"flag": "task"}


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) on the LM instead of full fine-tuning; merged into the weights when saved."""

    rank: int = 0  # 0 = off: every LM weight is trained
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str = "all-linear"  # peft's name, or a comma-separated list such as "q_proj,v_proj"


@dataclass(frozen=True)
class HeadPrior:
    """The temperature head's range and its prior at initialisation (see model.HeadConfig)."""

    # Defaults are the model core's, so the two cannot drift apart.
    tau_min: float = HeadConfig.tau_min
    tau_max: float = HeadConfig.tau_max
    tau_init: float = HeadConfig.tau_init
    eps: float = HeadConfig.eps
    init_gate_prob: float = HeadConfig.init_gate_prob
    init_concentration: float = HeadConfig.init_concentration
    # What a new head reads, comma-separated: "hidden" (the paper's head), optionally "tau_prev" and
    # "draft" (a summary of the prompt's greedy draft, model/draft.py). Empty: "hidden" for sft; for grpo,
    # whatever the warm start's head reads (a different list starts a fresh head with this prior).
    inputs: str = ""

    def head_config(self, hidden_size: int) -> HeadConfig:
        """The model core's config of a fresh head with this prior on an LM of width `hidden_size`."""
        inputs = tuple(part.strip() for part in (self.inputs or "hidden").split(",") if part.strip())
        fields = {k: v for k, v in asdict(self).items() if k != "inputs"}
        draft_size = draft_summary_size(hidden_size) if "draft" in inputs else 0
        draft_linear = len(DRAFT_STATISTICS) if "draft" in inputs else 0
        return HeadConfig(hidden_size=hidden_size, inputs=inputs, draft_size=draft_size, draft_linear=draft_linear,
                          **fields)


@dataclass(frozen=True)
class SFTConfig:
    """Warm start: next-token training on solved problems."""

    out: str = "runs/sft"
    init: str = ""  # a local HF causal LM or checkpoint directory; empty = tiny model from scratch
    seed: int = 0
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    n_train: int = 20000
    n_heldout: int = 500
    split_seed: int = 1234
    eval_every: int = 500
    eval_problems: int = 100
    log_every: int = 25
    threads: int = 0  # 0 = torch's default
    task_name: str = field(default="countdown", metadata=TASK_FLAG)  # countdown | jsonl
    # How prompts are rendered, recorded in the checkpoint for grpo, eval and the server:
    # "auto" = the tokenizer's chat template when it has one, else plain text; "chat" requires one.
    prompt_format: str = "auto"
    system_prompt: str = ""  # with a chat template only
    dtype: str = "auto"  # the LM's training dtype: auto = bfloat16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)
    model: TinyLMConfig = field(default_factory=TinyLMConfig)
    head: HeadPrior = field(default_factory=HeadPrior)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class GRPOConfig:
    """Joint GRPO by coordinate ascent, starting from a checkpoint.

    schedule: "lm:2,tau:1" runs 2 steps updating the LM (head frozen), then 1
    updating the head (LM frozen), and repeats; "lm+tau:1" updates both on
    every step's rollouts (the head first, so both policy ratios are exact).
    rollout_temperature: "learned" (the head, the IntroLLM method), or the
    baseline GRPO: "fixed:<tau>" or "entropy" (EDT) for every rollout token;
    then every step is an LM step and the head is never updated.
    lm_advantage / tau_advantage: "mean" (group-normalised reward), "pass@k"
    (analytic pass@k advantage with k = pass_k, arXiv 2508.10751) or
    "mean+pass@k" (their sum), for the LM's and the head's updates.
    """

    init: str = "runs/sft"
    out: str = "runs/grpo"
    seed: int = 0
    steps: int = 200
    prompts_per_step: int = 32
    group_size: int = 8
    schedule: str = "lm:1,tau:1"
    rollout_temperature: str = "learned"
    lm_advantage: str = "mean"
    tau_advantage: str = "mean"
    pass_k: int = 4
    # Head steps also sample each group at these temperatures (comma-separated, inside the head's range),
    # each row keeping its rung for its whole completion: the head's signal for temperatures it would not
    # pick itself (training/grpo.py). ladder_samples rows per group cycle over the rungs (0 = one per rung).
    tau_ladder: str = ""
    ladder_samples: int = 0
    tau_rows: str = "policy+ladder"  # the head's rows in its updates: its own and the ladder's, or "ladder" alone
    ladder_weights: str = "positive"  # ladder rows weigh by max(advantage, 0) ("positive") or the advantage
    tau_entropy_coef: float = 0.0  # bonus on the head's action entropy in its updates (exploration)
    # Start the head afresh from `head` instead of the warm start's (a resumed run keeps its own).
    # A low init_gate_prob makes each sample's tau persist, so a group holds hot and cold samples
    # of the same problem for GRPO to compare.
    reinit_head: bool = False
    head: HeadPrior = field(default_factory=HeadPrior)
    lm_lr: float = 3e-5
    head_lr: float = 3e-4
    draft_lr_scale: float = 30.0  # the head's linear path from the draft statistics learns at head_lr x this
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    updates_per_rollout: int = 1
    grad_clip: float = 1.0
    max_new_tokens: int = 0  # 0 = the task's longest valid completion + EOS
    n_train: int = 20000
    n_heldout: int = 500
    split_seed: int = 1234
    eval_every: int = 50
    eval_problems: int = 100
    save_every: int = 50
    # "bfloat16" halves the checkpoint (the bundled model ships so); training
    # itself stays float32, and resuming continues from the rounded weights.
    save_dtype: str = "float32"
    threads: int = 0
    dtype: str = "auto"  # the LM's training dtype: auto = bfloat16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False
    # Prompts are rendered with the format recorded in the `init` checkpoint (see SFTConfig.prompt_format).
    task_name: str = field(default="countdown", metadata=TASK_FLAG)  # countdown | jsonl
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of several temperature controllers through one decode path."""

    checkpoint: str = "runs/grpo"
    out: str = ""  # report folder; empty = <checkpoint>/eval
    problems: int = 200
    samples: int = 8
    # The fixed-tau grid traces the model's avg@k / pass@k trade-off curve; the
    # learned and entropy controllers are points to place against it.
    controllers: str = ("fixed:0.1,fixed:0.2,fixed:0.3,fixed:0.4,fixed:0.5,fixed:0.6,fixed:0.8,fixed:1.0,"
                        "fixed:1.2,fixed:1.4,entropy,learned,learned-deterministic")
    seed: int = 0
    batch_rows: int = 512
    # The baselines built on each problem's greedy draft (hedge, draft rule; training/frontier.py). The
    # draft rule picks the first or the second of draft_rule_taus (both in `controllers`) per problem,
    # fitted on draft_rule_problems train-split problems with draft_rule_samples samples at each.
    draft_baselines: bool = True
    draft_rule_taus: str = "0.1,1.0"
    draft_rule_problems: int = 500
    draft_rule_samples: int = 4
    plot_samples: int = 6  # panels of tau along sampled solutions, alternating hot-only and cold-solved problems
    write_manifest: bool = True  # record the table in the checkpoint's manifest and model card
    threads: int = 0
    # Empty: the task the checkpoint was trained on (from its manifest); else countdown | jsonl with its flags.
    task_name: str = field(default="", metadata=TASK_FLAG)
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)


@dataclass(frozen=True)
class CompareConfig:
    """Compare trained models over their evaluation reports: frontier table, paired tests, plot."""

    # "name=checkpoint_dir,...": each must hold eval/report.json (from `eval`, same held-out split and seeds).
    models: str = ""
    reference: str = ""  # the model whose learned point is tested against the others; empty = the first
    out: str = "runs/compare"
    copy_reports: bool = True  # copy each model's report and training log under out/models/<name>/


@dataclass(frozen=True)
class CardConfig:
    """Write a checkpoint's model card (README.md) from its manifest and logs."""

    checkpoint: str = "runs/grpo"
    command: str = ""  # the command that produced the checkpoint, quoted in the card


T = TypeVar("T")


def _resolve(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = _resolve(hints[f.name])
        flag = "--" + (prefix + f.metadata.get("flag", f.name)).replace("_", "-")
        dest = prefix + f.name
        if dataclasses.is_dataclass(hint):
            _add_arguments(parser, hint, prefix=f"{prefix}{f.name}_")
        elif hint is bool:
            parser.add_argument(flag, dest=dest, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                                metavar="BOOL")
        else:
            parser.add_argument(flag, dest=dest, type=hint, default=None)


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = _resolve(hints[f.name])
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, values, prefix=f"{prefix}{f.name}_")
        elif values.get(prefix + f.name) is not None:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per (nested) field, all optional: unset flags keep the dataclass default.

    A field's flag is its name, or its metadata's "flag" (`task_name` is `--task`)."""
    _add_arguments(parser, cls)


def config_from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    return _build(cls, vars(namespace))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config saved with `config_to_dict`; unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        hint = _resolve(hints[f.name])
        kwargs[f.name] = config_from_dict(hint, data[f.name]) if dataclasses.is_dataclass(hint) else data[f.name]
    return cls(**kwargs)
