// Direct 2-D convolution, NCHW input, OIHW kernel, groups (depthwise = C groups),
// strides, dilations, (asymmetric) zero padding, optional bias and fused clamp.
// p: 0 count, 1 C, 2 H, 3 W, 4 O, 5 OH, 6 OW, 7 KH, 8 KW, 9 SH, 10 SW, 11 DH, 12 DW,
//    13 pad top, 14 pad left, 15 groups, 16 bias (0 none, 1 scalar, 2 per channel),
//    17 clamp flags, 18 lo (f32 bits), 19 hi (f32 bits)
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let H = prm(2); let W = prm(3); let O = prm(4); let OH = prm(5); let OW = prm(6);
    let KH = prm(7); let KW = prm(8); let SH = prm(9); let SW = prm(10); let DH = prm(11); let DW = prm(12);
    let PT = i32(prm(13)); let PL = i32(prm(14)); let G = prm(15);
    let ox = idx % OW;
    let t = idx / OW;
    let oy = t % OH;
    let t2 = t / OH;
    let o = t2 % O;
    let n = t2 / O;
    let cpg = C / G;
    let opg = O / G;
    let g = o / opg;
    let iy0 = i32(oy * SH) - PT;
    let ix0 = i32(ox * SW) - PL;
    // The kernel window clipped to the image, once.
    var ky0 = 0u;
    while (ky0 < KH && iy0 + i32(ky0 * DH) < 0) { ky0 = ky0 + 1u; }
    var ky1 = KH;
    while (ky1 > ky0 && iy0 + i32((ky1 - 1u) * DH) >= i32(H)) { ky1 = ky1 - 1u; }
    var kx0 = 0u;
    while (kx0 < KW && ix0 + i32(kx0 * DW) < 0) { kx0 = kx0 + 1u; }
    var kx1 = KW;
    while (kx1 > kx0 && ix0 + i32((kx1 - 1u) * DW) >= i32(W)) { kx1 = kx1 - 1u; }
    var acc = 0.0;
    for (var ci = 0u; ci < cpg; ci = ci + 1u) {
        let xbase = (n * C + g * cpg + ci) * H * W;
        let wbase = (o * cpg + ci) * KH * KW;
        for (var ky = ky0; ky < ky1; ky = ky + 1u) {
            let row = xbase + u32(iy0 + i32(ky * DH)) * W;
            let wr = wbase + ky * KW;
            for (var kx = kx0; kx < kx1; kx = kx + 1u) {
                acc = acc + x[row + u32(ix0 + i32(kx * DW))] * w[wr + kx];
            }
        }
    }
    if (prm(16) == 1u) { acc = acc + bias[0]; }
    if (prm(16) == 2u) { acc = acc + bias[o]; }
    y[idx] = clamp_out(acc, prm(17), bitcast<f32>(prm(18)), bitcast<f32>(prm(19)));
}
