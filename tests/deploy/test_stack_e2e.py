"""The stack on loopback: two real replicas behind the real gateway, scraped by a real Prometheus.

Started from the files in docker/ with only these rewrites (tests/deploy/stack.py): nginx's
upstream servers and listen port on loopback; Prometheus' DNS discovery replaced by static
loopback targets and its scrape/evaluation interval shortened to 1 s so the test takes seconds.
"""

from __future__ import annotations

import math
import re
import shutil
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

import service
from service.settings import dtype_decision
from tests.deploy.stack import (
    ALERTS,
    CHECKPOINT,
    Process,
    alert_queries,
    concrete,
    dashboard,
    dashboard_queries,
    prometheus_conf_for,
    start,
    start_gateway,
    start_replica,
    status_ok,
    tool,
    wait_until,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

MODEL = CHECKPOINT.name
PROMPTS = ["3 5 7 2>24\n", "1 2 3 4>01\n", "6 2 8>41\n", "9 4 1 5>72\n"]
TAU_RANGE = (0.1, 2.0)
METRIC_NAME = re.compile(r"\bintrollm_[a-z0-9_]+")
# Panels whose queries must return data after the traffic (the others need failures, waits, ...).
MUST_HAVE_DATA = ("tau per request", "Time to first token", "Inter-token latency", "End-to-end request latency",
                  "Generated tokens per second", "Latency p99", "Running and waiting", "Servers")


@dataclass
class Stack:
    replicas: list[Process]
    replica_ports: list[int]
    gateway: str
    prometheus: str
    processes: list[Process] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def query(self, promql: str, at: float | None = None) -> dict:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        response = httpx.post(f"{self.prometheus}/api/v1/query", data=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{promql}\n{body}"
        return body["data"]

    def scalar(self, promql: str, at: float | None = None) -> float | None:
        result = self.query(promql, at)["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prometheus = tool("prometheus")
    tmp = tmp_path_factory.mktemp("stack")
    processes: list[Process] = []
    try:
        ports = [free_port(), free_port()]
        replicas = [start_replica(f"replica{index}", port, tmp) for index, port in enumerate(ports)]
        processes += replicas

        gateway, gateway_url = start_gateway(tmp, ports)
        processes.append(gateway)

        prometheus_port = free_port()
        rules = tmp / "alerts.yml"
        shutil.copy(ALERTS, rules)
        prometheus_yml = tmp / "prometheus.yml"
        config = prometheus_conf_for([f"127.0.0.1:{port}" for port in ports], rules, scrape_interval="1s")
        prometheus_yml.write_text(yaml.safe_dump(config))
        processes.append(start("prometheus", [
            prometheus, f"--config.file={prometheus_yml}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ], tmp))

        stack = Stack(replicas, ports, gateway_url, f"http://127.0.0.1:{prometheus_port}", processes)
        for port in ports:
            wait_until(lambda port=port: status_ok(f"http://127.0.0.1:{port}/health/ready"), "replica ready",
                       stack.logs)
        wait_until(lambda: status_ok(f"{stack.gateway}/gateway/health"), "gateway", stack.logs)
        wait_until(lambda: status_ok(f"{stack.prometheus}/-/ready"), "prometheus", stack.logs)
        wait_until(lambda: stack.scalar('sum(up{job="introllm"})') == 2, "both targets up", stack.logs)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()


@dataclass
class Traffic:
    means: list[float]
    stream_times: list[float]  # arrival of each token event, relative to the request being sent
    stream_done_at: float
    stream_mean: float
    stream_taus: list[float]
    at: float  # a time after every request was scraped: queries are evaluated there


def generate(client: httpx.Client, index: int) -> dict:
    mode = ("learned", "learned", "entropy", "fixed")[index % 4]
    body = {"prompt": PROMPTS[index % len(PROMPTS)], "max_new_tokens": 24, "seed": index,
            "temperature_mode": mode, "return_temperatures": True}
    if mode == "fixed":
        body["temperature"] = 0.7
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def traffic(stack):
    # Prime every (replica, temperature mode) label set directly, and let Prometheus scrape it:
    # a counter series first seen with its final value would show no rate() at all.
    results: list[dict] = []
    for port in stack.replica_ports:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as direct:
            results += [generate(direct, index) for index in (100, 102, 103)]  # learned, entropy, fixed
    wait_until(lambda: stack.scalar("sum(introllm_request_mean_temperature_count)") == len(results),
               "Prometheus to scrape the priming requests", stack.logs, timeout=30)
    time.sleep(2)

    client = httpx.Client(base_url=stack.gateway, timeout=60)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for index in range(offset, 16, 4):
                results.append(generate(client, index))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 6 + 16

    # One long stream with per-token temperatures, alone, timed event by event.
    body = {"prompt": PROMPTS[0], "max_new_tokens": 200, "ignore_eos": True, "seed": 7, "stream": True,
            "return_temperatures": True}
    times, taus, done = [], [], None
    sent = time.monotonic()
    with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = httpx.Response(200, content=line.removeprefix("data:").strip()).json()
            if event["type"] == "token":
                times.append(time.monotonic() - sent)
                taus.append(event["token"]["temperature"])
            else:
                done = event
    stream_done_at = time.monotonic() - sent
    client.close()
    assert done is not None and done["usage"]["completion_tokens"] == 200

    means = [result["temperature"]["mean"] for result in results] + [done["temperature"]["mean"]]
    wait_until(lambda: stack.scalar("sum(introllm_request_mean_temperature_count)") == len(means),
               "Prometheus to scrape every request", stack.logs, timeout=30)
    time.sleep(3)  # a few more scrapes, so rate() over the window has points after the traffic
    return Traffic(means, times, stream_done_at, done["temperature"]["mean"], taus, time.time())


def test_gateway_forwards_a_request_id_and_answers_with_it(stack):
    with httpx.Client(base_url=stack.gateway, timeout=60) as client:
        own = client.get("/health/ready", headers={"X-Request-Id": "test-abc-123"})
        generated = client.get("/health/ready")
        too_long = client.get("/health/ready", headers={"X-Request-Id": "x" * 129})
        refused = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": -1},
                              headers={"X-Request-Id": "test-422"})
    assert own.status_code == 200 and own.headers["x-request-id"] == "test-abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    # Replaced by the gateway under the service's own rule; the replica's copy is hidden, so one header.
    assert len(too_long.headers["x-request-id"]) == 32
    for response in (own, generated, too_long, refused):
        assert len(response.headers.get_list("x-request-id")) == 1
    assert refused.status_code == 422 and refused.headers["x-request-id"] == "test-422"


def test_the_playground_page_and_its_files_come_through_the_gateway(stack):
    with httpx.Client(base_url=stack.gateway, timeout=60) as client:
        root = client.get("/")
        page = client.get("/" + root.headers["location"])
        files = {name: client.get(f"/playground/{name}") for name in ("app.js", "style.css", "favicon.svg")}
        revalidated = client.get("/playground/app.js", headers={"If-None-Match": files["app.js"].headers["etag"]})
        elsewhere = client.get("/playgroundx")
    assert root.status_code == 307 and root.headers["location"] == "playground/"
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert files["app.js"].headers["content-type"] == "text/javascript; charset=utf-8"
    assert files["style.css"].headers["content-type"] == "text/css; charset=utf-8"
    assert files["favicon.svg"].headers["content-type"] == "image/svg+xml"
    assert all(r.status_code == 200 and r.headers["cache-control"] == "no-cache" for r in files.values())
    assert revalidated.status_code == 304
    assert elsewhere.status_code == 404  # the gateway's own 404: only the playground's paths are proxied


def test_stream_through_the_gateway_arrives_token_by_token(traffic):
    times = traffic.stream_times
    assert len(times) == 200 and times == sorted(times)
    assert all(TAU_RANGE[0] - 1e-6 <= tau <= TAU_RANGE[1] + 1e-6 for tau in traffic.stream_taus)
    # Not buffered: the first token is received in the first half of the stream's lifetime,
    # and the events arrive spread over time rather than in one burst at the end.
    spread = times[-1] - times[0]
    print(f"stream: first token event at {times[0] * 1000:.1f} ms, last at {times[-1] * 1000:.1f} ms, "
          f"done at {traffic.stream_done_at * 1000:.1f} ms")
    assert times[0] < 0.5 * times[-1], (times[0], times[-1])
    assert spread > 0.5 * traffic.stream_done_at, (spread, traffic.stream_done_at)
    assert abs(traffic.stream_mean - sum(traffic.stream_taus) / len(traffic.stream_taus)) < 1e-4


def test_every_dashboard_and_alert_query_is_valid_promql_and_the_key_panels_have_data(stack, traffic):
    # $replica: the replica that served most requests (both serve some; per-replica panels need one).
    served = stack.query("sum by (replica) (increase(introllm_request_mean_temperature_count[1m]))", at=traffic.at)
    replica = max(served["result"], key=lambda sample: float(sample["value"][1]))["metric"]["replica"]
    checked = 0
    report = []
    for title, expr in dashboard_queries() + alert_queries():
        data = stack.query(concrete(expr, MODEL, replica), at=traffic.at)  # asserts status success
        checked += 1
        values = [float(sample["value"][1]) for sample in data["result"]]
        report.append(f"{title}: {len(values)} series")
        if any(key in title for key in MUST_HAVE_DATA):
            # A label set with no new observations in the window is NaN (0/0), as in Grafana; the
            # panel has data when some series has a value.
            finite = [value for value in values if math.isfinite(value)]
            assert finite, f"{title}: no data for {expr}: {values}"
            if "tau per request" in title:
                assert all(TAU_RANGE[0] - 1e-6 <= value <= TAU_RANGE[1] + 1e-6 for value in finite), (title, values)
            if "tokens per second" in title:
                assert all(value > 0 for value in finite), (title, values)
    print(f"{checked} PromQL expressions valid:\n" + "\n".join(report))
    assert checked == len(dashboard_queries()) + len(alert_queries()) > 30


def test_mean_tau_in_prometheus_matches_what_the_responses_reported(stack, traffic):
    count = stack.scalar("sum(introllm_request_mean_temperature_count)", at=traffic.at)
    mean = stack.scalar(
        "sum(introllm_request_mean_temperature_sum) / sum(introllm_request_mean_temperature_count)", at=traffic.at
    )
    reported = sum(traffic.means) / len(traffic.means)
    print(f"mean tau: Prometheus {mean:.6f} over {count:.0f} requests; responses {reported:.6f} "
          f"over {len(traffic.means)}")
    assert count == len(traffic.means)
    assert mean == pytest.approx(reported, abs=1e-4)
    # Both replicas served some of the traffic (least_conn over two upstreams).
    per_replica = stack.query("sum by (replica) (introllm_request_mean_temperature_count)", at=traffic.at)
    assert len([sample for sample in per_replica["result"] if float(sample["value"][1]) > 0]) == 2


def test_every_metric_the_dashboard_and_the_alerts_name_is_exported_by_a_replica(stack, traffic):
    # A misspelt or never-exported name is valid PromQL that returns nothing: the test above cannot
    # see it. After the traffic every label set exists, so every sample name is on /metrics.
    text = httpx.get(f"http://127.0.0.1:{stack.replica_ports[0]}/metrics", timeout=10).text
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    queries = dashboard_queries() + alert_queries() + [("variable " + variable["name"], variable["definition"])
                                                       for variable in dashboard()["templating"]["list"]]
    named = {(title, name) for title, expr in queries for name in METRIC_NAME.findall(expr)}
    missing = sorted((title, name) for title, name in named if name not in exported)
    assert not missing, missing
    # The alerts compare with these; the replicas run with the defaults and the bundled checkpoint.
    for promql, value in (("introllm_max_waiting_requests", 64), ("introllm_max_running_requests", 64),
                          ("introllm_temperature_range_min", TAU_RANGE[0]),
                          ("introllm_temperature_range_max", TAU_RANGE[1])):
        result = stack.query(promql, at=traffic.at)["result"]
        assert sorted(sample["metric"]["replica"] for sample in result) == sorted(
            f"127.0.0.1:{port}" for port in stack.replica_ports), (promql, result)
        assert all(float(sample["value"][1]) == pytest.approx(value) for sample in result), (promql, result)
    replica = f"127.0.0.1:{stack.replica_ports[0]}"
    [info] = stack.query(f'introllm_model_info{{replica="{replica}"}}', at=traffic.at)["result"]
    # The replicas run the default dtype, auto: what it picks on this machine's CPU.
    dtype = str(dtype_decision("auto", torch.device("cpu"))[0]).removeprefix("torch.")
    assert {key: info["metric"][key] for key in ("model", "device", "dtype", "version")} == {
        "model": MODEL, "device": "cpu", "dtype": dtype, "version": service.__version__}


def test_killing_a_replica_the_gateway_routes_around_it_and_prometheus_marks_it_down(stack, traffic):
    victim, victim_port = stack.replicas[1], stack.replica_ports[1]
    outcomes: list[tuple[float, int | str]] = []  # (start time, status or error)
    stop = threading.Event()

    def worker(offset: int) -> None:
        with httpx.Client(base_url=stack.gateway, timeout=60) as client:
            index = offset
            while not stop.is_set():
                started = time.monotonic()
                body = {"prompt": PROMPTS[index % len(PROMPTS)], "max_new_tokens": 16, "seed": index}
                try:
                    outcome: int | str = client.post("/v1/generate", json=body).status_code
                except httpx.HTTPError as exc:
                    outcome = repr(exc)
                outcomes.append((started, outcome))
                index += 2
                time.sleep(0.15)  # stays well under the gateway's per-client rate limit

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        victim.popen.kill()
        victim.popen.wait(timeout=10)
        killed = time.monotonic()
        time.sleep(3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    after = [outcome for started, outcome in outcomes if started > killed]
    before = [outcome for started, outcome in outcomes if started <= killed]
    print(f"requests before the kill: {len(before)}, after: {len(after)} (all {set(after)})")
    assert len(after) >= 5
    assert all(outcome == 200 for outcome in after), after
    victim_target = f'up{{job="introllm", replica="127.0.0.1:{victim_port}"}}'
    wait_until(lambda: stack.scalar(victim_target) == 0, "Prometheus to mark the killed replica down",
               stack.logs, timeout=15)
    assert stack.scalar(f'up{{job="introllm", replica="127.0.0.1:{stack.replica_ports[0]}"}}') == 1
