"""Scratch: the engine in process (bfloat16 on this CPU, compiled, one thread, 64 slots), N requests of 128 tokens
submitted together, decode tokens/s with the batch padded to the next power of two (the code's batch_bucket) or
to the next multiple of 8 above 8 (argv[1] "pow2" or "mult8"), or to the size itself ("exact"). Sizes argv[2:]. Prints tok/s per size and the
number of graphs dynamo compiled after warm-up (a recompile for a new size would show here)."""
import sys, threading, time
import torch
sys.path.insert(0, "/work/main")
import torch._dynamo.utils as dynamo_utils
from model import load_checkpoint
from service.engine import kv
from service.engine.engine import Engine
from service.engine.graphs import default_folder
from service.messages import EngineRequest, DecodeParams, ControllerSpec, Ended
from service.settings import DEFAULT_CHECKPOINT

MODE = sys.argv[1]
# Run against the code before or after the change (88cabca): each mode sets the bucket itself.
_original = kv.batch_bucket
if MODE == "mult8":
    def bucket(size: int, slots: int, *_) -> int:
        b = kv.MIN_BUCKET
        while b < size and b < 8:
            b *= 2
        if b < size:
            b = -(-size // 8) * 8
        return min(b, max(slots, kv.MIN_BUCKET))
    kv.batch_bucket = bucket
elif MODE == "exact":
    kv.batch_bucket = lambda size, slots, *_: min(max(size, kv.MIN_BUCKET), max(slots, kv.MIN_BUCKET))
else:  # pow2
    def bucket(size: int, slots: int, *_) -> int:
        b = kv.MIN_BUCKET
        while b < size:
            b *= 2
        return min(b, max(slots, kv.MIN_BUCKET))
    kv.batch_bucket = bucket
torch.set_num_threads(1)
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.bfloat16)
engine = Engine(loaded.model, loaded.head, eos_token_ids={loaded.tokenizer.eos_token_id}, max_running=64,
                max_waiting=128, max_sequence_length=512, compile=True, graph_folder=default_folder())
prompt = loaded.tokenizer("3 5 7 2>24\n")["input_ids"]
engine.warm_up(prompt); engine.start()
graphs_after_warm_up = dynamo_utils.counters["stats"]["unique_graphs"]
class Sink:
    def __init__(self): self.done = threading.Event()
    def push(self, events):
        if any(isinstance(e, Ended) for e in events): self.done.set()
def run(n):
    sinks = [Sink() for _ in range(n)]
    t = time.perf_counter()
    for i, s in enumerate(sinks):
        engine.submit(EngineRequest(prompt, ControllerSpec("learned"), DecodeParams(128, ignore_eos=True), seed=i,
                                    deadline=time.monotonic() + 120, sink=s))
    for s in sinks: s.done.wait()
    return n * 128 / (time.perf_counter() - t)
for n in [int(a) for a in sys.argv[2:]]:
    run(n)  # once to settle
    rates = [run(n) for _ in range(3)]
    print(f"{MODE} rows {n}: {max(rates):.0f} tok/s (best of 3; {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
print(f"{MODE}: graphs compiled after warm-up: {dynamo_utils.counters['stats']['unique_graphs'] - graphs_after_warm_up}")
engine.stop(5)
