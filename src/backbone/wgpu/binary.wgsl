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
    if (idx >= p[0]) { return; }
    var rest = idx;
    var ia = 0u;
    var ib = 0u;
    for (var d = 3; d >= 0; d = d - 1) {
        let dim = p[2 + d];
        let c = rest % dim;
        rest = rest / dim;
        ia = ia + c * p[6 + d];
        ib = ib + c * p[10 + d];
    }
    let va = a[ia];
    let vb = b[ib];
    var r = 0.0;
    switch (p[1]) {
        case 0u: { r = va + vb; }
        case 1u: { r = va - vb; }
        case 2u: { r = va * vb; }
        case 3u: { r = va / vb; }
        case 4u: { r = max(va, vb); }
        default: { r = min(va, vb); }
    }
    y[idx] = clamp_out(r, p[14], bitcast<f32>(p[15]), bitcast<f32>(p[16]));
}
