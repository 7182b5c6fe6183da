//! Splitting a projection into attention heads and merging them back, as single autograd nodes.
//!
//! With candle's ops, `(batch, seq, heads·head_dim) → (batch, heads, seq, head_dim)` is a
//! reshape, a transpose and a copy (the attention kernel wants contiguous rows), and merging the
//! context back is a transpose and a copying reshape: five nodes per attention call whose backward
//! each allocate a zeros gradient and add into it. These two ops are each other's backward.

use crate::host::f32_slice;
use crate::parallel::{build_vec, for_each_index, DisjointMut};
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
        return x.contiguous()?.apply_op1(Permute {
            split: true,
            heads,
            packed: None,
        });
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
            packed: None,
        });
    }
    x.transpose(1, 2)?.reshape((b, l, h * d))
}

/// Packed rows of right-padded sequences `(tokens, heads·head_dim)` → `(batch, heads, seq,
/// head_dim)`, zeros at the padded positions.
///
/// Row `b` of the batch has `lengths[b] <= seq` real tokens, and the packed input holds them one
/// sequence after another (`tokens = Σ lengths`). This is how a padded batch skips its padding
/// outside attention: the projections, feed-forward layers and norms run on the real tokens only
/// (a batch of mixed-length sentences is typically a quarter padding), and only attention sees the
/// padded layout, with `kv_lengths` hiding the padded keys. With `heads = 1` it unpacks any
/// per-token tensor back to `(batch, 1, seq, width)`.
pub fn split_heads_packed(x: &Tensor, lengths: &[usize], seq: usize, heads: usize) -> Result<Tensor> {
    let (t, e) = x.dims2()?;
    if heads == 0 || !e.is_multiple_of(heads) {
        candle_core::bail!(
            "split_heads_packed: width {e} of {:?} is not a multiple of {heads} heads",
            x.dims()
        );
    }
    check_lengths("split_heads_packed", lengths, seq, t)?;
    if fused(x) {
        return x.contiguous()?.apply_op1(Permute {
            split: true,
            heads,
            packed: Some(Packed::new(lengths, seq)),
        });
    }
    let mut rows = Vec::with_capacity(lengths.len());
    let mut off = 0;
    for &n in lengths {
        rows.push(x.narrow(0, off, n)?.pad_with_zeros(0, 0, seq - n)?);
        off += n;
    }
    split_heads(&Tensor::stack(&rows, 0)?, heads)
}

/// `(batch, heads, seq, head_dim)` → the packed rows `(Σ lengths, heads·head_dim)` of each
/// sequence's first `lengths[b]` positions: the inverse of [`split_heads_packed`] (padded
/// positions are dropped, and get a zero gradient).
pub fn merge_heads_packed(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, h, seq, _) = x.dims4()?;
    if lengths.len() != b {
        candle_core::bail!(
            "merge_heads_packed: {} lengths for a batch of {b} ({:?})",
            lengths.len(),
            x.dims()
        );
    }
    let t = lengths.iter().sum();
    check_lengths("merge_heads_packed", lengths, seq, t)?;
    if fused(x) {
        return x.contiguous()?.apply_op1(Permute {
            split: false,
            heads: h,
            packed: Some(Packed::new(lengths, seq)),
        });
    }
    let merged = merge_heads(x)?;
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| merged.get(i)?.narrow(0, 0, n))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}

fn check_lengths(op: &str, lengths: &[usize], seq: usize, tokens: usize) -> Result<()> {
    if let Some(n) = lengths.iter().find(|&&n| n > seq) {
        candle_core::bail!("{op}: a sequence length {n} exceeds the padded length {seq}");
    }
    let total: usize = lengths.iter().sum();
    if total != tokens {
        candle_core::bail!("{op}: the lengths {lengths:?} add up to {total}, the input has {tokens} rows");
    }
    Ok(())
}

fn fused(x: &Tensor) -> bool {
    crate::fused_kernels() && x.device().is_cpu() && x.dtype() == DType::F32 && x.elem_count() > 0
}

/// Where each sequence of a packed batch starts.
#[derive(Clone)]
struct Packed {
    lengths: Vec<usize>,
    offsets: Vec<usize>,
    seq: usize,
}

impl Packed {
    fn new(lengths: &[usize], seq: usize) -> Self {
        let offsets = lengths
            .iter()
            .scan(0, |acc, &n| {
                let o = *acc;
                *acc += n;
                Some(o)
            })
            .collect();
        Self {
            lengths: lengths.to_vec(),
            offsets,
            seq,
        }
    }
}

/// The permutation `(b, l, h, d) ↔ (b, h, l, d)`; `split` says which way. With `packed`, the
/// `(b, l)` side is the packed rows of right-padded sequences instead.
struct Permute {
    split: bool,
    heads: usize,
    packed: Option<Packed>,
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
        // Per batch row: `seq` padded positions, of which `len(bi)` real, starting at packed row
        // `start(bi)` on the `(b, l)` side.
        let (b, h, seq, d) = match (self.split, &self.packed) {
            (true, None) => (dims[0], self.heads, dims[1], dims[2] / self.heads),
            (true, Some(p)) => (p.lengths.len(), self.heads, p.seq, dims[1] / self.heads),
            (false, _) => (dims[0], dims[1], dims[2], dims[3]),
        };
        let len = |bi: usize| self.packed.as_ref().map_or(seq, |p| p.lengths[bi]);
        let start = |bi: usize| self.packed.as_ref().map_or(bi * seq, |p| p.offsets[bi]);
        let (out, out_shape) = if self.split {
            // One task per batch row (its `seq · h · d` outputs) scatters each source row's heads;
            // padded positions keep the zeros `build_vec` starts from.
            let out = build_vec(b * h * seq * d, seq * h * d, |bi, o| {
                for i in 0..len(bi) {
                    for hh in 0..h {
                        let src = ((start(bi) + i) * h + hh) * d;
                        let dst = (hh * seq + i) * d;
                        o[dst..dst + d].copy_from_slice(&x[src..src + d]);
                    }
                }
            });
            (out, Shape::from((b, h, seq, d)))
        } else {
            // One task per batch row gathers each output row from every head.
            let rows: usize = (0..b).map(len).sum();
            let out = match &self.packed {
                None => build_vec(rows * h * d, seq * h * d, |bi, o| {
                    gather_rows(o, x, bi, h, seq, d, seq)
                }),
                Some(p) => {
                    let mut out = vec![0f32; rows * h * d];
                    let ow = DisjointMut::new(&mut out);
                    for_each_index(b, |bi| {
                        // SAFETY: batch row bi owns its packed rows.
                        let o = unsafe { ow.range_mut(p.offsets[bi] * h * d, p.lengths[bi] * h * d) };
                        gather_rows(o, x, bi, h, seq, d, p.lengths[bi]);
                    });
                    out
                }
            };
            let shape = match &self.packed {
                None => Shape::from((b, seq, h * d)),
                Some(_) => Shape::from((rows, h * d)),
            };
            (out, shape)
        };
        Ok((CpuStorage::F32(out), out_shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match (self.split, &self.packed) {
            (true, None) => merge_heads(grad)?,
            (false, None) => split_heads(grad, self.heads)?,
            (true, Some(p)) => merge_heads_packed(grad, &p.lengths)?,
            (false, Some(p)) => split_heads_packed(grad, &p.lengths, p.seq, self.heads)?,
        }))
    }
}

/// Output rows `0..n` of batch row `bi`, each gathered from the `h` heads of `x (b, h, seq, d)`.
fn gather_rows(o: &mut [f32], x: &[f32], bi: usize, h: usize, seq: usize, d: usize, n: usize) {
    for i in 0..n {
        for hh in 0..h {
            let src = ((bi * h + hh) * seq + i) * d;
            let dst = (i * h + hh) * d;
            o[dst..dst + d].copy_from_slice(&x[src..src + d]);
        }
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

    /// Padded `(b, l, e)` from packed rows, with candle's ops.
    fn pad_rows(x: &Tensor, lengths: &[usize], seq: usize) -> Result<Tensor> {
        let mut rows = Vec::new();
        let mut off = 0;
        for &n in lengths {
            rows.push(x.narrow(0, off, n)?.pad_with_zeros(0, 0, seq - n)?);
            off += n;
        }
        Tensor::stack(&rows, 0)
    }

    #[test]
    fn packed_split_and_merge_skip_padding_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (lengths, seq, h, d) in [
            (vec![1usize], 1usize, 1usize, 1usize),
            (vec![3, 0, 5], 5, 2, 3),
            (vec![7, 2, 7, 1], 9, 4, 8),
        ] {
            let t: usize = lengths.iter().sum();
            let b = lengths.len();
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (t, h * d), &dev)?)?;
            let got = split_heads_packed(&x, &lengths, seq, h)?;
            let want = split_heads(&pad_rows(&x, &lengths, seq)?, h)?;
            assert_eq!(got.dims(), [b, h, seq, d]);
            assert_eq!(
                got.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?
            );
            // merge∘split is the identity on the real rows.
            let back = merge_heads_packed(&got, &lengths)?;
            assert_eq!(
                back.flatten_all()?.to_vec1::<f32>()?,
                x.flatten_all()?.to_vec1::<f32>()?
            );
            // d/dx Σ split(x)·probe = the probe's real rows, packed; through merge the padded
            // positions of a (b, h, seq, d) input get zero.
            let probe = Tensor::randn(0f32, 1.0, (b, h, seq, d), &dev)?;
            let g = (&got * &probe)?.sum_all()?.backward()?;
            let gx = g.get(&x).expect("dx");
            let want_g = merge_heads_packed(&probe, &lengths)?;
            assert_eq!(
                gx.flatten_all()?.to_vec1::<f32>()?,
                want_g.flatten_all()?.to_vec1::<f32>()?
            );
            let y = Var::from_tensor(&probe)?;
            let rows_probe = Tensor::randn(0f32, 1.0, (t, h * d), &dev)?;
            let g = (merge_heads_packed(&y, &lengths)? * &rows_probe)?
                .sum_all()?
                .backward()?;
            let gy = g.get(&y).expect("dy");
            let want_gy = split_heads_packed(&rows_probe, &lengths, seq, h)?;
            assert_eq!(
                gy.flatten_all()?.to_vec1::<f32>()?,
                want_gy.flatten_all()?.to_vec1::<f32>()?
            );
        }
        let x = Tensor::zeros((4, 6), DType::F32, &dev)?;
        assert!(
            split_heads_packed(&x, &[2, 1], 3, 2).is_err(),
            "lengths must add up to the rows"
        );
        assert!(split_heads_packed(&x, &[4], 3, 2).is_err(), "a length above seq");
        assert!(merge_heads_packed(&Tensor::zeros((2, 1, 3, 2), DType::F32, &dev)?, &[3]).is_err());
        Ok(())
    }
}
