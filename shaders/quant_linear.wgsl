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
//
// That is the kernel for GPUs (the "subgroup" and "shared" kinds of quant.LinearVariant). The
// row_* sections below make the "row" kind for CPU-type adapters: every invocation walks whole
// rows, see row_header.

//! params
// The bindings, parameters and output store every linear kernel shares (this file's kinds and
// shaders/matmul.wgsl).
struct LinearParams {
    n_tokens: u32,
    rows: u32,
    cols: u32,
    x_stride: u32,    // f32 elements between token rows of x
    y_stride: u32,    // f32 elements between token rows of y
    y_offset: u32,    // first output column this piece writes
    accumulate: u32,  // 1: y += result
    norm_eps: u32,    // f32 bits: the epsilon of a norm done on load (x_norm, x_post_norm)
}

@group(0) @binding(0) var<uniform> params: LinearParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// The parameters as the kernel reads them. Lavapipe (Mesa 22) recompiles a shader each time a
// dispatch binds other buffers when branch conditions or loop bounds come straight from a
// uniform buffer ("inlined uniforms"): milliseconds per dispatch. An OR with a value it cannot
// see through (from the size of a storage buffer; always 0) keeps it from doing so.
fn prm() -> LinearParams {
    let z = u32(arrayLength(&y) == 0u);  // y is never empty
    return LinearParams(params.n_tokens | z, params.rows | z, params.cols | z, params.x_stride | z,
                        params.y_stride | z, params.y_offset | z, params.accumulate | z, params.norm_eps | z);
}

fn store_y(row: u32, t: u32, v: f32) {
    if (row < prm().rows && t < prm().n_tokens) {
        let i = t * prm().y_stride + prm().y_offset + row;
        if (prm().accumulate == 1u) {
            y[i] = y[i] + v;
        } else {
            y[i] = v;
        }
    }
}

//! header
const WG: u32 = $WG;
const ROWS: u32 = $ROWS;
const TT: u32 = $TT;

$X_VAL
fn load_x4(t: u32, c: u32) -> vec4<f32> {
    if (PAD_COLS) {
        // padded columns: the weights are zero there, but x past the row may hold anything, or
        // (the last token's row) lie past the end of the buffer: read column cols - 1 instead
        let r = t * prm().x_stride;
        let last = prm().cols - 1u;
        let v = vec4<f32>(x_val(r + min(c, last)), x_val(r + min(c + 1u, last)),
                          x_val(r + min(c + 2u, last)), x_val(r + min(c + 3u, last)));
        return select(vec4<f32>(0.0), v, vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(prm().cols));
    }
    let i = t * prm().x_stride + c;
    return vec4<f32>(x_val(i), x_val(i + 1u), x_val(i + 2u), x_val(i + 3u));
}

//! x_plain
// the input: x itself
fn x_val(i: u32) -> f32 {
    return x[i];
}

//! x_glu
// the input: a gated linear unit of x, whose rows hold the gate and then the up projection
// (cols each): act(gate) * up, the glu kernel's computation (shaders/glu.wgsl) done on load
fn x_val(i: u32) -> f32 {
    let g = x[i];
    let u = x[i + prm().cols];
    return $ACT * u;
}

//! norm_scale
// a norm on load: 1 / rms of a row from the sum of squares of the invocations' parts of it
// (invocations first, first + stride, ...; norm_sum adds the parts up)
fn inv_rms(part: f32, lid: u32) -> f32 {
    return 1.0 / sqrt(norm_sum(part, lid) / f32(prm().cols) + bitcast<f32>(prm().norm_eps));
}

fn x_inv_rms(first: u32, stride: u32, lid: u32) -> f32 {
    var ss = 0.0;
    for (var c = first; c < prm().cols; c += stride) {
        ss += x[c] * x[c];
    }
    return inv_rms(ss, lid);
}

//! x_norm
// the input: rms_norm(x) * w, the rms norm feeding this linear done on load (one token, a row of
// cols); x_scale = 1 / rms(x) comes from x_prologue, run by main before any x_val
@group(0) @binding($NB) var<storage, read> norm_w: array<f32>;
var<private> x_scale: f32;

fn x_val(i: u32) -> f32 {
    return x[i] * x_scale * norm_w[i];
}

fn x_prologue(first: u32, stride: u32, lid: u32, writer: bool) {
    x_scale = x_inv_rms(first, stride, lid);
}

//! x_post_norm
// the input: Gemma's post-norm, residual add and the next pre-norm, done on load (one token, a
// row of cols): x is the output of the previous linear, r the residual, norm_w the post-norm's
// weights then the pre-norm's; the new residual r + rms_norm(x) * w_post is also written to
// r_out (by workgroup 0; r_out is never r: the other workgroups still read r) and the input is
// rms_norm(new residual) * w_pre. x_prologue computes both scales before any x_val.
@group(0) @binding($NB) var<storage, read> r: array<f32>;
@group(0) @binding($NB1) var<storage, read> norm_w: array<f32>;
@group(0) @binding($NB2) var<storage, read_write> r_out: array<f32>;
var<private> x_scale: f32;
var<private> o_scale: f32;

fn new_residual(c: u32) -> f32 {
    return r[c] + x[c] * o_scale * norm_w[c];
}

fn x_val(i: u32) -> f32 {
    return new_residual(i) * x_scale * norm_w[prm().cols + i];
}

fn x_prologue(first: u32, stride: u32, lid: u32, writer: bool) {
    o_scale = x_inv_rms(first, stride, lid);
    var ss = 0.0;
    for (var c = first; c < prm().cols; c += stride) {
        let v = new_residual(c);
        ss += v * v;
        if (writer) {
            r_out[c] = v;
        }
    }
    x_scale = inv_rms(ss, lid);
}

//! norm_sum_shared
// a norm on load, GPU kinds: the invocations stride over the row and add up in workgroup memory
var<workgroup> norm_red: array<f32, WG>;

fn norm_sum(v: f32, lid: u32) -> f32 {
    norm_red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            norm_red[lid] += norm_red[lid + s];
        }
        workgroupBarrier();
    }
    let total = norm_red[0];
    workgroupBarrier();
    return total;
}

//! norm_sum_row
// a norm on load, row kind: every lane walks the whole row (loads from one address for all lanes:
// one load each on a CPU adapter), so its own sum is the total
fn norm_sum(v: f32, lid: u32) -> f32 {
    return v;
}

//! reduce_subgroup
// one partial sum per subgroup and value; MAX_SG bounds the subgroup count (sizes are >= 4)
const MAX_SG: u32 = $MAX_SG;
var<workgroup> red: array<f32, $RED_SIZE>;

//! emulated_subgroups
// subgroups of SGW invocations emulated in workgroup memory (quant.linear_shader's
// emulate_subgroups): the subgroup kind's bookkeeping run with a width the device does not have
const SGW: u32 = $SGW;
var<workgroup> sg_scratch: array<f32, $WG>;

// subgroupAdd over the invocations lid - lid % SGW .. (a whole workgroup calls it together)
fn sg_add(v: f32, lid: u32) -> f32 {
    sg_scratch[lid] = v;
    workgroupBarrier();
    let first = lid - lid % SGW;
    var s = 0.0;
    for (var j = first; j < min(first + SGW, $WG); j++) {
        s += sg_scratch[j];
    }
    workgroupBarrier();
    return s;
}

//! reduce_shared
var<workgroup> red: array<f32, $RED_SIZE>;

//! pass
// $NT tokens starting at t0, rows row0 .. row0 + ROWS - 1
fn pass_$PASS(row0: u32, t0: u32, lid: u32$SG_PARAMS) {
    var acc: array<f32, $V>;  // [row][token], zero-initialised
    let units = row_units(prm().cols);
    for (var u = lid; u < units; u += WG) {
        let cc = unit_cols(u);
        var xa: array<vec4<f32>, $NT>;
        var xb: array<vec4<f32>, $NT>;
        for (var i = 0u; i < $NT; i++) {
            // past the last token: any valid row will do, its sums are never stored
            let t = min(t0 + i, prm().n_tokens - 1u);
            xa[i] = load_x4(t, cc.x);
            xb[i] = load_x4(t, cc.y);
        }
        for (var r = 0u; r < ROWS; r++) {
            let w = dequant_unit(min(row0 + r, prm().rows - 1u), u, prm().cols);
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

//! row_header
// ---- the "row" kind: whole rows per invocation, for CPU-type adapters ----
//
// A CPU adapter (lavapipe) runs a workgroup's invocations as the SIMD lanes of one thread. A
// storage load whose address is not provably the same for all lanes becomes a loop over the
// lanes (measured on lavapipe: ~10x the cost of a subgroupBroadcast, far more than arithmetic),
// so loads are what to save. Here every invocation owns RPT rows (row, row + WG, ...), walks
// them step by step (a step: SUBW columns of all its rows, the activations loaded once for all),
// loads every weight word once and a block's scales once per step, and keeps four partial sums
// per row and token; no shared memory, no barrier. The activations are the same
// for all lanes: with XB > 0 a lane of a subgroup of XB lanes loads every XB-th x value and
// subgroupBroadcast hands them to the others (when the subgroups really have XB lanes; else
// every lane loads them all).
//
// Per type (row_<TYPE> sections): rows are read in blocks of BLOCK columns, each in BLOCK / SUBW
// steps of SUBW columns; load_head(row, b) reads a block's scales, sub_weights(row, b, j, head)
// the weights of step j as SUBW / 4 vec4s in column order (columns b * BLOCK + j * SUBW + 4k ..
// + 3), computed as dequant_unit (quant_dequant.wgsl) computes them.
const WG: u32 = $WG;
const ROWS: u32 = $ROWS;  // output rows per workgroup
const RPT: u32 = $RPT;    // output rows per invocation, WG apart
const TT: u32 = $TT;
const XB: u32 = $XB;      // subgroup size x is shared in (0: not shared)

$X_VAL
// x[t, c], or 0 past the row (float types: the weights are zero there, x may hold anything or,
// in the last token's row, lie past the end of the buffer: column cols - 1 is read instead)
fn x_at(t: u32, c: u32) -> f32 {
    if (PAD_COLS) {
        return select(0.0, x_val(t * prm().x_stride + min(c, prm().cols - 1u)), c < prm().cols);
    }
    return x_val(t * prm().x_stride + c);
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// the 4 weights in the low / high nibbles of the bytes of a word (Q4_0, Q4_1, Q4_K)
fn q4_lo(w: u32) -> vec4<f32> { return vec4<f32>(byte_bits(w, 0u, 15u)); }
fn q4_hi(w: u32) -> vec4<f32> { return vec4<f32>(byte_bits(w, 4u, 15u)); }

// weights 4j .. 4j + 3 (nibble shift 0) or 16 + 4j .. (shift 4) of a 32-weight block whose 5th
// bits are qh (Q5_0, Q5_1)
fn q5_quad(w: u32, shift: u32, qh: u32, j: u32) -> vec4<f32> {
    let hb = (vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(4u * j + 4u * shift))) & vec4<u32>(1u);
    return vec4<f32>(byte_bits(w, shift, 15u) | (hb << vec4<u32>(4u)));
}

//! row_float
// F32 / F16 / BF16: a block is one 8-column unit, read by dequant_unit
const BLOCK: u32 = 8u;
const SUBW: u32 = 8u;

struct Head {
    none: u32,
}

fn n_blocks(cols: u32) -> u32 { return row_units(cols); }
fn load_head(row: u32, b: u32) -> Head { return Head(0u); }

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 2> {
    let w = dequant_unit(row, b, prm().cols);
    return array<vec4<f32>, 2>(w.a, w.b);
}

//! row_scale_pairs
// Q8_0, Q4_0, Q5_0 (before the type's own section): a block here is two GGUF blocks, whose f16
// scales share a word of plane 1 (the last one may be alone)
const BLOCK: u32 = 64u;
const SUBW: u32 = 32u;

struct Head {
    d: vec2<f32>,
}

fn n_blocks(cols: u32) -> u32 { return (cols + 32u) / 64u; }

fn load_head(row: u32, b: u32) -> Head {
    let nb = prm().cols / 32u;
    return Head(unpack2x16float(plane1[row * ((nb + 1u) / 2u) + b]));
}

//! row_Q8_0
fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (8u * (prm().cols / 32u)) + 16u * b + 8u * j;
    let d = h.d[j];
    return array<vec4<f32>, 8>(
        i8x4(plane0[i]) * d, i8x4(plane0[i + 1u]) * d, i8x4(plane0[i + 2u]) * d, i8x4(plane0[i + 3u]) * d,
        i8x4(plane0[i + 4u]) * d, i8x4(plane0[i + 5u]) * d, i8x4(plane0[i + 6u]) * d, i8x4(plane0[i + 7u]) * d);
}

//! row_Q4_0
fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (4u * (prm().cols / 32u)) + 8u * b + 4u * j;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let d = h.d[j];
    return array<vec4<f32>, 8>(
        d * (q4_lo(w0) - 8.0), d * (q4_lo(w1) - 8.0), d * (q4_lo(w2) - 8.0), d * (q4_lo(w3) - 8.0),
        d * (q4_hi(w0) - 8.0), d * (q4_hi(w1) - 8.0), d * (q4_hi(w2) - 8.0), d * (q4_hi(w3) - 8.0));
}

//! row_Q4_1
const BLOCK: u32 = 32u;
const SUBW: u32 = 32u;

struct Head {
    dm: vec2<f32>,
}

fn n_blocks(cols: u32) -> u32 { return cols / 32u; }

fn load_head(row: u32, b: u32) -> Head {
    return Head(unpack2x16float(plane0[row * (5u * (prm().cols / 32u)) + 5u * b]));
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (5u * (prm().cols / 32u)) + 5u * b + 1u;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let d = h.dm.x;
    let m = h.dm.y;
    return array<vec4<f32>, 8>(
        d * q4_lo(w0) + m, d * q4_lo(w1) + m, d * q4_lo(w2) + m, d * q4_lo(w3) + m,
        d * q4_hi(w0) + m, d * q4_hi(w1) + m, d * q4_hi(w2) + m, d * q4_hi(w3) + m);
}

//! row_Q5_0
fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (5u * (prm().cols / 32u)) + 10u * b + 5u * j;
    let qh = plane0[i];  // bit i: the 5th bit of weight i
    let w0 = plane0[i + 1u];
    let w1 = plane0[i + 2u];
    let w2 = plane0[i + 3u];
    let w3 = plane0[i + 4u];
    let d = h.d[j];
    return array<vec4<f32>, 8>(
        d * (q5_quad(w0, 0u, qh, 0u) - 16.0), d * (q5_quad(w1, 0u, qh, 1u) - 16.0),
        d * (q5_quad(w2, 0u, qh, 2u) - 16.0), d * (q5_quad(w3, 0u, qh, 3u) - 16.0),
        d * (q5_quad(w0, 4u, qh, 0u) - 16.0), d * (q5_quad(w1, 4u, qh, 1u) - 16.0),
        d * (q5_quad(w2, 4u, qh, 2u) - 16.0), d * (q5_quad(w3, 4u, qh, 3u) - 16.0));
}

//! row_Q5_1
const BLOCK: u32 = 32u;
const SUBW: u32 = 32u;

struct Head {
    dm: vec2<f32>,
    qh: u32,  // bit i: the 5th bit of weight i
}

fn n_blocks(cols: u32) -> u32 { return cols / 32u; }

fn load_head(row: u32, b: u32) -> Head {
    let i = row * (6u * (prm().cols / 32u)) + 6u * b;
    return Head(unpack2x16float(plane0[i]), plane0[i + 1u]);
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (6u * (prm().cols / 32u)) + 6u * b + 2u;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let d = h.dm.x;
    let m = h.dm.y;
    let qh = h.qh;
    return array<vec4<f32>, 8>(
        d * q5_quad(w0, 0u, qh, 0u) + m, d * q5_quad(w1, 0u, qh, 1u) + m,
        d * q5_quad(w2, 0u, qh, 2u) + m, d * q5_quad(w3, 0u, qh, 3u) + m,
        d * q5_quad(w0, 4u, qh, 0u) + m, d * q5_quad(w1, 4u, qh, 1u) + m,
        d * q5_quad(w2, 4u, qh, 2u) + m, d * q5_quad(w3, 4u, qh, 3u) + m);
}

//! row_Q4_K
// step j (0..3): sub-blocks 2j (low nibbles of quant words 8j .. 8j + 7) and 2j + 1 (high)
const BLOCK: u32 = 256u;
const SUBW: u32 = 64u;

struct Head {
    dm: vec2<f32>,
    w0: u32,
    w1: u32,
    w2: u32,
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let i = row * (36u * (prm().cols / 256u)) + 36u * b;
    return Head(unpack2x16float(plane0[i]), plane0[i + 1u], plane0[i + 2u], plane0[i + 3u]);
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 16> {
    let i = row * (36u * (prm().cols / 256u)) + 36u * b + 4u + 8u * j;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let w4 = plane0[i + 4u];
    let w5 = plane0[i + 5u];
    let w6 = plane0[i + 6u];
    let w7 = plane0[i + 7u];
    let sm_a = kq_scale_min(2u * j, h.w0, h.w1, h.w2);
    let sm_b = kq_scale_min(2u * j + 1u, h.w0, h.w1, h.w2);
    let da = h.dm.x * sm_a.x;
    let ma = h.dm.y * sm_a.y;
    let db = h.dm.x * sm_b.x;
    let mb = h.dm.y * sm_b.y;
    return array<vec4<f32>, 16>(
        da * q4_lo(w0) - ma, da * q4_lo(w1) - ma, da * q4_lo(w2) - ma, da * q4_lo(w3) - ma,
        da * q4_lo(w4) - ma, da * q4_lo(w5) - ma, da * q4_lo(w6) - ma, da * q4_lo(w7) - ma,
        db * q4_hi(w0) - mb, db * q4_hi(w1) - mb, db * q4_hi(w2) - mb, db * q4_hi(w3) - mb,
        db * q4_hi(w4) - mb, db * q4_hi(w5) - mb, db * q4_hi(w6) - mb, db * q4_hi(w7) - mb);
}

//! row_Q5_K
// as Q4_K; the 5th bit of weight 32 * s + l is bit s of qh byte l (all 8 qh words serve every step)
const BLOCK: u32 = 256u;
const SUBW: u32 = 64u;

struct Head {
    dm: vec2<f32>,
    w0: u32,
    w1: u32,
    w2: u32,
    qa: vec4<u32>,  // qh words 0..3
    qb: vec4<u32>,  // qh words 4..7
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let i = row * (44u * (prm().cols / 256u)) + 44u * b;
    return Head(unpack2x16float(plane0[i]), plane0[i + 1u], plane0[i + 2u], plane0[i + 3u],
                vec4<u32>(plane0[i + 4u], plane0[i + 5u], plane0[i + 6u], plane0[i + 7u]),
                vec4<u32>(plane0[i + 8u], plane0[i + 9u], plane0[i + 10u], plane0[i + 11u]));
}

fn q5k_quad(w: u32, shift: u32, qh: u32, s: u32) -> vec4<f32> {
    return vec4<f32>(byte_bits(w, shift, 15u) | (byte_bits(qh, s, 1u) << vec4<u32>(4u)));
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 16> {
    let i = row * (44u * (prm().cols / 256u)) + 44u * b + 12u + 8u * j;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let w4 = plane0[i + 4u];
    let w5 = plane0[i + 5u];
    let w6 = plane0[i + 6u];
    let w7 = plane0[i + 7u];
    let sa = 2u * j;
    let sb = sa + 1u;
    let sm_a = kq_scale_min(sa, h.w0, h.w1, h.w2);
    let sm_b = kq_scale_min(sb, h.w0, h.w1, h.w2);
    let da = h.dm.x * sm_a.x;
    let ma = h.dm.y * sm_a.y;
    let db = h.dm.x * sm_b.x;
    let mb = h.dm.y * sm_b.y;
    return array<vec4<f32>, 16>(
        da * q5k_quad(w0, 0u, h.qa.x, sa) - ma, da * q5k_quad(w1, 0u, h.qa.y, sa) - ma,
        da * q5k_quad(w2, 0u, h.qa.z, sa) - ma, da * q5k_quad(w3, 0u, h.qa.w, sa) - ma,
        da * q5k_quad(w4, 0u, h.qb.x, sa) - ma, da * q5k_quad(w5, 0u, h.qb.y, sa) - ma,
        da * q5k_quad(w6, 0u, h.qb.z, sa) - ma, da * q5k_quad(w7, 0u, h.qb.w, sa) - ma,
        db * q5k_quad(w0, 4u, h.qa.x, sb) - mb, db * q5k_quad(w1, 4u, h.qa.y, sb) - mb,
        db * q5k_quad(w2, 4u, h.qa.z, sb) - mb, db * q5k_quad(w3, 4u, h.qa.w, sb) - mb,
        db * q5k_quad(w4, 4u, h.qb.x, sb) - mb, db * q5k_quad(w5, 4u, h.qb.y, sb) - mb,
        db * q5k_quad(w6, 4u, h.qb.z, sb) - mb, db * q5k_quad(w7, 4u, h.qb.w, sb) - mb);
}

//! row_Q6_K
// step j (0..1): the 128 weights 128j + 32g + l; ql word 16j + m (m < 16) holds the low 4 bits
// of weights 128j + 4m .. (low nibbles) and 128j + 64 + 4m .. (high nibbles), qh word
// 32 + 8j + (m & 7) their top 2 bits at bits 2 * (m >> 3) and 2 * (m >> 3) + 4 of each byte
const BLOCK: u32 = 256u;
const SUBW: u32 = 128u;

struct Head {
    d: f32,
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let nb = prm().cols / 256u;
    return Head(half_of(plane1[row * ((nb + 1u) / 2u) + (b >> 1u)], b & 1u));
}

// (q - 32) of the 4 weights with low bits at nibble `lo` of ql and top bits at `hi` of qh
fn q6_quad(ql: u32, lo: u32, qh: u32, hi: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(byte_bits(ql, lo, 15u) | (byte_bits(qh, hi, 3u) << vec4<u32>(4u))) - vec4<i32>(32));
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 32> {
    let base = row * (52u * (prm().cols / 256u)) + 52u * b;
    let i = base + 16u * j;
    let l0 = plane0[i];
    let l1 = plane0[i + 1u];
    let l2 = plane0[i + 2u];
    let l3 = plane0[i + 3u];
    let l4 = plane0[i + 4u];
    let l5 = plane0[i + 5u];
    let l6 = plane0[i + 6u];
    let l7 = plane0[i + 7u];
    let l8 = plane0[i + 8u];
    let l9 = plane0[i + 9u];
    let l10 = plane0[i + 10u];
    let l11 = plane0[i + 11u];
    let l12 = plane0[i + 12u];
    let l13 = plane0[i + 13u];
    let l14 = plane0[i + 14u];
    let l15 = plane0[i + 15u];
    let k = base + 32u + 8u * j;
    let h0 = plane0[k];
    let h1 = plane0[k + 1u];
    let h2 = plane0[k + 2u];
    let h3 = plane0[k + 3u];
    let h4 = plane0[k + 4u];
    let h5 = plane0[k + 5u];
    let h6 = plane0[k + 6u];
    let h7 = plane0[k + 7u];
    // scale bytes 8j .. 8j + 7 (signed): scale 2g + (l >> 4) of this half serves weights 32g + l
    let sc_lo = vec4<f32>(i8x4(plane0[base + 48u + 2u * j]));
    let sc_hi = vec4<f32>(i8x4(plane0[base + 49u + 2u * j]));
    let d = h.d;
    let s0 = d * sc_lo.x;
    let s1 = d * sc_lo.y;
    let s2 = d * sc_lo.z;
    let s3 = d * sc_lo.w;
    let s4 = d * sc_hi.x;
    let s5 = d * sc_hi.y;
    let s6 = d * sc_hi.z;
    let s7 = d * sc_hi.w;
    return array<vec4<f32>, 32>(
        s0 * q6_quad(l0, 0u, h0, 0u), s0 * q6_quad(l1, 0u, h1, 0u), s0 * q6_quad(l2, 0u, h2, 0u), s0 * q6_quad(l3, 0u, h3, 0u),
        s1 * q6_quad(l4, 0u, h4, 0u), s1 * q6_quad(l5, 0u, h5, 0u), s1 * q6_quad(l6, 0u, h6, 0u), s1 * q6_quad(l7, 0u, h7, 0u),
        s2 * q6_quad(l8, 0u, h0, 2u), s2 * q6_quad(l9, 0u, h1, 2u), s2 * q6_quad(l10, 0u, h2, 2u), s2 * q6_quad(l11, 0u, h3, 2u),
        s3 * q6_quad(l12, 0u, h4, 2u), s3 * q6_quad(l13, 0u, h5, 2u), s3 * q6_quad(l14, 0u, h6, 2u), s3 * q6_quad(l15, 0u, h7, 2u),
        s4 * q6_quad(l0, 4u, h0, 4u), s4 * q6_quad(l1, 4u, h1, 4u), s4 * q6_quad(l2, 4u, h2, 4u), s4 * q6_quad(l3, 4u, h3, 4u),
        s5 * q6_quad(l4, 4u, h4, 4u), s5 * q6_quad(l5, 4u, h5, 4u), s5 * q6_quad(l6, 4u, h6, 4u), s5 * q6_quad(l7, 4u, h7, 4u),
        s6 * q6_quad(l8, 4u, h0, 6u), s6 * q6_quad(l9, 4u, h1, 6u), s6 * q6_quad(l10, 4u, h2, 6u), s6 * q6_quad(l11, 4u, h3, 6u),
        s7 * q6_quad(l12, 4u, h4, 6u), s7 * q6_quad(l13, 4u, h5, 6u), s7 * q6_quad(l14, 4u, h6, 6u), s7 * q6_quad(l15, 4u, h7, 6u));
}

//! row_IQ4_NL
fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 8> {
    let i = row * (4u * (prm().cols / 32u)) + 8u * b + 4u * j;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let d = h.d[j];
    return array<vec4<f32>, 8>(
        d * iq4nl_quad(w0, 0u), d * iq4nl_quad(w1, 0u), d * iq4nl_quad(w2, 0u), d * iq4nl_quad(w3, 0u),
        d * iq4nl_quad(w0, 4u), d * iq4nl_quad(w1, 4u), d * iq4nl_quad(w2, 4u), d * iq4nl_quad(w3, 4u));
}

//! row_IQ4_XS
// step j (0..3): sub-blocks 2j (quant words 8j .. 8j + 3) and 2j + 1 (8j + 4 .. 8j + 7), each
// the low nibbles of its 4 words, then the high ones
const BLOCK: u32 = 256u;
const SUBW: u32 = 64u;

struct Head {
    d: f32,
    w0: u32,  // d | scales_h << 16
    w1: u32,  // scales_l
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let i = row * (34u * (prm().cols / 256u)) + 34u * b;
    let w0 = plane0[i];
    return Head(unpack2x16float(w0).x, w0, plane0[i + 1u]);
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 16> {
    let i = row * (34u * (prm().cols / 256u)) + 34u * b + 2u + 8u * j;
    let w0 = plane0[i];
    let w1 = plane0[i + 1u];
    let w2 = plane0[i + 2u];
    let w3 = plane0[i + 3u];
    let w4 = plane0[i + 4u];
    let w5 = plane0[i + 5u];
    let w6 = plane0[i + 6u];
    let w7 = plane0[i + 7u];
    let da = h.d * iq4xs_scale(2u * j, h.w0, h.w1);
    let db = h.d * iq4xs_scale(2u * j + 1u, h.w0, h.w1);
    return array<vec4<f32>, 16>(
        da * iq4nl_quad(w0, 0u), da * iq4nl_quad(w1, 0u), da * iq4nl_quad(w2, 0u), da * iq4nl_quad(w3, 0u),
        da * iq4nl_quad(w0, 4u), da * iq4nl_quad(w1, 4u), da * iq4nl_quad(w2, 4u), da * iq4nl_quad(w3, 4u),
        db * iq4nl_quad(w4, 0u), db * iq4nl_quad(w5, 0u), db * iq4nl_quad(w6, 0u), db * iq4nl_quad(w7, 0u),
        db * iq4nl_quad(w4, 4u), db * iq4nl_quad(w5, 4u), db * iq4nl_quad(w6, 4u), db * iq4nl_quad(w7, 4u));
}

//! row_Q2_K
// step j (0..1): the 128 weights 128j + 32g + 4m + i: quant word 8j + m, bits 2g of each byte;
// sub-block 8j + 2g + (m >> 2)
const BLOCK: u32 = 256u;
const SUBW: u32 = 128u;

struct Head {
    dm: vec2<f32>,
    sc: vec4<u32>,  // the 16 scale bytes
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let i = row * (21u * (prm().cols / 256u)) + 21u * b;
    return Head(unpack2x16float(plane0[i + 20u]),
                vec4<u32>(plane0[i], plane0[i + 1u], plane0[i + 2u], plane0[i + 3u]));
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 32> {
    let i = row * (21u * (prm().cols / 256u)) + 21u * b + 4u + 8u * j;
    let q0 = plane0[i];
    let q1 = plane0[i + 1u];
    let q2 = plane0[i + 2u];
    let q3 = plane0[i + 3u];
    let q4 = plane0[i + 4u];
    let q5 = plane0[i + 5u];
    let q6 = plane0[i + 6u];
    let q7 = plane0[i + 7u];
    let s0 = q2k_scale_min(8u * j + 0u, h.sc, h.dm);
    let s1 = q2k_scale_min(8u * j + 1u, h.sc, h.dm);
    let s2 = q2k_scale_min(8u * j + 2u, h.sc, h.dm);
    let s3 = q2k_scale_min(8u * j + 3u, h.sc, h.dm);
    let s4 = q2k_scale_min(8u * j + 4u, h.sc, h.dm);
    let s5 = q2k_scale_min(8u * j + 5u, h.sc, h.dm);
    let s6 = q2k_scale_min(8u * j + 6u, h.sc, h.dm);
    let s7 = q2k_scale_min(8u * j + 7u, h.sc, h.dm);
    return array<vec4<f32>, 32>(
        s0.x * q2k_quad(q0, 0u) - s0.y, s0.x * q2k_quad(q1, 0u) - s0.y,
        s0.x * q2k_quad(q2, 0u) - s0.y, s0.x * q2k_quad(q3, 0u) - s0.y,
        s1.x * q2k_quad(q4, 0u) - s1.y, s1.x * q2k_quad(q5, 0u) - s1.y,
        s1.x * q2k_quad(q6, 0u) - s1.y, s1.x * q2k_quad(q7, 0u) - s1.y,
        s2.x * q2k_quad(q0, 1u) - s2.y, s2.x * q2k_quad(q1, 1u) - s2.y,
        s2.x * q2k_quad(q2, 1u) - s2.y, s2.x * q2k_quad(q3, 1u) - s2.y,
        s3.x * q2k_quad(q4, 1u) - s3.y, s3.x * q2k_quad(q5, 1u) - s3.y,
        s3.x * q2k_quad(q6, 1u) - s3.y, s3.x * q2k_quad(q7, 1u) - s3.y,
        s4.x * q2k_quad(q0, 2u) - s4.y, s4.x * q2k_quad(q1, 2u) - s4.y,
        s4.x * q2k_quad(q2, 2u) - s4.y, s4.x * q2k_quad(q3, 2u) - s4.y,
        s5.x * q2k_quad(q4, 2u) - s5.y, s5.x * q2k_quad(q5, 2u) - s5.y,
        s5.x * q2k_quad(q6, 2u) - s5.y, s5.x * q2k_quad(q7, 2u) - s5.y,
        s6.x * q2k_quad(q0, 3u) - s6.y, s6.x * q2k_quad(q1, 3u) - s6.y,
        s6.x * q2k_quad(q2, 3u) - s6.y, s6.x * q2k_quad(q3, 3u) - s6.y,
        s7.x * q2k_quad(q4, 3u) - s7.y, s7.x * q2k_quad(q5, 3u) - s7.y,
        s7.x * q2k_quad(q6, 3u) - s7.y, s7.x * q2k_quad(q7, 3u) - s7.y);
}

//! row_Q3_K
// step j (0..1): the 128 weights 128j + 32g + 4m + i: quant word 8 + 8j + m, bits 2g of each
// byte; third bits in hmask word m (all 8 serve every step); sub-block 8j + 2g + (m >> 2)
const BLOCK: u32 = 256u;
const SUBW: u32 = 128u;

struct Head {
    d: f32,
    hm: array<u32, 8>,  // hmask
    sc: vec3<u32>,      // the 12 scale bytes
}

fn n_blocks(cols: u32) -> u32 { return cols / 256u; }

fn load_head(row: u32, b: u32) -> Head {
    let nb = prm().cols / 256u;
    let i = row * (27u * nb) + 27u * b;
    let hm = array<u32, 8>(plane0[i], plane0[i + 1u], plane0[i + 2u], plane0[i + 3u],
                           plane0[i + 4u], plane0[i + 5u], plane0[i + 6u], plane0[i + 7u]);
    return Head(half_of(plane1[row * ((nb + 1u) / 2u) + (b >> 1u)], b & 1u), hm,
                vec3<u32>(plane0[i + 24u], plane0[i + 25u], plane0[i + 26u]));
}

fn sub_weights(row: u32, b: u32, j: u32, h: Head) -> array<vec4<f32>, 32> {
    let i = row * (27u * (prm().cols / 256u)) + 27u * b + 8u + 8u * j;
    let q0 = plane0[i];
    let q1 = plane0[i + 1u];
    let q2 = plane0[i + 2u];
    let q3 = plane0[i + 3u];
    let q4 = plane0[i + 4u];
    let q5 = plane0[i + 5u];
    let q6 = plane0[i + 6u];
    let q7 = plane0[i + 7u];
    let s0 = h.d * q3k_scale(8u * j + 0u, h.sc.x, h.sc.y, h.sc.z);
    let s1 = h.d * q3k_scale(8u * j + 1u, h.sc.x, h.sc.y, h.sc.z);
    let s2 = h.d * q3k_scale(8u * j + 2u, h.sc.x, h.sc.y, h.sc.z);
    let s3 = h.d * q3k_scale(8u * j + 3u, h.sc.x, h.sc.y, h.sc.z);
    let s4 = h.d * q3k_scale(8u * j + 4u, h.sc.x, h.sc.y, h.sc.z);
    let s5 = h.d * q3k_scale(8u * j + 5u, h.sc.x, h.sc.y, h.sc.z);
    let s6 = h.d * q3k_scale(8u * j + 6u, h.sc.x, h.sc.y, h.sc.z);
    let s7 = h.d * q3k_scale(8u * j + 7u, h.sc.x, h.sc.y, h.sc.z);
    return array<vec4<f32>, 32>(
        s0 * q3k_quad(q0, h.hm[0], 0u, j), s0 * q3k_quad(q1, h.hm[1], 0u, j),
        s0 * q3k_quad(q2, h.hm[2], 0u, j), s0 * q3k_quad(q3, h.hm[3], 0u, j),
        s1 * q3k_quad(q4, h.hm[4], 0u, j), s1 * q3k_quad(q5, h.hm[5], 0u, j),
        s1 * q3k_quad(q6, h.hm[6], 0u, j), s1 * q3k_quad(q7, h.hm[7], 0u, j),
        s2 * q3k_quad(q0, h.hm[0], 1u, j), s2 * q3k_quad(q1, h.hm[1], 1u, j),
        s2 * q3k_quad(q2, h.hm[2], 1u, j), s2 * q3k_quad(q3, h.hm[3], 1u, j),
        s3 * q3k_quad(q4, h.hm[4], 1u, j), s3 * q3k_quad(q5, h.hm[5], 1u, j),
        s3 * q3k_quad(q6, h.hm[6], 1u, j), s3 * q3k_quad(q7, h.hm[7], 1u, j),
        s4 * q3k_quad(q0, h.hm[0], 2u, j), s4 * q3k_quad(q1, h.hm[1], 2u, j),
        s4 * q3k_quad(q2, h.hm[2], 2u, j), s4 * q3k_quad(q3, h.hm[3], 2u, j),
        s5 * q3k_quad(q4, h.hm[4], 2u, j), s5 * q3k_quad(q5, h.hm[5], 2u, j),
        s5 * q3k_quad(q6, h.hm[6], 2u, j), s5 * q3k_quad(q7, h.hm[7], 2u, j),
        s6 * q3k_quad(q0, h.hm[0], 3u, j), s6 * q3k_quad(q1, h.hm[1], 3u, j),
        s6 * q3k_quad(q2, h.hm[2], 3u, j), s6 * q3k_quad(q3, h.hm[3], 3u, j),
        s7 * q3k_quad(q4, h.hm[4], 3u, j), s7 * q3k_quad(q5, h.hm[5], 3u, j),
        s7 * q3k_quad(q6, h.hm[6], 3u, j), s7 * q3k_quad(q7, h.hm[7], 3u, j));
}

//! row_main
@compute @workgroup_size($WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>$BUILTINS) {
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    if (row0 >= prm().rows) {  // the whole workgroup returns: subgroups stay whole
        return;
    }
    $XSHARE
$PROLOGUE    for (var t0 = wid.z * TT; t0 < prm().n_tokens; t0 += nwg.z * TT) {
        row_pass_$TT_PASS(row0 + lid, t0, lane, xshare);
    }
}

//! main
@compute @workgroup_size($WG)
fn main(@builtin(local_invocation_index) lid: u32,
        @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>$SG_BUILTINS) {
$SG_LOCALS
    let row0 = (wid.x + wid.y * nwg.x) * ROWS;
    if (row0 >= prm().rows) {
        return;
    }
$PROLOGUE    if (prm().n_tokens == 1u) {
        if (wid.z == 0u) {
            pass_1(row0, 0u, lid$SG_ARGS);
        }
    } else {
        for (var t0 = wid.z * TT; t0 < prm().n_tokens; t0 += nwg.z * TT) {
            pass_$TT_PASS(row0, t0, lid$SG_ARGS);
        }
    }
}
