// 1×1 convolution, stride 1, no padding, one group, O % 4 == 0: a matrix product per image.
// Each invocation computes 4 output channels of 4 consecutive pixels; the weights are packed
// [O/4][C] × vec4 (the 4 channels' weights side by side) at load time.
// p: 0 count (N × O/4 × ⌈HW/4⌉), 1 C, 2 HW, 3 O, 4 bias (0 none, 1 scalar, 2 per channel),
//    5 clamp flags, 6 lo bits, 7 hi bits
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= p[0]) { return; }
    let C = p[1]; let HW = p[2]; let O = p[3];
    let HW4 = (HW + 3u) / 4u;
    let px = (idx % HW4) * 4u;
    let t = idx / HW4;
    let O4 = O / 4u;
    let ob = t % O4;
    let n = t / O4;
    // Pixels past the end of the plane read the last one (and are not written).
    let d1 = min(px + 1u, HW - 1u) - px;
    let d2 = min(px + 2u, HW - 1u) - px;
    let d3 = min(px + 3u, HW - 1u) - px;
    var xi = n * C * HW + px;
    var wi = ob * C;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var c = 0u; c < C; c = c + 1u) {
        let wv = w[wi];
        a0 = a0 + x[xi] * wv;
        a1 = a1 + x[xi + d1] * wv;
        a2 = a2 + x[xi + d2] * wv;
        a3 = a3 + x[xi + d3] * wv;
        xi = xi + HW;
        wi = wi + 1u;
    }
    let o = ob * 4u;
    var b = vec4<f32>(0.0);
    if (p[4] == 1u) { b = vec4<f32>(bias[0]); }
    if (p[4] == 2u) { b = vec4<f32>(bias[o], bias[o + 1u], bias[o + 2u], bias[o + 3u]); }
    let flags = p[5];
    let lo = bitcast<f32>(p[6]);
    let hi = bitcast<f32>(p[7]);
    let yi = (n * O + o) * HW + px;
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
