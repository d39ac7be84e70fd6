#!/usr/bin/env bash
# The wgpu backend's CI step, kept out of the default build (README "Backends: tract or
# wgpu"). Installs lavapipe (Mesa's software Vulkan driver: CI has no GPU), then builds with
# `--features wgpu` under clippy's lints and runs the library's tests, the parity tests
# against tract (tests/wgpu_parity.rs) and the daemon test with `backend = "wgpu"` against a
# real mosquitto (tests/wgpu_daemon.rs).
# Measured on the 2-core dev VM (shared with other builds, load average ~4-5): the feature's
# dependency build from a target dir warm for the default build = wgpu's own crates only
# (wgpu-core, naga, wgpu-hal, ash, glow…): Cargo.toml enables in the default build the
# features wgpu turns on in shared crates, so tract is not built a second time (it was:
# ~12.5 min); clippy ~2 min; wgpu_parity 5 min 10-20 s on lavapipe (Lite0 at ~0.4-0.5 s/frame; ~5 min
# of it the AUROC parity on half of magnetic_tile, 300 train + 248 test images, both
# backends); wgpu_daemon ~25-30 s.
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
# `--deps-only`: install what this step needs, build and run nothing (.ci/run).
if [ "${1:-}" = --deps-only ]; then exit 0; fi

# Clippy's lints, warnings denied (scripts/clippy-wrapper.sh, as in test.sh: no separate
# check pass over the dependencies), on every target the feature changes, built and run with
# it: the library and its unit tests, the binary, tests/backend_select.rs (asserts the
# feature is there), the parity tests and the daemon test.
RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-wrapper.sh" cargo test --locked --features wgpu \
  --lib --bins --test backend_select --test wgpu_parity --test wgpu_daemon
