// Register-level dequantization of packed GGUF weights, one section per type.
//
// wgpu_llm/gpu/quant.py repacks each GGUF tensor into u32 "planes" (one storage buffer each,
// bound at @binding(3 + i)); every plane is row-major with a fixed number of u32 words per
// weight row, so a piece of rows is a plain slice of each plane. Unless a section says
// otherwise, f16 block scales live in a plane of their own, two per word, each row padded to
// a whole word: row r's scale of block b is half (b & 1) of word r * ((nb + 1) / 2) + b / 2.
//
// Every section provides the same interface, used by quant_linear.wgsl and quant_embed.wgsl:
//   const PAD_COLS: bool            rows are zero-padded to a multiple of 8 columns
//                                   (float types, whose cols need not be a multiple of 8)
//   fn row_units(cols) -> u32       a row is processed in "units" of 8 weights
//   fn unit_cols(u) -> vec2<u32>    the unit's weights sit at columns x+0..3 and y+0..3
//   fn dequant_unit(row, u, cols) -> Unit   those 8 weights as f32
//
// dequant_unit computes what gguf-py's dequantizers compute, in float32 and in the same order,
// so the result is bit-identical. Every product involved is exact in f32: an f16 significand
// has 11 bits and the integer factors add at most 12 more (Q6_K: |scale| <= 127 times
// |q| <= 31, or a power of two), 23 <= 24. So each weight is rounded at most once (the
// "+ m" / "- dmin * min" of Q4_1, Q5_1, Q2_K, Q4_K, Q5_K), and contracting that into a fused
// multiply-add cannot change the result. IQ4_XS is the exception: (d * scale) is exact, but its
// product with a grid value (8 bits) is rounded -- once, as gguf-py rounds it, in the same order.

//! common
struct Unit {
    a: vec4<f32>,  // columns unit_cols(u).x + 0..3
    b: vec4<f32>,  // columns unit_cols(u).y + 0..3
}

const BYTE_SHIFTS = vec4<u32>(0u, 8u, 16u, 24u);

// the four bytes of w, each shifted right by `shift` and masked
fn byte_bits(w: u32, shift: u32, mask: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> (BYTE_SHIFTS + vec4<u32>(shift))) & vec4<u32>(mask);
}

// the four bytes of w as signed 8-bit integers
fn i8x4(w: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(w << 24u), bitcast<i32>(w << 16u), bitcast<i32>(w << 8u), bitcast<i32>(w));
    return vec4<f32>(v >> vec4<u32>(24u));
}

// half i (0 = low 16 bits) of w as f32; f16 -> f32 is exact
fn half_of(w: u32, i: u32) -> f32 {
    return unpack2x16float(w)[i];
}

// 8 columns per unit, contiguous: the float types
fn contiguous_unit_cols(u: u32) -> vec2<u32> {
    return vec2<u32>(8u * u, 8u * u + 4u);
}

// legacy 32-weight blocks: byte i of the 16 quant bytes holds weight i (low nibble) and
// weight i + 16 (high nibble); unit j (0..3) of a block is quant word j
fn q32_unit_cols(u: u32) -> vec2<u32> {
    let c = 32u * (u >> 2u) + 4u * (u & 3u);
    return vec2<u32>(c, c + 16u);
}

// Q4_K / Q5_K: quant byte 32 * j + l holds weight 64 * j + l (low nibble, sub-block 2j) and
// weight 64 * j + 32 + l (high nibble, sub-block 2j + 1); unit k (0..31) is quant word k
fn q45k_unit_cols(u: u32) -> vec2<u32> {
    let k = u & 31u;
    let c = 256u * (u >> 5u) + 64u * (k >> 3u) + 4u * (k & 7u);
    return vec2<u32>(c, c + 32u);
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block s (0..7), from the block's 12 scale bytes
// (w0 = bytes 0..3, w1 = bytes 4..7, w2 = bytes 8..11). Sub-blocks 0..3 keep scale and min in
// the low 6 bits of bytes s and s + 4; sub-blocks 4..7 take their low 4 bits from byte s + 4
// and their high 2 bits from the top of bytes s - 4 and s.
fn kq_scale_min(s: u32, w0: u32, w1: u32, w2: u32) -> vec2<f32> {
    let sh = 8u * (s & 3u);
    let b0 = (w0 >> sh) & 0xffu;
    let b1 = (w1 >> sh) & 0xffu;
    let b2 = (w2 >> sh) & 0xffu;
    let low = vec2<u32>(b0 & 63u, b1 & 63u);
    let high = vec2<u32>((b2 & 15u) | ((b0 >> 6u) << 4u), (b2 >> 4u) | ((b1 >> 6u) << 4u));
    return vec2<f32>(select(low, high, s >= 4u));
}

// IQ4_NL / IQ4_XS: the 16 values of the non-linear 4-bit grid (ggml's kvalues_iq4nl: -127, -104,
// -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113) as int8 bytes, value i in byte
// i & 3 of word i >> 2. Looked up four at a time with vector selects and shifts: no table in
// memory, no per-lane indexing.
const IQ4NL_GRID0 = 0xbfad9881u;
const IQ4NL_GRID1 = 0xf6eaddcfu;
const IQ4NL_GRID2 = 0x26190d01u;
const IQ4NL_GRID3 = 0x71594535u;

// the grid values of the nibbles at `shift` (0: low, 4: high) of the four bytes of w
fn iq4nl_quad(w: u32, shift: u32) -> vec4<f32> {
    let q = byte_bits(w, shift, 15u);
    let bit2 = (q & vec4<u32>(4u)) != vec4<u32>(0u);
    let low = select(vec4<u32>(IQ4NL_GRID0), vec4<u32>(IQ4NL_GRID1), bit2);
    let high = select(vec4<u32>(IQ4NL_GRID2), vec4<u32>(IQ4NL_GRID3), bit2);
    let word = select(low, high, q >= vec4<u32>(8u));
    return vec4<f32>(bitcast<vec4<i32>>(word << (vec4<u32>(24u) - 8u * (q & vec4<u32>(3u)))) >> vec4<u32>(24u));
}

// Q2_K / Q3_K: quant byte 32 * h + l (h 0..1) holds 2-bit quants of weights 128 * h + 32 * g + l
// at bits 2g (g 0..3). Unit k (0..31) of a block takes quant word k & 15 (m = k & 7, h = k >> 3
// of it) and the groups g = 2 * (k >> 4) (columns x) and g + 1 (columns y = x + 32); adjacent
// units read adjacent words. The 16-weight sub-block of weight 128 * h + 32 * g + 4 * m + i is
// 8 * h + 2 * g + (m >> 2).
fn q23k_unit_cols(u: u32) -> vec2<u32> {
    let k = u & 31u;
    let w = k & 15u;
    let c = 256u * (u >> 5u) + 128u * (w >> 3u) + 64u * (k >> 4u) + 4u * (w & 7u);
    return vec2<u32>(c, c + 32u);
}

//! F32
// plane0: the f32 bits, rows padded with zeros to a multiple of 8 columns
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = true;

fn row_units(cols: u32) -> u32 { return (cols + 7u) / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return contiguous_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let i = row * (8u * row_units(cols)) + 8u * u;
    let a = vec4<f32>(bitcast<f32>(plane0[i]), bitcast<f32>(plane0[i + 1u]),
                      bitcast<f32>(plane0[i + 2u]), bitcast<f32>(plane0[i + 3u]));
    let b = vec4<f32>(bitcast<f32>(plane0[i + 4u]), bitcast<f32>(plane0[i + 5u]),
                      bitcast<f32>(plane0[i + 6u]), bitcast<f32>(plane0[i + 7u]));
    return Unit(a, b);
}

//! F16
// plane0: the f16 values, two per word, rows padded with zeros to a multiple of 8 columns
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = true;

fn row_units(cols: u32) -> u32 { return (cols + 7u) / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return contiguous_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let i = row * (4u * row_units(cols)) + 4u * u;
    let a = vec4<f32>(unpack2x16float(plane0[i]), unpack2x16float(plane0[i + 1u]));
    let b = vec4<f32>(unpack2x16float(plane0[i + 2u]), unpack2x16float(plane0[i + 3u]));
    return Unit(a, b);
}

//! BF16
// plane0: the bf16 values, two per word, rows padded with zeros to a multiple of 8 columns;
// a bf16 is the high half of an f32
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = true;

fn row_units(cols: u32) -> u32 { return (cols + 7u) / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return contiguous_unit_cols(u); }

fn bf16_pair(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let i = row * (4u * row_units(cols)) + 4u * u;
    let a = vec4<f32>(bf16_pair(plane0[i]), bf16_pair(plane0[i + 1u]));
    let b = vec4<f32>(bf16_pair(plane0[i + 2u]), bf16_pair(plane0[i + 3u]));
    return Unit(a, b);
}

//! Q8_0
// plane0: 8 words of int8 quants per block; plane1: f16 scales.  w = d * q
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }

fn unit_cols(u: u32) -> vec2<u32> {
    let c = 32u * (u >> 2u) + 8u * (u & 3u);
    return vec2<u32>(c, c + 4u);
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 32u;
    let blk = u >> 2u;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let i = row * (8u * nb) + 2u * u;
    return Unit(i8x4(plane0[i]) * d, i8x4(plane0[i + 1u]) * d);
}

//! Q4_0
// plane0: 4 words of nibbles per block; plane1: f16 scales.  w = d * (q - 8)
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 32u;
    let blk = u >> 2u;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let w = plane0[row * (4u * nb) + u];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u)) - 8.0;
    let qb = vec4<f32>(byte_bits(w, 4u, 15u)) - 8.0;
    return Unit(d * qa, d * qb);
}

//! Q4_1
// plane0: the GGUF blocks as they are (5 words: d | m << 16, 4 words of nibbles).  w = d * q + m
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let base = row * (5u * (cols / 32u)) + 5u * (u >> 2u);
    let dm = unpack2x16float(plane0[base]);
    let w = plane0[base + 1u + (u & 3u)];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u));
    let qb = vec4<f32>(byte_bits(w, 4u, 15u));
    return Unit(dm.x * qa + dm.y, dm.x * qb + dm.y);
}

//! Q5_0
// plane0: 5 words per block (qh: bit i is the 5th bit of weight i; 4 words of nibbles);
// plane1: f16 scales.  w = d * (q - 16)
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 32u;
    let blk = u >> 2u;
    let j = u & 3u;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let base = row * (5u * nb) + 5u * blk;
    let qh = vec4<u32>(plane0[base]) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(4u * j));
    let w = plane0[base + 1u + j];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u) | ((qh & vec4<u32>(1u)) << vec4<u32>(4u))) - 16.0;
    let qb = vec4<f32>(byte_bits(w, 4u, 15u) | (((qh >> vec4<u32>(16u)) & vec4<u32>(1u)) << vec4<u32>(4u))) - 16.0;
    return Unit(d * qa, d * qb);
}

//! Q5_1
// plane0: the GGUF blocks as they are (6 words: d | m << 16, qh, 4 words of nibbles).
// w = d * q + m
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let j = u & 3u;
    let base = row * (6u * (cols / 32u)) + 6u * (u >> 2u);
    let dm = unpack2x16float(plane0[base]);
    let qh = vec4<u32>(plane0[base + 1u]) >> (vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(4u * j));
    let w = plane0[base + 2u + j];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u) | ((qh & vec4<u32>(1u)) << vec4<u32>(4u)));
    let qb = vec4<f32>(byte_bits(w, 4u, 15u) | (((qh >> vec4<u32>(16u)) & vec4<u32>(1u)) << vec4<u32>(4u)));
    return Unit(dm.x * qa + dm.y, dm.x * qb + dm.y);
}

//! Q4_K
// plane0: the GGUF blocks as they are (36 words: d | dmin << 16, 3 words of packed 6-bit
// scales and mins, 32 words of nibbles).  w = (d * scale) * q - dmin * min
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q45k_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let k = u & 31u;
    let base = row * (36u * (cols / 256u)) + 36u * (u >> 5u);
    let dm = unpack2x16float(plane0[base]);
    let s0 = 2u * (k >> 3u);
    let w0 = plane0[base + 1u];
    let w1 = plane0[base + 2u];
    let w2 = plane0[base + 3u];
    let sm_a = kq_scale_min(s0, w0, w1, w2);
    let sm_b = kq_scale_min(s0 + 1u, w0, w1, w2);
    let w = plane0[base + 4u + k];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u));
    let qb = vec4<f32>(byte_bits(w, 4u, 15u));
    return Unit((dm.x * sm_a.x) * qa - dm.y * sm_a.y, (dm.x * sm_b.x) * qb - dm.y * sm_b.y);
}

//! Q5_K
// plane0: the GGUF blocks as they are (44 words: d | dmin << 16, 3 words of scales and mins,
// 8 words qh: bit s of qh byte l is the 5th bit of weight 32 * s + l, 32 words of nibbles).
// w = (d * scale) * q - dmin * min
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q45k_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let k = u & 31u;
    let base = row * (44u * (cols / 256u)) + 44u * (u >> 5u);
    let dm = unpack2x16float(plane0[base]);
    let s0 = 2u * (k >> 3u);
    let w0 = plane0[base + 1u];
    let w1 = plane0[base + 2u];
    let w2 = plane0[base + 3u];
    let sm_a = kq_scale_min(s0, w0, w1, w2);
    let sm_b = kq_scale_min(s0 + 1u, w0, w1, w2);
    let qh = plane0[base + 4u + (k & 7u)];
    let w = plane0[base + 12u + k];
    let qa = vec4<f32>(byte_bits(w, 0u, 15u) | (byte_bits(qh, s0, 1u) << vec4<u32>(4u)));
    let qb = vec4<f32>(byte_bits(w, 4u, 15u) | (byte_bits(qh, s0 + 1u, 1u) << vec4<u32>(4u)));
    return Unit((dm.x * sm_a.x) * qa - dm.y * sm_a.y, (dm.x * sm_b.x) * qb - dm.y * sm_b.y);
}

//! Q6_K
// plane0: 52 words per block: ql (32 words), qh (16 words), 16 int8 scales (4 words);
// plane1: f16 scales d.  Weight 128 * h + 32 * g + l (h 0..1, g 0..3, l 0..31) has its low
// 4 bits in ql byte 64 * h + 32 * (g & 1) + l (high nibble when g >= 2), its top 2 bits at
// bit 2 * g of qh byte 32 * h + l, and scale byte 8 * h + 2 * g + l / 16.
// w = (d * scale) * (q - 32)
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }

// unit k (0..31) of a block is ql word k: groups g0 (low nibbles) and g0 + 2 (high nibbles)
fn unit_cols(u: u32) -> vec2<u32> {
    let k = u & 31u;
    let c = 256u * (u >> 5u) + 128u * (k >> 4u) + 4u * (k & 15u);  // 4 * (k & 15) = 32 * g0 + l
    return vec2<u32>(c, c + 64u);
}

fn q6k_scale(base: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(plane0[base + 48u + (i >> 2u)] << (24u - 8u * (i & 3u))) >> 24u);
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 256u;
    let blk = u >> 5u;
    let k = u & 31u;
    let h = k >> 4u;
    let o = 4u * (k & 15u);
    let g0 = o >> 5u;
    let l = o & 31u;
    let base = row * (52u * nb) + 52u * blk;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let ql = plane0[base + k];
    let qh = plane0[base + 32u + 8u * h + (l >> 2u)];
    let qa = vec4<i32>(byte_bits(ql, 0u, 15u) | (byte_bits(qh, 2u * g0, 3u) << vec4<u32>(4u)));
    let qb = vec4<i32>(byte_bits(ql, 4u, 15u) | (byte_bits(qh, 2u * g0 + 4u, 3u) << vec4<u32>(4u)));
    let sc_a = q6k_scale(base, 8u * h + 2u * g0 + (l >> 4u));
    let sc_b = q6k_scale(base, 8u * h + 2u * g0 + 4u + (l >> 4u));
    return Unit((d * sc_a) * vec4<f32>(qa - vec4<i32>(32)), (d * sc_b) * vec4<f32>(qb - vec4<i32>(32)));
}

//! IQ4_NL
// plane0: 4 words of nibbles per block, laid out as Q4_0's; plane1: f16 scales.
// w = d * grid[q] (IQ4NL_GRID)
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 32u;
    let blk = u >> 2u;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let w = plane0[row * (4u * nb) + u];
    return Unit(d * iq4nl_quad(w, 0u), d * iq4nl_quad(w, 4u));
}

//! IQ4_XS
// plane0: the GGUF blocks as they are (34 words: d | scales_h << 16, scales_l, 32 words of
// nibbles). Sub-block s (0..7) of 32 weights: quant words 4s .. 4s + 3, laid out as a Q4_0
// block's; its 6-bit scale has the low 4 bits at bit 4s of scales_l, the high 2 at bit 2s of
// scales_h, and is stored plus 32.  w = (d * (scale - 32)) * grid[q]
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q32_unit_cols(u); }  // unit k of a block is quant word k

// w0: the block's first word (d | scales_h << 16), w1: scales_l
fn iq4xs_scale(s: u32, w0: u32, w1: u32) -> f32 {
    let low = (w1 >> (4u * s)) & 15u;
    let high = (w0 >> (16u + 2u * s)) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let k = u & 31u;
    let base = row * (34u * (cols / 256u)) + 34u * (u >> 5u);
    let w0 = plane0[base];
    let dl = unpack2x16float(w0).x * iq4xs_scale(k >> 2u, w0, plane0[base + 1u]);
    let w = plane0[base + 2u + k];
    return Unit(dl * iq4nl_quad(w, 0u), dl * iq4nl_quad(w, 4u));
}

//! Q2_K
// plane0: the GGUF blocks as they are (21 words: 16 scale bytes, 16 words of 2-bit quants (see
// q23k_unit_cols), d | dmin << 16). Scale byte s: the sub-block's scale (low nibble) and min.
// w = (d * scale) * q - dmin * min
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q23k_unit_cols(u); }

// (d * scale, dmin * min) of sub-block s; sc: the 4 scale words
fn q2k_scale_min(s: u32, sc: vec4<u32>, dm: vec2<f32>) -> vec2<f32> {
    let b = (sc[s >> 2u] >> (8u * (s & 3u))) & 0xffu;
    return dm * vec2<f32>(vec2<u32>(b & 15u, b >> 4u));
}

// the 2-bit quants of group g in quant word w
fn q2k_quad(w: u32, g: u32) -> vec4<f32> {
    return vec4<f32>(byte_bits(w, 2u * g, 3u));
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let k = u & 31u;
    let m = k & 7u;
    let h = (k >> 3u) & 1u;
    let g = 2u * (k >> 4u);
    let base = row * (21u * (cols / 256u)) + 21u * (u >> 5u);
    let sc = vec4<u32>(plane0[base], plane0[base + 1u], plane0[base + 2u], plane0[base + 3u]);
    let dm = unpack2x16float(plane0[base + 20u]);
    let s = 8u * h + 2u * g + (m >> 2u);
    let a = q2k_scale_min(s, sc, dm);
    let b = q2k_scale_min(s + 2u, sc, dm);
    let w = plane0[base + 4u + (k & 15u)];
    return Unit(a.x * q2k_quad(w, g) - a.y, b.x * q2k_quad(w, g + 1u) - b.y);
}

//! Q3_K
// plane0: 27 words per block: hmask (8 words), 2-bit quants (16 words, see q23k_unit_cols), 12
// bytes of 6-bit scales; plane1: f16 scales d. Weight 128 * h + 32 * g + l has the third bit
// of its quant at bit 4 * h + g of hmask byte l, set meaning "no offset": q = low 2 bits - 4 when
// it is 0. Sub-block s (0..15) has its scale's low 4 bits at bit 4 * (s >> 3) of scale byte
// s & 7, the high 2 at bit 2 * (s >> 2) of byte 8 + (s & 3), stored plus 32.
// w = (d * (scale - 32)) * q
@group(0) @binding(3) var<storage, read> plane0: array<u32>;
@group(0) @binding(4) var<storage, read> plane1: array<u32>;
const PAD_COLS: bool = false;

fn row_units(cols: u32) -> u32 { return cols / 8u; }
fn unit_cols(u: u32) -> vec2<u32> { return q23k_unit_cols(u); }

// sub-block s's scale; w0, w1, w2: the block's scale words (plane0 words 24 .. 26)
fn q3k_scale(s: u32, w0: u32, w1: u32, w2: u32) -> f32 {
    let low = (select(w0, w1, (s & 7u) >= 4u) >> (8u * (s & 3u) + 4u * (s >> 3u))) & 15u;
    let high = (w2 >> (8u * (s & 3u) + 2u * (s >> 2u))) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

// the quants of group g of the half h: low bits from quant word w, third bits from hmask word hm
fn q3k_quad(w: u32, hm: u32, g: u32, h: u32) -> vec4<f32> {
    let offset = (byte_bits(hm, 4u * h + g, 1u) ^ vec4<u32>(1u)) << vec4<u32>(2u);
    return vec4<f32>(vec4<i32>(byte_bits(w, 2u * g, 3u)) - vec4<i32>(offset));
}

fn dequant_unit(row: u32, u: u32, cols: u32) -> Unit {
    let nb = cols / 256u;
    let blk = u >> 5u;
    let k = u & 31u;
    let m = k & 7u;
    let h = (k >> 3u) & 1u;
    let g = 2u * (k >> 4u);
    let base = row * (27u * nb) + 27u * blk;
    let d = half_of(plane1[row * ((nb + 1u) / 2u) + (blk >> 1u)], blk & 1u);
    let w0 = plane0[base + 24u];
    let w1 = plane0[base + 25u];
    let w2 = plane0[base + 26u];
    let s = 8u * h + 2u * g + (m >> 2u);
    let w = plane0[base + 8u + (k & 15u)];
    let hm = plane0[base + m];
    return Unit((d * q3k_scale(s, w0, w1, w2)) * q3k_quad(w, hm, g, h),
                (d * q3k_scale(s + 2u, w0, w1, w2)) * q3k_quad(w, hm, g + 1u, h));
}
