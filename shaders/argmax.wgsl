// Index of the largest value of each row (lowest index on ties), one workgroup per row:
// each thread scans a strided part of the row, then a tree reduction of (value, index) pairs.

const WG: u32 = {{WG}};
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let row = flat_id(wid, nwg);
    if (row >= P.rows) {
        return;
    }
    let xb = P.x_off + row * P.x_stride;
    var bv = -3.4028234663852886e38;
    var bi = 0xffffffffu;
    for (var c = tid; c < P.width; c += WG) {
        let v = ld_x(xb + c);
        if (v > bv || bi == 0xffffffffu) {  // strictly greater: the first (lowest) index wins ties
            bv = v;
            bi = c;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            let ov = best_v[tid + s];
            let oi = best_i[tid + s];
            let mine = best_i[tid];
            if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_v[tid] || (ov == best_v[tid] && oi < mine))) {
                best_v[tid] = ov;
                best_i[tid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        st_out(P.out_off + row, best_i[0]);
    }
}
