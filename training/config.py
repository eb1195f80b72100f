"""Dataclass configs for each training command, and their command-line form.

What it does: one dataclass per command (`SFTConfig`, `GRPOConfig`,
`EvalConfig`), nested dataclasses for the tasks (Countdown, JSONL), the tiny
model's shape, the head's prior and LoRA, and `add_config_arguments` /
`config_from_namespace` turning `--group-size 8 --task jsonl --jsonl-train
p.jsonl` style flags into them. A field's comment in this file (or in the
nested dataclass's) is its flag's `--help` text, so the two cannot drift. The
config records which flags were given (`flags_given`): grpo and eval tell a
task flag the user typed from a default when they compare it with the task
recorded in the checkpoint. The resolved config is saved in every checkpoint.

What it does not do: read environment variables or files.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from model import DRAFT_STATISTICS, HeadConfig, TinyLMConfig, draft_summary_size
from training.tasks.countdown import CountdownConfig
from training.tasks.jsonl import JsonlTaskConfig

# `--task NAME` selects the task; its settings are the nested `--task-...` (Countdown) or `--jsonl-...` flags.
TASK_FLAG = {"flag": "task"}
# A field filled by the command line itself, not a flag.
NOT_A_FLAG = {"cli": False}
# A string flag whose value may spell a line break or a tab as \n or \t (shells pass them literally).
ESCAPED = {"escapes": True}


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft) on the LM instead of full fine-tuning; merged into the weights when saved."""

    rank: int = 0  # 0 = off: every LM weight is trained
    alpha: float = 16.0  # LoRA scaling numerator (the update is scaled by alpha / rank)
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: str = "all-linear"  # peft's name, or a comma-separated list such as "q_proj,v_proj"


@dataclass(frozen=True)
class HeadPrior:
    """The temperature head's range and its prior at initialisation (see model.HeadConfig)."""

    # Defaults are the model core's, so the two cannot drift apart.
    tau_min: float = HeadConfig.tau_min  # lowest temperature the head can choose
    tau_max: float = HeadConfig.tau_max  # highest temperature the head can choose
    tau_init: float = HeadConfig.tau_init  # tau_0, before the first re-choice; the prior's mean
    eps: float = HeadConfig.eps  # added to both Beta concentrations (1 keeps the Beta unimodal)
    init_gate_prob: float = HeadConfig.init_gate_prob  # prior probability of re-choosing tau at a token
    init_concentration: float = HeadConfig.init_concentration  # prior Beta's alpha + beta
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

    out: str = "runs/sft"  # the checkpoint folder to write
    init: str = ""  # a local HF causal LM or checkpoint directory; empty = tiny model from scratch
    seed: int = 0  # model init, batches and the quick held-out check
    steps: int = 3000  # optimiser steps
    batch_size: int = 128  # examples per step (over all ranks)
    lr: float = 1e-3  # peak learning rate (linear warm-up, then cosine to 10%)
    warmup_steps: int = 100  # steps of linear learning-rate warm-up
    weight_decay: float = 0.1  # AdamW weight decay
    grad_clip: float = 1.0  # gradient norm clip
    n_train: int = 20000  # Countdown: training problems generated
    n_heldout: int = 500  # Countdown: held-out problems generated (recorded for grpo and eval)
    split_seed: int = 1234  # seed of the train/held-out split (recorded for grpo and eval)
    eval_every: int = 500  # steps between quick held-out checks at tau 1 (0 = none)
    eval_problems: int = 100  # held-out problems in each quick check
    log_every: int = 25  # steps between log lines
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # The task, recorded in the checkpoint: grpo, eval and card read it from there.
    task_name: str = field(default="countdown", metadata=TASK_FLAG)  # countdown | jsonl
    # How prompts are rendered, recorded in the checkpoint for grpo, eval and the server:
    # "auto" = the tokenizer's chat template when it has one, else plain text; "chat" requires one.
    prompt_format: str = "auto"
    system_prompt: str = ""  # with a chat template only
    # Plain text only: what ends every prompt, so the answer starts apart from it (\n = a line break; not
    # doubled when the prompt already ends with it); recorded for the server's chat route.
    prompt_separator: str = field(default="\n", metadata=ESCAPED)
    dtype: str = "auto"  # the LM's training dtype: auto = bfloat16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)
    model: TinyLMConfig = field(default_factory=TinyLMConfig)
    head: HeadPrior = field(default_factory=HeadPrior)
    lora: LoraConfig = field(default_factory=LoraConfig)
    flags_given: tuple[str, ...] = field(default=(), metadata=NOT_A_FLAG)


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

    init: str = "runs/sft"  # the checkpoint to start from (sft's, or a grpo one to resume)
    out: str = "runs/grpo"  # the checkpoint folder to write
    seed: int = 0  # rollouts and problem sampling
    steps: int = 200  # GRPO steps (a resumed run continues up to this many)
    prompts_per_step: int = 32  # training problems per step (over all ranks)
    group_size: int = 8  # samples per problem, compared within their group
    schedule: str = "lm:1,tau:1"  # which policy each step updates, cycled: "lm:2,tau:1" or "lm+tau:1"
    rollout_temperature: str = "learned"  # learned | fixed:<tau> | entropy
    lm_advantage: str = "mean"  # mean | pass@k | mean+pass@k
    tau_advantage: str = "mean"  # mean | pass@k | mean+pass@k
    pass_k: int = 4  # k of the pass@k advantage
    # Head steps also sample each group at these temperatures (comma-separated, inside the head's range),
    # each row keeping its rung for its whole completion: the head's signal for temperatures it would not
    # pick itself (training/grpo.py). ladder_samples rows per group cycle over the rungs (0 = one per rung).
    tau_ladder: str = ""
    ladder_samples: int = 0
    tau_rows: str = "policy+ladder"  # the head's rows in its updates: its own and the ladder's, or "ladder" alone
    ladder_weights: str = "positive"  # ladder rows weigh by max(advantage, 0) ("positive") or the advantage
    # The head phase's objective: "grpo" (the clipped ratio on its rows, ladder rows as above) or "best-rung"
    # (off-policy from the ladder, LM frozen: each rung of each problem is scored on its ladder rows by
    # tau_advantage's objective (mean reward, pass@k estimate or their sum), and the head maximises the
    # likelihood of the update-to-that-rung action (z clipped into [0.05, 0.95]) on the tokens of its own
    # rows, weighted by the rung's score
    # above the rungs' mean; needs tau_ladder, ladder_samples rows per problem over its rungs), or
    # "rung-value" (scored the same way, on a ladder from the head's tau_min to its tau_max: the head
    # maximises each problem's value of its expected tau, linear between the rungs' scores; with two rungs,
    # the hot-minus-cold score times the expected tau's position between them).
    tau_objective: str = "grpo"
    tau_entropy_coef: float = 0.0  # bonus on the head's action entropy in its updates (exploration)
    # rung-value only: penalty on the variance of the head's Beta at each token (z units); the value alone is
    # linear in tau, blind to per-token noise.
    tau_variance_coef: float = 0.0
    # best-rung and rung-value: the weight of a rung's mean reward in its score beside its pass@k estimate
    # (tau_advantage "mean+pass@k"). Above 1, a problem that cold sampling always solves weighs more
    # against one that only hot sampling sometimes solves (avg@k against pass@k).
    rung_mean_weight: float = 1.0
    # best-rung and rung-value: count the problem's greedy draft among each rung's samples in its pass@k part,
    # as evaluation does (the draft is sample 0 of k): a rung passes if the draft or one of k - 1 of its rows
    # solves. A problem whose draft is right then gains nothing in pass@k from hot rows, only a loss in mean
    # reward, and the head learns to stay cold there; where the draft is wrong, hot rows keep their pass@k gain.
    # On the bundled model it changed no rung's winner: where the draft is right, the rows of a cold rung (0.1,
    # nearly greedy) are right too (the card's trial rung-value-draft-pass).
    rung_pass_with_draft: bool = False
    # Start the head afresh from `head` instead of the warm start's (a resumed run keeps its own).
    # A low init_gate_prob makes each sample's tau persist, so a group holds hot and cold samples
    # of the same problem for GRPO to compare.
    reinit_head: bool = False
    # Continue from the GRPO step the init checkpoint records (a resume). False: a new run from its weights,
    # step 0 (a head-only run on top of a finished joint run, such as the bundled model).
    resume: bool = True
    head: HeadPrior = field(default_factory=HeadPrior)
    lm_lr: float = 3e-5  # the LM's learning rate
    head_lr: float = 3e-4  # the head's learning rate
    draft_lr_scale: float = 30.0  # the head's linear path from the draft statistics learns at head_lr x this
    clip_eps: float = 0.2  # policy-ratio clip
    kl_coef: float = 0.0  # KL penalty to the starting LM (0 = none)
    updates_per_rollout: int = 1  # optimiser updates on each step's rollouts
    grad_clip: float = 1.0  # gradient norm clip
    max_new_tokens: int = 0  # rollout length; 0 = the task's (Countdown: longest valid completion + EOS)
    n_train: int = 20000  # Countdown: training problems generated
    n_heldout: int = 500  # Countdown: held-out problems (unless given, the init checkpoint's recorded count)
    split_seed: int = 1234  # the split's seed (unless given, the init checkpoint's recorded one)
    eval_every: int = 50  # steps between held-out evaluations (0 = none)
    eval_problems: int = 100  # held-out problems in each evaluation
    save_every: int = 50  # steps between checkpoints (0 = at the end only)
    # "bfloat16" halves the checkpoint (the bundled model ships so); training
    # itself stays float32, and resuming continues from the rounded weights.
    save_dtype: str = "float32"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    dtype: str = "auto"  # the LM's training dtype: auto = bfloat16 on a GPU that has it, else float32
    gradient_checkpointing: bool = False  # trade compute for memory on large models
    # Prompts are rendered with the format recorded in the `init` checkpoint (see SFTConfig.prompt_format).

    # The task, its split included, is the one recorded in `init` (countdown for a checkpoint without a record);
    # a task flag that contradicts the record stops the run unless --task-override true.
    task_name: str = field(default="countdown", metadata=TASK_FLAG)  # countdown | jsonl
    task_override: bool = False  # train on the task the flags give where they contradict the recorded one
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    flags_given: tuple[str, ...] = field(default=(), metadata=NOT_A_FLAG)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation of several temperature controllers through one decode path."""

    checkpoint: str = "runs/grpo"  # the checkpoint to evaluate
    out: str = ""  # report folder; empty = <checkpoint>/eval
    problems: int = 200  # the first this many held-out problems
    samples: int = 8  # k: samples per problem for avg@k and pass@k
    # The fixed-tau grid traces the model's avg@k / pass@k trade-off curve; the
    # learned and entropy controllers are points to place against it.
    controllers: str = ("fixed:0.1,fixed:0.2,fixed:0.3,fixed:0.4,fixed:0.5,fixed:0.6,fixed:0.8,fixed:1.0,"
                        "fixed:1.2,fixed:1.4,entropy,learned,learned-deterministic")
    seed: int = 0  # sampling seed
    # Independent rounds of k samples per problem, round r drawing from step r of the row seeds; avg@k and
    # pass@k are each problem's mean over its rounds. One 500 x 8 round moves by about +-0.006 avg@8 and
    # +-0.02 pass@8 with the seed alone; R rounds narrow that noise about sqrt(R)-fold (R times the decodes).
    repeats: int = 1
    batch_rows: int = 512  # rows decoded together
    # The baselines built on each problem's greedy draft (hedge, draft rule; training/frontier.py). The
    # draft rule picks the first or the second of draft_rule_taus (both in `controllers`) per problem,
    # fitted on draft_rule_problems train-split problems with draft_rule_samples samples at each.
    draft_baselines: bool = True
    draft_rule_taus: str = "0.1,1.0"  # the draft rule's cold and hot tau
    draft_rule_problems: int = 500  # train-split problems the draft rule is fitted on
    draft_rule_samples: int = 4  # samples per problem and tau in that fit
    plot_samples: int = 6  # panels of tau along sampled solutions, alternating hot-only and cold-solved problems
    write_manifest: bool = True  # record the table in the checkpoint's manifest and model card
    threads: int = 0  # torch CPU threads; 0 = torch's default
    # The task the checkpoint records (its held-out split included); a task flag that contradicts the record
    # stops the run unless --task-override true.
    task_name: str = field(default="countdown", metadata=TASK_FLAG)  # countdown | jsonl
    task_override: bool = False  # evaluate on the task the flags give where they contradict the recorded one
    task: CountdownConfig = field(default_factory=CountdownConfig)
    jsonl: JsonlTaskConfig = field(default_factory=JsonlTaskConfig)
    flags_given: tuple[str, ...] = field(default=(), metadata=NOT_A_FLAG)


@dataclass(frozen=True)
class CompareConfig:
    """Compare trained models over their evaluation reports: frontier table, paired tests, plot."""

    # "name=checkpoint_dir,...": each must hold eval/report.json (from `eval`, same held-out split and seeds).
    models: str = ""
    reference: str = ""  # the model whose learned point is tested against the others; empty = the first
    out: str = "runs/compare"  # the comparison's folder
    copy_reports: bool = True  # copy each model's report and training log under out/models/<name>/


@dataclass(frozen=True)
class CardConfig:
    """Write a checkpoint's model card (README.md) from its manifest and logs."""

    checkpoint: str = "runs/grpo"  # the checkpoint whose README.md to write
    command: str = ""  # the command that produced the checkpoint, quoted in the card


T = TypeVar("T")


def _resolve(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comments in the class source (the lines right above it and the one after it), joined."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (an interactive class): no descriptions
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        after = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        found[node.target.id] = " ".join(above + after)
    return found


def unescape(value: str) -> str:
    r"""A flag value with \n, \t and \\ spelled out turned into the characters."""
    return value.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def _help(comment: str, default: Any) -> str:
    shown = repr(default) if isinstance(default, str) else default
    return f"{comment} (default: {shown})" if comment else f"(default: {shown})"


def _add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        hint = _resolve(hints[f.name])
        flag = "--" + (prefix + f.metadata.get("flag", f.name)).replace("_", "-")
        dest = prefix + f.name
        if dataclasses.is_dataclass(hint):
            _add_arguments(parser, hint, prefix=f"{prefix}{f.name}_")
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        description = _help(comments.get(f.name, ""), default).replace("%", "%%")
        if hint is bool:
            parser.add_argument(flag, dest=dest, type=_bool, default=None, metavar="BOOL", help=description)
        else:
            kind = unescape if f.metadata.get("escapes") else hint
            parser.add_argument(flag, dest=dest, type=kind, default=None, metavar=hint.__name__.upper(),
                                help=description)


def _bool(value: str) -> bool:
    """true/false, yes/no, 1/0; anything else is a usage error (a typo must not read as false)."""
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
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
    """The config of the parsed flags; a config with `flags_given` records which ones were given."""
    values = {k: v for k, v in vars(namespace).items() if not k.startswith("_")}
    config = _build(cls, values)
    if any(f.name == "flags_given" for f in dataclasses.fields(cls)):
        given = tuple(sorted(k for k, v in values.items() if v is not None))
        config = dataclasses.replace(config, flags_given=given)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config's flags as a dict (what checkpoints record); fields that are not flags are left out."""
    data = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if not f.metadata.get("cli", True):
            data.pop(f.name)
    return data


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
