//! Dropout on the attention probabilities, inside the fused kernels.
//!
//! Training a Transformer with attention dropout used to force the materialized path
//! (probabilities `(batch, heads, q_len, kv_len)` in memory, candle's softmax and dropout ops,
//! each with its own backward). Here the keep/drop decision for probability `(b, h, i, j)` is a
//! hash of `(seed, row, j)` with `row = (b·heads + h)·q_len + i`: the forward kernel drops while it
//! accumulates `P·V`, and the backward kernel recomputes the same decisions instead of storing a
//! mask. Every backend (the CPU kernel, the reference) draws the identical mask for one seed, which
//! is what the tests compare.
//!
//! Gradient: with `M` the mask scaled by `1/(1−p)`, `O = (P∘M)·V`, so `dV = (P∘M)ᵀ·dO`,
//! `dP = (dO·Vᵀ)∘M` and `dS = P∘(dP − δ)` with `δ_i = Σ_j P_ij dP_ij = dO_i·O_i`: the same
//! row term as without dropout.

use super::Dims;
use candle_core::{Device, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// Dropout of attention probabilities: each is zeroed with probability `p` and the survivors
/// are scaled by `1/(1−p)`; the mask is a deterministic function of `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    /// Probability of dropping each attention weight, in `[0, 1)`.
    pub p: f32,
    /// Selects the mask; the same seed gives the same mask on every backend.
    pub seed: u64,
}

/// Source of fresh seeds for [`AttentionDropout::new`].
static NEXT_SEED: AtomicU64 = AtomicU64::new(0);

impl AttentionDropout {
    /// Dropout with probability `p` and a fresh seed (a new mask on every call, as
    /// `torch.nn.functional.dropout` draws one).
    pub fn new(p: f32) -> Self {
        let mut n = NEXT_SEED.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            // First use: start the sequence from the clock so runs differ.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED);
            n = t | 1;
            NEXT_SEED.store(n.wrapping_add(1), Ordering::Relaxed);
        }
        Self {
            p,
            seed: splitmix64(n),
        }
    }

    /// Dropout with probability `p` and a chosen `seed` (reproducible masks).
    pub fn with_seed(p: f32, seed: u64) -> Self {
        Self { p, seed }
    }

    /// The decisions as the kernels use them.
    pub(crate) fn params(&self) -> DropoutParams {
        let thr = (self.p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        DropoutParams {
            threshold: thr,
            scale: 1.0 / (1.0 - self.p),
            seed: self.seed,
        }
    }

    /// The scaled mask `M` (`0` or `1/(1−p)`) over `(batch, heads, q_len, kv_len)`, f32 on
    /// `device`: what the reference multiplies the probabilities by.
    pub(crate) fn mask_tensor(&self, dims: Dims, device: &Device) -> Result<Tensor> {
        let Dims { b, h, nq, nk, .. } = dims;
        let dp = self.params();
        let mut m = Vec::with_capacity(b * h * nq * nk);
        for row in 0..b * h * nq {
            let rk = dp.row_key(row);
            m.extend((0..nk).map(|j| dp.factor(rk, j)));
        }
        Tensor::from_vec(m, (b, h, nq, nk), device)
    }
}

/// Dropout as the kernels need it: keep a weight when its hash is at least `threshold`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropoutParams {
    pub threshold: u32,
    pub scale: f32,
    pub seed: u64,
}

impl DropoutParams {
    /// Per-row key: mixes the seed with the full 64-bit row index.
    #[inline(always)]
    pub fn row_key(&self, row: usize) -> u32 {
        let row = row as u64;
        let s = mix32(self.seed as u32 ^ mix32((self.seed >> 32) as u32 ^ (row >> 32) as u32));
        mix32(row as u32 ^ s)
    }

    /// `1/(1−p)` if weight `j` of the row with key `rk` is kept, else 0. Branch-free integer
    /// arithmetic, so the kernels' loops over it vectorize.
    #[inline(always)]
    pub fn factor(&self, rk: u32, j: usize) -> f32 {
        let hsh = mix32(rk ^ (j as u32).wrapping_mul(0x9E37_79B9));
        if hsh >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
}

/// A 32-bit integer finalizer with good avalanche (Wellons' "lowbias32").
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dropped fraction is p (binomial: ±4σ over 1M weights), rows and columns are not
    /// correlated in an obvious way, and seeds give different masks.
    #[test]
    fn drops_the_asked_fraction_and_seeds_differ() -> Result<()> {
        let dims = Dims {
            b: 2,
            h: 4,
            hkv: 4,
            nq: 128,
            nk: 1000,
            d: 8,
        };
        let n = (2 * 4 * 128 * 1000) as f64;
        for p in [0.0f32, 0.1, 0.5, 0.9] {
            let m = AttentionDropout::with_seed(p, 7).mask_tensor(dims, &Device::Cpu)?;
            let v = m.flatten_all()?.to_vec1::<f32>()?;
            let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / n;
            let sigma = (p as f64 * (1.0 - p as f64) / n).sqrt();
            assert!(
                (dropped - p as f64).abs() <= 4.0 * sigma + 1e-9,
                "p {p}: dropped {dropped}"
            );
            // Mean of the scaled mask is 1 (unbiased).
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            assert!((mean - 1.0).abs() < 0.01, "p {p}: mean {mean}");
            // Column 0 across rows drops at the same rate (no per-column bias).
            let col: Vec<f32> = v.iter().step_by(1000).copied().collect();
            let col_drop = col.iter().filter(|&&x| x == 0.0).count() as f64 / col.len() as f64;
            assert!(
                (col_drop - p as f64).abs() < 0.06,
                "p {p}: column 0 dropped {col_drop}"
            );
        }
        let a = AttentionDropout::with_seed(0.5, 1).mask_tensor(dims, &Device::Cpu)?;
        let b = AttentionDropout::with_seed(0.5, 2).mask_tensor(dims, &Device::Cpu)?;
        let same = a
            .eq(&b)?
            .to_dtype(candle_core::DType::F32)?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(
            (same - 0.5).abs() < 0.01,
            "two seeds agree on {same} of the weights"
        );
        assert_ne!(AttentionDropout::new(0.1).seed, AttentionDropout::new(0.1).seed);
        Ok(())
    }
}
