#!/usr/bin/env bash
# The wgpu backend's CI step, kept out of the default build (README "Backends: tract or
# wgpu"). Installs lavapipe (Mesa's software Vulkan driver: CI has no GPU), then runs clippy
# with `--features wgpu` and the parity tests against tract (tests/wgpu_parity.rs).
# Measured on the 2-core dev VM (shared with other builds): the feature's dependency build
# from a target dir warm for the default build ~12.5 min (wgpu-core, naga, and the crates
# whose feature set wgpu changes, tract included, are built a second time); clippy ~2 min;
# the tests ~4.5 min on lavapipe (3 min of it the AUROC subsample).
#   VIGIL_SHARED   reference data folder (default: ../shared beside the repo)
#   VIGIL_SKIP_APT set to 1 to skip the apt-get step (packages already installed)
set -euo pipefail
cd "$(dirname "$0")/.."

export VIGIL_SHARED="${VIGIL_SHARED:-$(cd .. && pwd)/shared}"
if [ ! -d "$VIGIL_SHARED/data/magnetic_tile" ]; then
  echo "FATAL: vigil's shared reference data is missing at $VIGIL_SHARED (set VIGIL_SHARED)" >&2
  exit 1
fi

./scripts/apt_need.sh mesa-vulkan-drivers libvulkan1 mosquitto

cargo clippy --all-targets --locked --features wgpu -- -D warnings
cargo test --locked --features wgpu --test wgpu_parity --test wgpu_daemon
