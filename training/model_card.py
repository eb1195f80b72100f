"""The model card (README.md) of a trained checkpoint, rendered from what training recorded.

What it does: reads the manifest (base model, task and its data, prompt
format, stages, configs, seeds, code versions, the evaluation table), the LM's
config.json, tokenizer files and safetensors headers (no weights) and the
JSONL logs in the checkpoint folder, and writes a README.md describing that
model: its architecture and size, tokenizer, task, reward and data files
with their problem counts, prompt format and what the evaluation measured,
then the command that produced it, a summary of the training curves (windows
of the GRPO log; SFT held-out accuracy points) and the evaluation tables.
Nothing in it is typed by hand.

What it does not do: evaluate (see `evaluate.py`) or judge the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from model import PromptFormat, read_manifest
from model.checkpoint_files import CONFIG_FILE, TOKENIZER_FILE
from training.task_record import recorded_choice

CURVE_FIELDS = ("reward", "accuracy", "mean_tau", "gate_rate", "entropy", "kl")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def grpo_curve(records: list[dict], windows: int = 8) -> list[str]:
    steps = [r for r in records if "reward" in r]
    if not steps:
        return ["(no GRPO log in this folder)"]
    size = max(1, len(steps) // windows)
    lines = ["| steps | " + " | ".join(CURVE_FIELDS) + " | held-out acc |", "|---" * (len(CURVE_FIELDS) + 2) + "|"]
    for start in range(0, len(steps), size):
        chunk = steps[start : start + size]
        means = [sum(r.get(f, 0.0) for r in chunk) / len(chunk) for f in CURVE_FIELDS]
        heldout = [r["heldout_accuracy"] for r in chunk if "heldout_accuracy" in r]
        acc = f"{heldout[-1]:.3f}" if heldout else ""
        lines.append(f"| {chunk[0]['step']}-{chunk[-1]['step']} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {acc} |")
    return lines


def _point(row: dict | None) -> str:
    return f"{row['avg_at_k']:.3f} / {row['pass_at_k']:.3f}" if row else "-"


def _verdict(report: dict, prefix: str) -> str:
    row = next((t for t in report.get("targets", []) if t["target"].startswith(prefix) and "diff" in t), None)
    return f"{row['diff']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}]" if row else "-"


def head_objective(c: dict) -> str | None:
    """How an off-policy head objective (`--tau-objective`) trains the head from the ladder's rows, in words;
    None for the paper's on-policy objective."""
    objective = {"best-rung": "to the best rung", "rung-value": "by the rungs' value"}.get(c.get("tau_objective"))
    if objective and c.get("rung_mean_weight", 1.0) != 1.0:
        objective += f", score {c['rung_mean_weight']:g} x mean + pass@{c.get('pass_k', '?')}"
    if objective and c.get("rung_pass_with_draft"):
        objective += ", the draft counted in each rung's pass@k"
    return objective


def _ladder_rows(c: dict) -> int:
    return c.get("ladder_samples") or len([t for t in (c.get("tau_ladder") or "").split(",") if t.strip()])


def trials_section(path: Path) -> list[str]:
    """A row per trial under eval/trials/<name>/ (a run's introllm.json, grpo_log.jsonl and eval/ report, copied
    there by the make target that produced it): what its head read and how it was trained, its learned point and
    its targets."""
    rows, above = [], 0
    for folder in sorted(p for p in (path / "eval" / "trials").glob("*") if (p / "eval" / "report.json").is_file()):
        report = json.loads((folder / "eval" / "report.json").read_text())
        manifest = json.loads((folder / "introllm.json").read_text())
        stages = manifest["training"].get("stages", [])
        grpo = next((s for s in reversed(stages) if s.get("stage") == "grpo"), {})  # the run that trained the head
        c = grpo.get("config", {})
        by_name = {r["name"]: r for r in report["results"]}
        inputs = ",".join(manifest["head"].get("inputs", ["hidden"]))
        objective = head_objective(c)
        ladder_rows = _ladder_rows(c)
        on_top = sum(s.get("stage") == "grpo" for s in stages) > 1  # a head-only run on a finished joint run
        head = manifest["head"]
        rounds = report.get("config", {}).get("repeats", 1)  # independent rounds of k samples (eval --repeats)
        recipe = (f"inputs `{inputs}`, "
                  + (f"tau range [{head['tau_min']:g}, {head['tau_max']:g}], " if "tau_max" in head else "")
                  + f"ladder `{c.get('tau_ladder') or '-'}`"
                  + (f" ({ladder_rows} rows a problem; head off-policy {objective}, LM frozen)" if objective
                     else f" ({c.get('ladder_weights')} weights)" if c.get("tau_ladder") else "")
                  + f"; {grpo.get('steps', '?')} steps, the last with schedule `{c.get('schedule', '?')}`"
                  + (" on top of the bundled model's joint run" if on_top else "")
                  + (f"; evaluated in {rounds} rounds a problem" if rounds > 1 else ""))
        rows.append(f"| [{folder.name}](eval/trials/{folder.name}/eval/report.md) | {recipe} | "
                    f"{_point(by_name.get('learned'))} | {_point(by_name.get('learned (deterministic)'))} | "
                    f"{_verdict(report, '(a) above the fixed')} | {_verdict(report, '(a) above the draft rule')} | "
                    f"{_verdict(report, '(c)')} |")
        above += any(t.get("met") for t in report.get("targets", []) if t["target"].startswith("(a) above the fixed"))
    notes = []  # trial folders with notes and logs but no evaluation of their own
    for readme in sorted((path / "eval" / "trials").glob("*/README.md")):
        if not (readme.parent / "eval").is_dir():
            link = f"eval/trials/{readme.parent.name}/README.md"
            notes.append(f"[{link}]({link})")
    if not rows:
        return []
    verdict = (f"{above} of {len(rows)} land above their LM's fixed-tau curve (target (a))." if above
               else "None lands above its LM's fixed-tau curve (target (a)).")
    return ["", "## Trials of a draft-reading head", "",
            "Heads that also read tau_{t-1} and the prompt's greedy draft, trained from the same warm start with the "
            "same GRPO flags (`make draft-model`), or head-only on the bundled model's LM (`make draft-rung-value`), "
            "or as the folder's README.md says; each folder holds the run's "
            "manifest, log and full evaluation. "
            + verdict, "",
            "| trial | head and ladder | learned avg@8 / pass@8 | deterministic | (a) vs fixed, avg@8 [95% CI] | "
            "(a) vs draft rule, avg@8 [95% CI] | (c) tau gap [95% CI] |", "|---|---|---|---|---|---|---|", *rows,
            *(["", "Shorter trials, with their logs: " + ", ".join(notes) + "."] if notes else [])]


def _inputs(head) -> str:
    names = {"hidden": "the LM's last hidden state h_t", "tau_prev": "the previous temperature tau_{t-1}",
             "draft": (f"a summary of the prompt's greedy draft ({head.draft_size} numbers: confidence statistics"
                       + (f", the first {head.draft_linear} also on a linear path of their own" if head.draft_linear
                          else "")
                       + ", then the pooled hidden states; the draft is sample 0 of every group and of every "
                       "evaluation row's k samples)")}
    return ", ".join(names[i] for i in head.inputs)


TINY_BASE = "tiny-llama-char"  # sft's base model name when it builds the tiny model from scratch
TOKENIZER_CONFIG = "tokenizer_config.json"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parameter_count(path: Path) -> int:
    """The LM's parameters, from the safetensors headers (no tensor is read)."""
    files = sorted(path.glob("model*.safetensors"))
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                count = 1
                for size in weights.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def _millions(count: int) -> str:
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"


def architecture(path: Path) -> str:
    """`LlamaForCausalLM` (llama): 4 layers, hidden size 256, 3.2M parameters."""
    config = _read_json(path / CONFIG_FILE)
    name = (config.get("architectures") or ["an unnamed architecture"])[0]
    shape = [f"{config['num_hidden_layers']} layers" if "num_hidden_layers" in config else "",
             f"hidden size {config['hidden_size']}" if "hidden_size" in config else "",
             f"{_millions(parameter_count(path))} parameters"]
    return f"`{name}` ({config.get('model_type', '?')}): " + ", ".join(part for part in shape if part)


def tokenizer_kind(path: Path) -> str:
    """What the tokenizer is: character-level, byte-level BPE, WordPiece, Unigram, ... with its vocabulary size."""
    backend = _read_json(path / TOKENIZER_FILE)
    model = backend.get("model", {}) if isinstance(backend.get("model"), dict) else {}
    kind = str(model.get("type", "unknown"))
    vocab = model.get("vocab") or {}
    specials = {token.get("content") for token in backend.get("added_tokens", [])}
    pieces = [token for token in (vocab if isinstance(vocab, dict) else []) if token not in specials]
    byte_level = "ByteLevel" in json.dumps([backend.get("pre_tokenizer"), backend.get("decoder")])
    if kind == "WordLevel" and pieces and all(len(token) == 1 for token in pieces):
        name = "character-level"
    elif kind == "BPE" and byte_level:
        name = "byte-level BPE"
    else:
        name = kind
    size = f", {len(vocab) + len(specials - set(vocab if isinstance(vocab, dict) else []))} tokens" if vocab else ""
    return f"{name}{size}; {_special_tokens(path)}"


def _special_tokens(path: Path) -> str:
    config = _read_json(path / TOKENIZER_CONFIG)

    def token(key: str) -> str | None:
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    bos, eos, pad = token("bos_token"), token("eos_token"), token("pad_token")
    return (f"BOS {f'`{bos}`' if bos else 'none'}, EOS {f'`{eos}`' if eos else 'none'}, "
            + (f"pad `{pad}`" if pad else "no pad token (EOS pads)"))


def prompt_format_line(fmt: PromptFormat, has_bos: bool) -> str:
    if fmt.kind == "chat":
        system = f", system prompt `{fmt.system_prompt}`" if fmt.system_prompt else ", no system prompt"
        return f"the tokenizer's chat template (recorded in introllm.json){system}"
    ending = (f"then {json.dumps(fmt.separator)} unless it already ends so" if fmt.separator
              else "nothing between prompt and answer (recorded before separators were)")
    return f"plain text: {'BOS, ' if has_bos else ''}the prompt, {ending}"


def task_lines(training: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's task, reward and data rows, from the manifest's task record."""
    choice = recorded_choice(training)
    data = training.get("data", {})
    if choice is None:
        return [("task", "not recorded (a checkpoint from before tasks were)")]
    if choice.name == "countdown":
        c = choice.countdown
        # Records from before `data` was: the last stage's generated train problems.
        n_train = data.get("train_problems") or next(
            (st["config"].get("n_train") for st in reversed(training.get("stages", [])) if "config" in st), None)
        counts = f"{n_train} train problems, " if n_train else ""
        return [("task", f"Countdown: reach a target ({c.min_target}-{c.max_target}) from {c.num_numbers} numbers "
                         f"({c.min_number}-{c.max_number}) with + - * /, writing every intermediate result, "
                         "digits reversed"),
                ("reward", "1 for a valid solution reaching the target (every step parsed and checked), else 0"),
                ("data", f"generated: {counts}{choice.n_heldout} held out (split seed {choice.split_seed})")]
    j = choice.jsonl
    reward = {"math-verify": "math-verify equivalence of the final answer with the reference",
              "exact": "exact match of the final answer (last \\boxed{} or last line) with the reference, "
                       "after normalising case, spaces, `$` and a final period",
              "regex": f"the answer found by `{j.answer_regex}` matches the reference"}[j.reward]
    files = data.get("files") or {key: {"path": value} for key, value in (("train", j.train), ("heldout", j.heldout))
                                  if value}
    described = [f"`{Path(files[k]['path']).name}` ({_problems(files[k])})" for k in ("train", "heldout") if k in files]
    split = (f"held out: `{Path(j.heldout).name}`" if j.heldout
             else f"held out: {j.heldout_fraction:.0%} of the train file (split seed {choice.split_seed})")
    counts = (f"; {data['train_problems']} train and {data['heldout_problems']} held-out problems"
              if "train_problems" in data else "")
    return [("task", f"problems from JSONL (prompt and reference answer), completions of at most "
                     f"{j.max_new_tokens} tokens"),
            ("reward", f"`{j.reward}`: 1 for {reward}, else 0"),
            ("data", ", ".join(described) + f"; {split}{counts}")]


def _problems(file: dict[str, Any]) -> str:
    if "problems" in file:
        return f"{file['problems']} lines"
    path = Path(file["path"])
    if not path.is_file():
        return "file not found now"
    return f"{sum(1 for line in path.read_text().splitlines() if line.strip())} lines"


def evaluation_line(training: dict[str, Any]) -> str:
    evaluation = training.get("evaluation")
    if not evaluation:
        return "not evaluated yet (`python -m training eval`)"
    config = evaluation.get("config", {})
    k = config.get("samples", "k")
    baselines = " and the greedy draft's baselines" if config.get("draft_baselines") else ""
    repeats = config.get("repeats", 1)
    rounds = f" in each of {repeats} independent rounds, averaged per problem" if repeats > 1 else ""
    return (f"avg@{k} and pass@{k} on {config.get('problems', '?')} held-out problems ({k} samples each{rounds}) "
            f"for the temperature controllers `{config.get('controllers', '?')}`{baselines} (tables below)")


def summary(path: Path, manifest) -> list[str]:
    """The card's opening: what the model is, what it was trained to do, and how, as a sentence and a table."""
    training = manifest.training
    choice = recorded_choice(training)
    aims = {"countdown": "solve Countdown problems", "jsonl": "answer the problems of its JSONL files"}
    aim = aims.get(choice.name, f"do the {choice.name} task") if choice else "do its task"
    scratch = manifest.base_model == TINY_BASE
    tokenizer = tokenizer_kind(path)
    rows = [("base model", f"`{manifest.base_model}`" + (" (built here from scratch)" if scratch else "")),
            ("architecture", architecture(path)), ("tokenizer", tokenizer),
            ("prompt format", prompt_format_line(manifest.prompt_format, "BOS none" not in tokenizer)),
            *task_lines(training),
            ("evaluation", evaluation_line(training))]
    model_type = _read_json(path / CONFIG_FILE).get("model_type", "causal LM")
    origin = "Trained from scratch" if scratch else f"Fine-tuned from `{manifest.base_model}`"
    return [f"A {_millions(parameter_count(path))}-parameter {model_type} model with a "
            f"{tokenizer.split(',')[0].split(';')[0]} tokenizer, trained to {aim}, choosing its own sampling "
            f"temperature at every token with a learned head (IntroLLM). {origin} by this repository's `training/` "
            "code; every number below was written by that code.",
            "", "| | |", "|---|---|", *(f"| {key} | {_cell(value)} |" for key, value in rows), ""]


def _cell(text: str) -> str:
    """A table cell: a | (in `<|im_end|>`, say) would end the cell, even inside backticks."""
    return text.replace("|", "\\|")


def render(checkpoint: str | Path, command: str) -> str:
    path = Path(checkpoint)
    manifest = read_manifest(path)
    training = manifest.training
    head = manifest.head
    lines = [
        f"# {path.name}", "",
        *summary(path, manifest),
        "## How it was made", "", "```", command, "```", "",
        f"Base model: `{manifest.base_model}`. Temperature range [{head.tau_min}, {head.tau_max}], "
        f"tau_0 = {head.tau_init}, Beta eps = {head.eps}. The head reads {_inputs(head)}.", "",
        "| stage | steps | seconds | seed | code version | world size |", "|---|---|---|---|---|---|",
    ]
    for stage in training.get("stages", []):
        lines.append(f"| {stage['stage']} | {stage['steps']} | {stage.get('seconds', '')} | {stage['seed']} | "
                     f"`{stage['code_version']}` | {stage.get('world_size', 1)} |")
    grpo = next((s for s in reversed(training.get("stages", [])) if s.get("stage") == "grpo"), None)
    if grpo:
        c = grpo["config"]
        # Head phases only leave the LM as it was; a fixed rollout temperature makes every step an LM step.
        lm_steps = "lm" in str(c["schedule"]) or c.get("rollout_temperature", "learned") != "learned"
        lines += ["", f"GRPO recipe: rollout temperature `{c.get('rollout_temperature', 'learned')}`, schedule "
                  f"`{c['schedule']}`, LM advantage `{c.get('lm_advantage', 'mean')}`, head advantage "
                  f"`{c.get('tau_advantage', 'mean')}` (k = {c.get('pass_k', '-')}), {c['prompts_per_step']} prompts "
                  f"x {c['group_size']} samples per step, "
                  + (f"LM lr {c['lm_lr']}, " if lm_steps else "the LM frozen, ") + f"head lr {c['head_lr']}."]
        objective = head_objective(c)
        if objective and c.get("tau_ladder"):
            lines[-1] += (f" Head steps sample each problem at the temperature ladder `{c['tau_ladder']}` "
                          f"({_ladder_rows(c)} rows a problem, each at its rung for the whole completion) and train "
                          f"the head off-policy from them {objective}; the draft statistics' linear path learns at "
                          f"{c.get('draft_lr_scale', 1)} x the head lr.")
        elif c.get("tau_ladder"):
            lines[-1] += (f" Head steps also sample each group at the temperature ladder `{c['tau_ladder']}` (one row "
                          f"per rung, the rung for the whole completion; the head learns from them with "
                          f"`{c.get('ladder_weights', 'signed')}` advantage weights, from its own rows with the "
                          f"clipped ratio); the draft statistics' linear path learns at {c.get('draft_lr_scale', 1)} "
                          "x the head lr.")
    task = training.get("task", {})
    lines += ["", f"Task config: `{json.dumps(task)}`; held-out split seed {training.get('split_seed')}.", ""]
    sft_points = [r for r in _read_jsonl(path / "sft_log.jsonl") if "heldout_accuracy_tau1" in r]
    if sft_points:
        lines += ["## Training curves", "", "SFT held-out accuracy (one sample per problem, tau = 1.0):", "",
                  "| step | loss | held-out acc |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['loss']:.4f} | {r['heldout_accuracy_tau1']:.3f} |" for r in sft_points]
        lines.append("")
    lines += ["GRPO (means over windows of steps; reward and accuracy of the training rollouts):", ""]
    lines += grpo_curve(_read_jsonl(path / "grpo_log.jsonl"))
    evaluation = training.get("evaluation")
    if evaluation:
        report = (path / "eval" / "report.md")
        lines += ["", "## Evaluation", "", report.read_text() if report.is_file() else json.dumps(evaluation)]
        if (path / "eval" / "frontier.png").is_file():
            lines[-1] = lines[-1].replace("](frontier.png)", "](eval/frontier.png)")
        if (path / "eval" / "tau_along_solutions.png").is_file():
            lines += ["![tau along sampled solutions](eval/tau_along_solutions.png)", ""]
    comparison = path / "eval" / "comparison" / "comparison.md"
    if comparison.is_file():
        # Links in the comparison are relative to its folder; the card sits two levels up.
        text = comparison.read_text().replace("](frontier.png)", "](eval/comparison/frontier.png)")
        lines += ["", "## Joint training vs fixed-temperature GRPO", "",
                  "The same warm start trained by the same `grpo` command with `--rollout-temperature fixed:<tau>`",
                  "(every step an LM step, the head untouched), each model evaluated over a grid of fixed decode",
                  "temperatures; the reports and logs are under `eval/comparison/models/`.", "", text]
    lines += trials_section(path)
    ablations = path / "eval" / "ablations" / "comparison.md"
    if ablations.is_file():
        lines += ["", "## Recipe ablations", "",
                  "Other joint recipes from the same warm start, evaluated the same way (the ones with the paper's "
                  "head, reading h_t only, include the previous bundled model as `default`): "
                  "[eval/ablations/comparison.md](eval/ablations/comparison.md) "
                  "(plot: [eval/ablations/frontier.png](eval/ablations/frontier.png))."]
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(checkpoint: str | Path, command: str) -> Path:
    target = Path(checkpoint) / "README.md"
    target.write_text(render(checkpoint, command))
    return target
