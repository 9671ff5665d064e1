// Embedding lookup from a quantized table (quant_dequant.wgsl): for each token t whose id lies
// in this piece's rows [row_start, row_start + rows), y[t * y_stride + c] = scale * W[id - row_start, c].
// Other tokens are left untouched (another piece of the table writes them). With scale = 1
// this is an exact dequantizer.
//
// Grid: x = ceil(row_units(cols) / WG), one thread per 8-weight unit; y * z (folded) = tokens.
// Placeholders ($NAME) are filled in by wgpu_llm/gpu/quant.py.

//! main
struct EmbedParams {
    n_tokens: u32,
    rows: u32,
    cols: u32,
    row_start: u32,
    y_stride: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: EmbedParams;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn store4(base: u32, c: u32, v: vec4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        if (!PAD_COLS || c + i < p.cols) {
            y[base + c + i] = v[i];
        }
    }
}

@compute @workgroup_size($WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let u = gid.x;
    let t = wid.y + wid.z * nwg.y;
    if (t >= p.n_tokens || u >= row_units(p.cols)) {
        return;
    }
    let id = ids[t];
    if (id < p.row_start || id - p.row_start >= p.rows) {
        return;
    }
    let w = dequant_unit(id - p.row_start, u, p.cols);
    let cc = unit_cols(u);
    let base = t * p.y_stride;
    store4(base, cc.x, p.scale * w.a);
    store4(base, cc.y, p.scale * w.b);
}
