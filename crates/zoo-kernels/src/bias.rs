//! Adding a bias along the last dimension, with a fast backward pass.
//!
//! `x.broadcast_add(&bias)` is one line in candle, but its backward sums the output gradient
//! over every leading dimension with candle's generic strided reduction: profiled on a
//! Transformer encoder layer's training step (batch 32 × 128 tokens, width 256), those bias
//! gradients took 15% of the step. This op sums the gradient rows in parallel, vectorized.

use crate::parallel::{for_each_index, DisjointMut};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// Rows per parallel task of the bias gradient.
const ROWS_PER_TASK: usize = 256;

/// `x + bias` with `bias (C,)` broadcast over every leading dimension of `x (…, C)`;
/// differentiable in both. Fused on the CPU for f32; `broadcast_add` elsewhere.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    if bias.dims() != [c] {
        candle_core::bail!(
            "add_bias: bias must be ({c},) to match the input's last dimension, got {:?}",
            bias.dims()
        );
    }
    let fused = crate::fused_kernels()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && x.elem_count() > 0;
    if fused {
        x.contiguous()?.apply_op2(bias, AddBias)
    } else {
        x.broadcast_add(bias)
    }
}

/// The fused op: forward adds rows, backward sums gradient rows.
struct AddBias;

fn f32_of<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    crate::host::f32_slice(s, l, "add_bias", name)
}

multiversion! {
    /// `out[r] = x[r] + b` for the rows of a chunk.
    fn add_rows(out: &mut [f32], x: &[f32], b: &[f32]) {
        for (o, xr) in out.chunks_mut(b.len()).zip(x.chunks(b.len())) {
            for ((o, &xv), &bv) in o.iter_mut().zip(xr).zip(b) {
                *o = xv + bv;
            }
        }
    }
}

multiversion! {
    /// `acc += Σ_rows g[r]`.
    fn sum_rows(acc: &mut [f32], g: &[f32]) {
        for gr in g.chunks(acc.len()) {
            for (a, &v) in acc.iter_mut().zip(gr) {
                *a += v;
            }
        }
    }
}

/// Column sums of a `(rows, c)` gradient.
pub(crate) fn column_sums(g: &[f32], c: usize) -> Vec<f32> {
    let rows = g.len() / c;
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let mut partial = vec![0f32; tasks * c];
    let pw = DisjointMut::new(&mut partial);
    for_each_index(tasks, |t| {
        let r0 = t * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        // SAFETY: task t owns partial row t.
        sum_rows(unsafe { pw.range_mut(t * c, c) }, &g[r0 * c..r1 * c]);
    });
    let mut out = vec![0f32; c];
    for p in partial.chunks(c) {
        sum_rows(&mut out, p);
    }
    out
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "zoo-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (f32_of(s1, l1, "input")?, f32_of(s2, l2, "bias")?);
        let c = b.len();
        let mut out = vec![0f32; x.len()];
        let rows = x.len() / c;
        let ow = DisjointMut::new(&mut out);
        let chunk = ROWS_PER_TASK;
        for_each_index(rows.div_ceil(chunk), |t| {
            let r0 = t * chunk;
            let r1 = (r0 + chunk).min(rows);
            // SAFETY: task t owns rows r0..r1 of the output.
            add_rows(
                unsafe { ow.range_mut(r0 * c, (r1 - r0) * c) },
                &x[r0 * c..r1 * c],
                b,
            );
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let c = bias.dim(0)?;
        let sums = {
            let (storage, layout) = g.storage_and_layout();
            match &*storage {
                candle_core::Storage::Cpu(s) => column_sums(f32_of(s, layout, "gradient")?, c),
                _ => candle_core::bail!("add_bias: gradient is not on the CPU"),
            }
        };
        Ok((Some(g.clone()), Some(Tensor::from_vec(sums, c, bias.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn add_bias_matches_broadcast_add_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for shape in [vec![1usize], vec![5, 3], vec![2, 300, 17], vec![4, 130, 256]] {
            let c = *shape.last().expect("rank >= 1");
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, c, &dev)?)?;
            let probe = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            let run = |fused: bool| -> Result<(Tensor, Tensor, Tensor)> {
                let y = if fused {
                    add_bias(&x, &b)?
                } else {
                    x.broadcast_add(&b)?
                };
                let g = (&y * &probe)?.sum_all()?.backward()?;
                Ok((y, g.get(&x).expect("dx").clone(), g.get(&b).expect("db").clone()))
            };
            let (got, want) = (run(true)?, run(false)?);
            for (a, w) in [(&got.0, &want.0), (&got.1, &want.1), (&got.2, &want.2)] {
                let scale = w.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                let e = (a - w)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                assert!(e < 1e-5, "{shape:?}: {e:.2e}");
            }
        }
        let e = add_bias(
            &Tensor::zeros((2, 3), DType::F32, &dev)?,
            &Tensor::zeros(4, DType::F32, &dev)?,
        );
        assert!(e.is_err());
        Ok(())
    }
}
