//! Process-wide switches: the zoo's fused kernels or plain candle ops, and which SIMD code
//! (AVX-512, AVX2 + FMA, portable loops) the CPU kernels may run.
//!
//! Every op in this crate has a composed fallback built from candle's own differentiable ops
//! (used anyway on devices or dtypes a kernel does not serve). Turning the fused kernels off
//! routes every call there, so a benchmark or a suspicious user can compare the same model on
//! both (`bench_train --impl candle`) without rebuilding it.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not decided yet (read the environment), 1: fused, 2: plain candle ops.
static STATE: AtomicU8 = AtomicU8::new(0);

/// The environment variable read on first use: `CANDLE_ZOO_KERNELS=candle` starts the process
/// with the fused kernels off.
pub const ENV_VAR: &str = "CANDLE_ZOO_KERNELS";

/// Turns the fused kernels on (the default) or off for every op called afterwards.
pub fn set_fused_kernels(enabled: bool) {
    STATE.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether ops use the fused kernels (true unless switched off by [`set_fused_kernels`] or
/// `CANDLE_ZOO_KERNELS=candle`).
pub fn fused_kernels() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var(ENV_VAR).map_or(true, |v| !v.eq_ignore_ascii_case("candle"));
            set_fused_kernels(on);
            on
        }
    }
}

/// The SIMD code the CPU kernels may run, from none to the widest; ordered, so a limit allows
/// everything below it. It covers the attention kernels' hand-written code (register-tiled
/// block products, softmax steps) and which compiled version of every kernel loop runs
/// (each is built for AVX-512, AVX2 + FMA and the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdCode {
    /// Plain loops compiled for the baseline (SSE2 on x86-64): what CPUs without AVX2 + FMA run,
    /// and, compiled for their own baseline, non-x86 CPUs (NEON on ARM).
    Portable,
    /// AVX2 + FMA register tiles (8 lanes), for x86 CPUs without AVX-512.
    Avx2,
    /// AVX-512 register tiles and softmax steps (16 lanes); the default where the CPU has it.
    Avx512,
}

/// For [`simd_code`]: 0 not decided yet (read the environment), else 1 + the limit.
static SIMD: AtomicU8 = AtomicU8::new(0);

/// The environment variable read on first use: `CANDLE_ZOO_SIMD=avx2` or `=portable` starts
/// the process with the wider code off.
pub const SIMD_ENV_VAR: &str = "CANDLE_ZOO_SIMD";

/// Limits the SIMD code the CPU kernels may use to `limit` and below (the default allows all;
/// each still needs the CPU to have it). For comparing the codes, or running the narrower ones
/// on a machine that has the wider (what a CPU without AVX-512 would run).
pub fn set_simd_code(limit: SimdCode) {
    SIMD.store(1 + limit as u8, Ordering::Relaxed);
}

/// The widest SIMD code allowed ([`set_simd_code`], or `CANDLE_ZOO_SIMD` read on first use:
/// `avx2` or `portable`, any case; anything else allows all).
pub fn simd_code() -> SimdCode {
    match SIMD.load(Ordering::Relaxed) {
        1 => SimdCode::Portable,
        2 => SimdCode::Avx2,
        3 => SimdCode::Avx512,
        _ => {
            let limit = match std::env::var(SIMD_ENV_VAR).map(|v| v.to_ascii_lowercase()) {
                Ok(v) if v == "portable" => SimdCode::Portable,
                Ok(v) if v == "avx2" => SimdCode::Avx2,
                _ => SimdCode::Avx512,
            };
            set_simd_code(limit);
            limit
        }
    }
}

/// The widest SIMD code the CPU kernels run with on this CPU under the current limit: the
/// code the kernels pick, by the same tests.
pub fn simd_in_use() -> SimdCode {
    if use_avx512() {
        SimdCode::Avx512
    } else if use_avx2() {
        SimdCode::Avx2
    } else {
        SimdCode::Portable
    }
}

/// Whether the AVX-512 code runs: allowed and the CPU has AVX-512F (both cached, so cheap to
/// ask per block).
#[inline]
pub(crate) fn use_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_code() >= SimdCode::Avx512 && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 + FMA code may run: allowed and the CPU has both.
#[inline]
pub(crate) fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_code() >= SimdCode::Avx2
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
