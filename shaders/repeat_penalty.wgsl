// llama.cpp's repetition penalty on one row of logits, in place (wgpu_llm.sampling.
// apply_repeat_penalty): the logit of each DISTINCT id among the last n positions' ids is divided
// by the penalty if > 0, else multiplied -- an id seen twice is penalised once. The ids come from
// the ring of recent ids in `state` (see sample.wgsl): position p's at HEAD + p % RING; the step's
// own position pos is the newest. Thread j takes the id j positions back and applies the penalty
// only if no newer position holds the same id.
//
// state (u32): [3] the penalty (f32 bits), [4] n = repeat_last_n (<= RING).

const WG: u32 = {{WG}};
const HEAD: u32 = {{HEAD}};
const RING: u32 = {{RING}};

fn recent(pos: u32, back: u32) -> u32 {
    return ld_state(HEAD + (pos - back) % RING);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) tid: u32) {
    let penalty = bitcast<f32>(ld_state(3u));
    let pos = S.pos0;
    let n = min(min(ld_state(4u), RING), pos + 1u);
    for (var j = tid; j < n; j += WG) {
        let id = recent(pos, j);
        var newest = id < P.width;
        for (var i = 0u; i < j; i++) {
            if (recent(pos, i) == id) {
                newest = false;
                break;
            }
        }
        if (newest) {
            let v = ld_x(P.x_off + id);
            st_x(P.x_off + id, select(v * penalty, v / penalty, v > 0.0));
        }
    }
}
