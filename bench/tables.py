"""Markdown tables for BENCHMARKS.md from the JSON that bench/serve.py wrote.

What it does: for each bench/decode.py JSON given, its tok/s and ratio tables;
for each serve JSON given (one run of one workload), one
table with a row per server level, per peer level (`transformers serve
--continuous-batching`, eager and compiled), the generate() baseline at its
fastest thread count and each thread probe, then the n-samples rows when the
run had them. It measures nothing: the tables show what the files hold.

    python bench/tables.py bench/results/serve-cpu-task-1.json bench/results/serve-cpu-1.json

What it does not do: compare runs (bench/targets.py does, with the spread).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = ("| server | clients | requests | failures | output tok/s | TTFT mean / p50 / p99 ms | "
          "TTFT p50, first wave ms | TTFT / queue mean as the server measures, ms | ITL mean / p50 / p99 ms | "
          "E2E mean / p50 / p99 ms |")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _triple(row: dict, kind: str) -> str:
    return "/".join(_number(row.get(f"{kind}_{stat}_ms")) for stat in ("mean", "p50", "p99"))


def _line(server: str, clients: str, row: dict) -> str:
    # This server's own span (arrival to first token, arrival to prefill); "-" for the peer and generate().
    spans = [row.get("server_ttft_mean_ms"), row.get("server_queue_mean_ms")]
    server_side = "-" if spans[0] is None else "/".join(_number(value) for value in spans)
    return (f"| {server} | {clients} | {row['requests']} | {row['failures']} | {row['output_tokens_per_s']:.1f} | "
            f"{_triple(row, 'ttft')} | {_number(row.get('ttft_first_wave_p50_ms'))} | {server_side} | "
            f"{_triple(row, 'itl')} | {_triple(row, 'e2e')} |")


def serve_table(run: dict) -> list[str]:
    """One run's rows: this server, the peer's variants, generate() (the row and its thread probes)."""
    lines = [HEADER, "|---" * (HEADER.count("|") - 1) + "|"]
    lines += [_line("this server", str(row["concurrency"]), row) for row in run["levels"]]
    for variant, rows in run.get("peers", {}).items():
        lines += [_line(f"peer, {variant}", str(row["concurrency"]), row) for row in rows]
    baseline, probes = run.get("baseline"), run.get("baseline_thread_probes", [])
    if baseline:
        threads = run["machine"]["threads"]
        # Its dtype: recorded since 2026-12-04 (before, the fastest probe's; older runs probed float32 only).
        fastest = max(probes, key=lambda probe: probe["output_tokens_per_s"] or 0.0) if probes else {}
        dtype = run["machine"].get("baseline_dtype") or fastest.get("dtype")
        lines.append(_line(f"generate(), {threads} thread{'s' if threads > 1 else ''}{f' {dtype}' if dtype else ''}",
                           "1 at a time", baseline))
    for probe in probes:
        dtype = f" {probe['dtype']}" if "dtype" in probe else ""
        lines.append(_line(f"generate() probe, {probe['threads']} thread{'s' if probe['threads'] > 1 else ''}{dtype}",
                           "1 at a time", probe))
    return lines


def samples_table(run: dict) -> list[str]:
    """The n-samples workload: one request of n=N per prompt against N separate requests."""
    samples = run.get("samples")
    if not samples:
        return []
    lines = ["| workload | requests | output tok/s | TTFT mean / p50 / p99 ms | prompt tokens prefilled |",
             "|---|---|---|---|---|"]
    for name, row in ((f"n={samples['n']}", samples["shared"]), (f"{samples['n']} separate", samples["separate"])):
        lines.append(f"| {name} | {row['requests']} | {row['output_tokens_per_s']:.1f} | {_triple(row, 'ttft')} | "
                     f"{row['prompt_tokens_prefilled']:.0f} |")
    return lines


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s:.0f}" if tokens_per_s >= 100 else f"{tokens_per_s:.1f}"


def decode_tables(run: dict) -> list[str]:
    """bench/decode.py's JSON: tok/s (ms per step) per variant and batch, then the paired ratios."""
    rows = run["rows"]
    lines = ["| variant | " + " | ".join(f"b{row['batch']} tok/s (ms/step)" for row in rows) + " |",
             "|---" * (len(rows) + 1) + "|"]
    for variant in rows[0]["variants"]:
        cells = [f"{_rate(row['variants'][variant]['tok_s'])} ({row['variants'][variant]['ms_per_step']:.2f})"
                 for row in rows]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio (median of per-round ratios) | " + " | ".join(f"b{row['batch']}" for row in rows) + " |",
              "|---" * (len(rows) + 1) + "|"]
    for ratio in rows[0]["ratios"]:
        lines.append(f"| {ratio} | " + " | ".join(f"{row['ratios'][ratio]:.3f}" for row in rows) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="bench/serve.py or bench/decode.py JSON files")
    args = parser.parse_args(argv)
    for path in args.runs:
        run = json.loads(path.read_text())
        if run.get("benchmark") == "decode" or "levels" not in run:
            settings = run["settings"]
            print(f"**{path.name}**: shape {run['shape']}, prompt {settings['prompt_tokens']}, "
                  f"{settings['new_tokens']} new tokens, {settings['repeats']} rounds, threads {settings['threads']}\n")
            print("\n".join(decode_tables(run)) + "\n")
            continue
        settings = run["settings"]
        print(f"**{path.name}**: workload {settings['workload']}, {settings['new_tokens']} new tokens at most, "
              f"mode {settings['temperature_mode']}, load {run['machine']['load_avg_before']} -> "
              f"{run['machine']['load_avg_after']}; server peak RSS {run['server']['peak_rss_mib']} MiB "
              f"(API process {run['server'].get('api_peak_rss_mib')} MiB), ready in {run['server']['ready_s']} s\n")
        print("\n".join(serve_table(run)))
        extra = samples_table(run)
        if extra:
            print("\n" + "\n".join(extra))
        print()


if __name__ == "__main__":
    main()
