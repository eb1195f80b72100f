"""The performance targets of BENCHMARKS.md (issue 12), checked against benchmark result files.

What it does: reads the JSON that bench/decode.py and bench/serve.py wrote
(and the lines bench/startup.sh printed) and prints one Markdown table row
per target: the measured value, the threshold, and met / not met (or
unmeasured when its file is missing). It measures nothing itself, so the
table always shows what the result files hold.

    python bench/targets.py --decode bench/results/decode-cpu.json --serve bench/results/serve-cpu.json \
        --serve-task bench/results/serve-cpu-task.json --startup bench/results/startup-cpu.txt
    python bench/targets.py --gpu bench/results/decode-gpu.json

Which engine variant counts: the compiled decode step when the file has it,
else the eager one; for the HTTP comparison, the offline variant with the
serving run's temperature mode and the server's compile setting.
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


def check(
    decode: dict | None, serve: dict | None, gpu: dict | None, serve_task: dict | None = None,
    startup: dict[str, float] | None = None,
) -> list[tuple[str, str, str, str]]:
    """(target, measured, required, verdict) per target. serve: the fixed workload (128 tokens
    ignoring EOS); serve_task: the bundled task's held-out problems, ending at EOS."""
    out: list[tuple[str, str, str, str]] = []

    # 1. HTTP at 16 clients against one-at-a-time generate(), both workloads
    for name, run in (("task", serve_task), ("fixed 128", serve)):
        value = run["summary"].get("c16_over_generate") if run else None
        out.append((f"1. HTTP 16 clients / one-at-a-time generate() tok/s, {name}", _fmt(value), ">= 6",
                    _verdict(value, 6.0)))

    # 2. HTTP at 16 clients against the offline engine at batch 16 (same 128 tokens ignoring EOS)
    row = _row(decode["rows"], 16) if decode else None
    value = None
    if serve and row:
        level = next((lv for lv in serve["levels"] if lv["concurrency"] == 16), None)
        mode = serve["settings"].get("temperature_mode", "learned")
        compiled = _server_compiled(serve)
        offline = row["variants"].get(f"engine/{mode}{'/compiled' if compiled else ''}")
        if level and offline and level["output_tokens_per_s"]:
            value = level["output_tokens_per_s"] / offline["tok_s"]
    out.append(("2. HTTP 16 clients / offline engine batch 16, tok/s", _fmt(value), ">= 0.85", _verdict(value, 0.85)))

    # 3. TTFT growth from 1 to 16 clients
    for name, run in (("task", serve_task), ("fixed 128", serve)):
        value = run["summary"].get("ttft_p50_c16_over_c1") if run else None
        out.append((f"3. p50 TTFT at 16 clients / at 1 client, {name}", _fmt(value), "< 3",
                    _verdict(value, 3.0, True)))

    # 4. the learned head's cost over fixed tau, batch 1 and 16
    for batch in (1, 16):
        row = _row(decode["rows"], batch) if decode else None
        value = None
        if row:
            value = row["ratios"].get(f"learned_over_fixed_time{_flavour(row).replace('/', '_')}")
        out.append((f"4. learned / fixed time, batch {batch}", _fmt(value), "<= 1.05", _verdict(value, 1.05, True)))

    # 5. start-up to ready with a warm compile cache (the cold start is reported beside it)
    warm = startup.get("warm") if startup else None
    cold = startup.get("cold") if startup else None
    measured = "-" if warm is None else f"{warm:.1f} s" + ("" if cold is None else f" (cold: {cold:.1f} s)")
    out.append(("5. start-up to ready, warm compile cache", measured, "< 30 s",
                "unmeasured" if warm is None else "met" if warm < 30 else "not met"))

    # 6. GPU (bench/gpu.sh): engine vs generate at batch 1, engine scaling to batch 64
    first = _row(gpu["rows"], 1) if gpu else None
    wide = _row(gpu["rows"], 64) if gpu else None
    value = first["ratios"].get(f"engine_learned{_flavour(first).replace('/', '_')}_over_generate") if first else None
    out.append(("6a. GPU engine / generate tok/s, batch 1", _fmt(value), ">= 2", _verdict(value, 2.0)))
    value = None
    if first and wide:
        label = f"engine/learned{_flavour(first)}"
        if label in first["variants"] and label in wide["variants"]:
            value = wide["variants"][label]["tok_s"] / first["variants"][label]["tok_s"]
    out.append(("6b. GPU engine batch 64 / batch 1 tok/s", _fmt(value), ">= 8", _verdict(value, 8.0)))
    return out


def _server_compiled(serve: dict) -> bool:
    """Whether the measured server compiled: its flag override, else the default (auto: on with a compiler)."""
    server = serve.get("server", {})
    if "compile" in server:
        return bool(server["compile"])
    override = str(server.get("overrides", {}).get("INTROLLM_COMPILE", "auto")).lower()
    return override not in ("false", "0", "off", "no")


def read_startup(text: str) -> dict[str, float]:
    """bench/startup.sh's lines ("cold: ready in 172.3 s") as {"cold": 172.3, ...}."""
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(": ready in ")
        if rest:
            found[name.strip()] = float(rest.split()[0])
    return found


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode", type=Path, help="bench/decode.py JSON (CPU, tiny shape, batches 1 and 16)")
    parser.add_argument("--serve", type=Path, help="bench/serve.py JSON, --workload fixed")
    parser.add_argument("--serve-task", type=Path, help="bench/serve.py JSON, --workload task")
    parser.add_argument("--startup", type=Path, help="what bench/startup.sh printed")
    parser.add_argument("--gpu", type=Path, help="bench/decode.py JSON from bench/gpu.sh")
    args = parser.parse_args(argv)

    def read(path: Path | None) -> dict | None:
        return json.loads(path.read_text()) if path and path.exists() else None

    startup = read_startup(args.startup.read_text()) if args.startup and args.startup.exists() else None
    rows = check(read(args.decode), read(args.serve), read(args.gpu), read(args.serve_task), startup)
    print("| target | measured | required | verdict |")
    print("|---|---|---|---|")
    for target, measured, required, verdict in rows:
        print(f"| {target} | {measured} | {required} | {verdict} |")
    return rows


if __name__ == "__main__":
    main()
