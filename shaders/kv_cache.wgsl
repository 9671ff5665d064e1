// How attention.wgsl and flash_attention.wgsl read and write the KV cache (the loader puts this
// file before a kernel that calls kv_round or kv_round4): f32 elements, or with KV_F16 IEEE halves
// packed two to a u32 word with pack2x16float / unpack2x16float -- core WGSL, no shader-f16
// needed; the math stays f32. Element i of a cache row is half i % 2 of word i / 2 (the low half first, numpy's
// float16 layout); a pair (i even) is written as one word, so no two invocations write one word.
// WGSL lets pack2x16float round either way when a value lies between two halves, and gives an
// indeterminate word for a value beyond the halves' range (65504): keys and values that large do
// not fit an f16 cache on any backend.
// kv_round(x) is what a value becomes once stored: the kernels read the step's own keys and values
// from the k / v inputs, not from the cache, and round them so, so that a step sees the numbers a
// later step reads from the cache, and the result does not depend on how a prompt was cut into steps.

#if KV_F16
fn kv_round(x: f32) -> f32 { return unpack2x16float(pack2x16float(vec2<f32>(x, 0.0))).x; }
fn kc_pair(i: u32) -> vec2<f32> { return unpack2x16float(ld_kc(i >> 1u)); }
fn vc_pair(i: u32) -> vec2<f32> { return unpack2x16float(ld_vc(i >> 1u)); }
fn vc_at(i: u32) -> f32 {
    let w = vc_pair(i);
    return select(w.x, w.y, (i & 1u) == 1u);
}
fn store_kv(i: u32, k: vec2<f32>, v: vec2<f32>) {
    st_kc(i >> 1u, pack2x16float(k));
    st_vc(i >> 1u, pack2x16float(v));
}
#else
fn kv_round(x: f32) -> f32 { return x; }
fn kc_pair(i: u32) -> vec2<f32> { return vec2<f32>(ld_kc(i), ld_kc(i + 1u)); }
fn vc_pair(i: u32) -> vec2<f32> { return vec2<f32>(ld_vc(i), ld_vc(i + 1u)); }
fn vc_at(i: u32) -> f32 { return ld_vc(i); }
fn store_kv(i: u32, k: vec2<f32>, v: vec2<f32>) {
    st_kc(i, k.x);
    st_kc(i + 1u, k.y);
    st_vc(i, v.x);
    st_vc(i + 1u, v.y);
}
#endif

fn kv_round4(x: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(kv_round(x.x), kv_round(x.y), kv_round(x.z), kv_round(x.w));
}
