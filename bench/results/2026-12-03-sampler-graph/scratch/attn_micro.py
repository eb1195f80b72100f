import time, torch, statistics
torch.set_num_threads(1); torch.set_grad_enabled(False)
slots, capacity, KV, D, H = 33, 513, 4, 64, 4
keys = torch.randn(slots * capacity, KV, D); values = torch.randn(slots * capacity, KV, D)
def elementwise(q, keys, values, positions, width: int):
    rows = q.shape[0]
    ck = keys.view(slots, capacity, KV, D)[:rows, :width]; cv = values.view(slots, capacity, KV, D)[:rows, :width]
    bias = torch.where(torch.arange(width).unsqueeze(0) <= positions.unsqueeze(1), 0.0, float("-inf"))[:, :, None, None]
    g = q.view(rows, 1, KV, H // KV, D)
    s = (g * ck.unsqueeze(3)).sum(-1) * 0.125 + bias
    w = s.softmax(dim=1)
    return (w.unsqueeze(-1) * cv.unsqueeze(3)).sum(1).reshape(rows, H * D)
def matmul(q, keys, values, positions, width: int):
    rows = q.shape[0]
    ck = keys.view(slots, capacity, KV, D)[:rows, :width]; cv = values.view(slots, capacity, KV, D)[:rows, :width]
    bias = torch.where(torch.arange(width).unsqueeze(0) <= positions.unsqueeze(1), 0.0, float("-inf"))[:, None, None, :]
    g = q.view(rows, KV, H // KV, D)
    s = torch.einsum("bkgd,bwkd->bkgw", g, ck) * 0.125 + bias
    w = s.softmax(dim=-1)
    return torch.einsum("bkgw,bwkd->bkgd", w, cv).reshape(rows, H * D)
def bench(fn, rows, width):
    q = torch.randn(rows, H * D); pos = torch.full((rows,), width - 1)
    for _ in range(20): fn(q, keys, values, pos, width)
    ts = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(200): fn(q, keys, values, pos, width)
        ts.append((time.perf_counter() - t) / 200 * 1e6)
    return statistics.median(ts)
ref = elementwise(torch.ones(4, 256), keys, values, torch.full((4,), 63), 64)
for name, f in (("elementwise", elementwise), ("matmul", matmul)):
    c = torch.compile(f, dynamic=True)
    out = c(torch.ones(4, 256), keys, values, torch.full((4,), 63), 64)
    print(name, "max diff vs eager elementwise", (out - ref).abs().max().item())
    for rows, width in ((2, 64), (16, 64), (16, 128), (32, 256)):
        print(f"  {name:12s} rows {rows:2d} width {width:3d}: compiled {bench(c, rows, width):7.1f} us  eager {bench(f, rows, width):7.1f} us", flush=True)
