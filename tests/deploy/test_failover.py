"""A replica dies behind the gateway: what each client sees (docker/README.md, "When a replica dies").

Two real replicas (`python -m service` on the bundled checkpoint, at most 4 requests running each,
so some wait in its queue) behind nginx started from docker/nginx/nginx.conf (upstreams and listen
port rewritten to loopback, tests/deploy/stack.py); 16 clients, half streaming, send requests
through it while a replica is SIGKILLed, restarted, or loses its engine process, then while every
replica is stopped. Which replica served a request comes from the gateway's access line
(`rid=... upstream=...`; the clients set their own X-Request-Id).

The tests share one set of processes and run in file order: replica 0 loses its engine process
(it exits 4) and is restarted as a supervisor would; replica 1 is SIGKILLed; the survivor is
stopped. The last test needs no replica: its "replicas" never accept a connection.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.stack import Process, start_gateway, start_replica, status_ok, wait_until
from tests.ports import free_port

pytestmark = pytest.mark.slow

PROMPTS = ["3 5 7 2>24\n", "1 2 3 4>01\n", "6 2 8>41\n", "9 4 1 5>72\n"]
CLIENTS = 16  # even ones stream
STREAM_TOKENS, PLAIN_TOKENS = 96, 48
# Each client starts a request at most every CYCLE_S: 16 of them from one address stay under the
# gateway's 20 requests/s per client (a 429 from the gateway would read as a failure here).
CYCLE_S = 1.2
DEADLINE_S = 20.0  # a request still running after this is a hang
MAX_RUNNING = "4"
ACCESS_LINE = re.compile(r"rid=(\S+) upstream=(.+?) rt=")
# What a client can be told when its request fails; anything else (a hang, a 4xx, a 200 with too
# few tokens) fails the test.
FAILURES = ("error event", "5xx", "cut")


@dataclass
class Outcome:
    rid: str
    stream: bool
    sent: float
    ended: float
    result: str  # "ok", one of FAILURES, "hang" or "wrong"
    detail: str


@dataclass
class Cluster:
    tmp: Path
    ports: list[int]
    replicas: list[Process]
    gateway: Process
    url: str

    def logs(self) -> str:
        return "\n".join(process.tail() for process in [*self.replicas, self.gateway])

    def address(self, index: int) -> str:
        return f"127.0.0.1:{self.ports[index]}"

    def upstreams(self) -> dict[str, list[str]]:
        """Request id -> the replicas the gateway tried, in order (from its access lines)."""
        text = self.gateway.log.read_text(errors="replace")
        return {rid: tried.split(", ") for rid, tried in ACCESS_LINE.findall(text)}

    def tried(self, load: Load) -> dict[str, list[str]]:
        """upstreams() once it has every request of `load`: nginx writes the access line after the
        client has its last byte, so the latest lines may still be on their way."""
        def complete() -> dict[str, list[str]] | None:
            upstreams = self.upstreams()
            return upstreams if all(o.rid in upstreams for o in load.outcomes) else None
        return wait_until(complete, "the gateway's access line of every request", self.logs, timeout=10)

    def alive(self, index: int) -> bool:
        return self.replicas[index].popen.poll() is None

    def ready(self, index: int) -> bool:
        return status_ok(f"http://{self.address(index)}/health/ready")

    def refusing(self, index: int) -> bool:
        """Readiness fails (draining), or nothing listens any more."""
        try:
            return not self.ready(index)
        except httpx.TransportError:
            return True

    def restart(self, index: int) -> None:
        """What a supervisor does after the replica exits: the same command on the same address."""
        assert self.replicas[index].popen.poll() is not None
        self.replicas[index] = start_replica(f"replica{index}", self.ports[index], self.tmp,
                                             max_running_requests=MAX_RUNNING)

    def engine_pid(self, index: int) -> int:
        """The replica's engine process: its child started by multiprocessing's spawn."""
        pid = self.replicas[index].popen.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        engines = [int(child) for child in children
                   if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]
        assert len(engines) == 1, children
        return engines[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failover")
    ports = [free_port(), free_port()]
    replicas = [start_replica(f"replica{index}", port, tmp, max_running_requests=MAX_RUNNING)
                for index, port in enumerate(ports)]
    gateway, url = start_gateway(tmp, ports)
    cluster = Cluster(tmp, ports, replicas, gateway, url)
    try:
        for index in range(len(ports)):
            wait_until(lambda index=index: cluster.ready(index), f"replica {index} ready", cluster.logs)
        wait_until(lambda: status_ok(f"{url}/gateway/health"), "gateway", cluster.logs)
        yield cluster
    finally:
        for process in [gateway, *cluster.replicas]:
            process.stop()


# ---------------------------------------------------------------- clients


def send(client: httpx.Client, rid: str, stream: bool, seed: int) -> Outcome:
    tokens = STREAM_TOKENS if stream else PLAIN_TOKENS
    body = {"prompt": PROMPTS[seed % len(PROMPTS)], "max_new_tokens": tokens, "ignore_eos": True,
            "seed": seed, "stream": stream}
    sent = time.monotonic()
    try:
        with client.stream("POST", "/v1/generate", json=body, headers={"X-Request-Id": rid}) as response:
            if response.status_code == 200 and stream:
                result, detail = read_events(response, tokens)
            else:
                response.read()
                result, detail = judge_plain(response, tokens)
    except httpx.TimeoutException as exc:
        result, detail = "hang", repr(exc)
    except httpx.TransportError as exc:
        # The replica died with the stream open: nginx closes the connection without the last
        # chunk, and the client's HTTP library says so ("incomplete chunked read").
        result, detail = "cut", repr(exc)
    ended = time.monotonic()
    if ended - sent > DEADLINE_S:
        result, detail = "hang", f"took {ended - sent:.1f} s: {detail}"
    return Outcome(rid, stream, sent, ended, result, detail)


def judge_plain(response: httpx.Response, tokens: int) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "wrong", f"{response.status_code}: not JSON: {response.text[:200]!r}"
    if response.status_code == 200:
        done = body.get("usage", {}).get("completion_tokens") == tokens
        return ("ok", "") if done else ("wrong", f"200 with {body.get('usage')}")
    error = body.get("error") or {}
    # A 5xx that names its cause, in the service's error shape (the gateway's own answers too).
    if response.status_code >= 500 and error.get("type") and error.get("message"):
        return "5xx", f"{response.status_code} {error['type']}: {error['message']}"
    return "wrong", f"{response.status_code}: {body}"


def read_events(response: httpx.Response, tokens: int) -> tuple[str, str]:
    received, done, event = 0, None, "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line == "data: [DONE]":
            complete = done is not None and received == tokens == done["usage"]["completion_tokens"]
            return ("ok", "") if complete else ("wrong", f"[DONE] after {received} tokens, done={done}")
        elif line.startswith("data:"):
            data = json.loads(line.removeprefix("data:"))
            if event == "error":
                error = data["error"]
                return "error event", f"after {received} tokens: {error['type']}: {error['message']}"
            if data["type"] == "token":
                received += 1
            else:
                done = data
    return "wrong", f"the stream ended cleanly without [DONE] after {received} tokens"


class Load:
    """Client threads (even ones stream) sending requests through the gateway until the block ends."""

    def __init__(self, url: str, label: str, clients: int = CLIENTS) -> None:
        self.url, self.label = url, label
        self.outcomes: list[Outcome] = []
        self.in_flight: dict[str, bool] = {}  # request id -> streams
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(index,), daemon=True)
                         for index in range(clients)]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=DEADLINE_S) as client:
            number = 0
            while not self._stop.is_set():
                started = time.monotonic()
                rid = f"{self.label}-c{index}-{number}"
                self.in_flight[rid] = stream = index % 2 == 0
                try:
                    outcome = send(client, rid, stream=stream, seed=index * 1000 + number)
                except Exception as exc:  # e.g. an event that is not JSON: recorded, never lost with the thread
                    outcome = Outcome(rid, stream, started, time.monotonic(), "wrong", repr(exc))
                self.outcomes.append(outcome)
                del self.in_flight[rid]
                number += 1
                self._stop.wait(max(0.0, started + CYCLE_S - time.monotonic()))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE_S + 5)
        assert not any(thread.is_alive() for thread in self._threads), "a client hangs past its deadline"

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    def run_until_busy(self, logs) -> None:
        """Until most clients of each kind have a request open, so that the replica about to die
        (least_conn gives both replicas about half) holds both kinds."""
        def busy() -> bool:
            kinds = list(self.in_flight.values())
            return min(kinds.count(True), kinds.count(False)) >= len(self._threads) * 3 // 8
        wait_until(busy, "clients with requests open", logs, timeout=30, interval=0.01)

    def run_until_sent_after(self, moment: float, count: int, logs) -> None:
        """Until `count` requests sent after `moment` have ended (a slow machine takes longer)."""
        wait_until(lambda: sum(o.sent > moment for o in self.outcomes) >= count,
                   f"{count} requests sent after the event to end", logs, timeout=60)

    def report(self, cluster: Cluster) -> str:
        tried = cluster.upstreams()
        results = {}
        for outcome in self.outcomes:
            results[outcome.result] = results.get(outcome.result, 0) + 1
        failed = [f"  {o.rid} ({'stream' if o.stream else 'plain'}, via {tried.get(o.rid)}): {o.result} {o.detail}"
                  for o in self.outcomes if o.result != "ok"]
        return f"{self.label}: {len(self.outcomes)} requests, {results}\n" + "\n".join(failed)


def assert_no_hang_and_failures_named(load: Load) -> None:
    unexplained = [(o.rid, o.result, o.detail) for o in load.outcomes if o.result not in ("ok", *FAILURES)]
    assert not unexplained, unexplained


# ---------------------------------------------------------------- tests


def test_a_replica_whose_engine_dies_fails_only_its_open_streams_with_an_error_event(cluster):
    broken, other = cluster.address(0), cluster.address(1)
    with Load(cluster.url, "engine") as load:
        load.run_for(1.0)
        load.run_until_busy(cluster.logs)
        killing = time.monotonic()
        os.kill(cluster.engine_pid(0), signal.SIGKILL)
        # The API process fails what the engine held, then exits 4 so that its supervisor restarts it.
        assert cluster.replicas[0].popen.wait(timeout=20) == 4, cluster.logs()
        exited = time.monotonic()
        load.run_until_sent_after(exited, CLIENTS, cluster.logs)
    tried = cluster.tried(load)
    print(load.report(cluster))

    assert_no_hang_and_failures_named(load)
    on_broken = [o for o in load.outcomes
                 if o.sent < exited and o.ended > killing and tried[o.rid][0] == broken]
    failed = [o for o in load.outcomes if o.result != "ok"]
    print(f"on the replica: {sum(o.stream for o in on_broken)} streams, {sum(not o.stream for o in on_broken)} "
          f"plain; failed: {len(failed)}")
    # Its open streams end with an `error` event that names the cause; nothing else fails.
    assert {o.rid for o in failed} <= {o.rid for o in on_broken if o.stream}, load.report(cluster)
    assert all(o.result == "error event" and "unavailable" in o.detail for o in failed), load.report(cluster)
    # Its non-streamed requests, running or queued, got the service's 503 before any token went out:
    # replayed on the other replica, completed (or had their answer just before the kill).
    plain = [o for o in on_broken if not o.stream]
    assert all(o.result == "ok" and tried[o.rid] in ([broken], [broken, other]) for o in plain), (
        load.report(cluster))
    assert any(tried[o.rid] == [broken, other] for o in plain), "no request was replayed: no failover seen"
    assert any(o.stream for o in on_broken), "no stream was open on the replica"
    after = [o for o in load.outcomes if o.sent > exited]
    wrong = [(o.rid, o.result, tried[o.rid]) for o in after if o.result != "ok" or tried[o.rid][-1] != other]
    assert not wrong, wrong


def test_a_replica_restarted_by_its_supervisor_rejoins_without_errors_at_the_gateway(cluster):
    if cluster.replicas[0].popen.poll() is None:  # run alone: the replica has not died yet
        cluster.replicas[0].popen.kill()
        cluster.replicas[0].popen.wait(timeout=10)
    returning = cluster.address(0)
    # Fewer clients than above: the restart is what is tested, and on 2 CPUs the full load would
    # stretch the new process's start-up (imports, checkpoint) several times over.
    with Load(cluster.url, "restart", clients=4) as load:
        load.run_for(1.0)
        restarted = time.monotonic()
        cluster.restart(0)
        # The replica listens only once it is ready (uvicorn binds after the lifespan loaded the
        # model): until then the gateway's connections are refused and retried on the other one.
        # Its own process, alive: not another server that took the port while it was free.
        wait_until(lambda: cluster.alive(0) and cluster.ready(0), "the restarted replica ready", cluster.logs,
                   timeout=60)
        ready = time.monotonic()
        # Back in rotation at the latest fail_timeout (5 s) after the gateway last saw it fail.
        wait_until(lambda: sum(cluster.upstreams().get(o.rid) == [returning]
                               for o in load.outcomes if o.sent > ready) >= 2,
                   "the restarted replica to serve requests through the gateway", cluster.logs, timeout=15)
        rejoined = time.monotonic()
    print(load.report(cluster))
    print(f"restart: ready after {ready - restarted:.1f} s, serving through the gateway {rejoined - ready:.1f} s later")
    assert_no_hang_and_failures_named(load)
    assert all(o.result == "ok" for o in load.outcomes), load.report(cluster)
    assert len([o for o in load.outcomes if o.sent < ready]) >= 4  # requests were sent while it was away
    assert cluster.alive(0), cluster.logs()


def test_a_replica_killed_under_load_fails_only_its_open_streams_and_every_later_request_succeeds(cluster):
    victim, survivor = cluster.address(1), cluster.address(0)
    assert cluster.alive(0) and cluster.ready(0), cluster.logs()  # the survivor is there to take the load
    with Load(cluster.url, "kill") as load:
        load.run_for(1.0)
        load.run_until_busy(cluster.logs)
        killing = time.monotonic()
        cluster.replicas[1].popen.send_signal(signal.SIGKILL)
        cluster.replicas[1].popen.wait(timeout=10)
        killed = time.monotonic()
        load.run_until_sent_after(killed, CLIENTS, cluster.logs)
    tried = cluster.tried(load)
    print(load.report(cluster))

    assert_no_hang_and_failures_named(load)
    # On the victim when it died: sent before, still running at the kill, first sent to it.
    on_victim = [o for o in load.outcomes
                 if o.sent < killed and o.ended > killing and tried[o.rid][0] == victim]
    failed = [o for o in load.outcomes if o.result != "ok"]
    print(f"on the replica: {sum(o.stream for o in on_victim)} streams, {sum(not o.stream for o in on_victim)} "
          f"plain; failed: {len(failed)}")
    # Only streams it had opened fail (their 200 went out when they were admitted, so nothing can
    # be replayed): a stream cut mid-way, since no process was left to send an `error` event.
    assert {o.rid for o in failed} <= {o.rid for o in on_victim if o.stream}, load.report(cluster)
    assert all(o.result == "cut" and "incomplete chunked read" in o.detail for o in failed), load.report(cluster)
    assert len(failed) <= len(on_victim)
    # Its non-streamed requests, running or queued, were replayed on the survivor and completed (or
    # had their answer just before the kill).
    plain = [o for o in on_victim if not o.stream]
    assert all(o.result == "ok" and tried[o.rid] in ([victim], [victim, survivor]) for o in plain), (
        load.report(cluster))
    assert any(tried[o.rid] == [victim, survivor] for o in plain), "no request was replayed: no failover seen"
    assert any(o.stream for o in on_victim), "no stream was open on the killed replica"
    # Everything sent after the kill succeeded, on the survivor.
    after = [o for o in load.outcomes if o.sent > killed]
    wrong = [(o.rid, o.result, tried[o.rid]) for o in after if o.result != "ok" or tried[o.rid][-1] != survivor]
    assert not wrong, wrong


def assert_gateway_answers_503_at_once(url: str, within_s: float) -> list[str]:
    """A plain and a streamed request both get 503, Retry-After and the error shape within `within_s`."""
    messages = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for stream in (False, True):
            started = time.monotonic()
            response = client.post("/v1/generate", json={"prompt": PROMPTS[0], "stream": stream})
            elapsed = time.monotonic() - started
            error = response.json()["error"]
            assert response.status_code == 503, (response.status_code, response.text)
            assert int(response.headers["retry-after"]) >= 1
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "unavailable", error
            assert elapsed < within_s, elapsed
            messages.append(f"{elapsed * 1000:.0f} ms: {error['message']}")
    return messages


def test_with_every_replica_stopped_the_gateway_answers_503_with_retry_after_within_2_s(cluster):
    live = [replica for replica in cluster.replicas if replica.popen.poll() is None]
    assert live, "no replica left to stop"
    for replica in live:
        replica.popen.send_signal(signal.SIGTERM)
    # A request that reached a replica before it handled the signal would still be served.
    for index, replica in enumerate(cluster.replicas):
        if replica in live:
            wait_until(lambda index=index: cluster.refusing(index), "readiness to fail", cluster.logs, timeout=10)
    # Draining (readiness fails, the listener stays open): the replica's own 503, or the gateway's
    # once it has marked every replica failed.
    draining = assert_gateway_answers_503_at_once(cluster.url, within_s=2.0)
    for replica in live:
        assert replica.popen.wait(timeout=20) == 0
    # Gone: connections are refused, and the gateway answers for the replicas.
    gone = assert_gateway_answers_503_at_once(cluster.url, within_s=2.0)
    print(f"draining: {draining}\nstopped: {gone}")
    assert all("draining" in message or "no replica is available" in message for message in draining), draining
    assert all("no replica is available" in message for message in gone), gone


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose accept queue is full, so new connections neither open nor are refused:
    what the address of a stopped container does on a Docker network."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        try:
            filler.connect(listener.getsockname())
        except TimeoutError:
            filler.close()
            return listener, fillers
        fillers.append(filler)
    pytest.fail("could not fill the listener's accept queue")


def test_replicas_that_never_accept_the_connection_get_a_503_in_about_a_second(tmp_path):
    holes = [blackhole(), blackhole()]
    gateway, url = start_gateway(tmp_path, [listener.getsockname()[1] for listener, _ in holes])
    try:
        wait_until(lambda: status_ok(f"{url}/gateway/health"), "gateway", gateway.tail, timeout=30)
        started = time.monotonic()
        first = assert_gateway_answers_503_at_once(url, within_s=2.0)
        # Two tries of proxy_connect_timeout (0.5 s each), not two of the old 2 s (504 after 4 s).
        assert time.monotonic() - started > 0.9
        # Both are now marked failed (max_fails=1): the next requests are answered without waiting.
        again = assert_gateway_answers_503_at_once(url, within_s=0.2)
        print(f"first: {first}\nagain: {again}")
    finally:
        gateway.stop()
        for listener, fillers in holes:
            for sock in [listener, *fillers]:
                sock.close()
