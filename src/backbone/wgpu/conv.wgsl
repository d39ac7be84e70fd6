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
    if (idx >= p[0]) { return; }
    let C = p[1]; let H = p[2]; let W = p[3]; let O = p[4]; let OH = p[5]; let OW = p[6];
    let KH = p[7]; let KW = p[8]; let SH = p[9]; let SW = p[10]; let DH = p[11]; let DW = p[12];
    let PT = i32(p[13]); let PL = i32(p[14]); let G = p[15];
    let ox = idx % OW;
    let t = idx / OW;
    let oy = t % OH;
    let t2 = t / OH;
    let o = t2 % O;
    let n = t2 / O;
    let cpg = C / G;
    let opg = O / G;
    let g = o / opg;
    var acc = 0.0;
    let iy0 = i32(oy * SH) - PT;
    let ix0 = i32(ox * SW) - PL;
    for (var ci = 0u; ci < cpg; ci = ci + 1u) {
        let xbase = (n * C + g * cpg + ci) * H * W;
        let wbase = (o * cpg + ci) * KH * KW;
        for (var ky = 0u; ky < KH; ky = ky + 1u) {
            let iy = iy0 + i32(ky * DH);
            if (iy < 0 || iy >= i32(H)) { continue; }
            let row = xbase + u32(iy) * W;
            for (var kx = 0u; kx < KW; kx = kx + 1u) {
                let ix = ix0 + i32(kx * DW);
                if (ix < 0 || ix >= i32(W)) { continue; }
                acc = acc + x[row + u32(ix)] * w[wbase + ky * KW + kx];
            }
        }
    }
    if (p[16] == 1u) { acc = acc + bias[0]; }
    if (p[16] == 2u) { acc = acc + bias[o]; }
    y[idx] = clamp_out(acc, p[17], bitcast<f32>(p[18]), bitcast<f32>(p[19]));
}
