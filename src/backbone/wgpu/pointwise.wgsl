// 1×1 convolution, stride 1, no padding, one group, O % 4 == 0: a matrix product per image,
// one dispatch per chunk of output channels whose weights fit one 64 KiB uniform buffer.
// Each invocation computes 4 consecutive pixels × 4·Q output channels (Q = 8, 4 or 2 vec4
// quads, an override constant: 32, 16 or 8 channels): per input channel 4 activation loads
// (storage) feed 16·Q multiply-adds with Q weight vec4 from the uniform buffer. On lavapipe a
// storage load is a branchy loop over the SIMD lanes and a uniform load a plain gather, so
// the more channels per activation load the better, as far as 4·Q × C floats fit 64 KiB.
// Weights: [block][C] × 4·Q floats, zero past O; blocks `first` .. `first + nb`.
// p: 0 count (N × nb × ⌈HW/4⌉), 1 C, 2 HW, 3 O, 4 bias (0 none, 1 scalar, 2 per channel),
//    5 clamp flags, 6 lo bits, 7 hi bits, 8 first block, 9 nb
override Q: u32 = 4u;

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
    var xi = n * C * HW + px;
    var wi = lb * C * Q;
    // a<pixel>_<channel quad>
    var a0_0 = vec4<f32>(0.0); var a1_0 = vec4<f32>(0.0); var a2_0 = vec4<f32>(0.0); var a3_0 = vec4<f32>(0.0);
    var a0_1 = vec4<f32>(0.0); var a1_1 = vec4<f32>(0.0); var a2_1 = vec4<f32>(0.0); var a3_1 = vec4<f32>(0.0);
    var a0_2 = vec4<f32>(0.0); var a1_2 = vec4<f32>(0.0); var a2_2 = vec4<f32>(0.0); var a3_2 = vec4<f32>(0.0);
    var a0_3 = vec4<f32>(0.0); var a1_3 = vec4<f32>(0.0); var a2_3 = vec4<f32>(0.0); var a3_3 = vec4<f32>(0.0);
    var a0_4 = vec4<f32>(0.0); var a1_4 = vec4<f32>(0.0); var a2_4 = vec4<f32>(0.0); var a3_4 = vec4<f32>(0.0);
    var a0_5 = vec4<f32>(0.0); var a1_5 = vec4<f32>(0.0); var a2_5 = vec4<f32>(0.0); var a3_5 = vec4<f32>(0.0);
    var a0_6 = vec4<f32>(0.0); var a1_6 = vec4<f32>(0.0); var a2_6 = vec4<f32>(0.0); var a3_6 = vec4<f32>(0.0);
    var a0_7 = vec4<f32>(0.0); var a1_7 = vec4<f32>(0.0); var a2_7 = vec4<f32>(0.0); var a3_7 = vec4<f32>(0.0);
    for (var c = 0u; c < C; c = c + 1u) {
        let x0 = x[xi];
        let x1 = x[xi + d1];
        let x2 = x[xi + d2];
        let x3 = x[xi + d3];
        let w0 = w[wi + 0u];
        a0_0 = a0_0 + x0 * w0; a1_0 = a1_0 + x1 * w0; a2_0 = a2_0 + x2 * w0; a3_0 = a3_0 + x3 * w0;
        let w1 = w[wi + 1u];
        a0_1 = a0_1 + x0 * w1; a1_1 = a1_1 + x1 * w1; a2_1 = a2_1 + x2 * w1; a3_1 = a3_1 + x3 * w1;
        if (Q >= 4u) {
            let w2 = w[wi + 2u];
            a0_2 = a0_2 + x0 * w2; a1_2 = a1_2 + x1 * w2; a2_2 = a2_2 + x2 * w2; a3_2 = a3_2 + x3 * w2;
            let w3 = w[wi + 3u];
            a0_3 = a0_3 + x0 * w3; a1_3 = a1_3 + x1 * w3; a2_3 = a2_3 + x2 * w3; a3_3 = a3_3 + x3 * w3;
        }
        if (Q >= 8u) {
            let w4 = w[wi + 4u];
            a0_4 = a0_4 + x0 * w4; a1_4 = a1_4 + x1 * w4; a2_4 = a2_4 + x2 * w4; a3_4 = a3_4 + x3 * w4;
            let w5 = w[wi + 5u];
            a0_5 = a0_5 + x0 * w5; a1_5 = a1_5 + x1 * w5; a2_5 = a2_5 + x2 * w5; a3_5 = a3_5 + x3 * w5;
            let w6 = w[wi + 6u];
            a0_6 = a0_6 + x0 * w6; a1_6 = a1_6 + x1 * w6; a2_6 = a2_6 + x2 * w6; a3_6 = a3_6 + x3 * w6;
            let w7 = w[wi + 7u];
            a0_7 = a0_7 + x0 * w7; a1_7 = a1_7 + x1 * w7; a2_7 = a2_7 + x2 * w7; a3_7 = a3_7 + x3 * w7;
        }
        xi = xi + HW;
        wi = wi + Q;
    }
    let o = (prm(8) + lb) * Q * 4u;
    let yi = (n * O + o) * HW + px;
    store(yi, px, HW, a0_0, a1_0, a2_0, a3_0, bias4(o));
    if (o + 4u < O) { store(yi + 4u * HW, px, HW, a0_1, a1_1, a2_1, a3_1, bias4(o + 4u)); }
    if (Q >= 4u) {
        if (o + 8u < O) { store(yi + 8u * HW, px, HW, a0_2, a1_2, a2_2, a3_2, bias4(o + 8u)); }
        if (o + 12u < O) { store(yi + 12u * HW, px, HW, a0_3, a1_3, a2_3, a3_3, bias4(o + 12u)); }
    }
    if (Q >= 8u) {
        if (o + 16u < O) { store(yi + 16u * HW, px, HW, a0_4, a1_4, a2_4, a3_4, bias4(o + 16u)); }
        if (o + 20u < O) { store(yi + 20u * HW, px, HW, a0_5, a1_5, a2_5, a3_5, bias4(o + 20u)); }
        if (o + 24u < O) { store(yi + 24u * HW, px, HW, a0_6, a1_6, a2_6, a3_6, bias4(o + 24u)); }
        if (o + 28u < O) { store(yi + 28u * HW, px, HW, a0_7, a1_7, a2_7, a3_7, bias4(o + 28u)); }
    }
}
