#!/usr/bin/env bash
# Debian's Chromium (and a font) for the browser tests in tests/browser, which drive it with the
# Playwright Python package. Playwright's own browser download never works here: use this.
# Idempotent: does nothing when chromium is already installed.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "DejaVu Sans"; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
command -v chromium
