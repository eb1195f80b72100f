import torch, numpy as np
d = torch.load("/work/runs/three_rung_data.pt", weights_only=True)
def feats(split, extra):
    X = d[f"{split}_stats"].float().numpy()
    if extra: X = np.concatenate([X, d[f"{split}_draft"].float().numpy()[:, None]], 1)
    return X
def fit(X, y, l2=1.0, iters=2000):
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd; w = np.zeros(Z.shape[1]); b = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(Z @ w + b))); g = p - y
        w -= 0.1 * (Z.T @ g / len(y) + l2 * w / len(y)); b -= 0.1 * g.mean()
    return lambda X: 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))
for extra in (False, True):
    c, h = d["train_0.1"].float().numpy(), d["train_1.0"].float().numpy()
    score = lambda o: o.mean(1) + o.max(1)
    diff = score(h) - score(c); keep = diff != 0
    pred = fit(feats("train", extra)[keep], (diff[keep] > 0).astype(float))
    p = pred(feats("heldout", extra))
    dr = d["heldout_draft"].float().numpy()
    C, H = d["heldout_0.1"].float().numpy(), d["heldout_1.0"].float().numpy()
    # draft as sample 0, samples 1..7 at the chosen tau
    rows = []
    for thr in np.linspace(0.05, 0.95, 19):
        hot = p > thr
        o = np.where(hot[:, None], H, C).copy(); o[:, 0] = dr
        rows.append((round(float(o.max(1).mean()), 3), round(float(o.mean()), 3)))
    print("with draft_correct" if extra else "8 stats", sorted(set(rows)))
