// The second pass of split attention (attention.wgsl with SPLIT): one workgroup per (query row,
// head) combines the splits' partial softmaxes with the log-sum-exp rule,
//   y = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s,   M = the largest m_s of a non-empty split.
// part holds HD + 2 floats per (row, head, split): m, l, o. A split that saw no key has l = 0 and
// is skipped by that test alone (its m is the finite NEG, but no NaN / infinity trick is needed);
// split 0 always holds the query's own key, so the denominator is > 0.
// y may share its buffer with the attention's q (in place): q was read by the first pass.

const WG: u32 = {{WG}};
const HD: u32 = {{HD}};
const NEG: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let job = flat_id(wid, nwg);
    if (job >= P.rows * P.n_head) {
        return;
    }
    let row = job / P.n_head;
    let h = job % P.n_head;
    let pb = job * P.splits * (HD + 2u);

    var mx = NEG;
    for (var s = 0u; s < P.splits; s++) {
        let b = pb + s * (HD + 2u);
        if (ld_part(b + 1u) > 0.0) {
            mx = max(mx, ld_part(b));
        }
    }
    var den = 0.0;
    for (var s = 0u; s < P.splits; s++) {
        let b = pb + s * (HD + 2u);
        let l = ld_part(b + 1u);
        if (l > 0.0) {
            den += exp(ld_part(b) - mx) * l;
        }
    }
    let yb = P.y_off + row * P.y_stride + h * HD;
    for (var d = tid; d < HD; d += WG) {
        var num = 0.0;
        for (var s = 0u; s < P.splits; s++) {
            let b = pb + s * (HD + 2u);
            if (ld_part(b + 1u) > 0.0) {
                num += exp(ld_part(b) - mx) * ld_part(b + 2u + d);
            }
        }
        st_y(yb + d, num / den);
    }
}
