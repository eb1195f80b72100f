"""Scratch (from 2026-12-03-sampler-graph/scratch, rerun 2026-12-04 in bfloat16 with 64 slots, the defaults): the
engine in process, N closed-loop clients (argv[1]), TTFT from submit to first Sampled event, and where the engine's
time goes per call kind. Every request asks for 26 tokens; with argv[2] "varied", 12 to 40 tokens (as the task's
answers differ), so that arrivals spread instead of coming together. Run from the repository root; outputs
engine-ttft.txt and engine-ttft-varied.txt (N = 1, then 16)."""
import collections, statistics, sys, threading, time
import torch
sys.path.insert(0, "/work/main")
from model import load_checkpoint
from service.engine.engine import Engine
from service.engine.kv import SlotBatch
from service.engine.graphs import default_folder
from service.messages import EngineRequest, DecodeParams, ControllerSpec, Sampled, Ended
from service.settings import DEFAULT_CHECKPOINT
torch.set_num_threads(1)
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.bfloat16)
spent = collections.defaultdict(float); calls = collections.Counter()
def timed(cls, name):
    original = getattr(cls, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try: return original(*a, **k)
        finally: spent[name] += time.perf_counter() - t; calls[name] += 1
    setattr(cls, name, wrapper)
for n in ("_step", "_sample_first", "_add_rows", "_iteration_done", "_keep_rows", "_next_work"): timed(Engine, n)
for n in ("decode_and_prefill_then", "decode_then", "_sample", "_run_mixed", "_run_step", "prefill"): timed(SlotBatch, n)
engine = Engine(loaded.model, loaded.head, eos_token_ids={loaded.tokenizer.eos_token_id}, max_running=64,
                max_waiting=64, max_sequence_length=512, compile=True, graph_folder=default_folder())
prompt = loaded.tokenizer("Use 3 5 7 to make 22\n")["input_ids"] if callable(loaded.tokenizer) else None
print("prompt tokens", len(prompt))
t = time.time(); engine.warm_up(prompt); print("warm", time.time() - t); engine.start()
ttfts = []
class Client:
    def __init__(self): self.done = threading.Event(); self.first = None
    def push(self, events):
        for e in events:
            if isinstance(e, Sampled) and self.first is None: self.first = time.perf_counter()
            if isinstance(e, Ended) and getattr(e, "final", True): self.done.set()
def client(count):
    for i in range(count):
        c = Client(); start = time.perf_counter()
        engine.submit(EngineRequest(prompt, ControllerSpec("learned"), DecodeParams(length(i, c), ignore_eos=True), seed=i,
                                    deadline=time.monotonic() + 60, sink=c))
        c.done.wait(); ttfts.append((c.first - start) * 1000)
clients = int(sys.argv[1]) if len(sys.argv) > 1 else 16
VARIED = [12, 18, 22, 26, 30, 34, 40]
def length(i, c):
    return VARIED[(i * 7 + id(c)) % len(VARIED)] if sys.argv[2:] == ["varied"] else 26
for phase in ("warm", "measure"):
    ttfts.clear(); spent.clear(); calls.clear()
    threads = [threading.Thread(target=client, args=(40 if phase == "measure" else 5,)) for _ in range(clients)]
    t = time.perf_counter(); [th.start() for th in threads]; [th.join() for th in threads]; wall = time.perf_counter() - t
print(f"clients {clients}: TTFT p50 {statistics.median(ttfts):.1f} ms mean {statistics.mean(ttfts):.1f} wall {wall:.2f}s")
for name, s in sorted(spent.items(), key=lambda kv: -kv[1]):
    print(f"  {name:25s} {s*1000/wall:7.1f} ms/s  {calls[name]:6d} calls  {s*1e6/calls[name]:8.0f} us/call")
engine.stop(5)
