// Causal attention over the KV cache, one workgroup per (query row, head, split).
//
// First the step's own keys and values go into the cache at positions pos0 + row (cache row
// kv_base + position: a sequence's slot of a shared cache) (done by the
// workgroups of the first head of each KV group, split 0). Keys and values of the step's positions are
// read from the k / v inputs themselves, not from the cache, so no workgroup waits on another
// (rounded as the cache stores them: kv_round; the cache's element type is shaders/kv_cache.wgsl's).
// Then an online softmax runs over the split's visible positions in chunks of WG: each thread scores one
// position (q was scaled and put in shared memory), the chunk's max and sum are tree-reduced,
// and each thread keeps DPT output columns, rescaled whenever the running max grows.
// GQA: head h reads KV head h / group. window > 0: a query at p sees keys in (p - window, p].
// softcap > 0: each score s becomes softcap * tanh(s / softcap) (Gemma 2's logit soft-capping).
// q may share its buffer with y (in place): a workgroup reads its q slice before writing y there.
//
// PREP (a step with one row per sequence: decode, or a batched step): q and the step's key come
// raw from the fused QKV projection and each workgroup prepares the heads it reads as the ops
// before attention would have: QK_NORM, each head's rms norm (weights qk_w[0 ..] for q,
// qk_w[HD ..] for k, the rms_norm kernel's formula), then the rotary embedding at the row's position
// (shaders/rope.wgsl's formula) -- so that no dispatch of their own is needed.
//
// Splits (flash-decoding): the visible positions of a row are cut into P.splits contiguous ranges
// of max(WG, ceil(visible / splits)) keys; splits past the last visible key do nothing but say so.
// Without SPLIT there is one split and the workgroup writes the normalised output to y. With
// SPLIT it writes its running max m, its sum l and its unnormalised output o to part (HD + 2
// floats per (row, head, split): m, l, o) and attention_merge.wgsl combines them; an empty
// split writes m = NEG, l = 0, o = 0, which the merge skips by l, never by m.

const WG: u32 = {{WG}};
const HD: u32 = {{HD}};
const DPT: u32 = {{DPT}};
const NEG: f32 = -3.0e38;

var<workgroup> q_sh: array<f32, HD>;
var<workgroup> p_sh: array<f32, WG>;
var<workgroup> red: array<f32, WG>;
#if PREP
var<workgroup> head: array<f32, HD>;  // a head being prepared (prep_head)
var<workgroup> k_sh: array<f32, HD>;  // the step's key of this workgroup's KV head, prepared
#endif

// this workgroup's query row: its sequence's cache start, and where the step's own rows of that
// sequence begin (position and row): keys before sp0 come from the cache, the others from k / v
var<private> kb: u32;
var<private> sp0: u32;
var<private> r0: u32;

// the sum of v over the workgroup (every invocation calls it; red is free again on return)
fn workgroup_sum(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// element d of the step's key at position p >= sp0 of KV head kvh
fn step_key(p: u32, kvh: u32, d: u32) -> f32 {
#if PREP
    return k_sh[d];  // one row per sequence: p is the row's own position
#else
    return ld_k(P.k_off + (r0 + p - sp0) * P.k_stride + kvh * HD + d);
#endif
}

#if PREP
// head <- rope(rms_norm(head) * qk_w[w_off ..]) at position pos (the norm with QK_NORM only); every
// invocation calls it, head written before the call (a barrier between) and read after it
fn prep_head(tid: u32, w_off: u32, pos: f32) {
#if QK_NORM
    var ss = 0.0;
    for (var d = tid; d < HD; d += WG) {
        ss += head[d] * head[d];
    }
    let rms = sqrt(workgroup_sum(ss, tid) / f32(HD) + P.eps);
    for (var d = tid; d < HD; d += WG) {
        head[d] = head[d] / rms * ld_qk_w(w_off + d);
    }
    workgroupBarrier();
#endif
    let half = P.n_rot / 2u;
    for (var j = tid; j < half; j += WG) {  // pair j, rotated by one invocation
        var i0 = 2u * j;
        var i1 = i0 + 1u;
        if (P.neox != 0u) {
            i0 = j;
            i1 = j + half;
        }
        let a = head[i0];
        let b = head[i1];
        let cs = sincos(pos * ld_freq(j)) * P.attn_factor;
        head[i0] = a * cs.y - b * cs.x;
        head[i1] = a * cs.x + b * cs.y;
    }
    workgroupBarrier();
}
#endif

fn score(p: u32, kvh: u32) -> f32 {
    var s = 0.0;
    if (p < sp0) {
        let base = (kb + p) * P.kv_width + kvh * HD;
        for (var d = 0u; d < HD; d += 2u) {
            let kp = kc_pair(base + d);
            s += q_sh[d] * kp.x;
            s += q_sh[d + 1u] * kp.y;
        }
    } else {
        for (var d = 0u; d < HD; d++) {
            s += q_sh[d] * kv_round(step_key(p, kvh, d));
        }
    }
    if (P.softcap > 0.0) {  // tanh's argument clamped: tanh(+-10) is +-1 in f32, and no overflow
        s = P.softcap * tanh(clamp(s * (1.0 / P.softcap), -10.0, 10.0));
    }
    return s;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let job = flat_id(wid, nwg);
    if (job >= P.rows * P.n_head * P.splits) {
        return;
    }
    let split = job % P.splits;
    let rh = job / P.splits;  // row * n_head + head
    let row = rh / P.n_head;
    let h = rh % P.n_head;
    let kvh = h / P.group;
    kb = row_base(row);
    sp0 = span_pos0(row);
    r0 = span_row0(row);

    let qb = P.q_off + row * P.q_stride + h * HD;
#if PREP
    let pos = f32(row_pos(row));
    for (var d = tid; d < HD; d += WG) {
        head[d] = ld_q(qb + d);
    }
    workgroupBarrier();
    prep_head(tid, 0u, pos);
    for (var d = tid; d < HD; d += WG) {
        q_sh[d] = head[d] * P.scale;
    }
    workgroupBarrier();
    let kr = P.k_off + row * P.k_stride + kvh * HD;
    for (var d = tid; d < HD; d += WG) {
        head[d] = ld_k(kr + d);
    }
    workgroupBarrier();
    prep_head(tid, HD, pos);
    for (var d = tid; d < HD; d += WG) {
        k_sh[d] = head[d];
    }
    workgroupBarrier();
#else
    for (var d = tid; d < HD; d += WG) {
        q_sh[d] = ld_q(qb + d) * P.scale;
    }
    workgroupBarrier();
#endif
    // the step's k and v rows of this KV head -> cache, two elements per invocation (HD is even)
    if (h % P.group == 0u && split == 0u) {
        let dst = (kb + row_pos(row)) * P.kv_width + kvh * HD;
        let vs = P.v_off + row * P.v_stride + kvh * HD;
        let p = row_pos(row);
        for (var d = 2u * tid; d < HD; d += 2u * WG) {
            store_kv(dst + d, vec2<f32>(step_key(p, kvh, d), step_key(p, kvh, d + 1u)),
                     vec2<f32>(ld_v(vs + d), ld_v(vs + d + 1u)));
        }
    }

    let last = row_pos(row);  // last visible position
    var first = 0u;
    if (P.window > 0u && last + 1u > P.window) {
        first = last + 1u - P.window;
    }
    // this split's positions lo..hi (none when lo > hi)
    let per = max(WG, (last - first + P.splits) / P.splits);
    let lo = first + split * per;
    let hi = min(last, lo + per - 1u);
    var m = NEG;  // running max
    var l = 0.0;  // running sum of exp(score - m)
    var acc: array<f32, DPT>;
    for (var i = 0u; i < DPT; i++) {
        acc[i] = 0.0;
    }
    for (var base = lo; base <= hi; base += WG) {
        let p = base + tid;
        var s = NEG;
        if (p <= hi) {
            s = score(p, kvh);
        }
        red[tid] = s;
        workgroupBarrier();
        for (var w = WG / 2u; w > 0u; w >>= 1u) {
            if (tid < w) {
                red[tid] = max(red[tid], red[tid + w]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        workgroupBarrier();
        var e = 0.0;
        if (p <= hi) {
            e = exp(s - m_new);
        }
        p_sh[tid] = e;
        let chunk_sum = workgroup_sum(e, tid);  // its barriers also publish p_sh
        let alpha = exp(m - m_new);
        l = l * alpha + chunk_sum;
        m = m_new;
        let count = min(WG, hi + 1u - base);
        for (var i = 0u; i < DPT; i++) {
            acc[i] *= alpha;
        }
        for (var j = 0u; j < count; j++) {
            let pj = base + j;
            let pw = p_sh[j];
            var vb: u32;
            if (pj < sp0) {
                vb = (kb + pj) * P.kv_width + kvh * HD;
                for (var i = 0u; i < DPT; i++) {
                    let d = tid + i * WG;
                    if (d < HD) {
                        acc[i] += pw * vc_at(vb + d);
                    }
                }
            } else {
                vb = P.v_off + (r0 + pj - sp0) * P.v_stride + kvh * HD;
                for (var i = 0u; i < DPT; i++) {
                    let d = tid + i * WG;
                    if (d < HD) {
                        acc[i] += pw * kv_round(ld_v(vb + d));
                    }
                }
            }
        }
        workgroupBarrier();
    }
#if SPLIT
    let pb = job * (HD + 2u);
    if (tid == 0u) {
        st_part(pb, m);
        st_part(pb + 1u, l);
    }
    for (var i = 0u; i < DPT; i++) {
        let d = tid + i * WG;
        if (d < HD) {
            st_part(pb + 2u + d, acc[i]);
        }
    }
#else
    let yb = P.y_off + row * P.y_stride + h * HD;
    for (var i = 0u; i < DPT; i++) {
        let d = tid + i * WG;
        if (d < HD) {
            st_y(yb + d, acc[i] / l);
        }
    }
#endif
}
