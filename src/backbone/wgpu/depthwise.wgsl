// Depthwise 2-D convolution (groups = C = O), dilation 1, stride 1 or 2 along x, one dispatch
// per chunk of channels whose weights fit one 64 KiB uniform buffer. Each invocation computes
// 8 consecutive outputs in each of 4 rows: every input row it needs (3·SH + KH) is read once
// into sliding vec4 windows (8 + KW storage loads per row at stride 1) and feeds the output
// rows it belongs to; the weights come from the uniform buffer. Zero padding (asymmetric),
// bias, fused clamp.
// Weights: [channel in chunk][KH][KW] floats; channels `first` .. `first + nc`.
// p: 0 count (N × nc × ⌈OH/4⌉ × ⌈OW/8⌉), 1 C, 2 H, 3 W, 4 OH, 5 OW, 6 KH, 7 KW, 8 SH, 9 SW,
//    10 pad top, 11 pad left, 12 first channel, 13 nc, 14 bias mode, 15 clamp flags,
//    16 lo bits, 17 hi bits
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> w: array<vec4<f32>, 4096>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn wt(i: u32) -> f32 {
    return w[i / 4u][i % 4u];
}

// x[row + ix], or 0 outside the row / image (`ok` false); the index is clamped either way.
fn ld(row: u32, ix: i32, W: u32, ok: bool) -> f32 {
    let inside = ok && ix >= 0 && ix < i32(W);
    let v = x[row + u32(clamp(ix, 0, i32(W) - 1))];
    return select(0.0, v, inside);
}

// Accumulators: output row j (of 4), outputs 0-3 in a[2j], 4-7 in a[2j + 1].
var<private> a: array<vec4<f32>, 8>;

// One kernel tap: input windows `lo`, `hi` times each output row's weight (0 where the
// input row is outside that output row's window).
fn tap(lo: vec4<f32>, hi: vec4<f32>, wk: vec4<f32>) {
    a[0] = a[0] + lo * wk.x;
    a[1] = a[1] + hi * wk.x;
    a[2] = a[2] + lo * wk.y;
    a[3] = a[3] + hi * wk.y;
    a[4] = a[4] + lo * wk.z;
    a[5] = a[5] + hi * wk.z;
    a[6] = a[6] + lo * wk.w;
    a[7] = a[7] + hi * wk.w;
}

// Weights of column kx for the 4 output rows (row offsets `wr`, validity `v`).
fn wcol(wr: vec4<u32>, v: vec4<bool>, kx: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), vec4<f32>(wt(wr.x + kx), wt(wr.y + kx), wt(wr.z + kx), wt(wr.w + kx)), v);
}

fn store_row(yi: u32, ox: u32, OW: u32, lo4: vec4<f32>, hi4: vec4<f32>, b: f32) {
    let flags = prm(15);
    let lo = bitcast<f32>(prm(16));
    let hi = bitcast<f32>(prm(17));
    let r0 = lo4 + vec4<f32>(b);
    let r1 = hi4 + vec4<f32>(b);
    y[yi] = clamp_out(r0.x, flags, lo, hi);
    if (ox + 1u < OW) { y[yi + 1u] = clamp_out(r0.y, flags, lo, hi); }
    if (ox + 2u < OW) { y[yi + 2u] = clamp_out(r0.z, flags, lo, hi); }
    if (ox + 3u < OW) { y[yi + 3u] = clamp_out(r0.w, flags, lo, hi); }
    if (ox + 4u < OW) { y[yi + 4u] = clamp_out(r1.x, flags, lo, hi); }
    if (ox + 5u < OW) { y[yi + 5u] = clamp_out(r1.y, flags, lo, hi); }
    if (ox + 6u < OW) { y[yi + 6u] = clamp_out(r1.z, flags, lo, hi); }
    if (ox + 7u < OW) { y[yi + 7u] = clamp_out(r1.w, flags, lo, hi); }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let H = prm(2); let W = prm(3); let OH = prm(4); let OW = prm(5);
    let KH = prm(6); let KW = prm(7); let SH = prm(8); let SW = prm(9); let NC = prm(13);
    let OW8 = (OW + 7u) / 8u;
    let OH4 = (OH + 3u) / 4u;
    let ox = (idx % OW8) * 8u;
    let t = idx / OW8;
    let oy = (t % OH4) * 4u;
    let t2 = t / OH4;
    let lc = t2 % NC;
    let n = t2 / NC;
    let c = prm(12) + lc;
    let iy0 = i32(oy * SH) - i32(prm(10));
    let ix0 = i32(ox * SW) - i32(prm(11));
    let plane = (n * C + c) * H;
    let wi = lc * KH * KW;
    let shv = vec4<i32>(0, i32(SH), 2 * i32(SH), 3 * i32(SH));
    for (var r = 0u; r < 3u * SH + KH; r = r + 1u) {
        let iy = iy0 + i32(r);
        let rok = iy >= 0 && iy < i32(H);
        let row = (plane + u32(clamp(iy, 0, i32(H) - 1))) * W;
        // Kernel row of this input row for each output row, and whether it is one.
        let kr = vec4<i32>(i32(r)) - shv;
        let v = (kr >= vec4<i32>(0)) & (kr < vec4<i32>(i32(KH)));
        let wr = vec4<u32>(wi) + vec4<u32>(clamp(kr, vec4<i32>(0), vec4<i32>(i32(KH) - 1))) * KW;
        if (SW == 1u) {
            // Outputs r use columns r + kx.
            var lo = vec4<f32>(ld(row, ix0, W, rok), ld(row, ix0 + 1, W, rok), ld(row, ix0 + 2, W, rok), ld(row, ix0 + 3, W, rok));
            var hi = vec4<f32>(ld(row, ix0 + 4, W, rok), ld(row, ix0 + 5, W, rok), ld(row, ix0 + 6, W, rok), ld(row, ix0 + 7, W, rok));
            for (var kx = 0u; kx < KW; kx = kx + 1u) {
                tap(lo, hi, wcol(wr, v, kx));
                let nx = ld(row, ix0 + 8 + i32(kx), W, rok);
                lo = vec4<f32>(lo.yzw, hi.x);
                hi = vec4<f32>(hi.yzw, nx);
            }
        } else {
            // Stride 2: outputs r use columns 2r + kx; even and odd columns in 2 windows each.
            var e0 = vec4<f32>(ld(row, ix0, W, rok), ld(row, ix0 + 2, W, rok), ld(row, ix0 + 4, W, rok), ld(row, ix0 + 6, W, rok));
            var e1 = vec4<f32>(ld(row, ix0 + 8, W, rok), ld(row, ix0 + 10, W, rok), ld(row, ix0 + 12, W, rok), ld(row, ix0 + 14, W, rok));
            var o0 = vec4<f32>(ld(row, ix0 + 1, W, rok), ld(row, ix0 + 3, W, rok), ld(row, ix0 + 5, W, rok), ld(row, ix0 + 7, W, rok));
            var o1 = vec4<f32>(ld(row, ix0 + 9, W, rok), ld(row, ix0 + 11, W, rok), ld(row, ix0 + 13, W, rok), ld(row, ix0 + 15, W, rok));
            for (var kx = 0u; kx < KW; kx = kx + 2u) {
                tap(e0, e1, wcol(wr, v, kx));
                // The odd tap past the kernel's end weighs 0 (its weight index stays inside).
                tap(o0, o1, wcol(wr, v & vec4<bool>(kx + 1u < KW), min(kx + 1u, KW - 1u)));
                let ne = ld(row, ix0 + 16 + i32(kx), W, rok);
                let no = ld(row, ix0 + 17 + i32(kx), W, rok);
                e0 = vec4<f32>(e0.yzw, e1.x);
                e1 = vec4<f32>(e1.yzw, ne);
                o0 = vec4<f32>(o0.yzw, o1.x);
                o1 = vec4<f32>(o1.yzw, no);
            }
        }
    }
    var b = 0.0;
    if (prm(14) == 1u) { b = bias[0]; }
    if (prm(14) == 2u) { b = bias[c]; }
    let yi = ((n * C + c) * OH + oy) * OW + ox;
    store_row(yi, ox, OW, a[0], a[1], b);
    if (oy + 1u < OH) { store_row(yi + OW, ox, OW, a[2], a[3], b); }
    if (oy + 2u < OH) { store_row(yi + 2u * OW, ox, OW, a[4], a[5], b); }
    if (oy + 3u < OH) { store_row(yi + 3u * OW, ox, OW, a[6], a[7], b); }
}
