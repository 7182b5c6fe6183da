//! The CPU attention kernels with their widest SIMD code switched off
//! (`zoo_kernels::set_simd_code`): the AVX2 + FMA tiles that x86 CPUs without AVX-512 run, and
//! the plain loops of every other CPU (ARM, older x86), tested against the f64 reference on
//! this machine too. A test binary of its own, so the process-wide switch reaches no other
//! test.
//!
//! Error measure per tensor: `max |fused − reference| / max |reference|`; tolerance 1e-5 in
//! f32, as for the AVX-512 code (`src/attention/tests.rs`).

mod common;

use candle_core::{DType, Device};
use common::{make_data, rel_err, run_attention, Case, Impl, Result};
use zoo_kernels::{set_simd_code, SimdCode};

#[allow(clippy::too_many_arguments)]
fn case(
    b: usize,
    h: usize,
    hkv: usize,
    nq: usize,
    nk: usize,
    d: usize,
    causal: bool,
    lens: Option<Vec<u32>>,
    mask: bool,
) -> Case {
    Case {
        b,
        h,
        hkv,
        nq,
        nk,
        d,
        causal,
        kv_lengths: lens,
        mask,
    }
}

/// Blocks cut by the causal diagonal, grouped-query and multi-query heads, key padding, an
/// additive mask with rows that see no key, decoding (≤ 8 stacked rows), head dims that are and
/// are not multiples of 16, and the shapes whose work is split between threads.
fn cases() -> Vec<Case> {
    vec![
        case(2, 2, 1, 70, 130, 64, true, None, false),
        case(1, 4, 2, 33, 65, 16, false, Some(vec![40]), false),
        case(2, 3, 3, 17, 17, 7, true, None, true),
        case(1, 8, 2, 1, 300, 32, true, None, false),
        case(1, 4, 1, 40, 90, 32, true, Some(vec![77]), false),
        case(1, 2, 1, 20, 600, 48, false, None, true),
        case(1, 1, 1, 9, 140, 256, true, None, false),
    ]
}

/// One test, so nothing else in this binary flips the switch while it runs.
#[test]
fn narrower_simd_codes_match_the_f64_reference() -> Result<()> {
    let c = case(1, 2, 2, 64, 128, 64, false, None, false);
    let x = make_data(&c, 7);
    set_simd_code(SimdCode::Avx512);
    let widest = run_attention(&c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
    for level in [SimdCode::Avx2, SimdCode::Portable] {
        set_simd_code(level);
        assert_eq!(zoo_kernels::simd_code(), level);
        // The kernels pick their code by the tests `simd_in_use` reports; on a CPU with AVX2 +
        // FMA (and AVX-512) the limit is what runs.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert_eq!(zoo_kernels::simd_in_use(), level);
        }
        let got = run_attention(&c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
        // The AVX2 code computes what the AVX-512 code does, in the same order (bit-identical
        // here); the portable loops' `exp` differs in the last bits, which shows they ran.
        if level == SimdCode::Portable && zoo_kernels::simd_in_use() == SimdCode::Portable {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                assert_ne!(widest[0], got[0], "portable: bit-identical to the SIMD output");
            }
        }
        assert!(rel_err(&got[0], &widest[0]) <= 1e-6);
        for (i, c) in cases().iter().enumerate() {
            let x = make_data(c, 40 + i as u64);
            let got = run_attention(c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
            let want = run_attention(c, &x, &Device::Cpu, DType::F64, Impl::Reference)?;
            for (j, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
                let e = rel_err(&got[j], &want[j]);
                eprintln!("{level:?} case {i} {what}: {e:.2e}");
                assert!(
                    e <= 1e-5,
                    "{level:?} case {i} {what}: relative error {e:.2e} > 1e-5"
                );
            }
        }
    }
    set_simd_code(SimdCode::Avx512);
    Ok(())
}
