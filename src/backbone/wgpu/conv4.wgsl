// Direct 2-D convolution, one group, O % 4 == 0: each invocation computes 4 output channels
// of one output pixel; weights packed [O/4][C][KH][KW] × vec4 at load time. Strides,
// dilations, (asymmetric) zero padding, bias, fused clamp.
// p: 0 count (N × O/4 × OH × OW), 1 C, 2 H, 3 W, 4 O, 5 OH, 6 OW, 7 KH, 8 KW, 9 SH, 10 SW,
//    11 DH, 12 DW, 13 pad top, 14 pad left, 15 (unused), 16 bias mode, 17 clamp flags,
//    18 lo bits, 19 hi bits
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let H = prm(2); let W = prm(3); let O = prm(4); let OH = prm(5); let OW = prm(6);
    let KH = prm(7); let KW = prm(8); let SH = prm(9); let SW = prm(10); let DH = prm(11); let DW = prm(12);
    let ox = idx % OW;
    let t = idx / OW;
    let oy = t % OH;
    let t2 = t / OH;
    let O4 = O / 4u;
    let ob = t2 % O4;
    let n = t2 / O4;
    let iy0 = i32(oy * SH) - i32(prm(13));
    let ix0 = i32(ox * SW) - i32(prm(14));
    // The kernel window clipped to the image, once.
    var ky0 = 0u;
    while (ky0 < KH && iy0 + i32(ky0 * DH) < 0) { ky0 = ky0 + 1u; }
    var ky1 = KH;
    while (ky1 > ky0 && iy0 + i32((ky1 - 1u) * DH) >= i32(H)) { ky1 = ky1 - 1u; }
    var kx0 = 0u;
    while (kx0 < KW && ix0 + i32(kx0 * DW) < 0) { kx0 = kx0 + 1u; }
    var kx1 = KW;
    while (kx1 > kx0 && ix0 + i32((kx1 - 1u) * DW) >= i32(W)) { kx1 = kx1 - 1u; }
    var a = vec4<f32>(0.0);
    let K = KH * KW;
    for (var c = 0u; c < C; c = c + 1u) {
        let xb = (n * C + c) * H * W;
        let wb = (ob * C + c) * K;
        for (var ky = ky0; ky < ky1; ky = ky + 1u) {
            let row = xb + u32(iy0 + i32(ky * DH)) * W;
            let wr = wb + ky * KW;
            for (var kx = kx0; kx < kx1; kx = kx + 1u) {
                a = a + x[row + u32(ix0 + i32(kx * DW))] * w[wr + kx];
            }
        }
    }
    let o = ob * 4u;
    if (prm(16) == 1u) { a = a + vec4<f32>(bias[0]); }
    if (prm(16) == 2u) { a = a + vec4<f32>(bias[o], bias[o + 1u], bias[o + 2u], bias[o + 3u]); }
    let flags = prm(17);
    let lo = bitcast<f32>(prm(18));
    let hi = bitcast<f32>(prm(19));
    let plane = OH * OW;
    let yi = (n * O + o) * plane + oy * OW + ox;
    y[yi] = clamp_out(a.x, flags, lo, hi);
    y[yi + plane] = clamp_out(a.y, flags, lo, hi);
    y[yi + 2u * plane] = clamp_out(a.z, flags, lo, hi);
    y[yi + 3u * plane] = clamp_out(a.w, flags, lo, hi);
}
