// Causal attention for a prefill chunk, flash-attention style: queries in blocks, keys and
// values in tiles staged in workgroup memory, an online softmax per query, never the full
// score matrix. Same inputs, cache layout and semantics as attention.wgsl (its one-query-per-
// workgroup twin, kept for decode): the step's k, v rows go into the cache at pos0 + row (cache
// row kv_base + position; one sequence per step: a batched step uses attention.wgsl); GQA (head h
// reads KV head h / group); window > 0: a query at p sees keys in (p - window, p].
//
// One workgroup takes one KV head and a block of BQ "query slots": slot f = row * group + g is
// query row `row` of head kvh * group + g, so all heads sharing a KV head share its K / V tiles.
// Blocks run from the last (the most keys under the causal mask) to the first.
// Per tile of BKV keys (only tiles some query of the block can see):
//   1. scores S = Q K^T of the block, DC head dims at a time: the chunk's (scaled) queries and
//      keys are staged in workgroup memory, each thread accumulates SQ x SK scores;
//      (soft-capped when softcap > 0: s becomes softcap * tanh(s / softcap), Gemma 2);
//   2. an online-softmax update per slot (running max m, sum l, rescale factor alpha); masked
//      keys get weight 0; the weights P replace S in workgroup memory;
//   3. O = O * alpha + P V: the values are staged VK keys at a time (they reuse the space of
//      step 1), each thread keeps OQ slots x 4 * OD4 dims of O in registers.
// Keys / values of the step's own positions are read from the k / v inputs, not from the cache,
// so no workgroup waits for another's cache write (rounded as the cache stores them: kv_round; the
// cache's element type is shaders/kv_cache.wgsl's). y may share q's buffer (in place): a slot's
// q is read only by the workgroup that writes that slot's y, and y is written last.

const HD4: u32 = {{HD4}};  // head_dim / 4 (vec4s per head)
const BQ: u32 = {{BQ}};    // query slots per workgroup
const BKV: u32 = {{BKV}};  // keys per tile
const DC4: u32 = {{DC4}};  // vec4s of head dims per score chunk
const VK: u32 = {{VK}};    // keys per staged value sub-tile (divides BKV)
const WG: u32 = {{WG}};
const SQ: u32 = {{SQ}};    // score sub-tile per thread: SQ slots x SK keys
const SK: u32 = {{SK}};
const NSK: u32 = BKV / SK;  // threads along keys in the score phase
const OQ: u32 = {{OQ}};    // output sub-tile per thread: OQ slots x OD4 vec4s of dims
const OD4: u32 = {{OD4}};
const NOD: u32 = {{NOD}};  // threads along dims in the output phase (dims vec4 od + NOD * j)
const NOQ: u32 = BQ / OQ;  // threads along slots in the output phase
const NEG: f32 = -3.0e38;

// step 1: qs [BQ][DC4] then ks [BKV][DC4] (each key row rotated by the key: conflict-free reads);
// step 3: vs [VK][HD4]
var<workgroup> tile: array<vec4<f32>, {{TILE}}>;
var<workgroup> ps: array<f32, BQ * BKV>;  // scores, then weights, [slot][key]
var<workgroup> m_sh: array<f32, BQ>;
var<workgroup> l_sh: array<f32, BQ>;
var<workgroup> alpha_sh: array<f32, BQ>;

fn k_slot(key: u32, d4: u32) -> u32 {
    return BQ * DC4 + key * DC4 + (d4 + key) % DC4;
}

fn ld4_q(i: u32) -> vec4<f32> {
    return vec4<f32>(ld_q(i), ld_q(i + 1u), ld_q(i + 2u), ld_q(i + 3u));
}

// 4 dims of key / value position kp of KV head kvh, from the cache (before pos0) or the step
fn key4(kp: u32, kvh: u32, d: u32) -> vec4<f32> {
    if (kp < S.pos0) {
        let i = (S.kv_base + kp) * P.kv_width + kvh * 4u * HD4 + d;
        return vec4<f32>(kc_pair(i), kc_pair(i + 2u));
    }
    let i = P.k_off + (kp - S.pos0) * P.k_stride + kvh * 4u * HD4 + d;
    return kv_round4(vec4<f32>(ld_k(i), ld_k(i + 1u), ld_k(i + 2u), ld_k(i + 3u)));
}

fn value4(kp: u32, kvh: u32, d: u32) -> vec4<f32> {
    if (kp < S.pos0) {
        let i = (S.kv_base + kp) * P.kv_width + kvh * 4u * HD4 + d;
        return vec4<f32>(vc_pair(i), vc_pair(i + 2u));
    }
    let i = P.v_off + (kp - S.pos0) * P.v_stride + kvh * 4u * HD4 + d;
    return kv_round4(vec4<f32>(ld_v(i), ld_v(i + 1u), ld_v(i + 2u), ld_v(i + 3u)));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let n_kv = P.n_head / P.group;
    let slots = P.rows * P.group;
    let n_blocks = (slots + BQ - 1u) / BQ;
    let job = flat_id(wid, nwg);
    if (job >= n_blocks * n_kv) {
        return;
    }
    let kvh = job % n_kv;
    let blk = n_blocks - 1u - job / n_kv;  // the longest blocks first
    let f0 = blk * BQ;
    let row_first = f0 / P.group;
    let row_last = (min(f0 + BQ, slots) - 1u) / P.group;
    let hd = 4u * HD4;

    // the step's k and v rows of this KV head -> cache: rows whose first slot is in this block,
    // two elements per invocation
    let row_own = (f0 + P.group - 1u) / P.group;
    let row_end = (min(f0 + BQ, slots) + P.group - 1u) / P.group;
    let hd2 = hd / 2u;
    for (var i = tid; i < (row_end - row_own) * hd2; i += WG) {
        let row = row_own + i / hd2;
        let d = 2u * (i % hd2);
        let dst = (S.kv_base + S.pos0 + row) * P.kv_width + kvh * hd + d;
        let ks = P.k_off + row * P.k_stride + kvh * hd + d;
        let vs = P.v_off + row * P.v_stride + kvh * hd + d;
        store_kv(dst, vec2<f32>(ld_k(ks), ld_k(ks + 1u)), vec2<f32>(ld_v(vs), ld_v(vs + 1u)));
    }

    for (var i = tid; i < BQ; i += WG) {
        m_sh[i] = NEG;
        l_sh[i] = 0.0;
    }
    let hi = S.pos0 + row_last;  // the last position any slot of the block sees
    var lo = 0u;
    if (P.window > 0u && S.pos0 + row_first + 1u > P.window) {
        lo = S.pos0 + row_first + 1u - P.window;
    }

    // score phase: this thread's SQ slots and SK keys
    let s_key = tid % NSK;  // keys s_key + NSK * j
    let s_slot = tid / NSK;  // slots s_slot * SQ + i
    // output phase: slots o_slot + NOQ * i, dim vec4s o_dim + NOD * j
    let o_dim = tid % NOD;
    let o_slot = tid / NOD;
    var acc: array<vec4<f32>, OQ * OD4>;
    for (var i = 0u; i < OQ * OD4; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var kb0 = lo; kb0 <= hi; kb0 += BKV) {
        // 1. scores of this tile
        var s: array<f32, SQ * SK>;
        for (var i = 0u; i < SQ * SK; i++) {
            s[i] = 0.0;
        }
        for (var c4 = 0u; c4 < HD4; c4 += DC4) {
            workgroupBarrier();  // the tile's previous contents are consumed
            for (var i = tid; i < BQ * DC4; i += WG) {
                let slot = i / DC4;
                let d4 = i % DC4;
                let f = f0 + slot;
                var qv = vec4<f32>(0.0);
                if (f < slots && c4 + d4 < HD4) {
                    let row = f / P.group;
                    let h = kvh * P.group + f % P.group;
                    qv = ld4_q(P.q_off + row * P.q_stride + h * hd + 4u * (c4 + d4)) * P.scale;
                }
                tile[slot * DC4 + d4] = qv;
            }
            for (var i = tid; i < BKV * DC4; i += WG) {
                let key = i / DC4;
                let d4 = i % DC4;
                var kv = vec4<f32>(0.0);
                if (c4 + d4 < HD4) {
                    kv = key4(min(kb0 + key, hi), kvh, 4u * (c4 + d4));
                }
                tile[k_slot(key, d4)] = kv;
            }
            workgroupBarrier();
            for (var d4 = 0u; d4 < DC4; d4++) {
                var kr: array<vec4<f32>, SK>;
                for (var j = 0u; j < SK; j++) {
                    kr[j] = tile[k_slot(s_key + NSK * j, d4)];
                }
                for (var i = 0u; i < SQ; i++) {
                    let qv = tile[(s_slot * SQ + i) * DC4 + d4];
                    for (var j = 0u; j < SK; j++) {
                        s[i * SK + j] += dot(qv, kr[j]);
                    }
                }
            }
        }
        for (var i = 0u; i < SQ; i++) {
            for (var j = 0u; j < SK; j++) {
                var sc = s[i * SK + j];
                if (P.softcap > 0.0) {  // tanh's argument clamped: tanh(+-10) is +-1 in f32, and no overflow
                    sc = P.softcap * tanh(clamp(sc * (1.0 / P.softcap), -10.0, 10.0));
                }
                ps[(s_slot * SQ + i) * BKV + s_key + NSK * j] = sc;
            }
        }
        workgroupBarrier();

        // 2. online softmax, one thread per slot
        for (var slot = tid; slot < BQ; slot += WG) {
            let f = f0 + slot;
            let qp = S.pos0 + f / P.group;
            let m_old = m_sh[slot];
            var m_new = m_old;
            for (var j = 0u; j < BKV; j++) {
                let kp = kb0 + j;
                if (f < slots && kp <= qp && (P.window == 0u || kp + P.window > qp)) {
                    m_new = max(m_new, ps[slot * BKV + j]);
                }
            }
            var sum = 0.0;
            for (var j = 0u; j < BKV; j++) {
                let kp = kb0 + j;
                var e = 0.0;
                if (f < slots && kp <= qp && (P.window == 0u || kp + P.window > qp)) {
                    e = exp(ps[slot * BKV + j] - m_new);
                }
                ps[slot * BKV + j] = e;
                sum += e;
            }
            let alpha = exp(m_old - m_new);
            alpha_sh[slot] = alpha;
            l_sh[slot] = l_sh[slot] * alpha + sum;
            m_sh[slot] = m_new;
        }
        workgroupBarrier();

        // 3. O = O * alpha + P V
        for (var i = 0u; i < OQ; i++) {
            let a = alpha_sh[o_slot + NOQ * i];
            for (var j = 0u; j < OD4; j++) {
                acc[i * OD4 + j] *= a;
            }
        }
        for (var v0 = 0u; v0 < BKV; v0 += VK) {
            if (v0 > 0u) {
                workgroupBarrier();  // the previous sub-tile is consumed
            }
            for (var i = tid; i < VK * HD4; i += WG) {
                let key = i / HD4;
                let d4 = i % HD4;
                tile[i] = value4(min(kb0 + v0 + key, hi), kvh, 4u * d4);
            }
            workgroupBarrier();
            for (var key = 0u; key < VK; key++) {
                var vr: array<vec4<f32>, OD4>;
                for (var j = 0u; j < OD4; j++) {
                    vr[j] = tile[key * HD4 + min(o_dim + NOD * j, HD4 - 1u)];
                }
                for (var i = 0u; i < OQ; i++) {
                    let w = ps[(o_slot + NOQ * i) * BKV + v0 + key];
                    for (var j = 0u; j < OD4; j++) {
                        acc[i * OD4 + j] += w * vr[j];
                    }
                }
            }
        }
    }
    workgroupBarrier();  // l_sh is final

    for (var i = 0u; i < OQ; i++) {
        let slot = o_slot + NOQ * i;
        let f = f0 + slot;
        if (f < slots) {
            let row = f / P.group;
            let h = kvh * P.group + f % P.group;
            let inv = 1.0 / l_sh[slot];
            for (var j = 0u; j < OD4; j++) {
                let d4 = o_dim + NOD * j;
                if (d4 < HD4) {
                    let o = acc[i * OD4 + j] * inv;
                    let yb = P.y_off + row * P.y_stride + h * hd + 4u * d4;
                    st_y(yb, o.x);
                    st_y(yb + 1u, o.y);
                    st_y(yb + 2u, o.z);
                    st_y(yb + 3u, o.w);
                }
            }
        }
    }
}
