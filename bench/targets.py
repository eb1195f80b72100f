"""The performance targets of BENCHMARKS.md (issue 21), checked against benchmark result files.

What it does: reads the JSON that bench/decode.py and bench/serve.py wrote
(and the lines bench/startup.sh printed) and prints one Markdown table row
per target: the measured value, the threshold, and met / not met (or
unmeasured when its file is missing). It measures nothing itself, so the
table always shows what the result files hold.

    python bench/targets.py --decode bench/results/decode-cpu-[0-9]*.json \
        --serve bench/results/serve-cpu-[0-9]*.json --serve-task bench/results/serve-cpu-task-[0-9]*.json \
        --startup bench/results/startup-cpu-[0-9]*.txt
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


def _over_runs(
    values: list[float | None], threshold: float, at_most: bool = False, unit: str = ""
) -> tuple[str, str]:
    """(measured, verdict) over every run: the spread when there are several, met only when met in all."""
    measured = [value for value in values if value is not None]
    if not measured:
        return "-", "unmeasured"
    text = _fmt(measured[0]) + unit if len(measured) == 1 else (
        f"{_fmt(min(measured))} to {_fmt(max(measured))}{unit} ({len(measured)} runs)")
    verdicts = {_verdict(value, threshold, at_most) for value in measured}
    return text, "met" if verdicts == {"met"} else "not met"


def _as_runs(runs: dict | list[dict] | None) -> list[dict]:
    if runs is None:
        return []
    return [runs] if isinstance(runs, dict) else [run for run in runs if run]


def _level(run: dict, concurrency: int) -> dict | None:
    return next((level for level in run.get("levels", []) if level["concurrency"] == concurrency), None)


def over_fastest_generate(run: dict) -> float | None:
    """This server's output tok/s at 16 clients over generate() at its best: the faster of its runs before and
    after the servers (bench/serve.py's summary ratio from 2026-12-04 on; files before pooled the two)."""
    c16 = next((level for level in run.get("levels", []) if level["concurrency"] == 16), None)
    halves = [half["output_tokens_per_s"] for half in run.get("baseline_halves") or [] if half["output_tokens_per_s"]]
    if c16 is None or not halves:
        return run["summary"].get("c16_over_generate")
    return round(c16["output_tokens_per_s"] / max(halves), 3)


def peer_ratio(run: dict, concurrency: int) -> float | None:
    """This server's output tok/s over the peer's at its best (the faster of its variants) at `concurrency`."""
    ours = _level(run, concurrency)
    theirs = [level["output_tokens_per_s"] for levels in run.get("peers", {}).values() for level in levels
              if level["concurrency"] == concurrency and level["output_tokens_per_s"]]
    if not ours or not ours["output_tokens_per_s"] or not theirs:
        return None
    return ours["output_tokens_per_s"] / max(theirs)


def round_ratios(runs: list[dict], concurrency: int) -> list[float]:
    """Every round's ratio over the peer's best variant in that round (bench/serve.py --rounds), all runs."""
    out = []
    for run in runs:
        by_variant = run.get("peer_rounds", {}).get("ratios", {})
        per_variant = [by_variant[v].get(str(concurrency)) or [] for v in by_variant]
        out += [min(values) for values in zip(*per_variant, strict=True) if None not in values] if per_variant else []
    return out


def check(
    decode: dict | list[dict] | None, serve: dict | list[dict] | None, gpu: dict | None,
    serve_task: dict | list[dict] | None = None, startup: dict[str, float] | list[dict[str, float]] | None = None,
) -> list[tuple[str, str, str, str]]:
    """(target, measured, required, verdict) per target (issue 21's). serve: the fixed workload (128
    tokens ignoring EOS); serve_task: the bundled task's held-out problems, ending at EOS. Each of
    decode, serve, serve_task and startup may hold several runs: the spread is shown and a target is
    met only when every run meets it (target 3: every pair of a serving and an offline run)."""
    out: list[tuple[str, str, str, str]] = []
    workloads = (("task", _as_runs(serve_task), 6.0), ("fixed 128", _as_runs(serve), 10.0))

    # 1. HTTP at 16 clients against generate() one request at a time at its fastest thread count and dtype
    for name, runs, required in workloads:
        measured, verdict = _over_runs([over_fastest_generate(run) for run in runs], required)
        out.append((f"1. HTTP 16 clients / tuned generate() tok/s, {name}", measured, f">= {required:g}", verdict))

    # 2. HTTP against the peer, transformers serve --continuous-batching, at its best variant
    for name, runs, _ in workloads:
        for concurrency in (16, 64):
            measured, verdict = _over_runs([peer_ratio(run, concurrency) for run in runs], 2.0)
            rounds = round_ratios(runs, concurrency)
            if rounds:  # each run's figure pools its rounds; the rounds' own spread beside it
                measured += f"; single rounds {_fmt(min(rounds))} to {_fmt(max(rounds))} ({len(rounds)})"
            out.append((f"2. HTTP / peer tok/s, {name}, {concurrency} clients", measured, ">= 2", verdict))

    # 3. HTTP at 16 clients against the offline engine at batch 16 (same 128 tokens ignoring EOS)
    decodes = _as_runs(decode)
    values = []
    for run in _as_runs(serve):
        level = _level(run, 16)
        mode = run["settings"].get("temperature_mode", "learned")
        for offline_run in decodes:
            row = _row(offline_run["rows"], 16)
            offline = row and row["variants"].get(f"engine/{mode}{'/compiled' if _server_compiled(run) else ''}")
            values.append(level["output_tokens_per_s"] / offline["tok_s"]
                          if level and offline and level["output_tokens_per_s"] else None)
    measured, verdict = _over_runs(values, 0.85)
    out.append(("3. HTTP 16 clients / offline engine batch 16, tok/s", measured, ">= 0.85", verdict))

    # 4. TTFT growth from 1 to 16 clients
    for name, runs, _ in workloads:
        measured, verdict = _over_runs([run["summary"].get("ttft_p50_c16_over_c1") for run in runs], 2.0, True)
        out.append((f"4. p50 TTFT at 16 clients / at 1 client, {name}", measured, "< 2", verdict))

    # 5. the learned head's cost over fixed tau, batch 1 and 16
    for batch in (1, 16):
        rows = [_row(run["rows"], batch) for run in decodes]
        values = [row["ratios"].get(f"learned_over_fixed_time{_flavour(row).replace('/', '_')}") if row else None
                  for row in rows]
        measured, verdict = _over_runs(values, 1.05, True)
        out.append((f"5. learned / fixed time, batch {batch}", measured, "<= 1.05", verdict))

    # 6. start-up to ready: warm compile cache, then cold
    starts = _as_runs(startup)
    for kind, limit in (("warm", 15.0), ("cold", 90.0)):
        values = [run.get(kind) for run in starts]
        measured, verdict = _over_runs(values, limit - 1e-9, True, unit=" s")  # strictly under the limit
        out.append((f"6. start-up to ready, {kind} compile cache", measured, f"< {limit:g} s", verdict))

    # 7. the API process's memory (the engine process holds the model)
    values = [run.get("server", {}).get("api_peak_rss_mib") for run in _as_runs(serve) + _as_runs(serve_task)]
    measured, verdict = _over_runs([None if v is None else v * 1.048576 for v in values], 150.0, True)
    out.append(("7. API process peak RSS, MB", measured, "< 150", verdict))

    # 8. GPU (bench/gpu.sh): engine vs generate at batch 1, engine scaling to batch 64
    first = _row(gpu["rows"], 1) if gpu else None
    wide = _row(gpu["rows"], 64) if gpu else None
    value = first["ratios"].get(f"engine_learned{_flavour(first).replace('/', '_')}_over_generate") if first else None
    out.append(("8a. GPU engine / generate tok/s, batch 1", _fmt(value), ">= 2", _verdict(value, 2.0)))
    value = None
    if first and wide:
        label = f"engine/learned{_flavour(first)}"
        if label in first["variants"] and label in wide["variants"]:
            value = wide["variants"][label]["tok_s"] / first["variants"][label]["tok_s"]
    out.append(("8b. GPU engine batch 64 / batch 1 tok/s", _fmt(value), ">= 8", _verdict(value, 8.0)))
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
    parser.add_argument("--decode", type=Path, nargs="+", default=[],
                        help="bench/decode.py JSON (CPU, tiny shape, batches 1 and 16), one per run")
    parser.add_argument("--serve", type=Path, nargs="+", default=[],
                        help="bench/serve.py JSON, --workload fixed (one per run)")
    parser.add_argument("--serve-task", type=Path, nargs="+", default=[],
                        help="bench/serve.py JSON, --workload task (one per run)")
    parser.add_argument("--startup", type=Path, nargs="+", default=[], help="what bench/startup.sh printed, per run")
    parser.add_argument("--gpu", type=Path, help="bench/decode.py JSON from bench/gpu.sh")
    args = parser.parse_args(argv)

    def read(path: Path | None) -> dict | None:
        return json.loads(path.read_text()) if path and path.exists() else None

    startup = [read_startup(path.read_text()) for path in args.startup if path.exists()]
    serve = [run for run in map(read, args.serve) if run]
    serve_task = [run for run in map(read, args.serve_task) if run]
    decode = [run for run in map(read, args.decode) if run]
    rows = check(decode, serve, read(args.gpu), serve_task, startup)
    print("| target | measured | required | verdict |")
    print("|---|---|---|---|")
    for target, measured, required, verdict in rows:
        print(f"| {target} | {measured} | {required} | {verdict} |")
    return rows


if __name__ == "__main__":
    main()
