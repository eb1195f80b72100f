import numpy as np, torch
d = torch.load("/work/runs/class-tau/probe.pt", weights_only=True)
def fit(X, y, l2=1.0, iters=3000, lr=0.2):
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd; w = np.zeros(Z.shape[1]); b = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(Z @ w + b))); g = p - y
        w -= lr * (Z.T @ g / len(y) + l2 * w / len(y)); b -= lr * g.mean()
    return lambda X: 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))
def auc(p, y):
    pos, neg = p[y == 1], p[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
def sets(split):
    s, e = d[split]["summary"].numpy(), d[split]["extra"].numpy()
    return {"8 stats": s[:, :8], "mean hidden": s[:, 8:], "stats+mean hidden": s, "last hidden": e[:, :256],
            "prev hidden": e[:, 256:], "last+prev": e, "all": np.concatenate([s, e], 1)}
tr, he = sets("train"), sets("heldout")
ytr, yhe = d["train"]["correct"].numpy(), d["heldout"]["correct"].numpy()
for k in tr:
    for l2 in (1.0, 30.0):
        p = fit(tr[k], ytr, l2)(he[k])
        print(f"{k:20s} l2={l2:5.0f} held-out AUC for draft correct: {auc(p, yhe):.3f}")

print("--- curves: hot (1.0) when P(draft correct) < thr, draft as sample 0; vs the 2-rung rule and fixed")
r = torch.load("/work/runs/three_rung_data.pt", weights_only=True)
assert np.array_equal(r["heldout_draft"].float().numpy(), yhe), "same held-out drafts"
C, H = r["heldout_0.1"].float().numpy(), r["heldout_1.0"].float().numpy()
for k in ("8 stats", "stats+mean hidden", "oracle"):
    p = yhe if k == "oracle" else fit(tr[k], ytr, 1.0)(he[k])
    pts = []
    for share in (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9):
        thr = np.quantile(p, share) if k != "oracle" else 0.5
        hot = p < thr if k != "oracle" else p < 0.5
        o = np.where(hot[:, None], H, C).copy(); o[:, 0] = yhe
        pts.append((round(float(hot.mean()), 2), round(float(o.mean()), 3), round(float(o.max(1).mean()), 3)))
        if k == "oracle": break
    print(k, pts)
for tau in r["taus"]:
    o = r[f"heldout_{tau}"].float().numpy()
    print("fixed", tau, round(float(o.mean()), 3), round(float(o.max(1).mean()), 3))
