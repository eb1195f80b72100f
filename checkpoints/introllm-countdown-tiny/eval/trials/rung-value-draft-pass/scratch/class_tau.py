"""Scratch: headroom of a per-token signal. tau_hot on choice positions (line start .. '='), tau_cold after
'=' (compute) and on the answer line. Same seeds as `eval` (seed 0, step r, rows (i, s)), so paired with the
fixed rows of a 4-round report.json. Writes outcomes (P, R, 8) per setting to class_tau.pt."""
import sys, time, json
import torch
import model.decode as decode
from model.checkpoint import load_checkpoint
from model.controllers import constant_action
from training.rollout import sample_completions
from training.evaluate import summarise
from training.tasks.countdown import CountdownTask, CountdownConfig

torch.set_num_threads(1)
ckpt = load_checkpoint("/work/main/checkpoints/introllm-countdown-tiny", device=torch.device("cpu"))
tok = ckpt.tokenizer
EQ, NL, ANS = (tok.convert_tokens_to_ids(c) for c in "=\nA")
print("ids", EQ, NL, ANS, flush=True)

class ClassTau:
    def __init__(self, hot, cold, name, lines=None):
        self.hot, self.cold, self.name, self.lines = hot, cold, name, lines
        self.state = None  # (B,) 0 choice, 1 compute/answer
    def initial_tau(self, batch, device):
        self.state = torch.zeros(batch, dtype=torch.long)
        self.line = torch.zeros(batch, dtype=torch.long)
        return torch.full((batch, 1), self.cold)
    def choose(self, hidden, logits, tau_prev, generators):
        hot = self.state == 0
        if self.lines is not None:
            hot &= torch.isin(self.line, torch.tensor(self.lines))
        tau = torch.where(hot.unsqueeze(1), self.hot, self.cold).to(logits.dtype)
        return constant_action(tau, torch.ones_like(tau))
    def observe(self, tokens):
        s = self.state
        s = torch.where(tokens == EQ, 1, s)
        s = torch.where(tokens == ANS, 1, s)
        s = torch.where(tokens == NL, 0, s)
        self.line = self.line + (tokens == NL).long()
        self.state = s

_orig = decode.sample_step
def patched(controller, step, tau_prev, generators, params):
    r = _orig(controller, step, tau_prev, generators, params)
    if hasattr(controller, "observe"):
        controller.observe(r.tokens)
    return r
decode.sample_step = patched

task = CountdownTask(CountdownConfig(**{"max_number": 9, "max_target": 99, "max_value": 999, "min_number": 1,
                     "min_solutions": 2, "min_target": 10, "num_numbers": 4}), n_train=0, n_heldout=500, split_seed=1234)
_, heldout = task.split()
problems = heldout[:500]
settings = [(float(h), float(c), l) for h, c, l in (a.split(":") for a in sys.argv[1].split(","))]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
out = {}
for hot, cold, lines in settings:
    lines_ = None if lines == 'all' else [int(x) for x in lines.split('+')]
    t0 = time.time()
    per_round = []
    for r in range(rounds):
        b = sample_completions(ckpt.model, tok, ClassTau(hot, cold, "c", lines_), problems, samples=8, task=task,
                               max_new_tokens=task.max_new_tokens, seed=0, step=r, batch_rows=512,
                               prompt_format=ckpt.manifest.prompt_format)
        res = summarise("c", b, 500, 8)
        per_round.append(torch.tensor(res.correct)[:, 0])
    c = torch.stack(per_round, 1).float()  # (P, R, 8)
    out[f"{hot}:{cold}:{lines}"] = c
    print(f"hot {hot} cold {cold} lines {lines}: avg@8 {c.mean():.3f} pass@8 {c.amax(2).mean():.3f}  ({time.time()-t0:.0f}s)", flush=True)
    torch.save(out, "/work/runs/class-tau/class_tau.pt")
