"""The Kubernetes manifests in docker/kubernetes/, rendered here the way `kubectl apply -k` renders them.

No kustomize binary installs from the package registries this project uses, so `render` is a
minimal kustomize for exactly the subset the manifests use, and refuses anything else (an unknown
kustomization field is an error, never silently skipped):
  - `resources`: files (every YAML document in them) and directories holding a kustomization;
  - `components`: directories holding a `kind: Component` kustomization (resources + patches);
  - `patches`: `- path: file.yaml`, each a strategic-merge patch naming its target by kind and
    metadata.name: maps merge key by key, the lists Kubernetes merges by a key (containers,
    initContainers and volumes by name, env by name, volumeMounts by mountPath, ports by
    containerPort) merge item by item (new items first), every other list is replaced, as kustomize
    does; a null value deletes the key;
  - `images`: `name` / `newName` / `newTag` on containers and init containers;
  - `namespace`: set on every namespaced object.
Order as kustomize: resources, then components (each applied to what its parent accumulated),
then the kustomization's own patches, images and namespace.

Also the PrometheusRule made from docker/prometheus/alerts.yml (its one source): run
`python -m tests.deploy.kube prometheusrule` after editing alerts.yml (tests/deploy/test_kubernetes.py
fails while the committed file differs). `python -m tests.deploy.kube render docker/kubernetes/overlays/cpu`
prints an overlay as the tests see it.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.stack import ALERTS, DOCKER

KUBE = DOCKER / "kubernetes"
BASE = KUBE / "base"
OVERLAYS = {name: KUBE / "overlays" / name for name in ("cpu", "gpu")}
COMPONENTS = KUBE / "components"
CHECKPOINT_COMPONENTS = ("checkpoint-pvc", "checkpoint-copy")
PROMETHEUS_RULE = COMPONENTS / "prometheus-operator" / "prometheusrule.yaml"
ADAPTER_VALUES = KUBE / "prometheus-adapter" / "values.yaml"
INGRESS = KUBE / "gateway" / "ingress.yaml"
SECRET_EXAMPLE = BASE / "secret.example.yaml"

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images", "namespace"}
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
    "volumeMounts": "mountPath", "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass"}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(directory: Path) -> dict:
    found = [directory / name for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")
             if (directory / name).exists()]
    assert len(found) == 1, f"{directory}: one kustomization file expected, found {found}"
    spec = yaml.safe_load(found[0].read_text())
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{found[0]}: fields this renderer does not implement: {sorted(unknown)}"
    return spec


def render(directory: Path, extra_components: tuple[str | Path, ...] = ()) -> list[dict]:
    """The objects `kubectl apply -k directory` would send, plus `extra_components` (paths or names
    under docker/kubernetes/components/) as if listed in the kustomization's `components`."""
    spec = kustomization(directory)
    assert spec.get("kind", "Kustomization") == "Kustomization", f"{directory} is a {spec['kind']}"
    objects = _accumulate(directory, spec)
    components = [directory / entry for entry in spec.get("components", [])]
    components += [Path(entry) if isinstance(entry, Path) else COMPONENTS / entry for entry in extra_components]
    for component in components:
        objects = _apply_component(component.resolve(), objects)
    return _transform(directory, spec, objects)


def _accumulate(directory: Path, spec: dict) -> list[dict]:
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        objects += render(path) if path.is_dir() else load_documents(path)
    return objects


def _apply_component(directory: Path, objects: list[dict]) -> list[dict]:
    spec = kustomization(directory)
    assert spec.get("kind") == "Component", f"{directory}: a component must be `kind: Component`"
    return _transform(directory, spec, objects + _accumulate(directory, spec))


def _transform(directory: Path, spec: dict, objects: list[dict]) -> list[dict]:
    objects = copy.deepcopy(objects)
    for patch_entry in spec.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{directory}: only `- path: file` patches are implemented"
        for patch in load_documents(directory / patch_entry["path"]):
            target = _find(objects, patch["kind"], patch["metadata"]["name"])
            merged = strategic_merge(target, patch)
            objects[objects.index(target)] = merged
    for image in spec.get("images", []):
        assert set(image) <= {"name", "newName", "newTag"}, image
        for obj in objects:
            for container in _pod_containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def _find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"patch target {kind}/{name}: {len(matches)} objects match"
    return matches[0]


def _pod_containers(obj: dict) -> list[dict]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """`patch` merged into `base` as a strategic-merge patch (the subset described at the top)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged = [copy.deepcopy(item) for item in base]
        added = []
        for item in patch:
            same = [index for index, existing in enumerate(merged) if existing[key] == item[key]]
            if same:
                merged[same[0]] = strategic_merge(merged[same[0]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + merged  # kustomize puts a patch's new items first
    return copy.deepcopy(patch)


def find(objects: list[dict], kind: str, name: str = "introllm") -> dict:
    return _find(objects, kind, name)


# ---------------------------------------------------------------- the PrometheusRule


class _BlockStrings(yaml.SafeDumper):
    pass


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStrings.add_representer(str, _string)


def prometheus_rule() -> dict:
    """docker/prometheus/alerts.yml as a PrometheusRule: the same groups, untouched."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "introllm",
            "labels": {"app.kubernetes.io/name": "introllm", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": yaml.safe_load(ALERTS.read_text())["groups"]},
    }


def prometheus_rule_text() -> str:
    header = (
        "# GENERATED from docker/prometheus/alerts.yml (the one source of the alert rules) by\n"
        "#   python -m tests.deploy.kube prometheusrule\n"
        "# Edit alerts.yml, then run that; tests/deploy/test_kubernetes.py fails while this file differs.\n"
        "# `release: kube-prometheus-stack`: what that chart's Prometheus selects by default (ruleSelector).\n"
    )
    return header + yaml.dump(prometheus_rule(), Dumper=_BlockStrings, sort_keys=False, width=1000)


def main(argv: list[str]) -> None:
    if argv[:1] == ["prometheusrule"]:
        PROMETHEUS_RULE.write_text(prometheus_rule_text())
        print(f"wrote {PROMETHEUS_RULE}")
    elif argv[:1] == ["render"] and len(argv) >= 2:
        print(yaml.safe_dump_all(render(Path(argv[1]), tuple(argv[2:])), sort_keys=False), end="")
    else:
        sys.exit("usage: python -m tests.deploy.kube prometheusrule | render DIR [COMPONENT ...]")


if __name__ == "__main__":
    main(sys.argv[1:])
