// One draw from the K best candidates of a row (top_k.wgsl's (value bits, index) pairs, best
// first) with the chain after top-k of wgpu_llm.sampling.Sampler.finish: top-p, min-p,
// temperature, then the draw with the uniform u the host drew for this position
// (numpy's Generator.choice: cdf = cumsum(p); cdf /= cdf[-1]; index = searchsorted(cdf, u, 'right')).
// One invocation walks the <= 128 candidates in order, summing as numpy's cumsum does; this is
// tiny next to the step. The chosen id goes to the step's own ids (the next step's input), to
// `out` (read back) and to the ring of recent ids at the next position (the repetition penalty).
// Candidates that are not finite leave NONE in `out` and 0 as the next input (the host refuses them).
//
// state (u32): [0] top_p, [1] log(min_p) (a huge negative number when off), [2] temperature (f32
// bits); [HEAD, HEAD + RING) the recent ids, position p at HEAD + p % RING; from HEAD + RING the
// uniforms, position p's at HEAD + RING + p.

const NONE: u32 = 0xffffffffu;
const HEAD: u32 = {{HEAD}};
const RING: u32 = {{RING}};
const KMAX: u32 = {{KMAX}};

fn value(i: u32) -> f32 {
    return bitcast<f32>(ld_pairs(2u * i));
}

@compute @workgroup_size(1)
fn main() {
    let top_p = bitcast<f32>(ld_state(0u));
    let log_min_p = bitcast<f32>(ld_state(1u));
    let temperature = bitcast<f32>(ld_state(2u));
    let pos = S.pos0;

    // the candidates: the pairs before the first padding entry (there when K exceeds the row)
    var n = 0u;
    var finite = true;
    loop {
        if (n >= P.k || ld_pairs(2u * n + 1u) == NONE) {
            break;
        }
        finite = finite && (ld_pairs(2u * n) & 0x7f800000u) != 0x7f800000u;  // on the bits: no NaN/inf compares
        n += 1u;
    }
    let top = value(0u);

    // top-p: the smallest prefix whose softmax mass reaches top_p (searchsorted(cum, top_p) + 1)
    var keep = n;
    if (top_p < 1.0) {
        var total = 0.0;
        for (var i = 0u; i < n; i++) {
            total += exp(value(i) - top);
        }
        var cum = 0.0;
        var below = 0u;
        for (var i = 0u; i < n; i++) {
            cum += exp(value(i) - top) / total;
            if (cum < top_p) {
                below += 1u;
            }
        }
        keep = min(below + 1u, n);
    }

    // min-p: logits >= max + log(min_p); the candidates are sorted, so the kept ones are a prefix
    var m = 0u;
    for (var i = 0u; i < keep; i++) {
        if (value(i) >= top + log_min_p) {
            m += 1u;
        }
    }
    m = max(m, 1u);

    // temperature, then the draw
    var cdf: array<f32, KMAX>;
    var total = 0.0;
    for (var i = 0u; i < m; i++) {
        total += exp((value(i) - top) / temperature);
        cdf[i] = total;
    }
    let u = bitcast<f32>(ld_state(HEAD + RING + pos));
    var idx = 0u;
    for (var i = 0u; i < m; i++) {
        if (cdf[i] / total <= u) {
            idx += 1u;
        }
    }
    idx = min(idx, m - 1u);  // u rounded up to 1.0 in f32
    var chosen = ld_pairs(2u * idx + 1u);
    if (!finite || n == 0u) {
        st_out(0u, NONE);
        chosen = 0u;
    } else {
        st_out(0u, chosen);
    }
    st_ids(0u, chosen);
    st_state(HEAD + (pos + 1u) % RING, chosen);
}
