#!/usr/bin/env bash
# Install what vigil's tests need on a fresh Debian/Ubuntu machine, then run them.
#   VIGIL_SHARED   reference data folder (default: ../shared beside the repo)
#   VIGIL_SKIP_APT set to 1 to skip the apt-get step (packages already installed)
set -euo pipefail
cd "$(dirname "$0")/.."

export VIGIL_SHARED="${VIGIL_SHARED:-$(cd .. && pwd)/shared}"
if [ ! -d "$VIGIL_SHARED/fixtures/dfkde_golden" ] || [ ! -d "$VIGIL_SHARED/data/magnetic_tile" ]; then
  echo "FATAL: vigil's shared reference data is missing at $VIGIL_SHARED (set VIGIL_SHARED)" >&2
  exit 1
fi

./scripts/apt_need.sh fonts-dejavu-core mosquitto openssl ffmpeg systemd

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
