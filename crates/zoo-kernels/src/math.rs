//! Scalar math written so that loops over it vectorize (no branches on data, no float-to-int
//! conversions), shared by the kernels.

/// `exp(x)` for the softmax: within ~2e-7 relative, branch-free so loops over it vectorize.
/// Returns exactly 0 for `x < -87.3` (including `-inf`). `mul_add` becomes an FMA in the
/// AVX2/AVX-512 builds of the loops that inline it.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // x = n·ln2 + r with |r| <= ln2/2; ln2 split in two (Cody–Waite) so n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-88.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick: after the addition the float's low mantissa
    // bits hold the integer n, and subtracting gives n as a float (exact, |n| <= 127).
    let t = xc.mul_add(std::f32::consts::LOG2_E, 12_582_912.0);
    let n = t - 12_582_912.0;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    // e^r by its Taylor series to degree 7: error < 1e-8 for |r| <= 0.35.
    let p = r.mul_add(1.0 / 5040.0, 1.0 / 720.0);
    let p = p.mul_add(r, 1.0 / 120.0);
    let p = p.mul_add(r, 1.0 / 24.0);
    let p = p.mul_add(r, 1.0 / 6.0);
    let p = p.mul_add(r, 0.5);
    let p = p.mul_add(r, 1.0);
    let p = p.mul_add(r, 1.0);
    // 2^n built from t's bits: bits(t) = 0x4B40_0000 + n, so (bits − 0x4B40_0000 + 127) << 23
    // is the exponent field of 2^n. No float-to-int conversion: it would not vectorize.
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), branch-free.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let ax = x.abs();
    let t = 1.0 / ax.mul_add(P, 1.0);
    let poly = t * A5.mul_add(t, A4).mul_add(t, A3).mul_add(t, A2).mul_add(t, A1);
    let y = 1.0 - poly * exp_f32(-ax * ax);
    y.copysign(x)
}

/// Exact (erf) GELU, `x · Φ(x)`, as PyTorch's `gelu` / BERT's `"gelu"`.
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `d/dx gelu(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub(crate) fn gelu_grad_f32(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp_f32(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_match_f64_references() {
        let erf64 = |x: f64| -> f64 {
            // erf(x) = 2/√π ∫₀ˣ exp(−t²) dt by Simpson's rule, 20,000 intervals (~1e-12).
            let n = 20_000;
            let h = x / n as f64;
            let f = |t: f64| (-t * t).exp();
            let mut s = f(0.0) + f(x);
            for i in 1..n {
                s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut worst_erf = 0f64;
        let mut worst_gelu = 0f64;
        let mut worst_grad = 0f64;
        for i in -800..=800 {
            let x = i as f64 * 0.01;
            let e = erf64(x);
            worst_erf = worst_erf.max((erf_f32(x as f32) as f64 - e).abs());
            let g = 0.5 * x * (1.0 + erf64(x / 2f64.sqrt()));
            worst_gelu = worst_gelu.max((gelu_f32(x as f32) as f64 - g).abs() / x.abs().max(1.0));
            let d = 0.5 * (1.0 + erf64(x / 2f64.sqrt()))
                + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst_grad = worst_grad.max((gelu_grad_f32(x as f32) as f64 - d).abs());
        }
        assert!(worst_erf < 3e-7, "erf {worst_erf:.2e}");
        assert!(worst_gelu < 3e-7, "gelu {worst_gelu:.2e}");
        assert!(worst_grad < 1e-6, "gelu' {worst_grad:.2e}");
    }
}
