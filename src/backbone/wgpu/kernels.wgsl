// vigil's wgpu backend kernels: one invocation per output element, f32 throughout.
// Every kernel reads its integer parameters from `p` (a uniform buffer of 32 u32 written once
// at load time; read with constant indices, a uniform load is one scalar load on lavapipe
// where a storage-buffer load is a loop over the SIMD lanes) and finds its element index
// from a 2-D dispatch (x: up to 65535 workgroups of 64, y: the rest).

@group(0) @binding(0) var<uniform> p: array<vec4<u32>, 8>;

fn prm(i: u32) -> u32 {
    return p[i / 4u][i % 4u];
}

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// Optional clamp fused into a kernel's output (ReLU, ReLU6): bit 0 of `flags` = lower
// bound `lo`, bit 1 = upper bound `hi`.
fn clamp_out(v: f32, flags: u32, lo: f32, hi: f32) -> f32 {
    var r = v;
    if ((flags & 1u) != 0u) { r = max(r, lo); }
    if ((flags & 2u) != 0u) { r = min(r, hi); }
    return r;
}
