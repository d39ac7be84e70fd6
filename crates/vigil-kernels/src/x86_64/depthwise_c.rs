//! `DepthwiseC` (channel-last depthwise convolution) for AVX2 + FMA.
use std::arch::x86_64::*;

use tract_linalg::isa::{Arch, Isa, IsaReq};
use tract_linalg::routines::{Func, Routine, RoutineFactory};

inventory::submit! {
    Routine {
        func: Func::DepthwiseC,
        arch: Some(Arch::X86_64),
        isa: IsaReq::ANY.needing(&[Isa::X86_64Avx2, Isa::X86_64Fma]),
        boost: 0,
        round_trip: false,
        factory: RoutineFactory::DepthwiseCF32 {
            name: "vigil_avx2_depthwise_c_f32",
            run: depthwise_c_f32,
        },
    }
}

/// tract's `DepthwiseCF32` contract: `len` output positions of `channels` contiguous
/// channels each; point `i`, channel `c` is `bias[c]` plus, for every tap `t`,
/// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`.
///
/// Channels go 32, then 8, then 1 at a time; two output positions share each kernel load.
///
/// # Safety
/// The host must support AVX2 and FMA (tract checks the routine's `isa` before it
/// dispatches here). `input.offset(i * in_stride + offsets[t] + c)` and
/// `kernel.add(tap_indices[t] * k_stride + c)` must be readable for every tap, every `i`
/// below `len` and every `c` below `channels`; `channels` values readable from `bias`
/// and writable from `output.offset(i * out_stride)` for every `i` below `len`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise_c_f32(
    input: *const f32,
    output: *mut f32,
    kernel: *const f32,
    tap_indices: &[usize],
    offsets: &[isize],
    bias: *const f32,
    channels: usize,
    k_stride: usize,
    len: usize,
    in_stride: isize,
    out_stride: isize,
) {
    let taps = tap_indices.len().min(offsets.len());
    // Channel blocks outer, output positions inner: one block's kernel taps (25 × 128 B
    // for a 5×5 window) and the input window it slides over stay in L1 for the whole
    // run, instead of a sweep over every channel per position evicting them.
    // SAFETY (whole body): every pointer formed below stays within the ranges the caller
    // guarantees readable / writable (see the function's safety section): `c + 32` and
    // `c + 8` never exceed `channels`, and `i + 1 < len` in the paired loops.
    unsafe {
        let mut c = 0usize;
        while c + 32 <= channels {
            let b = bias.add(c);
            let bv = [
                _mm256_loadu_ps(b),
                _mm256_loadu_ps(b.add(8)),
                _mm256_loadu_ps(b.add(16)),
                _mm256_loadu_ps(b.add(24)),
            ];
            let mut i = 0usize;
            while i < len {
                // Two positions share each kernel load; the last one of an odd run
                // is computed twice into the same place (`j == i`).
                let j = if i + 1 < len { i + 1 } else { i };
                let x0 = input.offset(i as isize * in_stride).add(c);
                let x1 = input.offset(j as isize * in_stride).add(c);
                let (mut a0, mut a1, mut a2, mut a3) = (bv[0], bv[1], bv[2], bv[3]);
                let (mut b0, mut b1, mut b2, mut b3) = (bv[0], bv[1], bv[2], bv[3]);
                for t in 0..taps {
                    let k = kernel.add(*tap_indices.get_unchecked(t) * k_stride + c);
                    let off = *offsets.get_unchecked(t);
                    let p = x0.offset(off);
                    let q = x1.offset(off);
                    let (k0, k1, k2, k3) = (
                        _mm256_loadu_ps(k),
                        _mm256_loadu_ps(k.add(8)),
                        _mm256_loadu_ps(k.add(16)),
                        _mm256_loadu_ps(k.add(24)),
                    );
                    a0 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(p), a0);
                    a1 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(p.add(8)), a1);
                    a2 = _mm256_fmadd_ps(k2, _mm256_loadu_ps(p.add(16)), a2);
                    a3 = _mm256_fmadd_ps(k3, _mm256_loadu_ps(p.add(24)), a3);
                    b0 = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q), b0);
                    b1 = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q.add(8)), b1);
                    b2 = _mm256_fmadd_ps(k2, _mm256_loadu_ps(q.add(16)), b2);
                    b3 = _mm256_fmadd_ps(k3, _mm256_loadu_ps(q.add(24)), b3);
                }
                let p = output.offset(i as isize * out_stride).add(c);
                let q = output.offset(j as isize * out_stride).add(c);
                _mm256_storeu_ps(q, b0);
                _mm256_storeu_ps(q.add(8), b1);
                _mm256_storeu_ps(q.add(16), b2);
                _mm256_storeu_ps(q.add(24), b3);
                _mm256_storeu_ps(p, a0);
                _mm256_storeu_ps(p.add(8), a1);
                _mm256_storeu_ps(p.add(16), a2);
                _mm256_storeu_ps(p.add(24), a3);
                i += 2;
            }
            c += 32;
        }
        while c + 8 <= channels {
            let bv = _mm256_loadu_ps(bias.add(c));
            let mut i = 0usize;
            while i < len {
                let j = if i + 1 < len { i + 1 } else { i };
                let x0 = input.offset(i as isize * in_stride).add(c);
                let x1 = input.offset(j as isize * in_stride).add(c);
                let (mut a, mut b) = (bv, bv);
                for t in 0..taps {
                    let k =
                        _mm256_loadu_ps(kernel.add(*tap_indices.get_unchecked(t) * k_stride + c));
                    let off = *offsets.get_unchecked(t);
                    a = _mm256_fmadd_ps(k, _mm256_loadu_ps(x0.offset(off)), a);
                    b = _mm256_fmadd_ps(k, _mm256_loadu_ps(x1.offset(off)), b);
                }
                _mm256_storeu_ps(output.offset(j as isize * out_stride).add(c), b);
                _mm256_storeu_ps(output.offset(i as isize * out_stride).add(c), a);
                i += 2;
            }
            c += 8;
        }
        if c < channels {
            for i in 0..len {
                scalar_tail(
                    input.offset(i as isize * in_stride),
                    output.offset(i as isize * out_stride),
                    kernel,
                    tap_indices,
                    offsets,
                    bias,
                    c,
                    channels,
                    k_stride,
                );
            }
        }
    }
}

/// Channels `c0..channels` of one output position, one at a time (FMA rounding, like
/// the vector lanes).
///
/// # Safety
/// As [`depthwise_c_f32`], for the one position `x` / `o` point at.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_tail(
    x: *const f32,
    o: *mut f32,
    kernel: *const f32,
    tap_indices: &[usize],
    offsets: &[isize],
    bias: *const f32,
    c0: usize,
    channels: usize,
    k_stride: usize,
) {
    // SAFETY: same ranges as the caller's, `c < channels`.
    unsafe {
        for c in c0..channels {
            let mut s = *bias.add(c);
            for (&kix, &off) in tap_indices.iter().zip(offsets) {
                s = (*kernel.add(kix * k_stride + c)).mul_add(*x.offset(off).add(c), s);
            }
            *o.add(c) = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::depthwise_c_f32;

    /// The contract in plain loops (f64 accumulation: the tolerance covers f32 rounding).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        input: &[f32],
        kernel: &[f32],
        tap_indices: &[usize],
        offsets: &[isize],
        bias: &[f32],
        channels: usize,
        k_stride: usize,
        len: usize,
        base: usize,
        in_stride: usize,
        out_stride: usize,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; len * out_stride];
        for i in 0..len {
            for c in 0..channels {
                let mut s = bias[c] as f64;
                for (&k, &off) in tap_indices.iter().zip(offsets) {
                    let x = input[(base as isize + (i * in_stride) as isize + off) as usize + c];
                    s += kernel[k * k_stride + c] as f64 * x as f64;
                }
                out[i * out_stride + c] = s as f32;
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn avx2_depthwise_c_matches_reference_for_every_channel_and_length_tail() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            panic!("this test machine has no AVX2+FMA: the kernel cannot be checked here");
        }
        // A 5×5 window over a channel-last image of width `w`; output positions step by
        // `stride` along the row.
        for &(channels, len, stride, k) in &[
            (1usize, 1usize, 1usize, 3usize),
            (7, 3, 1, 3),
            (8, 2, 2, 5),
            (31, 5, 1, 5),
            (32, 4, 2, 3),
            (40, 7, 1, 5),
            (96, 9, 2, 3),
            (1152, 7, 1, 5),
        ] {
            let k_stride = channels + 3; // a kernel block wider than the channel run
            let w = len * stride + k;
            let rows = k;
            let input = pseudo(rows * w * channels, channels as u32 + len as u32);
            let kernel = pseudo(k * k * k_stride, 7 + channels as u32);
            let bias = pseudo(channels, 99);
            let mut tap_indices = Vec::new();
            let mut offsets = Vec::new();
            for dy in 0..k {
                for dx in 0..k {
                    tap_indices.push(dy * k + dx);
                    offsets.push(((dy * w + dx) * channels) as isize);
                }
            }
            let in_stride = stride * channels;
            let out_stride = channels + 5;
            let expected = reference(
                &input,
                &kernel,
                &tap_indices,
                &offsets,
                &bias,
                channels,
                k_stride,
                len,
                0,
                in_stride,
                out_stride,
            );
            let mut out = vec![f32::NAN; len * out_stride];
            // SAFETY: AVX2+FMA checked above; every range the contract names lies inside
            // `input`, `kernel`, `bias` and `out` by construction.
            unsafe {
                depthwise_c_f32(
                    input.as_ptr(),
                    out.as_mut_ptr(),
                    kernel.as_ptr(),
                    &tap_indices,
                    &offsets,
                    bias.as_ptr(),
                    channels,
                    k_stride,
                    len,
                    in_stride as isize,
                    out_stride as isize,
                )
            };
            for i in 0..len {
                for c in 0..channels {
                    let (e, g) = (expected[i * out_stride + c], out[i * out_stride + c]);
                    assert!(
                        (e - g).abs() <= 1e-5 * (1.0 + e.abs()),
                        "channels {channels} len {len} stride {stride}: [{i}, {c}] {g} vs {e}"
                    );
                }
                // The gap between output positions is not written.
                for c in channels..out_stride {
                    if i + 1 < len || c < out_stride {
                        assert!(out[i * out_stride + c].is_nan(), "wrote past channels");
                    }
                }
            }
        }
    }

    #[test]
    fn tract_resolves_depthwise_c_to_the_vigil_kernel_on_avx2_hosts() {
        let names = crate::registered();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert!(names.contains(&"vigil_avx2_depthwise_c_f32"), "{names:?}");
        } else {
            assert!(names.is_empty());
        }
    }
}
