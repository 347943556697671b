#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (config: deny.toml). Installs cargo-deny if it is missing.
# Licences, banned crates and sources are always checked. The RustSec advisory database is cloned from GitHub;
# when GitHub cannot be reached (our CI machines), the advisory check is reported as skipped, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  echo "installing cargo-deny $DENY_VERSION (a few minutes, once)"
  cargo install --quiet --locked cargo-deny --version "$DENY_VERSION"
fi
cargo deny --log-level error check bans licenses sources
if timeout 20 git ls-remote https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
else
  echo "cargo deny: advisories SKIPPED: the RustSec database (github.com/RustSec/advisory-db) is unreachable from this machine"
fi
