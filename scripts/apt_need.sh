#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet (no-op when
# VIGIL_SKIP_APT=1 or without apt-get). Used by test.sh and edge.sh.
set -euo pipefail
if [ "${VIGIL_SKIP_APT:-0}" = 1 ] || ! command -v apt-get >/dev/null; then
  exit 0
fi
need=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
