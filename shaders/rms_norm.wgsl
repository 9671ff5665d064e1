// RMS norm over groups of P.group columns: y = x / sqrt(mean(x^2) + eps) * w.
// One workgroup per (row, group); WG threads stride over the group and tree-reduce in shared memory.
// Groups g >= P.w_split take their weights from w[P.group ..] (two norms side by side in one
// dispatch, e.g. the q and k head norms; P.w_split = n_groups: one weight vector).
// RESIDUAL: y = res + norm(x) * w  (the residual add fused in; res may be y itself)
// NEXT:     with RESIDUAL, on whole rows: also z = norm(y) * w2 (eps2), the norm that reads the
//           new residual (Gemma's post-norm, then the next pre-norm)
// ROPE:     the normalised group is one head (GROUP = head_dim) and gets the rotary embedding at
//           position pos0 + row before it is written (Gemma's q/k norms)
// x may be y itself (in place): a group is read completely before any of it is written.

const WG: u32 = {{WG}};
var<workgroup> red: array<f32, WG>;
#if ROPE
var<workgroup> nx: array<f32, {{GROUP}}>;  // the normalised head, rotated from here (sincos.wgsl)
#endif

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

    let wb = select(0u, P.group, g >= P.w_split);

    var ss = 0.0;
    for (var i = tid; i < P.group; i += WG) {
        let v = ld_x(xb + i);
        ss += v * v;
    }
    let rms = sqrt(workgroup_sum(ss, tid) / f32(P.group) + P.eps);

#if !ROPE
    var ss2 = 0.0;
    for (var i = tid; i < P.group; i += WG) {
        var v = ld_x(xb + i) / rms * ld_w(wb + i);
#if RESIDUAL
        v = ld_res(P.r_off + row * P.r_stride + g * P.group + i) + v;
#endif
        st_y(yb + i, v);
#if NEXT
        ss2 += v * v;
#endif
    }
#if NEXT
    // every invocation reads back only the elements it wrote itself
    let rms2 = sqrt(workgroup_sum(ss2, tid) / f32(P.group) + P.eps2);
    let zb = P.z_off + row * P.z_stride;
    for (var i = tid; i < P.group; i += WG) {
        st_z(zb + i, ld_y(yb + i) / rms2 * ld_w2(i));
    }
#endif
#else
    for (var i = tid; i < P.group; i += WG) {
        nx[i] = ld_x(xb + i) / rms * ld_w(wb + i);
    }
    workgroupBarrier();
    let pos = f32(row_pos(row));
    let half = P.n_rot / 2u;
    for (var i = tid; i < P.group; i += WG) {
        var v = nx[i];
        if (i < P.n_rot) {
            var j: u32;       // frequency index
            var a: f32;       // first element of the pair
            var b: f32;       // second element
            var second: bool; // is i the second element of its pair
            if (P.neox != 0u) {
                second = i >= half;
                j = select(i, i - half, second);
                a = nx[j];
                b = nx[j + half];
            } else {
                second = (i & 1u) == 1u;
                j = i / 2u;
                a = nx[2u * j];
                b = nx[2u * j + 1u];
            }
            let cs = sincos(pos * ld_freq(j)) * P.attn_factor;  // the rope's scale of rotated dimensions
            v = select(a * cs.y - b * cs.x, a * cs.x + b * cs.y, second);
        }
#if RESIDUAL
        v = ld_res(P.r_off + row * P.r_stride + g * P.group + i) + v;
#endif
        st_y(yb + i, v);
    }
#endif
}
