"""Reference-decode speed of the tiny model: learned vs fixed temperature, one run.

Prints a table of tokens/s at each batch size for `model.generate` (the
single-request reference loop, not the service engine) with the learned head
and with a fixed tau, and the learned/fixed ratio. Runs alternate between the
two controllers so machine load hits both alike.

    python bench/model_decode.py [--batches 1 8] [--new-tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from model import (
    FixedTemperature,
    HeadConfig,
    LearnedTemperature,
    SamplingParams,
    TemperatureHead,
    TinyLMConfig,
    build_char_tokenizer,
    build_tiny_lm,
    generate,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, TinyLMConfig())
    head = TemperatureHead(HeadConfig(hidden_size=model.config.hidden_size)).eval()
    controllers = {"learned": LearnedTemperature(head), "fixed": FixedTemperature(1.0)}
    params = SamplingParams(max_new_tokens=args.new_tokens)  # no EOS: every run decodes the full budget
    rows = []
    for batch in args.batches:
        seeded = torch.Generator().manual_seed(0)
        prompt = torch.randint(4, len(tokenizer), (batch, args.prompt_tokens), generator=seeded)
        times: dict[str, list[float]] = {name: [] for name in controllers}
        for repeat in range(args.repeats + 1):
            for name, controller in controllers.items():
                gens = [torch.Generator().manual_seed(i) for i in range(batch)]
                start = time.perf_counter()
                generate(model, controller, prompt, params, gens)
                if repeat > 0:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        result = {"batch": batch}
        for name, samples in times.items():
            result[f"{name}_tok_s"] = batch * args.new_tokens / statistics.median(samples)
        result["learned_over_fixed_time"] = result["fixed_tok_s"] / result["learned_tok_s"]
        rows.append(result)

    print(f"# tiny model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
          f"prompt {args.prompt_tokens}, {args.new_tokens} new tokens, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, median of {args.repeats}")
    print(f"{'batch':>5} | {'learned tok/s':>13} | {'fixed tok/s':>11} | {'learned time / fixed time':>25}")
    for r in rows:
        print(f"{r['batch']:>5} | {r['learned_tok_s']:>13.0f} | {r['fixed_tok_s']:>11.0f} | "
              f"{r['learned_over_fixed_time']:>25.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
