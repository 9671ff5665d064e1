// LayerNorm over groups of P.group columns: y = (x - mean) / sqrt(var + eps) * w + b, the
// variance taken over the centred values (as ggml_norm and the numpy reference).
// One workgroup per (row, group); WG threads stride over the group and tree-reduce in shared memory.
// x may be y itself (in place): each invocation writes only the elements it read itself, after
// both reductions.

const WG: u32 = {{WG}};
var<workgroup> red: array<f32, WG>;

// the sum of v over the workgroup (every invocation calls it; red is free again on return)
fn workgroup_sum(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let job = flat_id(wid, nwg);
    if (job >= P.rows * P.n_groups) {
        return;
    }
    let row = job / P.n_groups;
    let g = job % P.n_groups;
    let xb = P.x_off + row * P.x_stride + g * P.group;
    let yb = P.y_off + row * P.y_stride + g * P.group;

    var sum = 0.0;
    for (var i = tid; i < P.group; i += WG) {
        sum += ld_x(xb + i);
    }
    let mean = workgroup_sum(sum, tid) / f32(P.group);
    var ss = 0.0;
    for (var i = tid; i < P.group; i += WG) {
        let d = ld_x(xb + i) - mean;
        ss += d * d;
    }
    let sd = sqrt(workgroup_sum(ss, tid) / f32(P.group) + P.eps);
    for (var i = tid; i < P.group; i += WG) {
        st_y(yb + i, (ld_x(xb + i) - mean) / sd * ld_w(i) + ld_w(P.group + i));
    }
}
