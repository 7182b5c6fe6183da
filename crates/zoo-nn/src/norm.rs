//! Layer normalization and RMS normalization that train: built from differentiable candle ops.
//!
//! candle-nn 0.11's `LayerNorm` / `RmsNorm` modules take a fused path without a backward pass on
//! contiguous inputs (nothing upstream of them would learn, silently). These layers run the
//! zoo's fused CPU kernels, which have a backward pass ([`zoo_kernels::norm`]), and the composed
//! candle ops elsewhere. Parameter names follow PyTorch (`weight`, `bias`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `nn.LayerNorm(dim, eps, elementwise_affine=True, bias)` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// `weight` (ones) and, with `bias`, `bias` (zeros), both `(dim,)`.
    pub fn new(dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = if bias {
            Some(vb.get_with_hints(dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self { weight, bias, eps })
    }

    /// The scale, `(dim,)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Half-precision inputs are normalized in f32 (as PyTorch does) and returned in their dtype.
fn widened(x: &Tensor) -> Result<(Tensor, DType)> {
    let dt = x.dtype();
    let x = match dt {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    };
    Ok((x, dt))
}

impl Module for LayerNorm {
    /// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension (biased variance).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x, dt) = widened(x)?;
        let w = self.weight.to_dtype(x.dtype())?;
        let b = self.bias.as_ref().map(|b| b.to_dtype(x.dtype())).transpose()?;
        zoo_kernels::norm::layer_norm(&x, &w, b.as_ref(), self.eps)?.to_dtype(dt)
    }
}

/// `nn.RMSNorm(dim, eps)`: `x / sqrt(mean(x²) + eps) · weight` over the last dimension.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `weight` (ones), `(dim,)`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            eps,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (x, dt) = widened(x)?;
        zoo_kernels::norm::rms_norm(&x, &self.weight.to_dtype(x.dtype())?, self.eps)?.to_dtype(dt)
    }
}

/// Which normalization a Transformer layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// [`LayerNorm`] (PyTorch's Transformer layers).
    #[default]
    LayerNorm,
    /// [`RmsNorm`] (LLaMA-style).
    RmsNorm,
}

/// A [`LayerNorm`] or an [`RmsNorm`], chosen by configuration.
#[derive(Debug, Clone)]
pub enum Norm {
    /// Layer normalization.
    LayerNorm(LayerNorm),
    /// RMS normalization.
    RmsNorm(RmsNorm),
}

impl Norm {
    /// Builds the chosen normalization (`bias` applies to layer norm only).
    pub fn new(kind: NormKind, dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::LayerNorm => Self::LayerNorm(LayerNorm::new(dim, eps, bias, vb)?),
            NormKind::RmsNorm => Self::RmsNorm(RmsNorm::new(dim, eps, vb)?),
        })
    }
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::LayerNorm(n) => n.forward(x),
            Self::RmsNorm(n) => n.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn layer_norm_matches_the_definition_and_trains() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ln = LayerNorm::new(5, 1e-5, true, vb.pp("ln"))?;
        let x = Var::from_tensor(&Tensor::new(
            &[[1f32, 2., 3., 4., 10.], [-1., 0., 0., 0., 1.]],
            &dev,
        )?)?;
        let y = ln.forward(&x)?;
        let rows = x.to_vec2::<f32>()?;
        for (r, row) in rows.iter().enumerate() {
            let mean = row.iter().sum::<f32>() / 5.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 5.0;
            for (c, v) in row.iter().enumerate() {
                let want = (v - mean) / (var + 1e-5).sqrt();
                let got = y.get(r)?.get(c)?.to_scalar::<f32>()?;
                assert!((got - want).abs() < 1e-5, "({r},{c}) {got} vs {want}");
            }
        }
        // Gradients reach the input and both parameters (candle-nn's fused path gives none).
        let grads = y
            .sqr()?
            .broadcast_mul(&Tensor::new(&[1f32, 2., 3., 4., 5.], &dev)?)?
            .sum_all()?
            .backward()?;
        for (name, t) in [
            ("x", x.as_tensor()),
            ("weight", &ln.weight),
            ("bias", ln.bias.as_ref().expect("bias")),
        ] {
            let g = grads.get(t).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(
                g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                "zero gradient for {name}"
            );
        }
        Ok(())
    }

    #[test]
    fn rms_norm_matches_the_definition_and_keeps_half_precision() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let n = RmsNorm::new(4, 1e-6, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let x = Tensor::new(&[[3f32, -4., 0., 0.]], &dev)?;
        let y = n.forward(&x)?.to_vec2::<f32>()?;
        let rms = (25f32 / 4.0 + 1e-6).sqrt();
        assert!((y[0][0] - 3.0 / rms).abs() < 1e-6 && (y[0][1] + 4.0 / rms).abs() < 1e-6);
        let yh = n.forward(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(yh.dtype(), DType::BF16);
        Ok(())
    }
}
