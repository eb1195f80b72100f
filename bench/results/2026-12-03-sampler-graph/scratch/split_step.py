"""Scratch: the decode step with its sampler fused in one graph, against the forward graph + a sampler graph."""
import statistics, sys, time
import torch
sys.path.insert(0, "/work/main")
from model import load_checkpoint, CounterNoise
from service.engine.kv import SlotBatch, batch_bucket, _pad_rows
from service.engine.sampling import sample_in_step, step_inputs, RowSampler, build_controller
from service.messages import ControllerSpec
from service.settings import DEFAULT_CHECKPOINT
torch.set_num_threads(1); torch.set_grad_enabled(False)
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.float32)
model, head = loaded.model, loaded.head
from service.engine.graphs import GraphCache
import model as model_pkg, service as service_pkg
from pathlib import Path
graphs = GraphCache(Path("/tmp/split-cache/graphs"), {"scratch": 1}, [model_pkg, service_pkg])
batch = SlotBatch(model, slots=32, max_len=512, device=torch.device("cpu"), compile=True, graphs=graphs)
spec = ControllerSpec("learned")
sampler = RowSampler(spec, build_controller(spec, head))
def inputs(rows):
    noise = CounterNoise.for_rows(list(range(rows)), 5)
    return step_inputs([sampler] * rows, head, torch.ones(rows, 1), noise, None)[0]
prompt = list(range(5, 45))
t0 = time.time(); batch.warm_up(prompt, sample_in_step, inputs, prompts_in_step=True); print("warm fused+mixed+sample", time.time() - t0, flush=True)
def split(tokens, args):
    size = batch.size
    tokens, positions, batch.write_index, args, batch.width = batch._step_rows(tokens, args)
    batch._rope = batch.native.rope(positions)
    logits, hidden = batch._run_step(tokens, positions, None, ())[:2]
    out = batch._sample(sample_in_step, logits, hidden, args)
    batch._lengths = [n + 1 for n in batch._lengths]
    return out
# compile the forward-only step graph
batch._warm = False
batch.prefill([prompt] * 2); batch.add_prefilled(0, len(prompt)); batch.add_prefilled(1, len(prompt))
t0 = time.time(); split(torch.tensor([7, 7]), inputs(2)); print("forward-only step compile", time.time() - t0, flush=True)
batch.clear(); batch._warm = True
for rows in (1, 16, 32):
    times = {"fused": [], "split": []}
    for r in range(10):
        for kind in ("fused", "split") if r % 2 == 0 else ("split", "fused"):
            batch.clear()
            batch.prefill([prompt] * min(rows, 16)) if rows <= 16 else None
            for i in range(rows):
                if rows <= 16: batch.add_prefilled(i, len(prompt))
            if rows > 16:
                batch.prefill([prompt] * 16)
                for i in range(16): batch.add_prefilled(i, len(prompt))
                batch.prefill([prompt] * 16)
                for i in range(16): batch.add_prefilled(i, len(prompt))
            args = inputs(rows); tokens = torch.full((rows,), 7)
            t0 = time.perf_counter()
            for _ in range(64):
                if kind == "fused": batch.decode_then(tokens, sample_in_step, args)
                else: split(tokens, args)
            times[kind].append((time.perf_counter() - t0) / 64 * 1000)
    f, s = statistics.median(times["fused"]), statistics.median(times["split"])
    print(f"rows {rows}: fused {f:.3f} ms, split {s:.3f} ms, split/fused {s/f:.3f}", flush=True)
batch.clear(); batch.prefill([prompt] * 16)
for i in range(16): batch.add_prefilled(i, len(prompt))
args = inputs(16); tokens = torch.full((16,), 7)
tok, positions, batch.write_index, pargs, batch.width = batch._step_rows(tokens, args)
batch._rope = batch.native.rope(positions)
for _ in range(3):
    t0 = time.perf_counter(); logits, hidden = batch._run_step(tok, positions, None, ())[:2]; t1 = time.perf_counter()
    out = batch._sample(sample_in_step, logits, hidden, pargs); t2 = time.perf_counter()
    print(f"forward {1000*(t1-t0):.2f} ms sample {1000*(t2-t1):.2f} ms", logits.shape, logits.stride(), hidden.stride(), flush=True)
    fo = batch._run_step(tok, positions, sample_in_step, pargs)
    t3 = time.perf_counter(); print(f"fused {1000*(t3-t2):.2f}", flush=True)
import sys; sys.exit(0)
from torch.profiler import profile
with profile() as prof:
    batch._run_step(tok, positions, None, ())
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
