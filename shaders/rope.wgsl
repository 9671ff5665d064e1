// Rotary embedding of each head at position pos0 + row, one thread per (row, head, pair).
// neox: pairs (i, i + n_rot/2) rotate together; otherwise adjacent pairs (2i, 2i+1).
// Pairs past n_rot/2 copy their two columns through. freq[j] = freq_scale * base^(-2j/n_rot),
// computed on the host in float64. x may be y itself: a thread reads its pair before writing it.

const WG: u32 = {{WG}};

// sin and cos of t >= 0 to full f32 accuracy on every driver: Cody-Waite reduction by pi/2,
// then minimax polynomials on [-pi/4, pi/4] (Vulkan only promises 2^-11 for sin/cos).
fn sincos(t: f32) -> vec2<f32> {
    let q = round(t * 0.636619772367581343);
    let r = ((t - q * 1.5703125) - q * 4.837512969970703125e-4) - q * 7.54978995489188216e-8;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    switch (i32(q) & 3) {
        case 0: { return vec2<f32>(s, c); }
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

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
    let cs = sincos(f32(S.pos0 + row) * ld_freq(p));
    st_y(yb + i0, a * cs.y - b * cs.x);
    st_y(yb + i1, a * cs.x + b * cs.y);
}
