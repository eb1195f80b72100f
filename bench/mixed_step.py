"""What one forward per engine step would save (issue 21, part 2): newcomers' prompts in the decode step's forward.

The engine runs, in a round where k requests join B running rows, two compiled forwards: the decode
step of the B rows (`SlotBatch.decode_then`: one token per row, attention over its slot) and the
prefill of the k prompts (`SlotBatch.prefill`: the prompt's tokens, causal attention within the
chunk). vLLM V1 runs both as one forward. This script times, on the bundled checkpoint, compiled,
in one process, interleaved, the median over `--repeats` rounds of:

  separate  decode step of B rows + prefill of k prompts (what the engine does now);
  grid      one `NativeDecoder.prefill` forward over B + k rows: each running row a piece of one
            token at its own position, each newcomer its prompt (`prefill_chunk` takes pieces of
            any length), so the matmuls see B + k*P tokens once and attention runs on the
            prefill's grid, whose columns are the longest piece's. A lower bound on that design:
            its rows sit in the store's last slots, as the prefill's do, so it skips gathering
            the running rows' slots, and it decodes into those slots' positions, not the rows' own;
  split     one forward whose matmuls take the B + k*P tokens together while attention is split
            as vLLM splits it: the running rows' queries through the decode step's attention over
            their own slots, the prompts' through the prefill's grid (`split_layer` below, a
            prototype compiled as the prefill's layer function is: one graph for every layer).

Neither samples anything (the decode step's graph here runs without its sampler too), and the
figures are times: no token is read.

    python bench/mixed_step.py                       # B in 4 8 16, k in 1 4, prompts of 12 and 64 tokens
    python bench/mixed_step.py --out bench/results/mixed-step.json

What it does not do: change the engine, or time anything over HTTP (bench/serve.py).
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
from model.native_decoder import NativeDecoder, _bias, _rms_norm, prefill_chunk  # noqa: E402
from service.engine.kv import SlotBatch, _prefill_tracing, attention_width, batch_bucket  # noqa: E402

CHECKPOINT = REPO_ROOT / "checkpoints" / "introllm-countdown-tiny"
RUNNING_LENGTH = 40  # tokens each running row holds: a task prompt and part of its completion


def split_layer(
    decoder: NativeDecoder, layer, keys: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
    decode_positions: torch.Tensor, prompt_positions: torch.Tensor, write_index: torch.Tensor, cells: torch.Tensor,
    grid_positions: torch.Tensor, slots: int, decode_width: int, prompt_width: int,
) -> torch.Tensor:
    """One layer over x (B + N, d): the first B rows running rows' tokens (slots 0..B-1, at
    decode_positions (B,)), the other N prompt tokens (at prompt_positions (N,), the prompts in the
    store's last R slots, attention on the (R, columns) grid as `prefill_layer` does)."""
    running = decode_positions.shape[0]
    rows, columns = grid_positions.shape
    heads, kv_heads, dim = decoder.heads, decoder.kv_heads, decoder.head_dim
    group = heads // kv_heads
    positions = torch.cat([decode_positions, prompt_positions])
    cos, sin = decoder.cos[positions].unsqueeze(1), decoder.sin[positions].unsqueeze(1)  # (B + N, 1, D)
    decode_visible = torch.arange(decode_width, device=x.device).unsqueeze(0) <= decode_positions.unsqueeze(1)
    decode_bias = _bias(decode_visible)[:, :, None, None]  # (B, Wd, 1, 1)
    grid_visible = torch.arange(prompt_width, device=x.device) <= grid_positions.unsqueeze(-1)
    grid_bias = _bias(grid_visible)[:, None, None]  # (R, 1, 1, columns, Wp)

    def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        capacity = keys.shape[0] // slots
        store_k = keys.view(slots, capacity, kv_heads, dim)
        store_v = values.view(slots, capacity, kv_heads, dim)
        cached_k, cached_v = store_k[:running, :decode_width], store_v[:running, :decode_width]
        grouped = q[:running].view(running, 1, kv_heads, group, dim)
        scores = (grouped * cached_k.unsqueeze(3)).sum(-1, dtype=torch.float32) * decoder.scale + decode_bias
        weights = scores.softmax(dim=1).to(cached_v.dtype)
        decoded = (weights.unsqueeze(-1) * cached_v.unsqueeze(3)).sum(1).reshape(running, heads * dim)
        prompt_k, prompt_v = store_k[slots - rows :, :prompt_width], store_v[slots - rows :, :prompt_width]
        count = q.shape[0] - running
        grid = q.new_zeros(rows * columns, heads, dim).index_copy(0, cells, q[running:])
        grid_q = grid.view(rows, columns, kv_heads, group, dim)
        scores = torch.einsum("rckgd,rwkd->rkgcw", grid_q, prompt_k).float() * decoder.scale + grid_bias
        weights = scores.softmax(dim=-1).to(prompt_v.dtype)
        attended = torch.einsum("rkgcw,rwkd->rckgd", weights, prompt_v)
        prompted = attended.reshape(rows * columns, heads * dim)[cells].view(count, heads * dim)
        return torch.cat([decoded, prompted])

    return decoder.layer_forward(layer, keys, values, x, cos, sin, write_index, attend)


_compiled_split_layer = torch.compile(split_layer, dynamic=True)


def split_forward(batch: SlotBatch, tokens: torch.Tensor, decode_positions: torch.Tensor, chunk,
                  decode_width: int, prompt_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding, `split_layer` per layer (compiled), final norm and LM head at the running rows and at each
    prompt's last token. Returns logits (B + R, V)."""
    decoder = batch.native
    running = decode_positions.shape[0]
    write_index = torch.cat([batch._slot_base[:running] + decode_positions, chunk.write_index])
    x = torch.nn.functional.embedding(torch.cat([tokens, chunk.tokens]), decoder.embedding)
    torch._dynamo.mark_static(x, 1)
    with _prefill_tracing():
        for layer, keys, values in zip(decoder.layers, batch._key_stores, batch._value_stores, strict=True):
            x = _compiled_split_layer(decoder, layer, keys, values, x, decode_positions, chunk.positions, write_index,
                                      chunk.cells, chunk.grid_positions, batch.store_slots, decode_width,
                                      prompt_width)
    picked = torch.cat([x[:running], x[running:][chunk.last]])
    hidden = _rms_norm(picked, decoder.final_norm, decoder.eps)
    return torch.nn.functional.linear(hidden, decoder.lm_head, decoder.lm_bias).float(), hidden


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def measure(batch: SlotBatch, running: int, newcomers: int, prompt_tokens: int, repeats: int) -> dict:
    """Median ms of each variant's round for B = running rows and k = newcomers prompts of prompt_tokens."""
    vocab = batch.native.embedding.shape[0]
    generator = torch.Generator().manual_seed(running * 100 + newcomers)
    prompt = torch.randint(3, vocab, (prompt_tokens,), generator=generator).tolist()
    history = torch.randint(3, vocab, (RUNNING_LENGTH,), generator=generator).tolist()
    tokens = torch.randint(3, vocab, (running,), generator=generator)

    batch.clear()
    batch.prefill([history] * running)
    for i in range(running):
        batch.add_prefilled(i, RUNNING_LENGTH)
    lengths = batch.lengths
    decode_width = attention_width(max(lengths) + 1)

    # grid: every row in the store's last B + k slots.
    rows = running + newcomers
    first = batch.store_slots - rows
    pieces = [[int(t)] for t in tokens] + [prompt] * newcomers
    grid_chunk = prefill_chunk(pieces, lengths + [0] * newcomers,
                               [(first + r) * batch.capacity for r in range(rows)], batch.capacity - 1, batch.device)
    grid_width = attention_width(max(max(lengths) + 1, prompt_tokens))

    # split: running rows padded to their bucket, as the decode step pads them; prompts in the last slots,
    # padded to at least two rows, as the prefill pads them.
    bucket = batch_bucket(running, batch.slots)
    decode_positions = torch.tensor(lengths + [0] * (bucket - running))
    decode_tokens = torch.cat([tokens, tokens.new_zeros(bucket - running)])
    prompt_rows = max(newcomers, 2)
    region = batch.store_slots - prompt_rows
    split_chunk = prefill_chunk([prompt] * newcomers + [[]] * (prompt_rows - newcomers), [0] * prompt_rows,
                                [(region + r) * batch.capacity for r in range(prompt_rows)], batch.capacity - 1,
                                batch.device)
    prompt_width = attention_width(prompt_tokens)

    def separate() -> None:
        batch.decode_then(tokens)
        batch._lengths = list(lengths)  # the step's positions stay where they were: every round the same
        batch.prefill([prompt] * newcomers)

    def grid() -> None:
        batch._run_prefill(grid_chunk.tokens, grid_chunk.positions, grid_chunk.write_index, grid_chunk.cells,
                           grid_chunk.grid_positions, grid_chunk.last, grid_width)

    def split() -> None:
        split_forward(batch, decode_tokens, decode_positions, split_chunk, decode_width, prompt_width)

    variants = {"separate": separate, "grid": grid, "split": split}
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for round_ in range(repeats + 2):  # two warm-up rounds: the first call of a shape traces
        for name in order[round_ % 3:] + order[: round_ % 3]:
            started = time.perf_counter()
            variants[name]()
            if round_ >= 2:
                times[name].append(time.perf_counter() - started)
    ms = {name: _median_ms(samples) for name, samples in times.items()}
    return {"running": running, "newcomers": newcomers, "prompt_tokens": prompt_tokens,
            **{f"{name}_ms": value for name, value in ms.items()},
            "grid_over_separate": ms["grid"] / ms["separate"], "split_over_separate": ms["split"] / ms["separate"]}


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
    loaded = load_checkpoint(CHECKPOINT)
    slots = max(args.running) + max(args.newcomers)
    batch = SlotBatch(loaded.model, slots=slots, max_len=512, device=torch.device("cpu"), compile=True,
                      native=True)
    batch.warm_up([5] * 8)
    results = []
    print(f"{'B':>3} {'k':>3} {'P':>4} {'separate ms':>12} {'grid ms':>8} {'split ms':>9} {'grid/sep':>9} "
          f"{'split/sep':>10}")
    with torch.no_grad():
        for prompt_tokens in args.prompt_tokens:
            for running in args.running:
                for newcomers in args.newcomers:
                    row = measure(batch, running, newcomers, prompt_tokens, args.repeats)
                    results.append(row)
                    print(f"{running:>3} {newcomers:>3} {prompt_tokens:>4} {row['separate_ms']:>12.2f} "
                          f"{row['grid_ms']:>8.2f} {row['split_ms']:>9.2f} {row['grid_over_separate']:>9.3f} "
                          f"{row['split_over_separate']:>10.3f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({
            "command": " ".join(sys.argv), "threads": args.threads, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "results": results,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
