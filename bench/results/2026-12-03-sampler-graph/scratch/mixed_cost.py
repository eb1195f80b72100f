import statistics, sys, time
import torch
sys.path.insert(0, "/work/main")
from model import load_checkpoint
from service.engine.engine import Engine
from service.engine.graphs import default_folder
from service.engine.sampling import sample_in_step
from service.settings import DEFAULT_CHECKPOINT
torch.set_num_threads(1); _im = torch.inference_mode(); _im.__enter__()
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.float32)
engine = Engine(loaded.model, loaded.head, eos_token_ids={loaded.tokenizer.eos_token_id}, max_running=32,
                max_waiting=64, max_sequence_length=512, compile=True, graph_folder=default_folder())
prompt = loaded.tokenizer("Use 3 5 7 to make 22\n")["input_ids"]
engine.warm_up(prompt)
batch = engine._batch
def fill(rows):
    batch.clear()
    batch.prefill([prompt] * rows)
    for i in range(rows): batch.add_prefilled(i, len(prompt))
def timeit(fn, n=30):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)
tokens = torch.full((16,), 7)
for k in (1, 2, 5, 8):
    fill(16)
    def step(): batch.decode(tokens); batch._lengths = [len(prompt)] * 16
    def pre(): batch.prefill([prompt] * k)
    def mixed(): batch.decode_and_prefill_then(tokens, [prompt] * k); batch._lengths = [len(prompt)] * 16
    s, p, m = timeit(step), timeit(pre), timeit(mixed)
    print(f"16 rows + {k} prompts of {len(prompt)}: step {s:.2f} ms, prefill {p:.2f} ms, mixed {m:.2f} ms, mixed/(step+prefill) {m/(s+p):.2f}", flush=True)
