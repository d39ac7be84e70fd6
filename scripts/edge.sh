#!/usr/bin/env bash
# Edge targets, Docker-free (cross/README.md): release builds for Raspberry Pi / Jetson
# (aarch64 + armv7, the features the packages ship), the DFKDE golden parity and backbone
# parity tests for aarch64 under qemu-user on a Cortex-A72 (tract's NEON kernels), and the
# .deb packages, checked by scripts/check_deb.sh.
#   VIGIL_SHARED     reference data folder (default: ../shared beside the repo)
#   VIGIL_SKIP_APT   1: skip apt-get (packages already installed)
#   VIGIL_EDGE_TARGETS  space-separated subset of the targets below (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
export VIGIL_SHARED="${VIGIL_SHARED:-$(cd .. && pwd)/shared}"

TARGETS=${VIGIL_EDGE_TARGETS:-"aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"}
# What the packages ship: USB/UVC cameras are the main source on a Pi; not the demo's
# embedded broker (a default feature for desktops: Cargo.toml [features]).
FEATURES="--no-default-features --features v4l2"
CARGO_DEB_VERSION=3.8.0

./scripts/apt_need.sh gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf \
  libc6-dev-armhf-cross qemu-user libclang-dev clang systemd file
# shellcheck disable=SC2086
rustup target add $TARGETS
# `--deps-only`: install what this step needs, build and run nothing (.ci/run).
if [ "${1:-}" = --deps-only ]; then exit 0; fi

# bindgen (nokhwa → v4l2-sys-mit) parses the *target's* kernel headers.
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu"
export BINDGEN_EXTRA_CLANG_ARGS_armv7_unknown_linux_gnueabihf="--sysroot=/usr/arm-linux-gnueabihf"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

step() { echo "== $* ($(date -u +%H:%M:%S))"; }

# cargo-deb (a packaging tool, not shipped) is built in the background beside the release
# builds, which leave a core idle in their serial stretches (tract-core, the LTO links):
# in its own target directory (no lock shared with them), at opt-level 1 (it only
# compresses two packages).
DEB_PID=
if ! command -v cargo-deb >/dev/null; then
  mkdir -p "$TARGET_DIR"
  step "cargo install cargo-deb $CARGO_DEB_VERSION (background)"
  CARGO_TARGET_DIR="$TARGET_DIR/cargo-deb" CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" \
    >"$TARGET_DIR/cargo-deb-install.log" 2>&1 &
  DEB_PID=$!
fi
# Both targets in one cargo invocation: their dependency graphs interleave, so the long
# serial stretches of one (tract-core, tract-onnx, vigil, the fat-LTO link) run beside the
# other's crates instead of leaving the second core idle.
step "release build $TARGETS $FEATURES"
SECONDS=0
# shellcheck disable=SC2046
cargo build --release --locked $(printf -- '--target %s ' $TARGETS) $FEATURES --bin vigil
echo "release builds: $((SECONDS / 60)) min $((SECONDS % 60)) s"
for t in $TARGETS; do
  bin="$TARGET_DIR/$t/release/vigil"
  echo "$t: $(stat -c %s "$bin") bytes"
  file "$bin"
done

if [[ " $TARGETS " == *" aarch64-unknown-linux-gnu "* ]]; then
  # Same profile and features as the release build above: the dependencies are reused.
  # The emulated set is small: every golden DFKDE parity test, and the backbone tests with
  # one or two EfficientNet-Lite0 inferences each (resnet18 takes ~40 s per frame emulated).
  step "parity tests for aarch64 under qemu-aarch64 -cpu cortex-a72"
  SECONDS=0
  # tests/edge_parity.rs holds both suites: one test binary, one LTO link.
  # shellcheck disable=SC2086
  cargo test --release --locked --target aarch64-unknown-linux-gnu $FEATURES \
    --test edge_parity -- --skip resnet18 --skip forked_instances --skip symbolic_batch
  echo "aarch64 parity tests: $((SECONDS / 60)) min $((SECONDS % 60)) s"
fi

if [ -n "$DEB_PID" ]; then
  wait "$DEB_PID" || { cat "$TARGET_DIR/cargo-deb-install.log" >&2; exit 1; }
fi
for t in $TARGETS; do
  step "package $t"
  deb=$(cargo deb --no-build --no-strip --target "$t" --locked | tail -n1)
  echo "$deb"
  ./scripts/check_deb.sh "$deb"
done
