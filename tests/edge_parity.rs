//! The parity tests the edge targets must pass, in one test binary: CI runs it for aarch64
//! under `qemu-aarch64 -cpu cortex-a72` (scripts/edge.sh), so tract's NEON kernels compute
//! the features. One binary because every test binary of a release (ThinLTO) build is a
//! whole-program link of its own: minutes each on a 2-core CI machine.
//!
//! On x86_64 the same tests run from their own files (`dfkde_parity`, `backbone`).
#![cfg(any(target_arch = "aarch64", target_arch = "arm"))]

#[path = "dfkde_parity.rs"]
mod dfkde_parity;

#[path = "backbone.rs"]
mod backbone;
