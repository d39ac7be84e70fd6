//! Hot-loop kernels vigil plugs into tract through tract-linalg's routine registry.
//!
//! tract 0.23 looks its convolution inner loops up by function in
//! `tract_linalg::routines`, one winner per host, chosen at run time from the instruction
//! sets the CPU reports. For `DepthwiseC` — a depthwise convolution with the channel as the
//! contiguous axis — aarch64 ships a NEON kernel and x86_64 none: tract 0.23.9 then keeps
//! depthwise convolutions `[C, H, W]` on x86_64 (its optimiser only moves them channel-last
//! when the host has a channel-inner kernel) and they ran at ~5 GFLOP/s, 42 % of
//! EfficientNet-Lite0's time for 9 % of its multiply-adds. This crate declares an AVX2 + FMA
//! kernel for that slot ([`x86_64::depthwise_c`]); with it, tract lays those convolutions
//! out channel-last on x86_64 too (docs/performance.md has the numbers).
//!
//! tract dispatches to a routine only when the host meets its `isa` requirement, so a
//! binary built with these still runs on x86_64 CPUs without AVX2 (they keep tract's own
//! paths). Each kernel follows the arithmetic of tract's reference loop (bias, then one
//! multiply-add per tap, in tap order) and is tested against a plain reference here; the
//! whole-network agreement with onnxruntime is tested in vigil (`tests/backbone.rs`).
//!
//! A crate of its own so that these loops build optimised, without debug assertions or
//! overflow checks, in every profile (see `[profile.dev.package.vigil-kernels]` in the
//! workspace manifest): under debug assertions each pointer step carries a precondition
//! check and the kernels ran 2–3× slower.

#![warn(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// The names of this crate's kernels tract resolves its slots to on this host (empty where
/// the host lacks AVX2 + FMA, or on other architectures). Calling it also keeps the
/// registrations linked into the final binary.
pub fn registered() -> Vec<&'static str> {
    use tract_linalg::routines::{best_for, Func};
    keep_linked();
    let host = tract_linalg::isa::native();
    [Func::DepthwiseC]
        .into_iter()
        .filter_map(|f| best_for(f, tract_data::prelude::DatumType::F32, &host))
        .map(|r| r.name())
        .filter(|n| n.starts_with("vigil_"))
        .collect()
}

/// Refer to every kernel from code that runs: `inventory` registrations live in the kernels'
/// object files, which the linker would otherwise drop from the final binary as unreferenced.
fn keep_linked() {
    #[cfg(target_arch = "x86_64")]
    {
        let kernels: [usize; 1] = [
            x86_64::depthwise_c::depthwise_c_f32 as tract_linalg::routines::DepthwiseCF32 as usize
        ];
        std::hint::black_box(kernels);
    }
}
