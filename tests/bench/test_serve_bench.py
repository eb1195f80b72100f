"""bench/serve.py end to end in its smoke mode: it runs, and its JSON report is well formed.

Never asserts a speed: the machine may be shared, so only shapes and signs are checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "serve.py"

LEVEL_FIELDS = (
    "name", "concurrency", "requests", "completed", "failures", "output_tokens", "wall_s",
    "request_per_s", "output_tokens_per_s",
    "ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms",
    "itl_mean_ms", "itl_p50_ms", "itl_p99_ms",
    "e2e_mean_ms", "e2e_p50_ms", "e2e_p99_ms",
)
LATENCIES = [f"{kind}_{stat}_ms" for kind in ("ttft", "itl", "e2e") for stat in ("mean", "p50", "p99")]

pytestmark = pytest.mark.slow


def _bench_serve():
    """bench/serve.py as a module (it is a script, not part of a package)."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import serve as bench_serve
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    return bench_serve


def _non_negative_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def test_serve_benchmark_quick_run_writes_a_well_formed_report(tmp_path):
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tiny-random", "--threads", "1", "--compile", "false",
         "--peer", "eager", "--peer-concurrency", "4", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    report = json.loads(out.read_text())

    for key in ("checkpoint", "settings", "machine", "server", "model", "levels", "baseline", "summary", "records"):
        assert key in report, key
    # The servers run at a lower priority than this client, so that they never starve it of CPU.
    assert report["settings"]["server_nice"] == 10
    assert report["server"]["nice"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)

    levels = report["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        for name in LEVEL_FIELDS:
            assert name in level, (level["name"], name)
        assert level["failures"] == 0, level
        assert level["requests"] >= 8 * level["concurrency"]
        assert level["completed"] == level["requests"]
        # The first wave: one request per client, all sent at once, its TTFT reported apart.
        records = report["records"][level["name"]]
        assert sum(record["first_wave"] for record in records) == level["concurrency"]
        assert _non_negative_number(level["ttft_first_wave_p50_ms"])
        assert level["output_tokens"] == level["requests"] * report["settings"]["new_tokens"]
        for name in ("request_per_s", "output_tokens_per_s", *LATENCIES):
            assert _non_negative_number(level[name]), (level["name"], name, level[name])
        assert level["ttft_p50_ms"] <= level["ttft_p99_ms"]
        assert level["itl_p50_ms"] <= level["itl_p99_ms"]
        # The server's own span of the same requests (its histograms) lies inside what the client measures.
        assert 0 < level["server_queue_mean_ms"] < level["server_ttft_mean_ms"] < level["ttft_mean_ms"], level

    baseline = report["baseline"]
    assert baseline is not None
    for name in LEVEL_FIELDS:
        assert name in baseline, name
    assert baseline["failures"] == 0
    # Run before the server and again after it: the row is both runs together.
    halves = report["baseline_halves"]
    assert [half["name"] for half in halves] == ["HF generate() before", "HF generate() after"]
    assert baseline["requests"] == sum(half["requests"] for half in halves)
    assert baseline["output_tokens"] == sum(half["output_tokens"] for half in halves)
    for name in ("request_per_s", "output_tokens_per_s", "ttft_p50_ms", "e2e_p50_ms"):
        assert _non_negative_number(baseline[name]), (name, baseline[name])

    # The peer (transformers serve --continuous-batching), same prompts and lengths, at the level asked for, in
    # the server's dtype and in float32 (one variant where they are the same): the peer at its best.
    bench_serve = _bench_serve()
    dtypes = [bench_serve.dtype_name(d) for d in bench_serve.contender_dtypes(report["machine"]["device"])]
    assert sorted(report["peers"]) == sorted(f"eager {dtype}" for dtype in dtypes)
    for variant, command in report["peer_command"].items():
        assert command[command.index("--dtype") + 1] == variant.split()[1]
    peer_levels = report["peers"][f"eager {dtypes[0]}"]
    assert [level["concurrency"] for level in peer_levels] == [4]
    for level in peer_levels:
        assert level["failures"] == 0, level
        assert level["output_tokens"] == level["requests"] * report["settings"]["new_tokens"]
        assert _non_negative_number(level["output_tokens_per_s"]) and level["output_tokens_per_s"] > 0
        assert level["server_ttft_mean_ms"] is None  # the peer keeps no such histogram
    assert "--continuous-batching" in report["peer_command"][f"eager {dtypes[0]}"]
    server_c4 = next(level for level in levels if level["concurrency"] == 4)
    assert report["summary"]["over_peer"][f"eager {dtypes[0]}"]["4"] == round(
        server_c4["output_tokens_per_s"] / peer_levels[0]["output_tokens_per_s"], 3)

    # bench/tables.py renders the report as BENCHMARKS.md's table: a row per level, peer level and baseline.
    printed = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "tables.py"), str(out)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| ") and not line.startswith("| server")]
    assert [row.split("|")[1].strip() for row in rows[:3]] == ["this server", "this server", f"peer, eager {dtypes[0]}"]
    # --threads fixes generate()'s threads too, so nothing is probed: it runs in the server's dtype.
    assert report["machine"]["baseline_dtype"] == dtypes[0]
    assert any(row.startswith(f"| generate(), 1 thread {dtypes[0]} | 1 at a time |") for row in rows)

    # No level at 16 clients in quick mode: the keys are there, the values are None.
    assert set(report["summary"]) == {"c16_over_generate", "ttft_p50_c16_over_c1", "server_ttft_mean_c16_over_c1",
                                      "over_peer"}
    assert report["summary"]["c16_over_generate"] is None
    assert report["summary"]["ttft_p50_c16_over_c1"] is None
    assert report["summary"]["server_ttft_mean_c16_over_c1"] is None

    server, model, machine = report["server"], report["model"], report["machine"]
    # Started as `make serve` starts it, with only what the flags asked for on top.
    assert server["overrides"] == {"INTROLLM_TORCH_THREADS": "1", "INTROLLM_COMPILE": "false"}
    default = Settings.model_fields["max_running_requests"].default
    assert server["info"]["limits"]["max_running_requests"] == default  # the server's default, not the script's
    assert _non_negative_number(server["peak_rss_mib"]) and server["peak_rss_mib"] > 0
    assert 0 < server["api_peak_rss_mib"] < server["peak_rss_mib"]  # the API process is one of two
    # The smoke checkpoint: 2 layers, 2 KV heads of 64 / 4 = 16 dims, in the server's dtype (bfloat16 on CUDA and
    # on a CPU with bfloat16 instructions, else float32), as the server reports it.
    assert server["info"]["dtype"] == dtypes[0]
    assert model["bytes_per_element"] == (2 if dtypes[0] == "bfloat16" else 4)
    assert model["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * model["bytes_per_element"]
    assert isinstance(model["parameters"], int) and model["parameters"] > 0
    assert machine["threads"] == 1
    assert len(machine["load_avg_before"]) == 3 and len(machine["load_avg_after"]) == 3
    for key in ("torch", "device"):
        assert machine[key]


def test_baseline_runs_at_the_fastest_thread_count_and_dtype_it_probed(tmp_path):
    bench_serve = _bench_serve()
    checkpoint = bench_serve._tiny_random_checkpoint(tmp_path)
    prompts = bench_serve.fixed_prompts(2, seed=0)
    before = torch.get_num_threads()
    try:
        threads, dtype, probes = bench_serve.fastest_generate(
            checkpoint, prompts, 4, 0, "cpu", stop_at_eos=False, threads=[1, 2], dtypes=[torch.float32, torch.bfloat16])
        assert [(probe["threads"], probe["dtype"]) for probe in probes] == [
            (1, "float32"), (2, "float32"), (1, "bfloat16"), (2, "bfloat16")]
        assert all(probe["output_tokens"] == 2 * 4 for probe in probes)
        fastest = max(probes, key=lambda probe: probe["output_tokens_per_s"])
        assert (threads, bench_serve.dtype_name(dtype)) == (fastest["threads"], fastest["dtype"])
        assert torch.get_num_threads() == threads  # the baseline then runs at that count
    finally:
        torch.set_num_threads(before)


def test_with_rounds_the_servers_run_at_once_and_take_turns_level_by_level(tmp_path):
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tiny-random", "--threads", "1", "--compile", "false",
         "--no-baseline", "--peer", "eager", "--peer-dtypes", "float32", "--peer-concurrency", "4", "--rounds", "2",
         "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    report = json.loads(out.read_text())
    per_round = 8 * 4  # at least eight requests per client in each round
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]  # quick: 1 client alone, then turns
    ours, (peer,) = report["levels"][1], report["peers"]["eager float32"]
    for level in (ours, peer):  # both rounds' requests, every one completed
        assert level["concurrency"] == 4 and level["requests"] == level["completed"] == 2 * per_round
        assert level["output_tokens"] == 2 * per_round * report["settings"]["new_tokens"]
    assert 0 < ours["server_queue_mean_ms"] < ours["server_ttft_mean_ms"]  # its own span, peer turns aside
    rounds = report["peer_rounds"]
    assert rounds["rounds"] == 2 and rounds["side_by_side"] is True
    ratios = rounds["ratios"]["eager float32"]["4"]
    assert len(ratios) == 2 and all(_non_negative_number(r) and r > 0 for r in ratios)
    # The pooled ratio (both rounds' tokens over both rounds' walls) lies between the rounds' own.
    pooled = report["summary"]["over_peer"]["eager float32"]["4"]
    assert min(ratios) - 1e-3 <= pooled <= max(ratios) + 1e-3
    assert report["peer_ready_s"]["eager float32"] > 0
    assert "(rounds: [" in completed.stdout
