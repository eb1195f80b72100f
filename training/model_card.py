"""The model card (README.md) of a trained checkpoint, rendered from what training recorded.

What it does: reads the manifest (stages, configs, seeds, code versions, the
evaluation table) and the JSONL logs in the checkpoint folder, and writes a
README.md with the command that produced the checkpoint, a summary of the
training curves (windows of the GRPO log; SFT held-out accuracy points) and
the evaluation tables. Nothing in it is typed by hand.

What it does not do: evaluate (see `evaluate.py`) or judge the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from model import read_manifest

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


def trials_section(path: Path) -> list[str]:
    """A row per trial under eval/trials/<name>/ (a run's introllm.json, grpo_log.jsonl and eval/ report, copied
    there by the make target that produced it): what its head read and how it was trained, its learned point and
    its targets."""
    rows, above = [], 0
    for folder in sorted(p for p in (path / "eval" / "trials").glob("*") if (p / "eval" / "report.json").is_file()):
        report = json.loads((folder / "eval" / "report.json").read_text())
        manifest = json.loads((folder / "introllm.json").read_text())
        grpo = next((s for s in manifest["training"].get("stages", []) if s.get("stage") == "grpo"), {})
        c = grpo.get("config", {})
        by_name = {r["name"]: r for r in report["results"]}
        inputs = ",".join(manifest["head"].get("inputs", ["hidden"]))
        recipe = (f"inputs `{inputs}`, ladder `{c.get('tau_ladder') or '-'}`"
                  + (f" ({c.get('ladder_weights')} weights)" if c.get("tau_ladder") else "")
                  + f"; {grpo.get('steps', '?')} steps, the last with schedule `{c.get('schedule', '?')}`")
        rows.append(f"| [{folder.name}](eval/trials/{folder.name}/eval/report.md) | {recipe} | "
                    f"{_point(by_name.get('learned'))} | {_point(by_name.get('learned (deterministic)'))} | "
                    f"{_verdict(report, '(a) above the fixed')} | {_verdict(report, '(c)')} |")
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
            "same GRPO flags (`make draft-model`, or as the folder's README.md says); each folder holds the run's "
            "manifest, log and full evaluation. "
            + verdict, "",
            "| trial | head and ladder | learned avg@8 / pass@8 | deterministic | (a) vs fixed, avg@8 [95% CI] | "
            "(c) tau gap [95% CI] |", "|---|---|---|---|---|---|", *rows,
            *(["", "Shorter trials, with their logs: " + ", ".join(notes) + "."] if notes else [])]


def _inputs(head) -> str:
    names = {"hidden": "the LM's last hidden state h_t", "tau_prev": "the previous temperature tau_{t-1}",
             "draft": (f"a summary of the prompt's greedy draft ({head.draft_size} numbers: confidence statistics"
                       + (f", the first {head.draft_linear} also on a linear path of their own" if head.draft_linear
                          else "")
                       + ", then the pooled hidden states; the draft is sample 0 of every group and of every "
                       "evaluation row's k samples)")}
    return ", ".join(names[i] for i in head.inputs)


def render(checkpoint: str | Path, command: str) -> str:
    path = Path(checkpoint)
    manifest = read_manifest(path)
    training = manifest.training
    head = manifest.head
    lines = [
        f"# {path.name}", "",
        "A tiny character-level Llama that solves Countdown problems (reach a target from four numbers with",
        "+ - * /, writing every intermediate result, digits reversed) and chooses its own sampling temperature",
        "at every token with a learned head (IntroLLM). Trained here from scratch by this repository's",
        "`training/` code; every number below was written by that code.", "",
        "## How it was made", "", "```", command, "```", "",
        f"Base model: `{manifest.base_model}`. Temperature range [{head.tau_min}, {head.tau_max}], "
        f"tau_0 = {head.tau_init}, Beta eps = {head.eps}. The head reads {_inputs(head)}.", "",
        "| stage | steps | seconds | seed | code version | world size |", "|---|---|---|---|---|---|",
    ]
    for stage in training.get("stages", []):
        lines.append(f"| {stage['stage']} | {stage['steps']} | {stage.get('seconds', '')} | {stage['seed']} | "
                     f"`{stage['code_version']}` | {stage.get('world_size', 1)} |")
    grpo = next((s for s in training.get("stages", []) if s.get("stage") == "grpo"), None)
    if grpo:
        c = grpo["config"]
        lines += ["", f"GRPO recipe: rollout temperature `{c.get('rollout_temperature', 'learned')}`, schedule "
                  f"`{c['schedule']}`, LM advantage `{c.get('lm_advantage', 'mean')}`, head advantage "
                  f"`{c.get('tau_advantage', 'mean')}` (k = {c.get('pass_k', '-')}), {c['prompts_per_step']} prompts "
                  f"x {c['group_size']} samples per step, LM lr {c['lm_lr']}, head lr {c['head_lr']}."]
        if c.get("tau_ladder"):
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
