#!/bin/sh
# RUSTC_WORKSPACE_WRAPPER for scripts/test.sh: compiles the workspace's own crates with
# clippy-driver (rustc plus clippy's lints), warnings as errors. `cargo clippy` does the same
# in a separate check pass, which compiles every dependency a second time in check mode
# (7 min of a cold CI run on 2 cores); as the wrapper of the test build, the dependencies are
# built once. Cargo calls it as `clippy-wrapper.sh <rustc> <args>`; clippy-driver drops the
# rustc path itself.
exec clippy-driver "$@" -D warnings
