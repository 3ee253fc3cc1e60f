#!/usr/bin/env bash
# Installs what the container test (tests/container, `pytest -m container`) needs on a Debian
# machine with no Docker engine: podman, buildah, runc and debootstrap from apt. The Python
# tools (podman-compose, hadolint, a Docker Compose CLI for `config` validation) are pinned in
# pyproject's dev extra. Idempotent: a second run installs nothing.
#
#   .ci/setup-containers.sh
#
# Runs as root, as CI does. See docs/containers.md.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

# runc: Debian 12's crun fails here ("cgroups in hybrid mode not supported").
# debootstrap: the test bootstraps its stand-in for python:3.11-slim (no image registry here).
APT_PACKAGES=(podman buildah runc debootstrap)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "setup-containers: apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "setup-containers: ready ($(podman --version))"
