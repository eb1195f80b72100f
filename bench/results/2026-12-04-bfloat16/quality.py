"""Scratch: does serving the LM in bfloat16 change what the bundled model solves? 500 held-out problems x 8,
eval's seeds, learned head and fixed taus, float32 against bfloat16 (head and sampling stay float32 either way)."""
import dataclasses, sys, time, numpy as np, torch
from model import load_checkpoint
from training.evaluate import summarise
from training.rollout import controller_from_spec, sample_completions
from training.task_record import TaskChoice, recorded_choice
torch.set_num_threads(1)
P = int(sys.argv[1]) if len(sys.argv) > 1 else 500
res = {}
for dtype in (torch.float32, torch.bfloat16):
    ckpt = load_checkpoint("checkpoints/introllm-countdown-tiny", "cpu", dtype)
    recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
    task = dataclasses.replace(recorded, n_heldout=500, split_seed=1234).build(n_train=0)
    _, heldout = task.split()
    for spec in ("learned", "fixed:1.0", "fixed:0.3"):
        t0 = time.time()
        name, controller = controller_from_spec(spec, ckpt.head)
        rows = sample_completions(ckpt.model, ckpt.tokenizer, controller, heldout[:P], samples=8, task=task,
                                  max_new_tokens=task.max_new_tokens, seed=0, prompt_format=ckpt.manifest.prompt_format)
        r = summarise(name, rows, P, 8)
        texts = {(i, s): t for b in rows for i, s, t in zip(b.problem_index, b.sample_index, b.texts)}
        c = torch.tensor(r.correct)[:, 0].float().numpy()
        res[(str(dtype), spec)] = (c, texts, r.mean_tau)
        print(dtype, spec, f"avg@8 {c.mean():.3f} pass@8 {c.max(1).mean():.3f} mean tau {r.mean_tau:.3f} ({time.time()-t0:.0f}s)", flush=True)
for spec in ("learned", "fixed:1.0", "fixed:0.3"):
    a, ta, _ = res[("torch.float32", spec)]; b, tb, _ = res[("torch.bfloat16", spec)]
    d = b.mean(1) - a.mean(1); dp = b.max(1) - a.max(1)
    same = np.mean([ta[k] == tb[k] for k in ta])
    print(f"{spec}: bf16 - fp32 avg@8 {d.mean():+.4f} +- {1.96 * d.std() / np.sqrt(len(d)):.4f}, pass@8 {dp.mean():+.4f} "
          f"+- {1.96 * dp.std() / np.sqrt(len(dp)):.4f}; identical completions {same:.3f}")
