"""docker/kubernetes/: every manifest as `kubectl apply -k` renders it, checked without a cluster.

- Rendering: `kubectl kustomize` (what `kubectl apply -k` applies) gives exactly the objects that
  tests/deploy/kube.py renders for the checks below.
- Schemas: every object of both overlays, with each checkpoint source, validates strictly (unknown
  fields refused) against the OpenAPI schemas of Kubernetes releases, offline (kubernetes-validate);
  the Prometheus Operator's custom resources, which those schemas lack, for their required fields.
- PromQL: the PrometheusRule and the prometheus-adapter queries pass promtool, and the adapter's
  load metric is computed right on synthetic series (promtool test rules).
- Against the code: probe paths and the port answer on a real server, every metric name the
  adapter and the rules use is on its /metrics, the ConfigMaps are valid Settings, the grace
  period outlasts the drain, and everything the server writes is on a volume.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml

from service.settings import Settings
from tests.deploy.kube import (
    ADAPTER_VALUES,
    BASE,
    CHECKPOINT_COMPONENTS,
    INGRESS,
    KUBE,
    OVERLAYS,
    PROMETHEUS_RULE,
    SECRET_EXAMPLE,
    find,
    load_documents,
    prometheus_rule,
    prometheus_rule_text,
    render,
    strategic_merge,
)
from tests.deploy.stack import ALERTS, CHECKPOINT, DOCKERFILES, tool
from tests.service.support import scrape, settings_for, start_server, stop_server

# The oldest release still supported upstream when this was written, and the newest the package ships.
KUBERNETES_VERSIONS = ("1.33", kubernetes_validate.latest_version())
CRD_API = "monitoring.coreos.com/v1"
# After INTROLLM_DRAIN_GRACE_S the server waits up to 10 s more for the engine (service/api/app.py,
# drain) and gives uvicorn 5 s to flush (service/__main__.py, timeout_graceful_shutdown).
SERVER_SHUTDOWN_AFTER_GRACE_S = 15
# Start-up to ready with an empty compile cache, 2 CPUs (BENCHMARKS.md: 172 and 179 s).
COLD_START_S = 180
SOURCES = [None, *CHECKPOINT_COMPONENTS]


def renders() -> list[tuple[str, str | None]]:
    return [(overlay, source) for overlay in OVERLAYS for source in SOURCES]


def rendered(overlay: str, source: str | None) -> list[dict]:
    return render(OVERLAYS[overlay], (source,) if source else ())


def render_id(case: tuple[str, str | None]) -> str:
    return f"{case[0]}-{case[1] or 'image-checkpoint'}"


def pod_spec(objects: list[dict]) -> dict:
    return find(objects, "Deployment")["spec"]["template"]["spec"]


def server_container(objects: list[dict]) -> dict:
    [container] = [c for c in pod_spec(objects)["containers"] if c["name"] == "introllm"]
    return container


def config(objects: list[dict]) -> dict[str, str]:
    return find(objects, "ConfigMap")["data"]


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", renders(), ids=render_id)
def test_every_rendered_object_validates_strictly_against_the_kubernetes_schemas(case, version):
    objects = rendered(*case)
    kinds = [obj["kind"] for obj in objects]
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
            "NetworkPolicy", "HorizontalPodAutoscaler", "PodMonitor", "PrometheusRule"} <= set(kinds)
    assert len(kinds) == len({(obj["kind"], obj["metadata"]["name"]) for obj in objects}), kinds
    for obj in objects:
        if obj["apiVersion"] == CRD_API:
            continue  # not in the Kubernetes schemas: test_monitoring_custom_resources_...
        assert kubernetes_validate.validate(obj, version, strict=True), obj["kind"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "introllm", obj["kind"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_base_the_ingress_and_the_secret_example_validate_strictly(version):
    for obj in render(BASE) + load_documents(INGRESS) + load_documents(SECRET_EXAMPLE):
        assert kubernetes_validate.validate(obj, version, strict=True), obj["kind"]


def test_strict_validation_refuses_a_misspelt_field():
    # So the schema tests above could fail: an unknown field is an error, not ignored.
    deployment = find(rendered("cpu", None), "Deployment")
    broken = strategic_merge(deployment, {"spec": {"template": {"spec": {
        "containers": [{"name": "introllm", "livenesProbe": {"httpGet": {"path": "/", "port": 1}}}]}}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_monitoring_custom_resources_have_their_required_fields_and_match_the_pods():
    objects = rendered("cpu", None)
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"] for port in server_container(objects)["ports"]}

    monitor = find(objects, "PodMonitor")
    assert monitor["apiVersion"] == CRD_API and monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # The rules select job="introllm" and group by replica: the monitor must produce both labels.
    assert pod_labels[monitor["spec"]["jobLabel"]] == "introllm"
    exprs = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    assert any('up{job="introllm"}' in expr for expr in exprs)
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "replica"} in endpoint["relabelings"]

    rule = find(objects, "PrometheusRule")
    assert rule["apiVersion"] == CRD_API and rule["metadata"]["name"]
    assert rule["spec"]["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"], group
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry) and entry["expr"].strip(), entry
    # The Prometheus that selects one selects the other (kube-prometheus-stack's release label).
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]


def test_prometheus_rule_is_generated_from_alerts_yml_the_one_source():
    committed = load_documents(PROMETHEUS_RULE)[0]
    assert committed["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    assert committed == prometheus_rule()
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), "run: python -m tests.deploy.kube prometheusrule"


# ---------------------------------------------------------------- PromQL


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def adapter_query(rule: dict, matchers: str = 'namespace="introllm",pod=~"introllm-.*"') -> str:
    """The query the adapter sends for a pods metric, its template filled as the adapter fills it."""
    series = re.match(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
    query = rule["metricsQuery"].replace("<<.Series>>", series)
    query = query.replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod")
    assert "<<" not in query, query
    return query


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)


def test_prometheus_rule_and_adapter_queries_pass_promtool(tmp_path):
    rules = tmp_path / "prometheusrule.yml"
    rules.write_text(yaml.safe_dump({"groups": find(rendered("gpu", None), "PrometheusRule")["spec"]["groups"]}))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr

    adapter = tmp_path / "adapter.yml"
    adapter.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": f"adapter:{rule['name']['as']}", "expr": adapter_query(rule)} for rule in adapter_rules()]}]}))
    result = promtool("check", "rules", str(adapter))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(adapter_rules())} rules found" in result.stdout


def test_adapter_load_metric_is_running_plus_waiting_over_each_pods_own_bound(tmp_path):
    [load] = [rule for rule in adapter_rules() if rule["name"]["as"] == "introllm_request_load"]
    (tmp_path / "adapter.yml").write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "adapter:load", "expr": adapter_query(load, 'namespace="introllm"')}]}]}))

    def series(name: str, pod: str, value: int, namespace: str = "introllm") -> dict:
        labels = f'namespace="{namespace}", pod="{pod}", job="introllm", replica="{pod}", model="m"'
        return {"series": f"{name}{{{labels}}}", "values": f"{value}x5"}

    pods = {  # pod: (running, waiting, max_running)
        "introllm-a": (8, 0, 32),     # a quarter of the batch in use
        "introllm-b": (32, 16, 32),   # batch full and 16 queued: 1.5
        "introllm-gpu": (32, 0, 64),  # a GPU replica's own, wider bound: 0.5
    }
    inputs = []
    for pod, (running, waiting, bound) in pods.items():
        inputs += [series("introllm_num_requests_running", pod, running),
                   series("introllm_num_requests_waiting", pod, waiting),
                   series("introllm_max_running_requests", pod, bound)]
    # Another namespace's replica is not the HPA's: the label matchers leave it out.
    inputs += [series("introllm_num_requests_running", "introllm-x", 9, "other"),
               series("introllm_num_requests_waiting", "introllm-x", 9, "other"),
               series("introllm_max_running_requests", "introllm-x", 1, "other")]
    test = {"rule_files": ["adapter.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": inputs,
        "promql_expr_test": [{"expr": "adapter:load", "eval_time": "2m", "exp_samples": [
            {"labels": f'adapter:load{{pod="{pod}"}}', "value": (running + waiting) / bound}
            for pod, (running, waiting, bound) in pods.items()]}]}]}
    (tmp_path / "adapter_test.yml").write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", str(tmp_path / "adapter_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hpa_scales_the_deployment_on_a_metric_the_adapter_serves_up_fast_and_down_slowly():
    for overlay in OVERLAYS:
        objects = rendered(overlay, None)
        hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
        deployment = find(objects, "Deployment")
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": deployment["metadata"]["name"]}
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        served = {rule["name"]["as"] for rule in adapter_rules()}
        assert [metric["type"] for metric in hpa["metrics"]] == ["Pods"]
        assert {metric["pods"]["metric"]["name"] for metric in hpa["metrics"]} <= served
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        # One replica may go at a time, and the HPA never goes below two: one is always serving.
        assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        up, down = hpa["behavior"]["scaleUp"], hpa["behavior"]["scaleDown"]
        assert up["stabilizationWindowSeconds"] == 0
        assert down["stabilizationWindowSeconds"] >= 300
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 180}]


# ---------------------------------------------------------------- against the code


@pytest.fixture(scope="module")
def server():
    live = start_server(settings_for(CHECKPOINT))
    try:
        with live.client() as client:  # one learned request of several tokens: every family has samples
            response = client.post("/v1/generate", json={"prompt": "3 5 7 2>24\n", "max_new_tokens": 6,
                                                         "ignore_eos": True, "seed": 1})
            assert response.status_code == 200, response.text
        yield live
    finally:
        stop_server(live)


def test_every_metric_the_adapter_and_the_rules_name_is_exported_by_a_running_server(server):
    exported = {key.partition("{")[0] for key in scrape(server.url)}
    queries = [rule["expr"] for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]
    queries += [rule["seriesQuery"] for rule in adapter_rules()] + [adapter_query(rule) for rule in adapter_rules()]
    named = {name for query in queries for name in re.findall(r"\bintrollm_[a-z0-9_]+", query)}
    assert {"introllm_num_requests_running", "introllm_num_requests_waiting", "introllm_max_running_requests",
            "introllm_request_mean_temperature_sum"} <= named
    assert sorted(named - exported) == []
    # `up` is Prometheus' own; the HPA's metric is the adapter's name for the load query.
    assert all(re.search(r"\bup\b", query) is None or 'up{job="introllm"}' in query for query in queries)


def test_probe_paths_and_the_port_are_the_apps(server):
    with server.client() as client:
        for overlay, source in renders():
            objects = rendered(overlay, source)
            container = server_container(objects)
            [port] = container["ports"]
            assert port["name"] == "http" and int(config(objects)["INTROLLM_PORT"]) == port["containerPort"]
            expected = {"startupProbe": "/health/live", "livenessProbe": "/health/live",
                        "readinessProbe": "/health/ready"}
            for probe, path in expected.items():
                assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
                assert client.get(path).status_code == 200, path
            assert find(objects, "Service")["spec"]["ports"][0]["targetPort"] == "http"
            assert [entry["ports"] for entry in find(objects, "NetworkPolicy")["spec"]["ingress"]] == [
                [{"port": "http", "protocol": "TCP"}]] * 2
            # A cold start (compile with an empty cache) must fit before liveness takes over.
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 2 * COLD_START_S
        # The gateway routes only what the app serves, and never /metrics.
        operations = client.get("/openapi.json").json()["paths"]
        ingress = load_documents(INGRESS)[0]
        paths = [(path["path"], path["pathType"]) for rule in ingress["spec"]["rules"]
                 for path in rule["http"]["paths"]]
        for path, kind in paths:
            if kind == "Exact":
                assert client.get(path).status_code == 200, path
            else:
                assert kind == "Prefix" and any(route.startswith(path + "/") for route in operations), path
        assert not any("/metrics".startswith(path) for path, _ in paths)


def test_ingress_keeps_streams_unbuffered_and_outlasts_the_longest_request():
    ingress = load_documents(INGRESS)[0]
    notes = {key.removeprefix("nginx.ingress.kubernetes.io/"): value
             for key, value in ingress["metadata"]["annotations"].items()}
    assert notes["proxy-buffering"] == "off"
    defaults = Settings.model_fields
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[timeout]) > defaults["max_timeout_s"].default, timeout
    assert notes["proxy-body-size"] == f"{defaults['max_body_bytes'].default // 1024}k"
    objects = rendered("cpu", None)
    service = find(objects, "Service")
    backends = {path["backend"]["service"]["name"]
                for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]}
    assert backends == {service["metadata"]["name"]}
    assert ingress["metadata"]["namespace"] == service["metadata"]["namespace"]


@pytest.mark.parametrize("case", renders(), ids=render_id)
def test_the_config_is_valid_settings_and_the_grace_period_outlasts_the_drain(case, monkeypatch, tmp_path):
    objects = rendered(*case)
    container = server_container(objects)
    environment = {**config(objects), **{var["name"]: var["value"] for var in container["env"]}}
    fields = {f"INTROLLM_{name.upper()}" for name in Settings.model_fields}
    assert sorted(name for name in environment if name.startswith("INTROLLM_") and name not in fields) == []
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    keys = tmp_path / "api-keys"
    keys.write_text("a-key\n")
    monkeypatch.setenv("INTROLLM_API_KEY_FILE", str(keys))  # the Secret's mount, here
    settings = Settings()
    assert settings.host == "0.0.0.0" and settings.max_waiting_requests > 0

    spec = pod_spec(objects)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + settings.drain_grace_s + SERVER_SHUTDOWN_AFTER_GRACE_S


def test_service_links_are_off_since_they_would_break_the_servers_settings(monkeypatch):
    # For a Service named introllm, service links set INTROLLM_PORT=tcp://<ip>:8000 in every pod.
    monkeypatch.setenv("INTROLLM_PORT", "tcp://10.96.0.12:8000")
    with pytest.raises(pydantic.ValidationError):
        Settings()
    for overlay, source in renders():
        objects = rendered(overlay, source)
        assert find(objects, "Service")["metadata"]["name"] == "introllm"
        assert pod_spec(objects)["enableServiceLinks"] is False


# ---------------------------------------------------------------- security and volumes


@pytest.mark.parametrize("case", renders(), ids=render_id)
def test_pods_run_as_the_images_user_read_only_without_privileges(case):
    objects = rendered(*case)
    spec = pod_spec(objects)
    uid = int(re.search(r"^USER (\d+):(\d+)$", DOCKERFILES[0].read_text(), re.MULTILINE).group(1))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid == spec["securityContext"]["runAsGroup"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert find(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert "limits" in container["resources"] and "requests" in container["resources"], container["name"]
    assert not any("hostPath" in volume for volume in spec["volumes"])
    assert find(objects, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def mount_of(container: dict, volumes: dict[str, dict], path: str) -> tuple[dict, dict]:
    """The mount (and its volume) that holds `path`: the longest mountPath that is a prefix of it."""
    mounts = [m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert mounts, f"{path} is on the read-only root filesystem"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    return mount, volumes[mount["name"]]


@pytest.mark.parametrize("case", renders(), ids=render_id)
def test_everything_the_server_writes_is_on_a_writable_volume_and_the_keys_come_from_the_secret(case):
    objects = rendered(*case)
    container = server_container(objects)
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    env = {var["name"]: var["value"] for var in container["env"]}
    dockerfile_cache = re.search(r"INTROLLM_COMPILE_CACHE_DIR=(\S+)", DOCKERFILES[0].read_text()).group(1)
    for path in (env["INTROLLM_COMPILE_CACHE_DIR"], env["TRITON_CACHE_DIR"], env["HOME"], env["TMPDIR"], "/tmp",
                 dockerfile_cache):
        mount, volume = mount_of(container, volumes, path)
        assert not mount.get("readOnly") and "emptyDir" in volume, path

    secret = load_documents(SECRET_EXAMPLE)[0]
    mount, volume = mount_of(container, volumes, env["INTROLLM_API_KEY_FILE"])
    assert mount["readOnly"] is True and "subPath" not in mount  # a subPath mount never sees an update
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert env["INTROLLM_API_KEY_FILE"] == f"{mount['mountPath']}/{next(iter(secret['stringData']))}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_checkpoint_comes_from_the_image_a_volume_claim_or_an_init_container(overlay):
    image = rendered(overlay, None)
    assert "INTROLLM_CHECKPOINT" not in config(image)  # the image's default, its bundled model
    assert "checkpoint" not in {volume["name"] for volume in pod_spec(image)["volumes"]}

    for source in CHECKPOINT_COMPONENTS:
        objects = rendered(overlay, source)
        path = config(objects)["INTROLLM_CHECKPOINT"]
        container = server_container(objects)
        volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
        mount, volume = mount_of(container, volumes, path)
        assert mount["name"] == "checkpoint" and mount["readOnly"] is True and mount["mountPath"] == path
        if source == "checkpoint-pvc":
            claim = find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
            assert "ReadWriteMany" in claim["spec"]["accessModes"]  # pods on many nodes
        else:
            [init] = pod_spec(objects)["initContainers"]
            [target] = [m for m in init["volumeMounts"] if m["name"] == "checkpoint"]
            assert "emptyDir" in volume and target["mountPath"] == path and not target.get("readOnly")
            assert init["command"][-1].rstrip("/") == path


def test_overlays_cpu_and_gpu():
    cpu, gpu = rendered("cpu", None), rendered("gpu", None)
    cpu_container, gpu_container = server_container(cpu), server_container(gpu)
    assert cpu_container["image"].endswith(":cpu") and gpu_container["image"].endswith(":cuda")
    assert config(cpu)["INTROLLM_DEVICE"] == "cpu" and config(gpu)["INTROLLM_DEVICE"] == "cuda"
    assert config(gpu)["INTROLLM_DTYPE"] == "bfloat16"
    # CPU: whole CPUs, requests = limits (Guaranteed), the machine of BENCHMARKS.md.
    assert cpu_container["resources"]["requests"] == cpu_container["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    spec = pod_spec(gpu)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "nodeSelector" not in pod_spec(cpu) and "tolerations" not in pod_spec(cpu)


# ---------------------------------------------------------------- the renderer


@pytest.mark.parametrize("case", renders(), ids=render_id)
def test_the_renderer_gives_what_kubectl_apply_k_applies(case, tmp_path):
    # The user's path is `kubectl apply -k`: its kustomize must render exactly the objects every
    # other test checks. A checkpoint source is chosen by uncommenting its line in the overlay.
    overlay, source = case
    shutil.copytree(KUBE, tmp_path / "kubernetes")
    directory = tmp_path / "kubernetes" / "overlays" / overlay
    if source is not None:
        text = (directory / "kustomization.yaml").read_text()
        line = f"  # - ../../components/{source}"
        assert text.count(line) == 1, f"{overlay}: no commented line selecting {source}"
        (directory / "kustomization.yaml").write_text(text.replace(line, f"  - ../../components/{source}"))
    result = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    def by_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
        named = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
        assert len(named) == len(objects)
        return named

    # kustomize orders the objects by kind (Namespace first); the objects themselves must be equal.
    assert by_name([doc for doc in yaml.safe_load_all(result.stdout) if doc]) == by_name(rendered(overlay, source))


def test_renderer_merges_lists_by_their_kubernetes_key_and_replaces_the_others():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["p", "q"]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["r"]},
                            {"name": "b"}]}
    assert strategic_merge(base, patch) == {"containers": [
        {"name": "b"},
        {"name": "a", "env": [{"name": "Y", "value": "2"}, {"name": "X", "value": "1"}], "args": ["r"]}]}
    assert strategic_merge({"a": 1, "b": 2}, {"b": None}) == {"a": 1}


def test_renderer_refuses_kustomization_fields_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(AssertionError, match="configMapGenerator"):
        render(Path(tmp_path))
