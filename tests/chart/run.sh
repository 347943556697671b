#!/usr/bin/env bash
# Chart tests: installs its Python tools into .venv (pinned) and runs them. Needs the emulator binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
# promtool (alert rule tests) comes with Debian's prometheus package.
if ! command -v promtool >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
cargo build --quiet --locked -p pdso-testkit --bin kube-emulator
.venv/bin/python -m pytest -q tests/chart
