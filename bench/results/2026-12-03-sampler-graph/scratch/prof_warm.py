import cProfile, pstats, sys, time
import torch
sys.path.insert(0, "/work/main")
from model import load_checkpoint, CounterNoise
from service.engine.kv import SlotBatch
from service.engine.sampling import sample_in_step, step_inputs, RowSampler, build_controller
from service.engine.graphs import GraphCache
from service.messages import ControllerSpec
from service.settings import DEFAULT_CHECKPOINT
import model as model_pkg, service as service_pkg
from pathlib import Path
torch.set_num_threads(1); torch.set_grad_enabled(False)
loaded = load_checkpoint(DEFAULT_CHECKPOINT, torch.device("cpu"), torch.float32)
model, head = loaded.model, loaded.head
graphs = GraphCache(Path(sys.argv[1]), {"scratch": 1}, [model_pkg, service_pkg])
batch = SlotBatch(model, slots=32, max_len=512, device=torch.device("cpu"), compile=True, graphs=graphs)
spec = ControllerSpec("learned")
sampler = RowSampler(spec, build_controller(spec, head))
def inputs(rows):
    noise = CounterNoise.for_rows(list(range(rows)), 5)
    return step_inputs([sampler] * rows, head, torch.ones(rows, 1), noise, None)[0]
prompt = list(range(5, 45))
p = cProfile.Profile(); t0 = time.time()
p.enable(); batch.warm_up(prompt, sample_in_step, inputs, prompts_in_step=True); p.disable()
print("warm", time.time() - t0)
pstats.Stats(p).sort_stats("cumulative").print_stats(60)
