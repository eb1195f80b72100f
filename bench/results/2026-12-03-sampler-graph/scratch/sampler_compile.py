import sys, time, statistics
import torch
sys.path.insert(0, "/work/main")
from model import load_checkpoint, CounterNoise
from service.engine.sampling import sample_in_step, step_inputs, RowSampler, build_controller
from service.engine.kv import _float_constants
from service.messages import ControllerSpec
from service.settings import DEFAULT_CHECKPOINT
torch.set_num_threads(1); torch.set_grad_enabled(False)
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.float32)
head = loaded.head
spec = ControllerSpec("learned")
sampler = RowSampler(spec, build_controller(spec, head))
def inputs(rows):
    noise = CounterNoise.for_rows(list(range(rows)), 5)
    return step_inputs([sampler] * rows, head, torch.ones(rows, 1), noise, None)[0]
simd = sys.argv[1]
patch = {} if simd == "default" else {"cpp.simdlen": int(simd)}
V = loaded.model.config.vocab_size; d = loaded.model.config.hidden_size
fn = torch.compile(sample_in_step, dynamic=True, fullgraph=True)
STATIC = len(sys.argv) > 2
def call(rows):
    logits, hidden = torch.randn(rows, V), torch.randn(rows, d)
    if STATIC:
        torch._dynamo.mark_static(logits, 1); torch._dynamo.mark_static(hidden, 1)
    return fn(logits, hidden, *inputs(rows))
t0 = time.time()
import cProfile, pstats
pr = cProfile.Profile()
with _float_constants(), torch._inductor.config.patch(patch):
    pr.enable(); call(16); pr.disable()
pstats.Stats(pr).sort_stats("cumulative").print_stats(r"(compile_fx|codegen|vec_isa|cpp_builder|sympy|graph.py|scheduler|lowering|aot_autograd|convert_frame|pick_vec|CppCodeCache|subprocess)", 45)
print(simd, "compile", round(time.time() - t0, 1), flush=True)
for rows in (2, 16, 32):
    args = (torch.randn(rows, V), torch.randn(rows, d), *inputs(rows))
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        fn(*args); ts = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(200): fn(*args)
            ts.append((time.perf_counter() - t) / 200 * 1e3)
    print(simd, rows, f"{statistics.median(ts):.3f} ms", flush=True)
