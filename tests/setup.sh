#!/usr/bin/env bash
# Debian packages the tests need that a fresh machine may lack (the README's test command runs this first):
# - faketime: libfaketime runs one operator replica on a skewed wall clock (tests/system.rs).
set -euo pipefail
need=()
ls /usr/lib/*-linux-gnu/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
echo "installing ${need[*]} (Debian)" >&2
$sudo apt-get install -y --no-install-recommends "${need[@]}" \
  || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${need[@]}"; }
