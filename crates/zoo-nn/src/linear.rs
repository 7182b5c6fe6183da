//! `nn.Linear` for inputs of any rank, with training-friendly gradients.
//!
//! candle-nn's `Linear` multiplies a `(batch, seq, in)` input by a weight broadcast to
//! `(batch, out, in)`, so the weight gradient arrives per batch row and is summed by candle's
//! strided reduction, as is the bias gradient of `broadcast_add`. This layer folds the leading
//! dimensions into rows and runs [`zoo_kernels::linear::linear`]: on the CPU one autograd node
//! whose backward is two matrix products and a column sum (optionally with ReLU fused). Same
//! names (`weight (out, in)`, `bias (out)`) and values as candle-nn's and PyTorch's.

use candle_core::{Module, Result, Tensor};

/// `y = x Wᵀ + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from `weight (out, in)` and an optional `bias (out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(out,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// `x (…, in) · wᵀ (+ b)` with `w (out, in)`: leading dimensions folded into one matmul.
/// Shapes are checked there: a mismatch names the input's and the weight's sizes.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    zoo_kernels::linear::linear(x, w, b, zoo_kernels::linear::Act::Identity)
}

impl Linear {
    /// `relu(x Wᵀ + b)`; on the CPU one fused op whose backward applies ReLU's mask itself.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        zoo_kernels::linear::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            zoo_kernels::linear::Act::Relu,
        )
    }

    /// `gelu(x Wᵀ + b)` (exact erf GELU); on the CPU one fused op with a vectorized GELU.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        zoo_kernels::linear::linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            zoo_kernels::linear::Act::Gelu,
        )
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_nn_linear_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 7), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (3, 5, 4), &dev)?;
        let ours = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let theirs = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let (ya, yb) = (ours.forward(&x)?, theirs.forward(&x)?);
        let ga = (&ya * &probe)?.sum_all()?.backward()?;
        let gb = (&yb * &probe)?.sum_all()?.backward()?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
        assert!(diff(&ya, &yb)? < 1e-5);
        for v in [&x, &w, &b] {
            assert!(diff(ga.get(v).expect("ours"), gb.get(v).expect("theirs"))? < 1e-4);
        }
        let bad = linear(&x, &Tensor::zeros((4, 6), DType::F32, &dev)?, None);
        assert!(bad.unwrap_err().to_string().contains("has 7 features"));
        Ok(())
    }
}
