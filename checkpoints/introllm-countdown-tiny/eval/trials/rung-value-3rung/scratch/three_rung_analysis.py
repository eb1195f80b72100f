"""Scratch: does a per-problem choice among 3+ rungs (draft statistics -> linear value per rung) beat the
two-rung (0.1/1.0) choice on the held-out avg@8/pass@8 frontier?"""
import sys, torch
from math import comb
sys.path.insert(0, "/work/main")
from training.frontier import fit_draft_rule, draft_rule_results
d = torch.load("/work/runs/three_rung_data.pt", weights_only=True)  # written by three_rung_data.py
TAUS = d["taus"]

def p4(c, n=8, k=4):
    return 1 - comb(n - c, k) / comb(n, k)

def value(correct, w):  # (P, 8) -> (P,) w*mean + pass@4
    cnt = correct.sum(1)
    return w * cnt.float() / 8 + torch.tensor([p4(int(c)) for c in cnt])

def point(choice_rows):  # (P, 8) outcomes
    return choice_rows.float().mean().item(), (choice_rows.sum(1) > 0).float().mean().item()

def choose(taus, pred, lam):
    hot = torch.tensor([(t - 0.1) / 0.9 for t in taus])
    idx = (pred + lam * hot).argmax(1)
    return idx

def rows_for(taus, idx):
    draft = d["heldout_draft"].unsqueeze(1)
    stack = torch.stack([d[f"heldout_{t}"] for t in taus], 1)  # (P, K, 8)
    rest = stack[torch.arange(len(idx)), idx][:, 1:]
    return torch.cat([draft, rest], 1)

Xtr, Xte = d["train_stats"].float(), d["heldout_stats"].float()
mu, sd = Xtr.mean(0), Xtr.std(0).clamp_min(1e-6)
def feats(X, quad=False):
    z = (X - mu) / sd
    parts = [z, torch.ones(len(z), 1)]
    if quad:
        parts.insert(1, z ** 2)
    return torch.cat(parts, 1)

def fit_values(taus, w, quad=False, l2=1.0):
    F = feats(Xtr, quad)
    Y = torch.stack([value(d[f"train_{t}"], w) for t in taus], 1)
    A = F.T @ F + l2 * torch.eye(F.shape[1])
    B = torch.linalg.solve(A, F.T @ Y)
    return feats(Xte, quad) @ B

fixed = {t: point(d[f"heldout_{t}"]) for t in TAUS}
print("fixed:", {t: (round(a, 3), round(p, 3)) for t, (a, p) in fixed.items()})

def curve(taus, w, quad=False):
    pred = fit_values(taus, w, quad)
    pts = {}
    for lam in torch.linspace(-1.5, 1.5, 61).tolist():
        a, p = point(rows_for(taus, choose(taus, pred, lam)))
        pts[round(p, 3)] = max(pts.get(round(p, 3), 0), a)
    return sorted(pts.items())

def interp(curve_pts, p):
    xs = [x for x, _ in curve_pts]; ys = [y for _, y in curve_pts]
    # upper envelope
    best = max((y for x, y in curve_pts if x >= p - 1e-9), default=None)
    return best

# The eval's rule (logistic on 4 samples... here 8) for reference
rule = fit_draft_rule(Xtr, d["train_0.1"], d["train_1.0"], 0.1, 1.0)
rr = draft_rule_results(rule, Xte, d["heldout_draft"], d["heldout_0.1"], d["heldout_1.0"])
rule_pts = sorted((round(point(v)[1], 3), point(v)[0]) for v in rr.values())
print("logistic rule (2 rungs):", [(p, round(a, 3)) for p, a in rule_pts])
for w in (1.0, 2.0):
    two = curve((0.1, 1.0), w)
    for taus in ((0.1, 0.5, 1.0), (0.1, 0.3, 0.5, 0.7, 1.0), (0.1, 0.3, 1.0), (0.1, 0.7, 1.0)):
        for quad in (False, True):
            c = curve(taus, w, quad)
            # compare at pass levels 0.45..0.58: best avg at pass >= level
            cmp = []
            for level in (0.45, 0.48, 0.50, 0.52, 0.55, 0.58):
                a3, a2 = interp(c, level), interp(two, level)
                ar = max((a for p, a in rule_pts if p >= level - 1e-9), default=None)
                cmp.append((level, None if a3 is None else round(a3, 3), None if a2 is None else round(a2, 3),
                            None if ar is None else round(ar, 3)))
            print(f"w={w} taus={taus} quad={quad}: (pass>=, K-rung, 2-rung linear, rule) {cmp}")
