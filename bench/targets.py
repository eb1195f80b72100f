"""The five performance targets of BENCHMARKS.md, checked against benchmark result files.

What it does: reads the JSON that bench/decode.py and bench/serve.py wrote and
prints one Markdown table row per target: the measured ratio, the threshold,
and met / not met (or unmeasured when its file is missing). It measures
nothing itself, so the table always shows what the result files hold.

    python bench/targets.py --decode bench/results/decode-cpu.json --serve bench/results/serve-cpu.json
    python bench/targets.py --gpu bench/results/decode-gpu.json

Which engine variant counts: the compiled decode step when the file has it,
else the eager one; for the HTTP comparison, the offline variant with the
serving run's temperature mode and compile setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _row(rows: list[dict], batch: int) -> dict | None:
    return next((row for row in rows if row["batch"] == batch), None)


def _flavour(row: dict) -> str:
    return "/compiled" if any(label.endswith("/compiled") for label in row["variants"]) else ""


def _verdict(value: float | None, threshold: float, at_most: bool = False) -> str:
    if value is None:
        return "unmeasured"
    return "met" if (value <= threshold if at_most else value >= threshold) else "not met"


def check(decode: dict | None, serve: dict | None, gpu: dict | None) -> list[tuple[str, str, str, str]]:
    """(target, measured, required, verdict) per target."""
    out: list[tuple[str, str, str, str]] = []

    # 1. head overhead at batch 1 and 16
    for batch in (1, 16):
        row = _row(decode["rows"], batch) if decode else None
        value = None
        if row:
            value = row["ratios"].get(f"learned_over_fixed_time{_flavour(row).replace('/', '_')}")
        out.append((f"1. learned / fixed time, batch {batch}", _fmt(value), "<= 1.05", _verdict(value, 1.05, True)))

    # 2. engine vs generate at batch 16, same sampling (fixed tau 1, no top-k)
    row = _row(decode["rows"], 16) if decode else None
    value = row["ratios"].get(f"engine_fixed{_flavour(row).replace('/', '_')}_over_generate") if row else None
    out.append(("2. engine (fixed tau) / generate tok/s, batch 16", _fmt(value), ">= 1.5", _verdict(value, 1.5)))

    # 3. HTTP at 16 clients vs the offline engine at batch 16
    value = None
    if serve and row:
        level = next((lv for lv in serve["levels"] if lv["concurrency"] == 16), None)
        mode = serve["settings"].get("temperature_mode", "learned")
        suffix = "/compiled" if serve["server"].get("compile") else ""
        offline = row["variants"].get(f"engine/{mode}{suffix}")
        if level and offline and level["output_tokens_per_s"]:
            value = level["output_tokens_per_s"] / offline["tok_s"]
    out.append(("3. HTTP 16 clients / offline engine batch 16, tok/s", _fmt(value), ">= 0.85", _verdict(value, 0.85)))

    # 4. 16 clients vs one-at-a-time generate, and TTFT growth
    summary = serve["summary"] if serve else {}
    value = summary.get("c16_over_generate")
    out.append(("4a. HTTP 16 clients / one-at-a-time generate, tok/s", _fmt(value), ">= 6", _verdict(value, 6.0)))
    value = summary.get("ttft_p50_c16_over_c1")
    out.append(("4b. p50 TTFT at 16 clients / at 1 client", _fmt(value), "< 3", _verdict(value, 3.0, True)))

    # 5. GPU: engine vs generate at batch 1, engine scaling to batch 64
    first = _row(gpu["rows"], 1) if gpu else None
    wide = _row(gpu["rows"], 64) if gpu else None
    value = first["ratios"].get(f"engine_learned{_flavour(first).replace('/', '_')}_over_generate") if first else None
    out.append(("5a. GPU engine / generate tok/s, batch 1", _fmt(value), ">= 2", _verdict(value, 2.0)))
    value = None
    if first and wide:
        label = f"engine/learned{_flavour(first)}"
        if label in first["variants"] and label in wide["variants"]:
            value = wide["variants"][label]["tok_s"] / first["variants"][label]["tok_s"]
    out.append(("5b. GPU engine batch 64 / batch 1 tok/s", _fmt(value), ">= 8", _verdict(value, 8.0)))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode", type=Path, help="bench/decode.py JSON (CPU, tiny shape, batches 1 and 16)")
    parser.add_argument("--serve", type=Path, help="bench/serve.py JSON")
    parser.add_argument("--gpu", type=Path, help="bench/decode.py JSON from bench/gpu.sh")
    args = parser.parse_args(argv)

    def read(path: Path | None) -> dict | None:
        return json.loads(path.read_text()) if path and path.exists() else None

    rows = check(read(args.decode), read(args.serve), read(args.gpu))
    print("| target | measured | required | verdict |")
    print("|---|---|---|---|")
    for target, measured, required, verdict in rows:
        print(f"| {target} | {measured} | {required} | {verdict} |")
    return rows


if __name__ == "__main__":
    main()
