// Gated linear unit: y[r, j] = act(x[r, j]) * x[r, half + j], act = silu or (GELU) gelu_tanh.
// One thread per output element. x may be y itself (in place, y at x's row stride).

const WG: u32 = {{WG}};

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let id = flat_id(wid, nwg) * WG + tid;
    if (id >= P.total) {
        return;
    }
    let r = id / P.half;
    let j = id % P.half;
    let xb = P.x_off + r * P.x_stride;
    let g = ld_x(xb + j);
    let u = ld_x(xb + P.half + j);
#if GELU
    // tanh's argument is clamped: some drivers compute tanh(t) as a ratio of exponentials that
    // overflows to NaN for large t; tanh(+-10) is +-1 in f32 already
    let t = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -10.0, 10.0);
    let a = 0.5 * g * (1.0 + tanh(t));
#else
    // exp(-g) is clamped so it cannot overflow (silu(g) is -0 there anyway)
    let a = g / (1.0 + exp(min(-g, 80.0)));
#endif
    st_y(P.y_off + r * P.y_stride + j, a * u);
}
