import time, torch
torch.set_num_threads(1)
torch.manual_seed(0)
def bench(fn, n=2000):
    for _ in range(50): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n * 1e6
for M in (2, 16, 32, 64):
    for K, N in ((256, 768), (256, 1024), (1024, 256), (256, 256)):
        x = torch.randn(M, K); w = torch.randn(N, K); b = torch.randn(N)
        mkl = bench(lambda: torch.nn.functional.linear(x, w, b))
        packed = torch.ops.mkldnn._reorder_linear_weight(w, M) if hasattr(torch.ops.mkldnn, "_reorder_linear_weight") else None
        try:
            dnn = bench(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""))
        except Exception as e:
            dnn = float("nan"); err = e
        print(f"M={M:3d} K={K:4d} N={N:4d}: linear {mkl:7.1f} us  mkldnn packed {dnn:7.1f} us  GFLOP/s {2*M*K*N/mkl/1e3:.1f}")
