#!/usr/bin/env bash
# Prints the CHANGELOG.md section of one version (its body, without the heading): the GitHub release's notes.
# Usage: .github/release-notes.sh 0.2.0 [CHANGELOG.md]. Fails when the version has no section or it is empty.
set -euo pipefail
version="$1"
changelog="${2:-CHANGELOG.md}"
notes=$(awk -v v="$version" '
  /^## \[/ { if (found) exit; if (index($0, "## [" v "]") == 1) { found = 1; next } }
  found { print }
' "$changelog" | sed -e '/./,$!d')
if [ -z "${notes//[[:space:]]/}" ]; then
  echo "CHANGELOG has no section for $version" >&2
  exit 1
fi
printf '%s\n' "$notes"
