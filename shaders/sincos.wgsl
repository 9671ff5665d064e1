// Added by kernels.build to every kernel that calls it (rope, rms_norm with rope).
// sin and cos of t >= 0 to full f32 accuracy on every driver: Cody-Waite reduction by pi/2,
// then minimax polynomials on [-pi/4, pi/4] (Vulkan only promises 2^-11 for sin/cos).
fn sincos(t: f32) -> vec2<f32> {
    let q = round(t * 0.636619772367581343);
    let r = ((t - q * 1.5703125) - q * 4.837512969970703125e-4) - q * 7.54978995489188216e-8;
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    switch (i32(q) & 3) {
        case 0: { return vec2<f32>(s, c); }
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}
