"""The console command in a real process: SIGTERM drains in-flight requests, then exits 0."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import httpx

from tests.service.support import HTTP_TIMEOUT, read_sse, sse_json

LONG = 450


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(checkpoint_dir, tmp_path):
    port = _free_port()
    env = {
        **os.environ, "INTROLLM_CHECKPOINT": str(checkpoint_dir), "INTROLLM_PORT": str(port),
        "INTROLLM_DEVICE": "cpu", "INTROLLM_TORCH_THREADS": "1", "INTROLLM_DRAIN_GRACE_S": "60",
        "INTROLLM_LOG_LEVEL": "info", "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        lines = _Lines(process.stdout)
        lines.wait_for("Application startup complete")
        body = {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
            with client.stream("POST", "/v1/generate", json=body) as response:
                events = response.iter_lines()
                assert next(line for line in events if line.startswith("data:"))
                process.send_signal(signal.SIGTERM)
                lines.wait_for("draining")
                payloads = sse_json(read_sse(events))
        assert payloads[-1]["finish_reason"] == "length"
        assert payloads[-1]["usage"]["completion_tokens"] == LONG
        assert process.wait(timeout=60) == 0
        lines.wait_for("drain finished")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
