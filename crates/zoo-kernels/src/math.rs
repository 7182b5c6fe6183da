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

/// `e^r = 1 + r·q(r)`: the coefficients of `q`, degree 5, fitted for relative error on
/// `[-ln2/2, ln2/2]` (2e-9 before rounding; `tools/exp_coefficients.py`), for the SIMD `exp`s.
#[cfg(target_arch = "x86_64")]
const EXP_Q: [f32; 6] = [
    1.0,
    0.499_999_94,
    0.166_664_32,
    0.041_668,
    0.008_374_154,
    0.001_384_363_4,
];

/// AVX-512 versions of the functions above, one zmm (16 f32) at a time.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `exp(x)` on 16 lanes for the softmax loops: within ~1e-7 relative, exactly 0 for
    /// `x < -87.3` (including `-inf`), NaN for NaN. About 12 instructions against the ~17 of
    /// [`super::exp_f32`] compiled for AVX-512: `vscalefps` builds `p · 2^n` in one step
    /// (no clamp, no integer shifts) and the polynomial is a degree-6 minimax fit.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn exp_ps(x: __m512) -> __m512 {
        // x = n·ln2 + r, |r| <= ln2/2, with n rounded by the 1.5·2^23 trick (exact for
        // |n| <= 2^22) and ln2 split in two (Cody–Waite) so n·LN2_HI is exact.
        const MAGIC: f32 = 12_582_912.0;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const Q: [f32; 6] = super::EXP_Q;
        // Clamped above so n stays small (exp(88.8) already overflows to inf); `vminps`
        // returns its second operand when either is NaN, so NaN passes through.
        let x = _mm512_min_ps(_mm512_set1_ps(88.8), x);
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(MAGIC));
        let n = _mm512_sub_ps(t, _mm512_set1_ps(MAGIC));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut q = _mm512_set1_ps(Q[5]);
        for &c in Q[..5].iter().rev() {
            q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0));
        // Lanes with x < -87.3 become 0 (NaN compares unordered and is kept).
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(-87.3));
        _mm512_maskz_scalef_ps(keep, p, n)
    }
}

/// AVX2 + FMA versions, one ymm (8 f32) at a time.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp(x)` on 8 lanes: the same reduction and polynomial as [`super::avx512::exp_ps`]
    /// (within ~1e-7 relative, exactly 0 for `x < -87.3`, NaN for NaN), with `2^n` built in the
    /// exponent bits (AVX2 has no `vscalefps`). So `2^128` is already inf: results reach inf
    /// from `x ≈ 88.38` instead of 88.72 (softmax arguments are ≤ 0).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn exp_ps(x: __m256) -> __m256 {
        const MAGIC: f32 = 12_582_912.0;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Clamped so that 2^n stays a normal float or inf (n in -127..=128); NaN passes
        // through `vminps`/`vmaxps` as their second operand.
        let xc = _mm256_max_ps(_mm256_set1_ps(-88.0), _mm256_min_ps(_mm256_set1_ps(88.8), x));
        let t = _mm256_fmadd_ps(
            xc,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(MAGIC),
        );
        let n = _mm256_sub_ps(t, _mm256_set1_ps(MAGIC));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut q = _mm256_set1_ps(super::EXP_Q[5]);
        for &c in super::EXP_Q[..5].iter().rev() {
            q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0));
        // 2^n from t's bits: bits(t) = 0x4B40_0000 + n, so (bits − 0x4B40_0000 + 127) << 23.
        let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000 - 127));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits));
        let y = _mm256_mul_ps(p, scale);
        // x < -87.3 gives 0 (NaN compares unordered and is kept).
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.3));
        _mm256_andnot_ps(below, y)
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
    fn exp_is_accurate_and_exactly_zero_far_below() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -90.0 + i as f32 * (90.5 / 200_000.0);
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            if want > 1e-37 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    /// Checks a SIMD `exp` over `[-90, top]` against f64 (within 2e-7 relative, exactly 0
    /// below -87.3) and at its edges; `exp` maps a slice of `lanes` values.
    #[cfg(target_arch = "x86_64")]
    fn check_simd_exp(lanes: usize, top: f32, exp: impl Fn(&[f32]) -> Vec<f32>) {
        let mut worst = 0f64;
        for i0 in (0..=400_000).step_by(lanes) {
            let x: Vec<f32> = (0..lanes)
                .map(|l| -90.0 + (i0 + l) as f32 * ((top + 90.0) / 400_000.0))
                .collect();
            for (&xi, &got) in x.iter().zip(&exp(&x)) {
                let want = (xi as f64).exp();
                if xi < -87.3 {
                    assert_eq!(got, 0.0, "exp({xi}) below -87.3 is exactly 0");
                } else if want < f32::MAX as f64 {
                    worst = worst.max((got as f64 - want).abs() / want);
                }
            }
        }
        assert!(worst < 2e-7, "max relative error {worst:.2e}");
        let mut x = vec![0f32; lanes];
        x[..8].copy_from_slice(&[
            f32::NEG_INFINITY,
            -100.0,
            0.0,
            89.0,
            f32::INFINITY,
            f32::NAN,
            -0.0,
            1.0,
        ]);
        let got = exp(&x);
        assert_eq!(got[..5], [0.0, 0.0, 1.0, f32::INFINITY, f32::INFINITY]);
        assert!(got[5].is_nan(), "NaN passes through");
        assert_eq!(got[6], 1.0);
        assert!((got[7] as f64 - std::f64::consts::E).abs() < 1e-6);
    }

    /// The AVX-512 `exp` over the whole range a softmax feeds it, plus its edges (skipped,
    /// with a note, on CPUs without AVX-512F).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_is_accurate_with_exact_edges() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        check_simd_exp(16, 90.0, |x| {
            let mut out = vec![0f32; 16];
            // SAFETY: AVX-512F is present (checked above); both slices hold 16 f32.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), avx512::exp_ps(_mm512_loadu_ps(x.as_ptr()))) };
            out
        });
    }

    /// The AVX2 `exp`, as the AVX-512 one above, up to 88 (skipped without AVX2 + FMA).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_exp_is_accurate_with_exact_edges() {
        use std::arch::x86_64::*;
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        check_simd_exp(8, 88.0, |x| {
            let mut out = vec![0f32; 8];
            // SAFETY: AVX2 and FMA are present (checked above); both slices hold 8 f32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), avx2::exp_ps(_mm256_loadu_ps(x.as_ptr()))) };
            out
        });
    }

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
