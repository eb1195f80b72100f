"""One forward per engine step (issue 21, part 2): newcomers' prompts in the running rows' decode step, timed.

In a round where k requests join B running rows, the engine ran two compiled forwards: the decode
step of the B rows (`SlotBatch.decode_then`) and the prefill of the k prompts (`SlotBatch.prefill`).
It now runs one (`SlotBatch.decode_and_prefill_then`, `NativeDecoder.mixed`): the matmuls take the B
running tokens and the k prompts' tokens at once, attention split by kind as vLLM splits it. This
script times both on the bundled checkpoint, compiled, in one process, interleaved, the median over
`--repeats` rounds:

  separate     decode step of B rows + prefill of k prompts (`INTROLLM_PREFILL_IN_STEP=false`);
  one forward  both in one forward (the default).

Neither samples (the step's graph runs without its sampler here); the figures are times, no token
is read. The first version of this script (commit "bench/mixed_step.py: what one forward per engine
step would save, measured before building it") timed two prototypes before the engine had either;
its results are bench/results/mixed-step.json.

    python bench/mixed_step.py                       # B in 4 8 16, k in 1 4, prompts of 12 and 64 tokens
    python bench/mixed_step.py --out bench/results/mixed-step-engine.json

What it does not do: time the engine's loop or anything over HTTP (bench/serve.py does, with
`--server-env INTROLLM_PREFILL_IN_STEP=false` for the other path).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from model import load_checkpoint  # noqa: E402
from service.engine.kv import SlotBatch  # noqa: E402
from service.settings import resolve_dtype  # noqa: E402

CHECKPOINT = REPO_ROOT / "checkpoints" / "introllm-countdown-tiny"
RUNNING_LENGTH = 40  # tokens each running row holds: a task prompt and part of its completion


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def measure(batch: SlotBatch, running: int, newcomers: int, prompt_tokens: int, repeats: int) -> dict:
    """Median ms of each variant's round for B = running rows and k = newcomers prompts of prompt_tokens."""
    vocab = batch.native.embedding.shape[0]
    generator = torch.Generator().manual_seed(running * 100 + newcomers)
    prompts = [torch.randint(3, vocab, (prompt_tokens,), generator=generator).tolist()] * newcomers
    history = torch.randint(3, vocab, (RUNNING_LENGTH,), generator=generator).tolist()
    tokens = torch.randint(3, vocab, (running,), generator=generator)

    batch.clear()
    batch.prefill([history] * running)
    for i in range(running):
        batch.add_prefilled(i, RUNNING_LENGTH)
    lengths = batch.lengths

    def separate() -> None:
        batch.decode_then(tokens)
        batch.prefill(prompts)

    def one_forward() -> None:
        batch.decode_and_prefill_then(tokens, prompts)

    variants = {"separate": separate, "one_forward": one_forward}
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for round_ in range(repeats + 2):  # two warm-up rounds
        for name in order if round_ % 2 else order[::-1]:
            started = time.perf_counter()
            variants[name]()
            batch._lengths = list(lengths)  # the rows' positions stay where they were: every round the same
            if round_ >= 2:
                times[name].append(time.perf_counter() - started)
    ms = {name: _median_ms(samples) for name, samples in times.items()}
    return {"running": running, "newcomers": newcomers, "prompt_tokens": prompt_tokens,
            **{f"{name}_ms": value for name, value in ms.items()},
            "one_forward_over_separate": ms["one_forward"] / ms["separate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--newcomers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[12, 64])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the engine's default on 2 cores)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype("auto", torch.device("cpu"))  # the server's default here
    loaded = load_checkpoint(CHECKPOINT, dtype=dtype)
    print(f"dtype {str(dtype).removeprefix('torch.')}")
    slots = max(args.running) + max(args.newcomers)
    batch = SlotBatch(loaded.model, slots=slots, max_len=512, device=torch.device("cpu"), compile=True,
                      native=True)
    batch.warm_up([5] * 8)
    results = []
    print(f"{'B':>3} {'k':>3} {'P':>4} {'separate ms':>12} {'one forward ms':>15} {'one/separate':>13}")
    with torch.no_grad():
        for prompt_tokens in args.prompt_tokens:
            for running in args.running:
                for newcomers in args.newcomers:
                    row = measure(batch, running, newcomers, prompt_tokens, args.repeats)
                    results.append(row)
                    print(f"{running:>3} {newcomers:>3} {prompt_tokens:>4} {row['separate_ms']:>12.2f} "
                          f"{row['one_forward_ms']:>15.2f} {row['one_forward_over_separate']:>13.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "results": results,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
