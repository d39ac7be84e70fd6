// 1×1 convolution, stride 1, no padding, one group, O % 4 == 0: a matrix product per image,
// one dispatch per chunk of output channels whose weights fit one 64 KiB uniform buffer.
// Each invocation computes 4 consecutive pixels × 16 output channels (8 when WIDE is
// false): per input channel 4 activation loads (storage) feed 64 (32) multiply-adds with 4
// (2) weight vec4 from the uniform buffer. On lavapipe a storage load is a branchy loop over
// the SIMD lanes and a uniform load a plain gather, so the weights cost little.
// Weights: [block][C] × 16 (8) floats, zero past O; blocks `first` .. `first + nb`.
// p: 0 count (N × nb × ⌈HW/4⌉), 1 C, 2 HW, 3 O, 4 bias (0 none, 1 scalar, 2 per channel),
//    5 clamp flags, 6 lo bits, 7 hi bits, 8 first block, 9 nb
override WIDE: bool = true;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> w: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn bias4(o: u32) -> vec4<f32> {
    if (prm(4) == 1u) { return vec4<f32>(bias[0]); }
    if (prm(4) == 2u) { return vec4<f32>(bias[o], bias[o + 1u], bias[o + 2u], bias[o + 3u]); }
    return vec4<f32>(0.0);
}

// Channels o..o+3 of pixels px..px+3 (those inside the plane) from 4 accumulators.
fn store(yi: u32, px: u32, HW: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, b: vec4<f32>) {
    let flags = prm(5);
    let lo = bitcast<f32>(prm(6));
    let hi = bitcast<f32>(prm(7));
    store4(yi, HW, a0 + b, flags, lo, hi);
    if (px + 1u < HW) { store4(yi + 1u, HW, a1 + b, flags, lo, hi); }
    if (px + 2u < HW) { store4(yi + 2u, HW, a2 + b, flags, lo, hi); }
    if (px + 3u < HW) { store4(yi + 3u, HW, a3 + b, flags, lo, hi); }
}

fn store4(yi: u32, HW: u32, a: vec4<f32>, flags: u32, lo: f32, hi: f32) {
    y[yi] = clamp_out(a.x, flags, lo, hi);
    y[yi + HW] = clamp_out(a.y, flags, lo, hi);
    y[yi + 2u * HW] = clamp_out(a.z, flags, lo, hi);
    y[yi + 3u * HW] = clamp_out(a.w, flags, lo, hi);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let HW = prm(2); let O = prm(3); let NB = prm(9);
    let HW4 = (HW + 3u) / 4u;
    let px = (idx % HW4) * 4u;
    let t = idx / HW4;
    let lb = t % NB;
    let n = t / NB;
    // Pixels past the end of the plane read the last one (and are not written).
    let d1 = min(px + 1u, HW - 1u) - px;
    let d2 = min(px + 2u, HW - 1u) - px;
    let d3 = min(px + 3u, HW - 1u) - px;
    let q = select(2u, 4u, WIDE);
    var xi = n * C * HW + px;
    var wi = lb * C * q;
    // a<pixel><channel quad>
    var a00 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a20 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
    var a02 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0);
    var a03 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);
    for (var c = 0u; c < C; c = c + 1u) {
        let x0 = x[xi];
        let x1 = x[xi + d1];
        let x2 = x[xi + d2];
        let x3 = x[xi + d3];
        let w0 = w[wi];
        let w1 = w[wi + 1u];
        a00 = a00 + x0 * w0; a10 = a10 + x1 * w0; a20 = a20 + x2 * w0; a30 = a30 + x3 * w0;
        a01 = a01 + x0 * w1; a11 = a11 + x1 * w1; a21 = a21 + x2 * w1; a31 = a31 + x3 * w1;
        if (WIDE) {
            let w2 = w[wi + 2u];
            let w3 = w[wi + 3u];
            a02 = a02 + x0 * w2; a12 = a12 + x1 * w2; a22 = a22 + x2 * w2; a32 = a32 + x3 * w2;
            a03 = a03 + x0 * w3; a13 = a13 + x1 * w3; a23 = a23 + x2 * w3; a33 = a33 + x3 * w3;
        }
        xi = xi + HW;
        wi = wi + q;
    }
    let o = (prm(8) + lb) * q * 4u;
    let yi = (n * O + o) * HW + px;
    store(yi, px, HW, a00, a10, a20, a30, bias4(o));
    if (o + 4u < O) { store(yi + 4u * HW, px, HW, a01, a11, a21, a31, bias4(o + 4u)); }
    if (WIDE) {
        if (o + 8u < O) { store(yi + 8u * HW, px, HW, a02, a12, a22, a32, bias4(o + 8u)); }
        if (o + 12u < O) { store(yi + 12u * HW, px, HW, a03, a13, a23, a33, bias4(o + 12u)); }
    }
}
