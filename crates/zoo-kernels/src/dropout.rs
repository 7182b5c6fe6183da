//! Dropout as one autograd node that stores no mask.
//!
//! candle-nn's `ops::dropout` draws a uniform tensor, compares it, converts the comparison to
//! floats and multiplies: four ops and two extra activations, each with a backward. Here the
//! keep/drop decision for element `(row, j)` (rows of the last dimension) is a hash of
//! `(seed, row, j)` — the same hash as the attention kernel's dropout — so the forward pass
//! writes `x · M` in one sweep and the backward pass recomputes `M` for the gradient.

use crate::attention::dropout::DropoutParams;
use crate::attention::AttentionDropout;
use crate::host::f32_slice;
use crate::parallel::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

/// Elements per parallel task (whole rows).
const CHUNK: usize = 1 << 14;

/// Zeroes each element of `x` with probability `p` and scales the rest by `1/(1−p)`, with a
/// fresh mask per call (as `torch.nn.functional.dropout` in training mode).
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    dropout_with_seed(x, p, AttentionDropout::new(p).seed)
}

/// [`dropout`] in training mode only: `x` itself when `!train` or `p == 0`. What every layer
/// with a dropout probability and a train flag calls.
pub fn dropout_t(x: Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        dropout(&x, p)
    } else {
        Ok(x)
    }
}

/// [`dropout`] with a chosen `seed`: the same seed and shape give the same mask.
pub fn dropout_with_seed(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout: probability {p} must be in [0, 1)");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let fused =
        crate::fused_kernels() && x.device().is_cpu() && x.dtype() == DType::F32 && x.elem_count() > 0;
    if !fused {
        return candle_nn::ops::dropout(x, p);
    }
    let row = x.dim(D::Minus1)?.max(1);
    x.contiguous()?.apply_op1(Dropout {
        params: AttentionDropout::with_seed(p, seed).params(),
        row,
    })
}

/// The op; applying it to the output gradient is its own backward.
#[derive(Clone, Copy)]
struct Dropout {
    params: DropoutParams,
    row: usize,
}

multiversion! {
    /// `out[r][j] = x[r][j] · M(row0 + r, j)` for the whole rows of one chunk.
    fn apply_rows(out: &mut [f32], x: &[f32], row0: usize, row: usize, dp: &DropoutParams) {
        for (r, (o, xr)) in out.chunks_mut(row).zip(x.chunks(row)).enumerate() {
            let key = dp.row_key(row0 + r);
            for (j, (o, &v)) in o.iter_mut().zip(xr).enumerate() {
                *o = v * dp.factor(key, j);
            }
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "zoo-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "dropout", "input")?;
        let mut out = vec![0f32; x.len()];
        let rows_per = (CHUNK / self.row).max(1);
        for_each_chunk_mut(&mut out, rows_per * self.row, |t, o| {
            let start = t * rows_per * self.row;
            apply_rows(
                o,
                &x[start..start + o.len()],
                t * rows_per,
                self.row,
                &self.params,
            );
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(*self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_p_scales_survivors_and_the_gradient_uses_the_same_mask() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((64, 33, 129), DType::F32, &dev)?)?;
        for p in [0.1f32, 0.5] {
            let y = dropout_with_seed(&x, p, 9)?;
            let v = y.flatten_all()?.to_vec1::<f32>()?;
            let n = v.len() as f64;
            let dropped = v.iter().filter(|&&a| a == 0.0).count() as f64 / n;
            let sigma = (p as f64 * (1.0 - p as f64) / n).sqrt();
            assert!((dropped - p as f64).abs() < 4.0 * sigma, "p {p}: {dropped}");
            let scale = 1.0 / (1.0 - p);
            assert!(v.iter().all(|&a| a == 0.0 || (a - scale).abs() < 1e-6));
            // d/dx Σ y·r = M·r: zero exactly where y is zero, scale·r elsewhere.
            let r = Tensor::randn(0f32, 1.0, x.shape(), &dev)?;
            let g = (&y * &r)?.sum_all()?.backward()?;
            let want = (&y * &r)?; // y = M for x = 1
            let got = g.get(&x).expect("dx");
            let e = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(e < 1e-6, "{e}");
            // Same seed, same mask; another seed, another mask.
            assert_eq!(dropout_with_seed(&x, p, 9)?.flatten_all()?.to_vec1::<f32>()?, v);
            assert_ne!(dropout_with_seed(&x, p, 10)?.flatten_all()?.to_vec1::<f32>()?, v);
        }
        assert!(dropout(&x, 1.0).is_err());
        assert_eq!(
            dropout(&x, 0.0)?.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
