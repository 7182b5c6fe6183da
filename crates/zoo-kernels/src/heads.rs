//! Splitting a projection into attention heads and merging them back, as single autograd nodes.
//!
//! With candle's ops, `(batch, seq, heads·head_dim) → (batch, heads, seq, head_dim)` is a
//! reshape, a transpose and a copy (the attention kernel wants contiguous rows), and merging the
//! context back is a transpose and a copying reshape: five nodes per attention call whose backward
//! each allocate a zeros gradient and add into it. These two ops are each other's backward.

use crate::host::f32_slice;
use crate::parallel::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// `(batch, seq, heads·head_dim)` → `(batch, heads, seq, head_dim)`, contiguous.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, e) = x.dims3()?;
    if heads == 0 || !e.is_multiple_of(heads) {
        candle_core::bail!(
            "split_heads: width {e} of {:?} is not a multiple of {heads} heads",
            x.dims()
        );
    }
    if fused(x) {
        return x.contiguous()?.apply_op1(Permute { split: true, heads });
    }
    x.reshape((b, l, heads, e / heads))?.transpose(1, 2)?.contiguous()
}

/// `(batch, heads, seq, head_dim)` → `(batch, seq, heads·head_dim)`, contiguous.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    if fused(x) {
        return x.contiguous()?.apply_op1(Permute {
            split: false,
            heads: h,
        });
    }
    x.transpose(1, 2)?.reshape((b, l, h * d))
}

fn fused(x: &Tensor) -> bool {
    crate::fused_kernels() && x.device().is_cpu() && x.dtype() == DType::F32 && x.elem_count() > 0
}

/// The permutation `(b, l, h, d) ↔ (b, h, l, d)`; `split` says which way.
struct Permute {
    split: bool,
    heads: usize,
}

impl CustomOp1 for Permute {
    fn name(&self) -> &'static str {
        if self.split {
            "zoo-split-heads"
        } else {
            "zoo-merge-heads"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name(), "input")?;
        let dims = l.shape().dims();
        let (h, seq, d, out_shape) = if self.split {
            let (b, seq, e) = (dims[0], dims[1], dims[2]);
            let d = e / self.heads;
            (self.heads, seq, d, Shape::from((b, self.heads, seq, d)))
        } else {
            let (b, h, seq, d) = (dims[0], dims[1], dims[2], dims[3]);
            (h, seq, d, Shape::from((b, seq, h * d)))
        };
        let mut out = vec![0f32; x.len()];
        // One task per batch row (its `seq · h · d` outputs): split scatters each source row's
        // heads, merge gathers each output row from every head.
        for_each_chunk_mut(&mut out, seq * h * d, |bi, o| {
            for i in 0..seq {
                for hh in 0..h {
                    let (src, dst) = if self.split {
                        (((bi * seq + i) * h + hh) * d, (hh * seq + i) * d)
                    } else {
                        (((bi * h + hh) * seq + i) * d, (i * h + hh) * d)
                    };
                    o[dst..dst + d].copy_from_slice(&x[src..src + d]);
                }
            }
        });
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(if self.split {
            merge_heads(grad)?
        } else {
            split_heads(grad, self.heads)?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn split_and_merge_match_reshape_transpose_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (b, l, h, d) in [(1, 1, 1, 1), (2, 5, 3, 4), (3, 17, 8, 32)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, h * d), &dev)?)?;
            let probe = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev)?;
            let want = x.reshape((b, l, h, d))?.transpose(1, 2)?.contiguous()?;
            let got = split_heads(&x, h)?;
            assert_eq!(
                got.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?
            );
            let back = merge_heads(&got)?;
            assert_eq!(
                back.flatten_all()?.to_vec1::<f32>()?,
                x.flatten_all()?.to_vec1::<f32>()?
            );
            // d/dx Σ split(x)·probe = merge(probe); through merge∘split it is probe merged again.
            let g = (&got * &probe)?.sum_all()?.backward()?;
            let gx = g.get(&x).expect("dx").flatten_all()?.to_vec1::<f32>()?;
            let want_g = probe
                .transpose(1, 2)?
                .reshape((b, l, h * d))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(gx, want_g);
        }
        assert!(split_heads(&Tensor::zeros((1, 2, 6), DType::F32, &dev)?, 4).is_err());
        Ok(())
    }
}
