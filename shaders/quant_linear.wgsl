// y[t, y_offset + r] (+)= sum_c x[t, c] * W[r, c] with W quantized (quant_dequant.wgsl).
//
// One workgroup computes ROWS output rows. Its threads stride over the rows' 8-weight units
// (adjacent threads read adjacent words), dequantize each unit in registers and dot it with
// the matching activations, which are loaded once per unit and reused for all ROWS rows.
// The per-thread partial sums are then reduced across the workgroup (with subgroupAdd when
// the adapter has subgroups, else a shared-memory tree). One token (decode) takes a path of
// its own; several tokens are processed TT at a time, each weight unit dequantized once per
// TT tokens, with token tiles spread over the grid's z dimension.
//
// Grid: x * y (folded when more than max_per_dim) = ceil(rows / ROWS), z = token tiles.
// The z count is only a degree of parallelism: any z works for any n_tokens.
// Placeholders ($NAME) are filled in by wgpu_llm/gpu/quant.py.

//! header
struct LinearParams {
    n_tokens: u32,
    rows: u32,
    cols: u32,
    x_stride: u32,    // f32 elements between token rows of x
    y_stride: u32,    // f32 elements between token rows of y
    y_offset: u32,    // first output column this piece writes
    accumulate: u32,  // 1: y += result
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = $WG;
const ROWS: u32 = $ROWS;
const TT: u32 = $TT;

fn load_x4(t: u32, c: u32) -> vec4<f32> {
    let i = t * p.x_stride + c;
    let v = vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
    if (PAD_COLS) {
        // padded columns: the weights are zero there, but x past the row may hold anything
        return select(vec4<f32>(0.0), v, vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.cols));
    }
    return v;
}

fn store_y(row: u32, t: u32, v: f32) {
    if (row < p.rows && t < p.n_tokens) {
        let i = t * p.y_stride + p.y_offset + row;
        if (p.accumulate == 1u) {
            y[i] = y[i] + v;
        } else {
            y[i] = v;
        }
    }
}

//! reduce_subgroup
// one partial sum per subgroup and value; MAX_SG bounds the subgroup count (sizes are >= 4)
const MAX_SG: u32 = $MAX_SG;
var<workgroup> red: array<f32, $RED_SIZE>;

//! reduce_shared
var<workgroup> red: array<f32, $RED_SIZE>;

//! pass
// $NT tokens starting at t0, rows row0 .. row0 + ROWS - 1
fn pass_$PASS(row0: u32, t0: u32, lid: u32$SG_PARAMS) {
    var acc: array<f32, $V>;  // [row][token], zero-initialised
    let units = row_units(p.cols);
    for (var u = lid; u < units; u += WG) {
        let cc = unit_cols(u);
        var xa: array<vec4<f32>, $NT>;
        var xb: array<vec4<f32>, $NT>;
        for (var i = 0u; i < $NT; i++) {
            // past the last token: any valid row will do, its sums are never stored
            let t = min(t0 + i, p.n_tokens - 1u);
            xa[i] = load_x4(t, cc.x);
            xb[i] = load_x4(t, cc.y);
        }
        for (var r = 0u; r < ROWS; r++) {
            let w = dequant_unit(min(row0 + r, p.rows - 1u), u, p.cols);
            for (var i = 0u; i < $NT; i++) {
                acc[r * $NT + i] += dot(w.a, xa[i]) + dot(w.b, xb[i]);
            }
        }
    }
$REDUCE
    for (var v = lid; v < $V; v += WG) {  // value v: row v / $NT, token v % $NT
$TOTAL
        store_y(row0 + v / $NT, t0 + v % $NT, total);
    }
    workgroupBarrier();  // `red` is reused by the next pass
}

//! reduce_subgroup_body
    for (var i = 0u; i < $V; i++) {
        let s = subgroupAdd(acc[i]);
        if (sg_lane == 0u) {
            red[sg_id * $V + i] = s;
        }
    }
    workgroupBarrier();

//! reduce_subgroup_total
        var total = 0.0;
        for (var s = 0u; s < n_sg; s++) {
            total += red[s * $V + v];
        }

//! reduce_shared_body
    for (var i = 0u; i < $V; i++) {
        red[i * WG + lid] = acc[i];
    }
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step >>= 1u) {
        if (lid < step) {
            for (var i = 0u; i < $V; i++) {
                red[i * WG + lid] += red[i * WG + lid + step];
            }
        }
        workgroupBarrier();
    }

//! reduce_shared_total
        let total = red[v * WG];

//! main
@compute @workgroup_size($WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>$SG_BUILTINS) {
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    if (row0 >= p.rows) {
        return;
    }
    if (p.n_tokens == 1u) {
        if (wid.z == 0u) {
            pass_1(row0, 0u, lid$SG_ARGS);
        }
    } else {
        for (var t0 = wid.z * TT; t0 < p.n_tokens; t0 += nwg.z * TT) {
            pass_$TT_PASS(row0, t0, lid$SG_ARGS);
        }
    }
}
