"""Log lines of the console command in a real process: request ids in ours and
uvicorn's lines, text and JSON formats, and no API key anywhere in the output.

Each test starts `python -m service` with keys configured, sends right and
wrong keys (also where they do not belong: the X-Request-Id header, the
body), stops it with SIGTERM and reads everything it wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from service.settings import REPO_ROOT
from tests.ports import free_port
from tests.service.support import HTTP_TIMEOUT, read_sse, reaped, sse_json

KEYS = ["log-test-key-from-list-1", "log-test-key-from-list-2"]
FILE_KEY = "log-test-key-from-file"
WRONG_KEY = "log-test-wrong-key-zzz"


def _serve_and_collect(checkpoint_dir: Path, tmp_path: Path, log_format: str,
                       exercise: Callable[[httpx.Client], None]) -> str:
    """Start the server, run `exercise` against it, stop it; its whole output."""
    port = free_port()
    key_file = tmp_path / "keys"
    key_file.write_text(f"# keys\n{FILE_KEY}\n")
    env = {
        **os.environ, "INTROLLM_CHECKPOINT": str(checkpoint_dir), "INTROLLM_PORT": str(port),
        "INTROLLM_DEVICE": "cpu", "INTROLLM_TORCH_THREADS": "1", "INTROLLM_DRAIN_GRACE_S": "5",
        "INTROLLM_LOG_LEVEL": "debug", "INTROLLM_LOG_FORMAT": log_format, "OMP_NUM_THREADS": "1",
        "INTROLLM_API_KEYS": ",".join(KEYS), "INTROLLM_API_KEY_FILE": str(key_file),
        "INTROLLM_MAX_BODY_BYTES": "4096", "INTROLLM_COMPILE": "false",
        # This worktree's code, whatever the working directory.
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    output = tmp_path / "output.log"
    with output.open("w") as sink:
        child = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=tmp_path, text=True,
                                 stdout=sink, stderr=subprocess.STDOUT)
        with reaped(child) as process:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT) as client:
                _wait_ready(client, process, output)
                exercise(client)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    return output.read_text()


def _wait_ready(client: httpx.Client, process: subprocess.Popen, output: Path) -> None:
    # The process binds only after loading, so retry connecting until then (or until it dies).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, output.read_text()
        try:
            if client.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready:\n{output.read_text()}")


def _exercise_keys_everywhere(client: httpx.Client) -> dict[str, httpx.Response]:
    """Right and wrong keys in the header, in X-Request-Id and in bodies; returns the responses by name."""
    responses = {}
    # ignore_eos: an unseeded draw may end at EOS after one token; the log must then say 3.
    body = {"prompt": "1 2>3\n", "max_new_tokens": 3, "ignore_eos": True}
    for i, key in enumerate([*KEYS, FILE_KEY]):
        responses[f"ok-{i}"] = client.post("/v1/generate", json=body, headers={
            "Authorization": f"Bearer {key}", "X-Request-Id": f"trace-ok-{i}"})
    with client.stream("POST", "/v1/generate", json={**body, "stream": True},
                       headers={"Authorization": f"Bearer {KEYS[0]}", "X-Request-Id": "trace-stream"}) as stream:
        responses["stream"] = stream
        sse_json(read_sse(stream.iter_lines()))
    responses["completion"] = client.post(
        "/v1/completions", json={"model": "tiny-test", "prompt": "a", "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEYS[1]}", "X-Request-Id": "trace-cmpl"})
    responses["wrong"] = client.post("/v1/generate", json=body, headers={
        "Authorization": f"Bearer {WRONG_KEY}", "X-Request-Id": "trace-wrong"})
    responses["basic"] = client.post("/v1/generate", json=body, headers={"Authorization": f"Basic {KEYS[1]}"})
    responses["key-as-id"] = client.post("/v1/generate", json=body, headers={
        "Authorization": f"Bearer {KEYS[0]}", "X-Request-Id": KEYS[1]})
    responses["key-in-prompt"] = client.post("/v1/generate", json={**body, "prompt": FILE_KEY},
                                             headers={"Authorization": f"Bearer {KEYS[0]}"})
    responses["key-as-model"] = client.post("/v1/completions", json={"model": KEYS[1], "prompt": "a"},
                                            headers={"Authorization": f"Bearer {KEYS[0]}"})
    responses["key-in-bad-field"] = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": KEYS[1]},
                                                headers={"Authorization": f"Bearer {KEYS[0]}"})
    responses["too-large"] = client.post("/v1/generate", content=json.dumps({"prompt": FILE_KEY * 300}),
                                         headers={"Authorization": f"Bearer {KEYS[0]}",
                                                  "content-type": "application/json"})
    responses["info"] = client.get("/info")
    return responses


def _assert_no_key_leaked(output: str, responses: dict[str, httpx.Response]) -> None:
    for secret in [*KEYS, FILE_KEY, WRONG_KEY]:
        assert secret not in output, secret
        for name, response in responses.items():
            assert secret not in str(response.headers), name
            if name != "stream":  # read line by line above; it held tokens only
                assert secret not in response.text, name


def test_json_log_lines_are_json_carry_request_ids_and_never_a_key(checkpoint_dir, tmp_path):
    responses: dict[str, httpx.Response] = {}
    output = _serve_and_collect(checkpoint_dir, tmp_path, "json",
                                lambda client: responses.update(_exercise_keys_everywhere(client)))
    records = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    loggers = {record["logger"] for record in records}
    assert {"uvicorn.error", "uvicorn.access", "service.api.app", "service.api.routes"} <= loggers

    def lines_of(request_id: str) -> list[dict]:
        return [record for record in records if record.get("request_id") == request_id]

    for i in range(3):
        assert responses[f"ok-{i}"].status_code == 200
        assert responses[f"ok-{i}"].headers["x-request-id"] == f"trace-ok-{i}"
        own = lines_of(f"trace-ok-{i}")
        assert {record["logger"] for record in own} == {"service.api.routes", "uvicorn.access"}, own
        finished = next(record for record in own if record["logger"] == "service.api.routes")["message"]
        assert f"request {responses[f'ok-{i}'].json()['id']} finished: status 200" in finished
        assert responses[f"ok-{i}"].json()["usage"]["completion_tokens"] == 3
        assert "completion_tokens 3" in finished and "mean tau" in finished
    completion_id = responses["completion"].json()["id"]
    assert completion_id.startswith("cmpl-")
    assert any(r["message"].startswith(f"request {completion_id} finished") for r in lines_of("trace-cmpl"))
    stream_lines = lines_of("trace-stream")
    assert any(r["message"].startswith("stream gen-") and "finished" in r["message"] for r in stream_lines)
    assert responses["wrong"].status_code == 401
    assert any("401 unauthorized" in r["message"] for r in lines_of("trace-wrong"))
    assert responses["key-as-id"].status_code == 200 and responses["key-as-id"].headers["x-request-id"] != KEYS[1]
    assert responses["key-as-model"].status_code == 404
    assert responses["key-in-bad-field"].status_code == 422
    assert responses["too-large"].status_code == 413
    too_large_id = responses["too-large"].headers["x-request-id"]
    assert any("413" in r["message"] for r in lines_of(too_large_id))
    # Outside a request: no request_id key.
    assert all("request_id" not in r for r in records if r["message"].startswith("Started server process"))
    _assert_no_key_leaked(output, responses)


def test_text_log_lines_show_the_request_id_and_never_a_key(checkpoint_dir, tmp_path):
    responses: dict[str, httpx.Response] = {}
    output = _serve_and_collect(checkpoint_dir, tmp_path, "text",
                                lambda client: responses.update(_exercise_keys_everywhere(client)))
    lines = output.splitlines()
    tagged = [line for line in lines if "[trace-ok-0]:" in line]
    assert any(" INFO uvicorn.access [trace-ok-0]: " in line and '"POST /v1/generate HTTP/1.1" 200' in line
               for line in tagged), tagged
    assert any(" INFO service.api.routes [trace-ok-0]: request gen-" in line for line in tagged), tagged
    assert any(" INFO uvicorn.error [-]: Application startup complete." in line for line in lines)
    _assert_no_key_leaked(output, responses)


def test_an_unreadable_key_file_is_a_clear_start_up_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INTROLLM_API_KEY_FILE": str(tmp_path / "no-such-keys"),
           "INTROLLM_API_KEYS": KEYS[0],
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "service"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "api_key_file" in result.stderr and "no-such-keys" in result.stderr and "cannot be read" in result.stderr
    assert KEYS[0] not in result.stdout + result.stderr
