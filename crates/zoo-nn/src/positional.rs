//! Positional information for Transformers: fixed sinusoidal encodings, learned position
//! embeddings, and rotary embeddings (RoPE) whose backward pass works.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Init, VarBuilder};

/// The fixed encodings of "Attention Is All You Need": `pe[p, 2i] = sin(p / 10000^(2i/d))`,
/// `pe[p, 2i+1] = cos(p / 10000^(2i/d))`, computed in f64 and added to the input. Odd `d_model`
/// works (the last column is a sine). No parameters.
#[derive(Debug, Clone)]
pub struct SinusoidalPositionalEncoding {
    pe: Tensor,
}

impl SinusoidalPositionalEncoding {
    /// A table for positions `0..max_len` of width `d_model`.
    pub fn new(d_model: usize, max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let mut pe = vec![0f64; max_len * d_model];
        for p in 0..max_len {
            for c in 0..d_model {
                let i = (c / 2) as f64;
                let angle = p as f64 / 10000f64.powf(2.0 * i / d_model as f64);
                pe[p * d_model + c] = if c % 2 == 0 { angle.sin() } else { angle.cos() };
            }
        }
        Ok(Self {
            pe: Tensor::from_vec(pe, (max_len, d_model), device)?.to_dtype(dtype)?,
        })
    }

    /// The table, `(max_len, d_model)`.
    pub fn table(&self) -> &Tensor {
        &self.pe
    }

    /// `x (batch, seq, d_model)` plus the encodings of positions `offset..offset + seq`.
    pub fn forward_at(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = x.dim(D::Minus2)?;
        let max_len = self.pe.dim(0)?;
        if offset + seq > max_len {
            candle_core::bail!(
                "SinusoidalPositionalEncoding: positions {offset}..{} exceed max_len {max_len}; build it with a larger max_len",
                offset + seq
            );
        }
        x.broadcast_add(&self.pe.narrow(0, offset, seq)?.to_dtype(x.dtype())?)
    }
}

impl Module for SinusoidalPositionalEncoding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(x, 0)
    }
}

/// Learned absolute position embeddings (GPT-2's `wpe`, BERT's `position_embeddings`):
/// `weight (max_len, d_model)`, normal(0, 0.02) initialization.
#[derive(Debug, Clone)]
pub struct LearnedPositionalEmbedding {
    emb: Embedding,
    max_len: usize,
}

impl LearnedPositionalEmbedding {
    /// Reads or creates `weight`.
    pub fn new(max_len: usize, d_model: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_with_hints(
            (max_len, d_model),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        Ok(Self {
            emb: Embedding::new(w, d_model),
            max_len,
        })
    }

    /// Embeddings of positions `offset..offset + len`, `(len, d_model)`.
    pub fn positions(&self, offset: usize, len: usize, device: &Device) -> Result<Tensor> {
        if offset + len > self.max_len {
            candle_core::bail!(
                "LearnedPositionalEmbedding: positions {offset}..{} exceed max_len {}",
                offset + len,
                self.max_len
            );
        }
        let ids = Tensor::arange(offset as u32, (offset + len) as u32, device)?;
        self.emb.forward(&ids)
    }

    /// `x (batch, seq, d_model)` plus the embeddings of positions `offset..offset + seq`.
    pub fn forward_at(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let pos = self.positions(offset, x.dim(D::Minus2)?, x.device())?;
        x.broadcast_add(&pos)
    }
}

/// Rotary position embeddings (RoPE, the "rotate half" layout of GPT-NeoX / LLaMA / Hugging
/// Face): channel pairs `(i, i + head_dim/2)` of each query and key head are rotated by the angle
/// `position · base^(−2i/head_dim)`. Built from differentiable ops (candle-nn's fused `rope`
/// has no backward pass).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    head_dim: usize,
}

impl RotaryEmbedding {
    /// Tables for positions `0..max_len`; `head_dim` must be even. `base` is 10000 in most models.
    pub fn new(head_dim: usize, max_len: usize, base: f64, dtype: DType, device: &Device) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            candle_core::bail!("RotaryEmbedding: head_dim must be even, got {head_dim}");
        }
        let half = head_dim / 2;
        let mut cos = vec![0f64; max_len * head_dim];
        let mut sin = vec![0f64; max_len * head_dim];
        for p in 0..max_len {
            for i in 0..half {
                let angle = p as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
                for c in [i, i + half] {
                    cos[p * head_dim + c] = angle.cos();
                    sin[p * head_dim + c] = angle.sin();
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_len, head_dim), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_len, head_dim), device)?.to_dtype(dtype)?,
            head_dim,
        })
    }

    /// Rotates `x (batch, heads, seq, head_dim)` for positions `offset..offset + seq`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (_, _, seq, hd) = x.dims4()?;
        let max_len = self.cos.dim(0)?;
        if hd != self.head_dim || offset + seq > max_len {
            candle_core::bail!(
                "RotaryEmbedding: input {:?} at offset {offset} does not fit head_dim {} and max_len {max_len}",
                x.dims(),
                self.head_dim
            );
        }
        let cos = self.cos.narrow(0, offset, seq)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, offset, seq)?.to_dtype(x.dtype())?;
        let half = hd / 2;
        let rotated = Tensor::cat(
            &[
                &x.narrow(D::Minus1, half, half)?.neg()?,
                &x.narrow(D::Minus1, 0, half)?,
            ],
            D::Minus1,
        )?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn sinusoidal_table_matches_the_formula_for_odd_widths() -> Result<()> {
        let pe = SinusoidalPositionalEncoding::new(7, 50, DType::F32, &Device::Cpu)?;
        let t = pe.table().to_vec2::<f32>()?;
        for (p, c) in [(0usize, 0usize), (0, 1), (3, 2), (49, 5), (17, 6)] {
            let i = (c / 2) as f64;
            let a = p as f64 / 10000f64.powf(2.0 * i / 7.0);
            let want = if c % 2 == 0 { a.sin() } else { a.cos() };
            assert!((t[p][c] as f64 - want).abs() < 1e-6, "pe[{p}][{c}]");
        }
        let x = Tensor::zeros((2, 4, 7), DType::F32, &Device::Cpu)?;
        let y = pe.forward_at(&x, 10)?;
        assert_eq!(y.get(1)?.get(0)?.to_vec1::<f32>()?, t[10]);
        assert!(
            pe.forward_at(&x, 47).is_err(),
            "positions past max_len are an error"
        );
        Ok(())
    }

    #[test]
    fn rope_rotates_pairs_keeps_norms_is_relative_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(8, 64, 10000.0, DType::F32, &dev)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 2, 5, 8), &dev)?)?;
        let y = rope.apply(&x, 3)?;
        // A rotation keeps each pair's (and so each vector's) length.
        let nx = x.sqr()?.sum(D::Minus1)?;
        let ny = y.sqr()?.sum(D::Minus1)?;
        assert!((nx - ny)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-4);
        // q·k after rotation depends only on the distance between positions.
        let q = Tensor::randn(0f32, 1.0, (1, 1, 1, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 1, 1, 8), &dev)?;
        let dot = |pq: usize, pk: usize| -> Result<f32> {
            (rope.apply(&q, pq)? * rope.apply(&k, pk)?)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        assert!((dot(10, 4)? - dot(30, 24)?).abs() < 1e-4);
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&x).is_some(), "rope must pass gradients through");
        Ok(())
    }
}
