#!/usr/bin/env bash
# Installs what the container tests (tests/container, `pytest -m container`) need on a Debian
# machine with no Docker engine running: podman, buildah, runc and debootstrap from apt, and
# Debian's Docker Engine (docker.io: dockerd 20.10 and its client /usr/bin/docker), which
# tests/container/test_docker.py starts by itself in a private directory (never as a service).
# The Python tools (podman-compose, hadolint, a Docker Compose CLI for `config` validation)
# are pinned in pyproject's dev extra; checkov, kubernetes-validate and kubectl in
# requirements/tools.txt (`make test` makes that venv). Idempotent: a second run installs nothing.
#
#   .ci/setup-containers.sh
#
# Runs as root, as CI does. See docs/containers.md.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive

# runc: Debian 12's crun fails here ("cgroups in hybrid mode not supported").
# debootstrap: the test bootstraps its stand-in for python:3.11-slim (no image registry here).
# catatonit: the pause process of the infra container that `podman kube play` pods need.
# docker.io: brings containerd, iptables and tini with it; nothing is started at install.
APT_PACKAGES=(podman buildah runc debootstrap catatonit docker.io)
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

echo "setup-containers: ready ($(podman --version); $(/usr/bin/docker --version))"
