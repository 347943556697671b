#!/usr/bin/env bash
# Chart tests: installs its Python tools into .venv (pinned) and runs them. Needs the emulator binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
cargo build --quiet --locked -p pdso-testkit --bin kube-emulator
.venv/bin/python -m pytest -q tests/chart
