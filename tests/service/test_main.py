"""The console command in a real process: its flags and `--help`, start-up failures, and SIGTERM.

The child runs this worktree's code (PYTHONPATH is the repository root), not
whichever copy of the project is installed in the environment.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model import UnsupportedModelError, build_char_tokenizer
from service.__main__ import ENGINE_DIED, STARTUP_FAILURE
from service.engine.process import start_failure_line
from service.settings import Settings
from tests.model.broken_checkpoints import BROKEN_CHECKPOINTS
from tests.model.own_models import mamba, rwkv, save_with_head
from tests.ports import free_port
from tests.service.support import HTTP_TIMEOUT, read_sse, reaped, sse_json

LONG = 450
REPO_ROOT = Path(__file__).resolve().parents[2]
USAGE_ERROR = 2  # argparse's exit status for a bad command line


class _Lines:
    """The child's output, line by line, read by a thread so the pipe never fills."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        while True:
            line = self._queue.get(timeout=timeout)
            assert line is not None, f"process ended before {text!r}:\n{''.join(self.seen)}"
            self.seen.append(line)
            if text in line:
                return


def _child_env(**settings: str) -> dict[str, str]:
    """The environment of a child server: this worktree's code, one thread, no inherited INTROLLM_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INTROLLM_")}
    # compile off: the default compiles for minutes on this machine.
    env.update(PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", COLUMNS="1000", INTROLLM_COMPILE="false")
    env.update(settings)
    return env


def _serve(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
    )


def test_help_lists_every_setting_with_its_flag_environment_variable_and_default(tmp_path):
    env = _child_env(INTROLLM_CHECKPOINT=str(tmp_path / "no-such-checkpoint"), INTROLLM_API_KEY="sekrit-value")
    result = _run(["--help"], env, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout and "sekrit-value" not in result.stdout
    options = " ".join(result.stdout.split("options:", 1)[1].split())
    for name, field in Settings.model_fields.items():
        flag, variable = f"--{name.replace('_', '-')}", f"INTROLLM_{name.upper()}"
        found = re.search(rf"(?<![\w-]){flag}[ ,]", options)  # "--compile, --no-compile" for a bool
        assert found, f"no flag for {name}"
        start = found.start()
        end = options.index(variable, start)
        described = options[start:end]
        assert f"(default: {field.default})" in described, f"{name}: {described}"
        assert field.description, f"{name} has no description"
        assert " ".join(field.description.split()) in described, f"{name}: {described}"


def test_flags_win_over_environment(checkpoint_dir, tmp_path):
    env_port, flag_port = free_port(), free_port()
    env = _child_env(
        INTROLLM_PORT=str(env_port), INTROLLM_CHECKPOINT=str(tmp_path / "no-such-checkpoint"),
        INTROLLM_DEVICE="cpu", INTROLLM_TORCH_THREADS="1", INTROLLM_WARM_UP="true", INTROLLM_LOG_LEVEL="info",
    )
    args = ["--port", str(flag_port), "--checkpoint", str(checkpoint_dir), "--no-warm-up"]
    with reaped(_serve(args, env, tmp_path)) as process:
        lines = _Lines(process.stdout)
        lines.wait_for("Application startup complete")
        response = httpx.get(f"http://127.0.0.1:{flag_port}/health/ready", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
        info = httpx.get(f"http://127.0.0.1:{flag_port}/info", timeout=HTTP_TIMEOUT).json()
        assert checkpoint_dir.name in str(info)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("args", "environment", "named"),
    [
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--port", "abc"], {}, "--port"),
        (["--max-new-tokens", "8", "--default-max-new-tokens", "9"], {}, "default_max_new_tokens"),
        ([], {"INTROLLM_PORT": "abc"}, "INTROLLM_PORT"),
        (["--log-level", "loud"], {}, "--log-level"),
    ],
    ids=["unknown-flag", "flag-value-not-an-int", "inconsistent-flags", "environment-value-not-an-int",
         "unknown-log-level"],
)
def test_bad_command_line_exits_2_with_one_line(tmp_path, args, environment, named):
    result = _run(args, _child_env(**environment), tmp_path)
    assert result.returncode == USAGE_ERROR, result.stdout
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "error" in lines[0] and named in lines[0]


# Weights, tokenizer and manifest, one process each (about 10 s: torch and
# transformers are imported); tests/model/test_checkpoint.py checks every case
# of BROKEN_CHECKPOINTS in-process, and every CheckpointError takes the same
# path through main().
IN_A_PROCESS = {"lm-weights-truncated", "tokenizer-garbage", "manifest-not-json"}


@pytest.mark.parametrize(("break_checkpoint", "named_file"),
                         [case[1:] for case in BROKEN_CHECKPOINTS if case[0] in IN_A_PROCESS],
                         ids=[case[0] for case in BROKEN_CHECKPOINTS if case[0] in IN_A_PROCESS])
def test_broken_checkpoint_exits_3_with_one_error_line_naming_the_file(
    checkpoint_dir, tmp_path, break_checkpoint, named_file
):
    broken = shutil.copytree(checkpoint_dir, tmp_path / "broken")
    break_checkpoint(broken)
    env = _child_env(
        INTROLLM_CHECKPOINT=str(broken), INTROLLM_PORT=str(free_port()), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_WARM_UP="false",
    )
    result = _run([], env, tmp_path)
    assert result.returncode == STARTUP_FAILURE, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    errors = [line for line in result.stdout.splitlines() if re.search(r"\bERROR\b", line)]
    assert len(errors) == 1, result.stdout
    assert named_file in errors[0]


@pytest.mark.parametrize(
    ("build", "named"),
    [(mamba, "mamba layer 0 is 'linear_attention'"), (rwkv, "rwkv keeps a recurrent state")],
    # Mamba's config names its layers: the API process refuses it before the engine loads a weight.
    # RWKV's names none: the engine process refuses the loaded model, and the API process says why.
    ids=["refused-from-the-config", "refused-by-the-engine-process"],
)
def test_an_unservable_model_exits_3_with_one_line_naming_why(tmp_path, build, named):
    tokenizer = build_char_tokenizer()
    checkpoint = save_with_head(tmp_path / "unservable", build(tokenizer), tokenizer)
    env = _child_env(
        INTROLLM_CHECKPOINT=str(checkpoint), INTROLLM_PORT=str(free_port()), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_WARM_UP="false", INTROLLM_LOG_LEVEL="warning",
    )
    result = subprocess.run([sys.executable, "-m", "service"], env=env, cwd=tmp_path, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == STARTUP_FAILURE, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stderr
    assert re.search(r"\bERROR\b", lines[0]) and named in lines[0]


def test_an_unexpected_engine_start_failure_is_told_in_one_line_with_its_type():
    compiler_error = RuntimeError("C++ compile error\n\nfatal error: Python.h: No such file\n  compilation terminated.")
    assert start_failure_line(compiler_error) == "RuntimeError: C++ compile error"
    assert start_failure_line(MemoryError()) == "MemoryError"
    assert start_failure_line(UnsupportedModelError("mamba layer 0 is 'linear_attention': ...")).startswith("mamba")


def test_sigterm_to_both_processes_lets_in_flight_requests_finish_then_exits_0(checkpoint_dir, tmp_path):
    port = free_port()
    env = _child_env(
        INTROLLM_CHECKPOINT=str(checkpoint_dir), INTROLLM_PORT=str(port), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_DRAIN_GRACE_S="60", INTROLLM_LOG_LEVEL="info",
    )
    with reaped(_serve([], env, tmp_path)) as process:
        lines = _Lines(process.stdout)
        lines.wait_for("engine process")
        engine_pid = int(re.search(r"engine process (\d+)", lines.seen[-1]).group(1))
        lines.wait_for("Application startup complete")
        body = {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
            with client.stream("POST", "/v1/generate", json=body) as response:
                events = response.iter_lines()
                assert next(line for line in events if line.startswith("data:"))
                # As a supervisor that signals every process of the container does: the engine
                # ignores it and keeps decoding; the API process drains, then stops it.
                os.kill(engine_pid, signal.SIGTERM)
                process.send_signal(signal.SIGTERM)
                lines.wait_for("draining")
                payloads = sse_json(read_sse(events))
        assert payloads[-1]["finish_reason"] == "length"
        assert payloads[-1]["usage"]["completion_tokens"] == LONG
        assert process.wait(timeout=60) == 0
        lines.wait_for("drain finished")
        lines.wait_for(f"engine process {engine_pid} stopped, exit code 0")  # a clean end, no abort at teardown


@contextlib.contextmanager
def _started_server(checkpoint_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, _Lines, int, int]]:
    """The console command on a free port, up and serving: (process, its output, port, engine pid)."""
    port = free_port()
    env = _child_env(
        INTROLLM_CHECKPOINT=str(checkpoint_dir), INTROLLM_PORT=str(port), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_LOG_LEVEL="info",
    )
    with reaped(_serve([], env, tmp_path)) as process:
        lines = _Lines(process.stdout)
        lines.wait_for("engine process")
        engine_pid = int(re.search(r"engine process (\d+)", lines.seen[-1]).group(1))
        lines.wait_for("Application startup complete")
        yield process, lines, port, engine_pid


def test_a_killed_engine_process_makes_the_server_exit_4(checkpoint_dir, tmp_path):
    """The supervisor's view (what fails for requests in flight: test_app.py, with the engine paused)."""
    with _started_server(checkpoint_dir, tmp_path) as (process, lines, _, engine_pid):
        os.kill(engine_pid, signal.SIGKILL)
        lines.wait_for("exiting with status 4")
        assert process.wait(timeout=60) == ENGINE_DIED
    assert any("engine process died (exit code -9)" in line for line in lines.seen), "".join(lines.seen)


def _broken_compiler(folder: Path) -> Path:
    """A C++ compiler that is found on PATH but cannot build anything, as on a machine without the
    Python headers: inductor fails the moment it builds its first kernel."""
    compiler = folder / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: Python.h: No such file or directory' >&2\nexit 1\n")
    compiler.chmod(0o755)
    return compiler


def test_compile_auto_falls_back_to_eager_with_one_line_when_compiling_fails(checkpoint_dir, tmp_path):
    port = free_port()
    env = _child_env(
        INTROLLM_CHECKPOINT=str(checkpoint_dir), INTROLLM_PORT=str(port), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_LOG_LEVEL="info", INTROLLM_COMPILE="auto",
        CXX=str(_broken_compiler(tmp_path)), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor-cache"),
    )
    with reaped(_serve([], env, tmp_path)) as process:
        lines = _Lines(process.stdout)
        lines.wait_for("Application startup complete")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
            assert client.get("/health/ready").status_code == 200
            reply = client.post("/v1/generate", json={"prompt": "1 2>3\n", "max_new_tokens": 5, "ignore_eos": True})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    fallback = [line for line in lines.seen if "compiling failed at warm-up" in line]
    assert len(fallback) == 1, "".join(lines.seen)
    assert "serving without torch.compile" in fallback[0] and "Traceback" not in "".join(lines.seen)


def test_compile_true_still_fails_loudly_when_compiling_fails(checkpoint_dir, tmp_path):
    env = _child_env(
        INTROLLM_CHECKPOINT=str(checkpoint_dir), INTROLLM_PORT=str(free_port()), INTROLLM_DEVICE="cpu",
        INTROLLM_TORCH_THREADS="1", INTROLLM_COMPILE="true",
        CXX=str(_broken_compiler(tmp_path)), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor-cache"),
    )
    with reaped(_serve([], env, tmp_path)) as process:
        assert process.wait(timeout=240) != 0
        output = process.stdout.read()
    assert "compiling failed at warm-up" not in output


def _proc_status_kib(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


API_PEAK_RSS_BOUND_MIB = 150  # issue 21's target; measured about 67 MiB (README), torch alone maps more than this


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc")
def test_the_api_process_never_loads_torch_and_stays_under_150_mib(checkpoint_dir, tmp_path):
    """From outside, as an operator would see it: the API process's memory maps hold no libtorch
    (the engine process's do) and its peak resident memory stays small after serving requests."""
    with _started_server(checkpoint_dir, tmp_path) as (process, _, port, engine_pid):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
            for n in (1, 3):
                reply = client.post("/v1/generate", json={"prompt": "1 2>3\n", "max_new_tokens": 16, "n": n})
                assert reply.status_code == 200, reply.text
            chat = {"model": "tiny-test", "messages": [{"role": "user", "content": "1 2>3"}], "max_tokens": 8,
                    "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=chat) as response:
                assert response.status_code == 200 and sse_json(read_sse(response.iter_lines()))
        api_maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtorch" in Path(f"/proc/{engine_pid}/maps").read_text()  # the check can see torch
        assert "libtorch" not in api_maps and "/torch/" not in api_maps
        peak_mib = _proc_status_kib(process.pid, "VmHWM") / 1024
        assert peak_mib < API_PEAK_RSS_BOUND_MIB, f"API process peak RSS {peak_mib:.0f} MiB"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
