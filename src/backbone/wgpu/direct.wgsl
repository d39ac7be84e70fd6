// Direct 2-D convolution, one group, O % 4 == 0, one dispatch per chunk of output channels
// whose weights fit one 64 KiB uniform buffer. Each invocation computes 4 consecutive output
// pixels of a row × 16 output channels (8 when WIDE is false): per kernel tap 4 activation
// loads (storage, zero outside the image) feed 64 (32) multiply-adds with weight vec4 from
// the uniform buffer. Strides, dilations, (asymmetric) zero padding, bias, fused clamp.
// Weights: [block][C][KH][KW] × 16 (8) floats, zero past O; blocks `first` .. `first + nb`.
// p: 0 count (N × nb × OH × ⌈OW/4⌉), 1 C, 2 H, 3 W, 4 O, 5 OH, 6 OW, 7 KH, 8 KW, 9 SH,
//    10 SW, 11 DH, 12 DW, 13 pad top, 14 pad left, 15 first block, 16 bias mode,
//    17 clamp flags, 18 lo bits, 19 hi bits, 20 nb
override WIDE: bool = true;

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> w: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn bias4(o: u32) -> vec4<f32> {
    if (prm(16) == 1u) { return vec4<f32>(bias[0]); }
    if (prm(16) == 2u) { return vec4<f32>(bias[o], bias[o + 1u], bias[o + 2u], bias[o + 3u]); }
    return vec4<f32>(0.0);
}

// Channels o..o+3 (plane stride `plane`) of pixels ox..ox+3 (those inside the row).
fn store(yi: u32, ox: u32, OW: u32, plane: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, b: vec4<f32>) {
    let flags = prm(17);
    let lo = bitcast<f32>(prm(18));
    let hi = bitcast<f32>(prm(19));
    store4(yi, plane, a0 + b, flags, lo, hi);
    if (ox + 1u < OW) { store4(yi + 1u, plane, a1 + b, flags, lo, hi); }
    if (ox + 2u < OW) { store4(yi + 2u, plane, a2 + b, flags, lo, hi); }
    if (ox + 3u < OW) { store4(yi + 3u, plane, a3 + b, flags, lo, hi); }
}

fn store4(yi: u32, plane: u32, a: vec4<f32>, flags: u32, lo: f32, hi: f32) {
    y[yi] = clamp_out(a.x, flags, lo, hi);
    y[yi + plane] = clamp_out(a.y, flags, lo, hi);
    y[yi + 2u * plane] = clamp_out(a.z, flags, lo, hi);
    y[yi + 3u * plane] = clamp_out(a.w, flags, lo, hi);
}

// x[row + ix], or 0 outside the row / image (`ok` false); the index is clamped either way.
fn ld(row: u32, ix: i32, W: u32, ok: bool) -> f32 {
    let inside = ok && ix >= 0 && ix < i32(W);
    let v = x[row + u32(clamp(ix, 0, i32(W) - 1))];
    return select(0.0, v, inside);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let H = prm(2); let W = prm(3); let O = prm(4); let OH = prm(5); let OW = prm(6);
    let KH = prm(7); let KW = prm(8); let SH = prm(9); let SW = prm(10); let DH = prm(11); let DW = prm(12);
    let NB = prm(20);
    let OW4 = (OW + 3u) / 4u;
    let ox = (idx % OW4) * 4u;
    let t = idx / OW4;
    let oy = t % OH;
    let t2 = t / OH;
    let lb = t2 % NB;
    let n = t2 / NB;
    let iy0 = i32(oy * SH) - i32(prm(13));
    let ix0 = i32(ox * SW) - i32(prm(14));
    let s = i32(SW);
    let q = select(2u, 4u, WIDE);
    var wi = lb * C * KH * KW * q;
    var a00 = vec4<f32>(0.0); var a10 = vec4<f32>(0.0); var a20 = vec4<f32>(0.0); var a30 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0);
    var a02 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0);
    var a03 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);
    for (var c = 0u; c < C; c = c + 1u) {
        for (var ky = 0u; ky < KH; ky = ky + 1u) {
            let iy = iy0 + i32(ky * DH);
            let rok = iy >= 0 && iy < i32(H);
            let row = ((n * C + c) * H + u32(clamp(iy, 0, i32(H) - 1))) * W;
            for (var kx = 0u; kx < KW; kx = kx + 1u) {
                let ix = ix0 + i32(kx * DW);
                let x0 = ld(row, ix, W, rok);
                let x1 = ld(row, ix + s, W, rok);
                let x2 = ld(row, ix + 2 * s, W, rok);
                let x3 = ld(row, ix + 3 * s, W, rok);
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
                wi = wi + q;
            }
        }
    }
    let plane = OH * OW;
    let o = (prm(15) + lb) * q * 4u;
    let yi = (n * O + o) * plane + oy * OW + ox;
    store(yi, ox, OW, plane, a00, a10, a20, a30, bias4(o));
    if (o + 4u < O) { store(yi + 4u * plane, ox, OW, plane, a01, a11, a21, a31, bias4(o + 4u)); }
    if (WIDE) {
        if (o + 8u < O) { store(yi + 8u * plane, ox, OW, plane, a02, a12, a22, a32, bias4(o + 8u)); }
        if (o + 12u < O) { store(yi + 12u * plane, ox, OW, plane, a03, a13, a23, a33, bias4(o + 12u)); }
    }
}
