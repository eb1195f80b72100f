"""The deployment files in docker/, and how the tests run them on loopback.

The tests use the real files with the fewest possible rewrites:
nginx: only the upstream `server` addresses (and, for the running gateway, its
listen port) change; Prometheus: the DNS service discovery becomes static
loopback targets (and, for the running server, a shorter scrape interval).
Replicas are `python -m service` on the bundled checkpoint, as the image runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
NGINX_CONF = DOCKER / "nginx" / "nginx.conf"
PROMETHEUS_CONF = DOCKER / "prometheus" / "prometheus.yml"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST = DOCKER / "prometheus" / "alerts_test.yml"  # promtool test rules
DASHBOARD = DOCKER / "grafana" / "dashboards" / "introllm.json"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda")
CHECKPOINT = REPO / "checkpoints" / "introllm-countdown-tiny"

UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+introllm:8000(\s[^;]*)?;\s*$", re.MULTILINE)
LISTEN = re.compile(r"^(\s*)listen\s+8080;\s*$", re.MULTILINE)


def tool(name: str) -> str:
    """Path of a tool (this venv's bin, PATH, sbin); a missing one fails the test (`make test` installs them)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} is not installed: `make system-deps` installs it")
    return found



# ---------------------------------------------------------------- processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def start(name: str, command: list[str], tmp: Path, env: dict | None = None) -> Process:
    log = tmp / f"{name}.log"
    with log.open("a") as out:  # appended: a restarted replica keeps its earlier lines
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                 stdin=subprocess.DEVNULL)
    return Process(name, popen, log)


def start_replica(name: str, port: int, tmp: Path, **settings: str) -> Process:
    """`python -m service` on the bundled checkpoint; `settings` are extra INTROLLM_* variables."""
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "INTROLLM_TORCH_THREADS": "1",
        "INTROLLM_CHECKPOINT": str(CHECKPOINT), "INTROLLM_HOST": "127.0.0.1", "INTROLLM_PORT": str(port),
        "INTROLLM_DEVICE": "cpu", "INTROLLM_DRAIN_GRACE_S": "2", "INTROLLM_LOG_LEVEL": "warning",
        "INTROLLM_COMPILE": "false",  # the default compiles for minutes on this machine
        **{f"INTROLLM_{key.upper()}": value for key, value in settings.items()},
    }
    return start(name, [sys.executable, "-m", "service"], tmp, env)


def start_gateway(tmp: Path, upstream_ports: list[int]) -> tuple[Process, str]:
    """nginx from the project's config with its upstreams on loopback; returns it and its base URL."""
    port = free_port()
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf_for(upstream_ports, listen_port=port))
    return start("nginx", nginx_command(tool("nginx"), prefix, conf), tmp), f"http://127.0.0.1:{port}"


def wait_until(check, what: str, logs, timeout: float = 90.0, interval: float = 0.2):
    """Polls `check` until it returns something true; fails with `logs()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}\n{logs()}")


def status_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


# ---------------------------------------------------------------- nginx


def nginx_conf_for(upstream_ports: list[int], listen_port: int | None = None) -> str:
    """The gateway config with its upstream servers on loopback; everything else as written."""
    text = NGINX_CONF.read_text()
    matches = UPSTREAM_SERVER.findall(text)
    assert len(matches) == 1, "the gateway config should have one `server introllm:8000 ...;` line"

    def servers(match: re.Match) -> str:
        indent, params = match.group(1), match.group(2) or ""
        return "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in upstream_ports)

    text = UPSTREAM_SERVER.sub(servers, text)
    if listen_port is not None:
        text, count = LISTEN.subn(rf"\g<1>listen 127.0.0.1:{listen_port};", text)
        assert count == 1
    return text


def nginx_command(nginx: str, prefix: Path, conf: Path, *extra: str) -> list[str]:
    """nginx in the foreground with its prefix, pid file and start-up log under `prefix` (works as root)."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr",
            "-g", f"pid {prefix / 'nginx.pid'}; daemon off;", *extra]


# ---------------------------------------------------------------- Prometheus


def prometheus_conf_for(targets: list[str], rules: Path, scrape_interval: str | None = None) -> dict:
    """The scrape config with DNS discovery replaced by static loopback targets."""
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "introllm")
    assert "dns_sd_configs" in job
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": targets}]
    config["rule_files"] = [str(rules)]
    if scrape_interval is not None:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["scrape_timeout"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return config


# ---------------------------------------------------------------- PromQL


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [panel for panel in panels if panel["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in dashboard_panels() for target in panel["targets"]]


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def concrete(expr: str, model: str, replica: str, rate_interval: str = "1m") -> str:
    """Grafana's variables replaced by values, as Grafana would send the query."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$model", model)
        .replace("$replica", replica)
    )
