"""Scratch: what in a greedy draft predicts that it is correct? Logistic probes on train drafts, AUC on held-out."""
import collections, dataclasses, numpy as np, torch
from model import DRAFT_STATISTICS, load_checkpoint
import model.draft as mdraft
from training.rollout import draft_completions
from training.task_record import TaskChoice, recorded_choice
torch.set_num_threads(1)
ckpt = load_checkpoint("checkpoints/introllm-countdown-tiny", "cpu", torch.float32)
recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
task = dataclasses.replace(recorded, n_heldout=500, split_seed=1234).build(n_train=3000)
train, heldout = task.split()
LAST = []
orig = mdraft.summarise_draft
def patched(conf, hidden, mask):
    steps = mask.long().sum(1)
    idx = (steps - 1).clamp_min(0)
    last = hidden[torch.arange(len(idx)), idx]           # state that chose EOS (read the whole draft)
    prev = hidden[torch.arange(len(idx)), (steps - 2).clamp_min(0)]  # state that chose the answer line's "\n"
    # state that chose the answer marker: find first step whose token is 'A'? approximate by max-entropy step
    LAST.append(torch.cat([last, prev], 1))
    return orig(conf, hidden, mask)
mdraft.summarise_draft = patched
out = {}
for split, problems in (("train", train[:3000]), ("heldout", heldout[:500])):
    LAST.clear()
    common = dict(task=task, max_new_tokens=task.max_new_tokens)
    batches, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **common)
    assert len(batches) == len(LAST)
    extra = torch.zeros(len(problems), LAST[0].shape[1])
    correct = torch.zeros(len(problems)); reasons = [None] * len(problems)
    for b, l in zip(batches, LAST):
        for r, i in enumerate(b.problem_index):
            extra[i] = l[r]; correct[i] = float(b.rewards[r] >= 1); reasons[i] = b.reasons[r]
    out[split] = dict(summary=summaries, extra=extra, correct=correct)
    print(split, "draft correct", correct.mean().item(), collections.Counter(reasons).most_common(6), flush=True)
torch.save(out, "/work/runs/class-tau/probe.pt")
