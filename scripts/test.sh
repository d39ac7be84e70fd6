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
# `--deps-only`: install what this step needs, build and run nothing (.ci/run).
if [ "${1:-}" = --deps-only ]; then exit 0; fi

cargo fmt --all -- --check
# Clippy's lints, warnings denied, run while the test build compiles the workspace's own
# crates (scripts/clippy-wrapper.sh as cargo's workspace wrapper): the same lints as
# `cargo clippy --workspace --all-targets -- -D warnings` without its separate check pass over
# every dependency (7 min of a cold run on 2 cores). A lint is a build error here.
RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-wrapper.sh" \
  cargo test --workspace --all-targets --locked
