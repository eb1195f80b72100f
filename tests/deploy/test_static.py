"""The deployment files checked by the real tools: nginx -t, promtool, hadolint, docker-compose config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.stack import (
    ALERTS,
    ALERTS_TEST,
    COMPOSE,
    DOCKERFILES,
    PROMETHEUS_CONF,
    REPO,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    nginx_command,
    nginx_conf_for,
    tool,
)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def test_gateway_config_passes_nginx_t_with_loopback_upstreams(tmp_path):
    nginx = tool("nginx")
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf_for([18001, 18002]))
    result = run(nginx_command(nginx, tmp_path, conf, "-t"))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_gateway_config_is_streaming_safe_and_guarded():
    text = nginx_conf_for([18001])
    for directive in (
        "proxy_buffering off;", "proxy_read_timeout 660s;", "client_max_body_size 256k;", "least_conn;",
        "limit_req zone=introllm_per_client", "max_fails=1 fail_timeout=5s", "proxy_http_version 1.1;",
        # Failover (tests/deploy/test_failover.py shows what each does for a client).
        "proxy_connect_timeout 500ms;", "proxy_next_upstream error timeout http_503 non_idempotent;",
        "proxy_next_upstream_tries 2;", "error_page 502 504 =503 @no_replica;",
        "proxy_set_header X-Request-Id $introllm_request_id;", "proxy_set_header Authorization $http_authorization;",
        '""      $request_id;', '"~^[!-~]{1,128}$"     $http_x_request_id;', "proxy_hide_header X-Request-Id;",
    ):
        assert directive in text, directive


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = tool("promtool")
    # As written (rule file relative to the config, as in the container).
    result = run([promtool, "check", "config", str(PROMETHEUS_CONF)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_discovers_replicas_by_dns_name():
    config = yaml.safe_load(PROMETHEUS_CONF.read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "introllm")
    assert job["dns_sd_configs"] == [{"names": ["introllm"], "type": "A", "port": 8000, "refresh_interval": "15s"}]
    assert {"source_labels": ["__address__"], "target_label": "replica"} in job["relabel_configs"]


def test_alert_rules_pass_promtool_and_cover_the_failure_modes():
    promtool = tool("promtool")
    result = run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert {
        "IntroLLMHighErrorRatio", "IntroLLMQueueSaturated", "IntroLLMTimeToFirstTokenObjective",
        "IntroLLMReplicaDown", "IntroLLMTemperaturePinnedAtMin", "IntroLLMTemperaturePinnedAtMax",
    } <= names


def test_alert_rules_compare_with_the_exported_limits_and_tau_range_in_promtool_unit_tests():
    # alerts_test.yml: synthetic series with non-default limits and tau ranges, so a bound written
    # into a rule (48 waiting, tau 0.1 / 2.0) makes a case fire or stay silent wrongly.
    promtool = tool("promtool")
    result = run([promtool, "test", "rules", str(ALERTS_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {test["alertname"] for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for test in case["alert_rule_test"]}
    assert {"IntroLLMQueueSaturated", "IntroLLMTemperaturePinnedAtMin", "IntroLLMTemperaturePinnedAtMax"} <= tested


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_has_no_hadolint_findings(dockerfile):
    hadolint = tool("hadolint")
    result = run([hadolint, "--format", "json", str(dockerfile)])
    findings = json.loads(result.stdout or "[]")
    errors = [finding for finding in findings if finding["level"] == "error"]
    assert errors == [], errors
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_exec_entrypoint(dockerfile):
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    assert any(line.startswith("COPY --from=build ") for line in lines)
    assert "USER 10001:10001" in lines
    assert "COPY checkpoints/introllm-countdown-tiny /models/introllm-countdown-tiny" in lines
    assert any("INTROLLM_CHECKPOINT=/models/introllm-countdown-tiny" in line for line in lines)
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    assert any("/health/live" in line for line in lines)
    assert lines[-1] == 'ENTRYPOINT ["introllm-serve"]'


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_bundled_checkpoint_is_in_the_image(dockerfile):
    bundled = sorted(p.parent.name for p in (REPO / "checkpoints").glob("*/introllm.json"))
    assert len(bundled) >= 2  # the default and the draft-reading one
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    for name in bundled:
        assert f"COPY checkpoints/{name} /models/{name}" in lines, name
        assert f"!checkpoints/{name}/" in ignore, name


def compose_config(*args: str) -> dict:
    compose = tool("docker-compose")
    result = run([compose, "-f", str(COMPOSE), *args, "config"], cwd=COMPOSE.parent)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def mount_targets(service: dict) -> set[str]:
    # docker-compose v1 prints "source:target[:mode]"; the compose spec's long form has "target".
    return {volume["target"] if isinstance(volume, dict) else volume.split(":")[1] for volume in service["volumes"]}


def test_compose_file_is_valid_for_docker_compose():
    config = compose_config()
    services = config["services"]
    assert set(services) == {"introllm", "introllm-gpu", "gateway", "prometheus", "grafana"}
    assert [name for name, service in services.items() if service.get("profiles")] == ["introllm-gpu"]
    assert services["introllm-gpu"]["profiles"] == ["gpu"]
    assert services["introllm"]["deploy"]["replicas"] >= 2
    assert services["introllm"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= mount_targets(services["grafana"])
    assert "/etc/nginx/nginx.conf" in mount_targets(services["gateway"])
    assert "/etc/prometheus/alerts.yml" in mount_targets(services["prometheus"])


def test_gpu_profile_adds_a_cuda_replica_under_the_same_dns_name():
    gpu = compose_config("--profile", "gpu")["services"]["introllm-gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert "introllm" in gpu["networks"]["default"]["aliases"]


def test_grafana_datasource_uid_is_the_one_the_dashboard_uses():
    provisioning = COMPOSE.parent / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "introllm.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = {panel["datasource"]["uid"] for panel in dashboard_panels()}
    uids |= {target["datasource"]["uid"] for panel in dashboard_panels() for target in panel["targets"]}
    assert uids == {datasource["uid"]}


def test_every_dashboard_panel_has_a_promql_query_and_is_templated():
    board = dashboard()
    assert [variable["name"] for variable in board["templating"]["list"]] == ["model", "replica"]
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "introllm_" in target["expr"] or 'up{job="introllm"' in target["expr"], panel["title"]
            assert "$replica" in target["expr"], panel["title"]
    assert any(row.get("repeat") == "replica" for row in board["panels"] if row["type"] == "row")


def test_dashboard_draws_the_bounds_each_replica_exports_beside_load_and_tau():
    queries = {title: " ".join(expr for panel_title, expr in dashboard_queries() if panel_title == title)
               for title, _ in dashboard_queries()}
    for title in ("Running and waiting requests", "Running and waiting ($replica)"):
        assert "introllm_max_running_requests" in queries[title], title
        assert "introllm_max_waiting_requests" in queries[title], title
    for title in ("Average tau per request", "Average tau per request ($replica)"):
        assert "introllm_temperature_range_min" in queries[title], title
        assert "introllm_temperature_range_max" in queries[title], title
    assert any("introllm_model_info" in expr for expr in queries.values())
