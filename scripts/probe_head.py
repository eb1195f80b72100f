"""Does a draft-reading head read the problem? A quick probe for head trials, cheaper than `eval`.

Decodes each held-out problem's greedy draft and `samples - 1` samples of the checkpoint's head (seed 0),
then groups the problems by a report of fixed-tau outcomes *of the same LM* ("fixed 0.1 solves all",
"only fixed 1.0 solves", "neither") and prints the head's mean tau and accuracy per group, and the AUC of
the per-problem mean tau for "fixed 1.0 solved more than fixed 0.1". The head-only trials in the bundled
model's eval/trials/head-only/README.md were measured with it:

    python scripts/probe_head.py runs/pilot-d checkpoints/introllm-countdown-tiny/eval/report.json --samples 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from model import LearnedTemperature, load_checkpoint
from training.evaluate import summarise
from training.frontier import auc
from training.rollout import draft_completions, sample_completions
from training.task_record import TaskChoice, recorded_choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("report", help="eval/report.json with fixed 0.1 and fixed 1.0 rows of the same LM")
    parser.add_argument("--samples", type=int, default=3, help="per problem, the draft included")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint, "cpu", torch.float32)
    counts = {r["name"]: r["correct_per_problem"] for r in json.loads(open(args.report).read())["results"]}
    cold, hot = counts["fixed 0.1"], counts["fixed 1.0"]
    recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
    task = dataclasses.replace(recorded, n_heldout=len(cold), split_seed=1234).build()
    _, problems = task.split()
    args_ = dict(task=task, max_new_tokens=task.max_new_tokens)
    drafts, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **args_)
    rows = sample_completions(ckpt.model, ckpt.tokenizer, LearnedTemperature(ckpt.head), problems,
                              samples=args.samples - 1, first_sample=1, drafts=summaries, seed=0, **args_)
    result = summarise("learned", drafts + rows, len(problems), args.samples)
    taus, accuracy = result.per_problem_tau, result.per_problem_accuracy
    samples = max(max(cold), max(hot))
    groups = {"fixed 0.1 solves all": [i for i, c in enumerate(cold) if c == samples],
              "only fixed 1.0 solves": [i for i, (c, h) in enumerate(zip(cold, hot, strict=True)) if c == 0 < h],
              "neither": [i for i, (c, h) in enumerate(zip(cold, hot, strict=True)) if c == 0 == h]}
    for name, ids in groups.items():
        print(f"{name}: {len(ids)} problems, mean tau {sum(taus[i] for i in ids) / len(ids):.3f}, "
              f"accuracy {sum(accuracy[i] for i in ids) / len(ids):.3f}")
    labelled = [i for i in range(len(cold)) if cold[i] != hot[i]]
    score = auc(torch.tensor([taus[i] for i in labelled]), torch.tensor([float(hot[i] > cold[i]) for i in labelled]))
    print(f"AUC of the per-problem mean tau for 'hot solved more': {score:.3f}; mean tau {result.mean_tau:.3f}")


if __name__ == "__main__":
    main()
