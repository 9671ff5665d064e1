// Rotary embedding of each head at the row's position (row_pos: pos0 + row in a one-sequence step), one thread per (row, head, pair).
// neox: pairs (i, i + n_rot/2) rotate together; otherwise adjacent pairs (2i, 2i+1).
// Pairs past n_rot/2 copy their two columns through. freq[j] = freq_scale * base^(-2j/n_rot),
// computed on the host in float64. The rotated pairs are scaled by P.attn_factor (llama.cpp's
// rope multiplies its cos and sin by it; the pairs past n_rot/2 are not scaled).
// x may be y itself: a thread reads its pair before writing it.

const WG: u32 = {{WG}};

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let id = flat_id(wid, nwg) * WG + tid;
    if (id >= P.total) {
        return;
    }
    let pairs = P.head_dim / 2u;
    let p = id % pairs;
    let head = (id / pairs) % P.n_heads;
    let row = id / (pairs * P.n_heads);
    let xb = P.x_off + row * P.x_stride + head * P.head_dim;
    let yb = P.y_off + row * P.y_stride + head * P.head_dim;
    let half = P.n_rot / 2u;
    var i0: u32;
    var i1: u32;
    if (p >= half) {
        i0 = P.n_rot + 2u * (p - half);
        i1 = i0 + 1u;
        let a = ld_x(xb + i0);
        let b = ld_x(xb + i1);
        st_y(yb + i0, a);
        st_y(yb + i1, b);
        return;
    }
    if (P.neox != 0u) {
        i0 = p;
        i1 = p + half;
    } else {
        i0 = 2u * p;
        i1 = i0 + 1u;
    }
    let a = ld_x(xb + i0);
    let b = ld_x(xb + i1);
    let cs = sincos(f32(row_pos(row)) * ld_freq(p)) * P.attn_factor;
    st_y(yb + i0, a * cs.y - b * cs.x);
    st_y(yb + i1, a * cs.x + b * cs.y);
}
