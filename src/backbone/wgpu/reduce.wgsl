// Reduction over one contiguous run of axes: input viewed as [outer, R, inner].
// p: 0 count (outer × inner), 1 R, 2 inner, 3 op (0 sum, 1 max, 2 min, 3 mean)
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = element(gid, nwg);
    if (idx >= prm(0)) { return; }
    let R = prm(1);
    let inner = prm(2);
    let o = idx / inner;
    let i = idx % inner;
    let base = o * R * inner + i;
    var acc = x[base];
    for (var r = 1u; r < R; r = r + 1u) {
        let v = x[base + r * inner];
        switch (prm(3)) {
            case 1u: { acc = max(acc, v); }
            case 2u: { acc = min(acc, v); }
            default: { acc = acc + v; }
        }
    }
    if (prm(3) == 3u) { acc = acc / f32(R); }
    y[idx] = acc;
}
