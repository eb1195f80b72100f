import numpy as np, torch
d = torch.load("/work/runs/two-draft/two_draft.pt", weights_only=True)
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
ytr, yhe = d["train_draft"].numpy(), d["heldout_draft"].numpy()
for tau in d["taus"]:
    at, ah = d[f"train_{tau}_agree_text"].numpy(), d[f"heldout_{tau}_agree_text"].numpy()
    print(tau, "agree text", ah.mean(), "P(right|agree)", yhe[ah == 1].mean(), "P(right|disagree)", yhe[ah == 0].mean(),
          "AUC agree alone", round(auc(ah, yhe), 3))
    Xtr = np.concatenate([d["train_stats"].numpy(), at[:, None]], 1)
    Xhe = np.concatenate([d["heldout_stats"].numpy(), ah[:, None]], 1)
    print("   8 stats", round(auc(fit(d["train_stats"].numpy(), ytr)(d["heldout_stats"].numpy()), yhe), 3),
          " 8 stats + agree", round(auc(fit(Xtr, ytr)(Xhe), yhe), 3))
