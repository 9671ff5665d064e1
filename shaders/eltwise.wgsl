// Elementwise kernels over a (rows, width) view, one thread per element:
// ADD: y = a + b;  SCALE: y = a * factor;  SOFTCAP: y = factor * tanh(a / factor);
// GELU: y = gelu_tanh(a);  otherwise a strided copy y = a.
// B_AT_POS: b's row r is row pos0 + r (a table of position embeddings).
// The output may share its buffer (and place) with an input.

const WG: u32 = {{WG}};

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let id = flat_id(wid, nwg) * WG + tid;
    if (id >= P.total) {
        return;
    }
    let r = id / P.width;
    let c = id % P.width;
    var v = ld_a(P.a_off + r * P.a_stride + c);
#if ADD
#if B_AT_POS
    v += ld_b(P.b_off + row_pos(r) * P.b_stride + c);
#else
    v += ld_b(P.b_off + r * P.b_stride + c);
#endif
#endif
#if SCALE
    v *= P.factor;
#endif
#if GELU
    // tanh's argument clamped as in glu.wgsl: tanh(+-10) is +-1 in f32, and no overflow
    v = 0.5 * v * (1.0 + tanh(clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -10.0, 10.0)));
#endif
#if SOFTCAP
    // tanh's argument is clamped: some drivers compute tanh as a ratio of exponentials that
    // overflows to NaN for large arguments; tanh(+-10) is +-1 in f32 already
    v = P.factor * tanh(clamp(v * (1.0 / P.factor), -10.0, 10.0));
#endif
    st_y(P.y_off + r * P.y_stride + c, v);
}
