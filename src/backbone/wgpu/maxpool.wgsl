// 2-D max pooling, NCHW; padded positions are skipped (never win).
// p: 0 count, 1 C, 2 H, 3 W, 4 OH, 5 OW, 6 KH, 7 KW, 8 SH, 9 SW, 10 DH, 11 DW, 12 pad top,
//    13 pad left
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let C = prm(1); let H = prm(2); let W = prm(3); let OH = prm(4); let OW = prm(5);
    let ox = idx % OW;
    let t = idx / OW;
    let oy = t % OH;
    let nc = t / OH;
    let base = nc * H * W;
    var m = -3.4028235e38;
    for (var ky = 0u; ky < prm(6); ky = ky + 1u) {
        let iy = i32(oy * prm(8) + ky * prm(10)) - i32(prm(12));
        if (iy < 0 || iy >= i32(H)) { continue; }
        for (var kx = 0u; kx < prm(7); kx = kx + 1u) {
            let ix = i32(ox * prm(9) + kx * prm(11)) - i32(prm(13));
            if (ix < 0 || ix >= i32(W)) { continue; }
            m = max(m, x[base + u32(iy) * W + u32(ix)]);
        }
    }
    y[idx] = m;
}
