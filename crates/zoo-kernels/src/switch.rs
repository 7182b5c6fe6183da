//! One process-wide switch between the zoo's fused kernels and plain candle ops.
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
