// Element-wise binary op with numpy broadcasting (rank ≤ 4, left-padded with 1s).
// p: 0 count, 1 op (0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min), 2..5 output dims,
//    6..9 strides of a (0 on broadcast axes), 10..13 strides of b, 14 clamp flags,
//    15 lo bits, 16 hi bits
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    // Unrolled over the 4 axes (constant parameter indices).
    let c3 = idx % prm(5);
    let r3 = idx / prm(5);
    let c2 = r3 % prm(4);
    let r2 = r3 / prm(4);
    let c1 = r2 % prm(3);
    let c0 = r2 / prm(3);
    let ia = c0 * prm(6) + c1 * prm(7) + c2 * prm(8) + c3 * prm(9);
    let ib = c0 * prm(10) + c1 * prm(11) + c2 * prm(12) + c3 * prm(13);
    let va = a[ia];
    let vb = b[ib];
    var r = 0.0;
    switch (prm(1)) {
        case 0u: { r = va + vb; }
        case 1u: { r = va - vb; }
        case 2u: { r = va * vb; }
        case 3u: { r = va / vb; }
        case 4u: { r = max(va, vb); }
        default: { r = min(va, vb); }
    }
    y[idx] = clamp_out(r, prm(14), bitcast<f32>(prm(15)), bitcast<f32>(prm(16)));
}
