#!/usr/bin/env bash
# Installs what tests/test_report.py needs to open the Snakemake report in a real headless browser:
# Debian's Chromium and a font for its text. Idempotent: does nothing when `chromium` is already there.
# Run by `make test-setup`.
#
# Needs root (CI runs as root). Without root it only says what is missing: tests/test_report.py then
# skips with that reason, or fails when CI=true.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core)

if command -v chromium >/dev/null 2>&1; then
    echo "test-setup: chromium is installed ($(chromium --version 2>/dev/null | head -n 1))"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "test-setup: chromium is missing and not root, so not installing ${PACKAGES[*]};" \
         "tests/test_report.py will skip (or fail under CI=true)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-setup: chromium is missing and no apt-get to install ${PACKAGES[*]}" >&2
    exit 1
fi

echo "test-setup: installing ${PACKAGES[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
