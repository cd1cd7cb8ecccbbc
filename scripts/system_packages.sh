#!/usr/bin/env bash
# Debian packages the tests need, installed only when missing (`make test` runs this first):
#   prometheus - tests/test_ops.py scrapes a Ray job through a real Prometheus (jobs/grafana/ queries)
#   chromium   - tests/test_ops.py loads the Ray dashboard in headless Chromium
# Needs apt-get and root (or sudo) only when something is missing.
set -euo pipefail
declare -A CMD=([prometheus]=prometheus [chromium]=chromium)
missing=()
for pkg in "${!CMD[@]}"; do
  command -v "${CMD[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${missing[*]} and no apt-get here: install them with your package manager" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "error: missing ${missing[*]}; run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
echo "installing Debian packages: ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
