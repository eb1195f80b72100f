"""Scratch: does a second, sampled draft tell whether the greedy draft is right? Agreement of the two answers
and the second draft's statistics as features beside the 8 greedy-draft statistics; AUC on held-out drafts,
and the per-problem hot/cold curve with both drafts as samples 0 and 1."""
import dataclasses, re, sys, numpy as np, torch
from model import DRAFT_STATISTICS, FixedTemperature, load_checkpoint
from training.evaluate import summarise
from training.rollout import draft_completions, sample_completions
from training.task_record import TaskChoice, recorded_choice
torch.set_num_threads(1)
ckpt = load_checkpoint("checkpoints/introllm-countdown-tiny", "cpu", torch.float32)
recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
task = dataclasses.replace(recorded, n_heldout=500, split_seed=1234).build(n_train=3000)
train, heldout = task.split()
TAUS = [float(t) for t in sys.argv[1].split(",")] if len(sys.argv) > 1 else [0.5, 1.0]
out = {"taus": TAUS}
def answer(text):
    lines = [l for l in text.strip().split("\n") if l.strip()]
    return lines[-1].strip() if lines else ""
for split, problems, seed in (("train", train[:3000], 7), ("heldout", heldout[:500], 7)):
    common = dict(task=task, max_new_tokens=task.max_new_tokens)
    drafts, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **common)
    texts = [None] * len(problems); correct = torch.zeros(len(problems))
    for b in drafts:
        for r, i in enumerate(b.problem_index):
            texts[i] = b.texts[r]; correct[i] = float(b.rewards[r] >= 1)
    out[f"{split}_stats"] = summaries[:, : len(DRAFT_STATISTICS)].clone()
    out[f"{split}_draft"] = correct
    out[f"{split}_draft_texts"] = texts
    for tau in TAUS:
        rows = sample_completions(ckpt.model, ckpt.tokenizer, FixedTemperature(tau), problems, samples=1,
                                  seed=seed, first_sample=1, **common)
        st = [None] * len(problems); sc = torch.zeros(len(problems)); lp = torch.zeros(len(problems))
        for b in rows:
            g = b.generation
            for r, i in enumerate(b.problem_index):
                st[i] = b.texts[r]; sc[i] = float(b.rewards[r] >= 1)
        agree_answer = torch.tensor([float(answer(a) == answer(s)) for a, s in zip(texts, st)])
        agree_text = torch.tensor([float(a.strip() == s.strip()) for a, s in zip(texts, st)])
        out[f"{split}_{tau}_correct"] = sc
        out[f"{split}_{tau}_agree_answer"] = agree_answer
        out[f"{split}_{tau}_agree_text"] = agree_text
        print(split, tau, "second correct", sc.mean().item(), "agree answer", agree_answer.mean().item(),
              "agree text", agree_text.mean().item(), "draft correct", correct.mean().item(), flush=True)
        ok = correct == 1
        print("   P(draft right | agree)", correct[agree_answer == 1].mean().item(),
              "P(draft right | disagree)", correct[agree_answer == 0].mean().item(), flush=True)
    torch.save(out, "/work/runs/two-draft/two_draft.pt")
print("example draft texts:", texts[:3])
