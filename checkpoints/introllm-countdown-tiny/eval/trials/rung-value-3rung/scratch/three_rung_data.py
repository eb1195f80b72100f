"""Scratch: draft statistics and per-sample outcomes at several fixed taus, train (500) and held-out (500)."""
import dataclasses, torch
from model import DRAFT_STATISTICS, FixedTemperature, load_checkpoint
from training.evaluate import summarise
from training.rollout import draft_completions, sample_completions
from training.task_record import TaskChoice, recorded_choice
torch.set_num_threads(1)
TAUS = (0.1, 0.3, 0.5, 0.7, 1.0)
ckpt = load_checkpoint("checkpoints/introllm-countdown-tiny", "cpu", torch.float32)
recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
task = dataclasses.replace(recorded, n_heldout=500, split_seed=1234).build(n_train=500)
train, heldout = task.split()
out = {"taus": TAUS}
for split, problems, seed in (("train", train[:500], 1), ("heldout", heldout[:500], 0)):
    common = dict(task=task, max_new_tokens=task.max_new_tokens)
    drafts, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **common)
    out[f"{split}_stats"] = summaries[:, : len(DRAFT_STATISTICS)].clone()
    out[f"{split}_draft"] = torch.tensor(summarise("d", drafts, len(problems), 8).correct)[:, 0, 0]
    for tau in TAUS:
        rows = sample_completions(ckpt.model, ckpt.tokenizer, FixedTemperature(tau), problems, samples=8,
                                  seed=seed, **common)
        out[f"{split}_{tau}"] = torch.tensor(summarise("f", rows, len(problems), 8).correct)[:, 0]
        print(split, tau, out[f"{split}_{tau}"].float().mean().item(), flush=True)
torch.save(out, "/work/runs/three_rung_data.pt")
