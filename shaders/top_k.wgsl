// The K largest values of a row and their indices, in stages. A workgroup takes a chunk of
// CH = WG * E candidates (E per thread, in registers) and keeps its K best as (value bits, index)
// u32 pairs, best first; the first stage reads the row itself (index = column), later stages the
// previous stage's pairs, and the last stage is one workgroup, so its K pairs are the row's top K.
//
// Order: value descending, then index ascending -- a total order on (key, ~index), where key is
// the value's bits mapped so that unsigned order is float order (NaN lowest, -0 as +0). A radix
// select finds the K-th best composite 8 bits at a time (a histogram per round, workgroup
// atomics), the index rounds only when the K-th value is tied; the K candidates at or above it
// are gathered and bitonic-sorted (PK = K rounded up to a power of two). Chunk padding (key 0,
// index 0xffffffff) ranks below every real candidate and only shows when K exceeds the row.

const WG: u32 = {{WG}};
const E: u32 = {{E}};
const CH: u32 = WG * E;
const PK: u32 = {{PK}};
const NONE: u32 = 0xffffffffu;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> pick: array<u32, 3>;  // chosen digit, how many still to take at it, ties at the K-th value
var<workgroup> more: u32;  // 1: the K-th value is tied beyond K, select among the tied indices too
var<workgroup> taken: atomic<u32>;
var<workgroup> sk: array<u32, PK>;
var<workgroup> si: array<u32, PK>;

// on the bits, not with float compares: WGSL lets a compiler assume there is no NaN (so `v != v`
// may fold to false) and ignore the sign of zero (so `select(v, 0.0, v == 0.0)` may fold to v)
fn key_of(v: f32) -> u32 {
    var b = bitcast<u32>(v);
    let mag = b & 0x7fffffffu;
    if (mag > 0x7f800000u) {  // NaN
        return 0u;
    }
    if (mag == 0u) {  // -0 -> +0
        b = 0u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

fn value_of(k: u32) -> f32 {
    if ((k & 0x80000000u) != 0u) {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

fn ahead(ak: u32, ai: u32, bk: u32, bi: u32) -> bool {
    return ak > bk || (ak == bk && ai < bi);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let g = flat_id(wid, nwg);
    if (g >= P.groups) {
        return;
    }
    var keys: array<u32, E>;
    var lows: array<u32, E>;  // ~index: larger is better
    for (var e = 0u; e < E; e++) {
        let pos = g * CH + e * WG + tid;
        var k = 0u;
        var i = NONE;
        if (pos < P.n) {
#if FIRST
            k = key_of(ld_x(P.x_off + pos));
            i = pos;
#else
            k = key_of(bitcast<f32>(ld_x(2u * pos)));
            i = ld_x(2u * pos + 1u);
#endif
        }
        keys[e] = k;
        lows[e] = ~i;
    }

    // radix select of the K-th best (key, ~index): rounds 0-3 over the key, 4-7 over ~index
    var need = P.k;
    var key_pre = 0u;
    var key_mask = 0u;
    var low_pre = 0u;
    var low_mask = 0u;
    for (var r = 0u; r < 8u; r++) {
        if (r == 4u) {
            if (workgroupUniformLoad(&more) == 0u) {
                break;
            }
        }
        let shift = 24u - 8u * (r % 4u);
        for (var b = tid; b < 256u; b += WG) {
            atomicStore(&hist[b], 0u);
        }
        workgroupBarrier();
        for (var e = 0u; e < E; e++) {
            if (r < 4u) {
                if ((keys[e] & key_mask) == key_pre) {
                    atomicAdd(&hist[(keys[e] >> shift) & 255u], 1u);
                }
            } else if (keys[e] == key_pre && (lows[e] & low_mask) == low_pre) {
                atomicAdd(&hist[(lows[e] >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (tid == 0u) {
            var left = need;
            var b = 255u;
            loop {
                let c = atomicLoad(&hist[b]);
                if (c >= left || b == 0u) {
                    pick[2] = c;
                    break;
                }
                left -= c;
                b -= 1u;
            }
            pick[0] = b;
            pick[1] = left;
            if (r == 3u) {
                more = select(0u, 1u, pick[2] > left);
            }
        }
        workgroupBarrier();
        let digit = pick[0];
        need = pick[1];
        if (r < 4u) {
            key_pre |= digit << shift;
            key_mask |= 255u << shift;
        } else {
            low_pre |= digit << shift;
            low_mask |= 255u << shift;
        }
    }

    // gather the K at or above it (low_pre stays 0 when every tie is taken), then sort them
    if (tid == 0u) {
        atomicStore(&taken, 0u);
    }
    for (var j = tid; j < PK; j += WG) {
        sk[j] = 0u;
        si[j] = NONE;
    }
    workgroupBarrier();
    // (those strictly above first: the K-th itself may be one of several identical padding entries)
    for (var pass_ = 0u; pass_ < 2u; pass_++) {
        for (var e = 0u; e < E; e++) {
            let k = keys[e];
            let l = lows[e];
            var take = k > key_pre || (k == key_pre && l > low_pre);
            if (pass_ == 1u) {
                take = k == key_pre && l == low_pre;
            }
            if (take) {
                let slot = atomicAdd(&taken, 1u);
                if (slot < P.k) {
                    sk[slot] = k;
                    si[slot] = ~l;
                }
            }
        }
        workgroupBarrier();
    }
    for (var k = 2u; k <= PK; k <<= 1u) {
        for (var j = k >> 1u; j > 0u; j >>= 1u) {
            for (var t = tid; t < PK; t += WG) {
                let o = t ^ j;
                if (o > t) {
                    let tk = sk[t];
                    let ti = si[t];
                    let ok = sk[o];
                    let oi = si[o];
                    var swap = ahead(tk, ti, ok, oi);  // blocks with (t & k) != 0 end best-last
                    if ((t & k) == 0u) {
                        swap = ahead(ok, oi, tk, ti);
                    }
                    if (swap) {
                        sk[t] = ok;
                        si[t] = oi;
                        sk[o] = tk;
                        si[o] = ti;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var j = tid; j < P.k; j += WG) {
        let d = P.out_off + 2u * (g * P.k + j);
        st_out(d, bitcast<u32>(value_of(sk[j])));
        st_out(d + 1u, si[j]);
    }
}
