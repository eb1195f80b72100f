"""Offline decode benchmark: the service engine next to Hugging Face generate() and the bare forward.

What it does, in one process and one run, for each batch size B (prompt of
`--prompt-tokens` random tokens, exactly `--new-tokens` new tokens per row):
  - engine/<mode>[/compiled]: the service's `Engine` (its thread, slot KV
    cache, per-row counter-based sampling, events per token) with B requests
    submitted at once, for temperature modes learned, fixed (tau 1) and
    entropy, eager and with the decode step compiled;
  - generate: `model.generate(do_sample=True, top_k=0, temperature=1)` on the
    same B prompts as one batch (plain temperature sampling, no head);
  - forward: the bare model forward with a `DynamicCache`, greedy argmax, no
    sampling: the floor that sampling and the head add to.
Variants run interleaved, `--repeats` rounds after a warm-up round, and the
median is reported as tokens/s (B x new tokens / wall time, prefill included)
and ms per step (wall time / new tokens). Ratios from the same run, each the
median of per-round ratios: learned/fixed time (the head's overhead) and
engine tokens/s over generate's.
Also reported: KV-cache bytes per sequence per token of the engine's cache.

Shapes: `tiny` is the bundled default model; `qwen2.5-0.5b` is a randomly
initialised model with Qwen2.5-0.5B's published configuration (speed does not
depend on the weights' values; no download is possible here).

    python bench/decode.py                                  # tiny, batches 1 8 16 32
    python bench/decode.py --shape qwen2.5-0.5b --batches 1 4 --new-tokens 16 --repeats 2
    python bench/decode.py --device cuda --dtype bfloat16 --shape qwen2.5-0.5b --batches 1 64

What it does not do: HTTP or the engine process (bench/serve.py),
detokenization (the API process's work, not the engine's), or compare runs
from different machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from model import HeadConfig, TemperatureHead, forward, load_checkpoint, new_cache  # noqa: E402
from service.engine.engine import Engine  # noqa: E402
from service.engine.graphs import default_folder as default_graph_folder  # noqa: E402
from service.messages import (  # noqa: E402
    ControllerSpec,  # noqa: E402
    DecodeParams,
    Ended,
    EngineRequest,
    Failed,
    Sampled,
)
from service.settings import DEFAULT_CHECKPOINT, resolve_dtype  # noqa: E402

QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B config.json, the fields that set speed
    hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    rms_norm_eps=1e-6, use_sliding_window=False, hidden_act="silu",
)
MODES = {
    "learned": ControllerSpec("learned"),
    "fixed": ControllerSpec("fixed", temperature=1.0),
    "entropy": ControllerSpec("entropy"),
}


def load_shape(shape: str, device: torch.device, dtype: torch.dtype, checkpoint: Path):
    """(model, head, eos ids) for a named shape."""
    if shape == "tiny":
        loaded = load_checkpoint(checkpoint, device, dtype)
        return loaded.model, loaded.head, {loaded.tokenizer.eos_token_id}
    if shape == "qwen2.5-0.5b":
        from transformers import AutoModelForCausalLM, Qwen2Config

        config = Qwen2Config(**QWEN25_05B, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
        head = TemperatureHead(HeadConfig(hidden_size=config.hidden_size)).to(device).eval()
        return model, head, {config.vocab_size - 1}
    raise ValueError(f"unknown shape {shape!r}")


class _Collect:
    """Counts tokens and records how each request ended."""

    def __init__(self) -> None:
        self.tokens = 0
        self.finish: Ended | Failed | None = None

    def push(self, events) -> None:
        for event in events:
            if isinstance(event, Ended | Failed):
                self.finish = event
            elif isinstance(event, Sampled):
                self.tokens += 1


def engine_run(engine: Engine, prompts: torch.Tensor, spec: ControllerSpec, new_tokens: int) -> None:
    sinks = [_Collect() for _ in range(prompts.shape[0])]
    for i, sink in enumerate(sinks):
        engine.submit(EngineRequest(
            prompt_ids=prompts[i].tolist(), controller=spec, params=DecodeParams(new_tokens, ignore_eos=True),
            seed=i, deadline=math.inf, sink=sink,
        ))
    if not engine.wait_idle(timeout=3600):
        raise TimeoutError("engine did not finish")
    for sink in sinks:
        if not isinstance(sink.finish, Ended) or sink.tokens != new_tokens:
            raise RuntimeError(f"a request failed: {sink.finish}")


def generate_run(model, prompts: torch.Tensor, new_tokens: int) -> None:
    model.generate(
        prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
    )


@torch.inference_mode()
def forward_run(model, prompts: torch.Tensor, new_tokens: int) -> None:
    cache = new_cache()
    out = forward(model, prompts, cache=cache, last_only=True)
    tokens = out.logits[:, -1].argmax(-1)
    for _ in range(new_tokens - 1):
        out = forward(model, tokens.unsqueeze(1), cache=cache, last_only=True)
        tokens = out.logits[:, -1].argmax(-1)
    tokens.tolist()  # wait for the device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    parser.add_argument("--checkpoint", type=Path, default=Path(DEFAULT_CHECKPOINT), help="for --shape tiny")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--compile", choices=["both", "off", "on"], default="both",
                        help="engine variants: eager, compiled decode step, or both")
    parser.add_argument("--no-baselines", action="store_true", help="skip generate() and the bare forward")
    parser.add_argument("--native-decode", choices=["auto", "false"], default="auto",
                        help="the engine's decode forward: native where it can (the service's default) or "
                        "always the model's own forward (false), for the comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: the server's dtype=auto here (bfloat16 on cuda and on a CPU with bfloat16 "
                        "instructions, float32 on any other)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else resolve_dtype("auto", device)
    load_before = os.getloadavg()

    model, head, eos = load_shape(args.shape, device, dtype, args.checkpoint)
    vocab = model.config.vocab_size
    max_batch = max(args.batches)
    engines: dict[str, Engine] = {}
    compile_options = {"both": [False, True], "off": [False], "on": [True]}[args.compile]
    compile_s: dict[str, float] = {}
    for compiled in compile_options:
        engine = Engine(
            model, head, eos_token_ids=eos, max_running=max_batch, max_waiting=max_batch,
            max_sequence_length=args.prompt_tokens + args.new_tokens, compile=compiled,
            native_decode="auto" if args.native_decode == "auto" else False,
            # As the server does (service/engine/process.py): compiled graphs saved in the compile cache.
            graph_folder=default_graph_folder() if compiled else None,
        )
        start = time.perf_counter()
        engine.warm_up(list(range(3, 3 + args.prompt_tokens)))
        compile_s["compiled" if compiled else "eager"] = round(time.perf_counter() - start, 2)
        engine.start()
        engines["compiled" if compiled else "eager"] = engine
    kv_bytes = next(iter(engines.values()))._batch.kv_bytes_per_token()

    rows = []
    for batch in args.batches:
        seeded = torch.Generator().manual_seed(batch)
        prompts = torch.randint(3, vocab - 1, (batch, args.prompt_tokens), generator=seeded).to(device)
        variants = {}
        for name, engine in engines.items():
            for mode in args.modes:
                label = f"engine/{mode}" + ("/compiled" if name == "compiled" else "")
                variants[label] = lambda e=engine, m=mode, p=prompts: engine_run(e, p, MODES[m], args.new_tokens)
        if not args.no_baselines:
            variants["generate"] = lambda p=prompts: generate_run(model, p, args.new_tokens)
            variants["forward"] = lambda p=prompts: forward_run(model, p, args.new_tokens)
        times: dict[str, list[float]] = {label: [] for label in variants}
        for repeat in range(args.repeats + 1):  # round 0 warms up
            for label, run in variants.items():
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                if repeat:
                    times[label].append(time.perf_counter() - start)
        row = {"batch": batch, "variants": {}}
        for label, samples in times.items():
            median = statistics.median(samples)
            row["variants"][label] = {
                "tok_s": round(batch * args.new_tokens / median, 1),
                "ms_per_step": round(1000 * median / args.new_tokens, 3),
                "runs_s": [round(s, 4) for s in samples],
            }
        row["ratios"] = _ratios(row["variants"])
        rows.append(row)
        _print_batch(row)

    for engine in engines.values():
        engine.stop(timeout=30)
    result = {
        "benchmark": "decode",
        "shape": args.shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "dtype": str(dtype).removeprefix("torch."),
        "kv_bytes_per_sequence_per_token": kv_bytes,
        "warm_up_s": compile_s,
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
    }
    print(f"# {args.shape} ({result['parameters'] / 1e6:.1f}M params, {result['dtype']}), prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, {result['machine']['threads']} threads on {result['machine']['device']}, "
          f"median of {args.repeats}; KV {kv_bytes} B/seq/token; warm-up s {compile_s}; "
          f"load {result['machine']['load_avg_before'][0]} -> {result['machine']['load_avg_after'][0]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _ratios(variants: dict[str, dict]) -> dict[str, float]:
    """learned/fixed time (the head's cost) and engine/generate tokens/s, per engine flavour.

    Each is the median over repeats of the ratio within one round: the two
    runs of a round are back to back, so slow drifts of a shared machine
    cancel in a way they do not between two medians.
    """
    def paired(numerator: str, denominator: str) -> float | None:
        a, b = variants.get(numerator), variants.get(denominator)
        if not a or not b:
            return None
        return round(statistics.median(x / y for x, y in zip(a["runs_s"], b["runs_s"], strict=True)), 4)

    ratios = {}
    for suffix in ("", "/compiled"):
        tag = suffix.replace("/", "_")
        ratios[f"learned_over_fixed_time{tag}"] = paired(f"engine/learned{suffix}", f"engine/fixed{suffix}")
        # tokens/s ratio = time ratio inverted
        ratios[f"engine_learned{tag}_over_generate"] = paired("generate", f"engine/learned{suffix}")
        ratios[f"engine_fixed{tag}_over_generate"] = paired("generate", f"engine/fixed{suffix}")
    return {key: value for key, value in ratios.items() if value is not None}


def _print_batch(row: dict) -> None:
    print(f"\nbatch {row['batch']}")
    print(f"  {'variant':<26} | {'tok/s':>9} | {'ms/step':>8}")
    for label, v in row["variants"].items():
        print(f"  {label:<26} | {v['tok_s']:>9.1f} | {v['ms_per_step']:>8.2f}")
    for key, value in row["ratios"].items():
        print(f"  {key} = {value:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
