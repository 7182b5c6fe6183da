//! A classification head for any backbone that yields one feature vector per example (BERT's
//! pooled output, `MnistCnn::features`, a sentence embedding).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use zoo_nn::init::linear_torch;
use zoo_nn::Linear;

/// `dropout → [dense → tanh → dropout →] out_proj`: with `hidden`, the two-layer head of
/// Hugging Face's RoBERTa-style classifiers (`dense`, `out_proj`); without, one linear layer
/// (`out_proj`).
#[derive(Debug, Clone)]
pub struct ClassificationHead {
    dense: Option<Linear>,
    out_proj: Linear,
    dropout: f32,
}

impl ClassificationHead {
    /// Features of width `in_features` → `num_classes` logits.
    pub fn new(
        in_features: usize,
        num_classes: usize,
        hidden: Option<usize>,
        dropout: f32,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || in_features == 0 {
            candle_core::bail!("ClassificationHead: in_features ({in_features}) and num_classes ({num_classes}) must be at least 1");
        }
        if !(0.0..1.0).contains(&dropout) {
            candle_core::bail!("ClassificationHead: dropout {dropout} must be in [0, 1)");
        }
        let dense = hidden
            .map(|h| linear_torch(in_features, h, true, vb.pp("dense")))
            .transpose()?;
        let width = hidden.unwrap_or(in_features);
        Ok(Self {
            dense,
            out_proj: linear_torch(width, num_classes, true, vb.pp("out_proj"))?,
            dropout,
        })
    }

    /// Logits `(batch, num_classes)` from features `(batch, in_features)`.
    pub fn forward_t(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        let drop = |x: Tensor| zoo_kernels::dropout::dropout_t(x, self.dropout, train);
        let mut x = drop(features.clone())?;
        if let Some(d) = &self.dense {
            x = drop(d.forward(&x)?.tanh()?)?;
        }
        self.out_proj.forward(&x)
    }
}

impl Module for ClassificationHead {
    /// Evaluation mode.
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.forward_t(features, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_names_and_bad_sizes() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let h = ClassificationHead::new(64, 10, Some(32), 0.1, vb.pp("head"))?;
        let y = h.forward_t(&Tensor::ones((5, 64), DType::F32, &Device::Cpu)?, true)?;
        assert_eq!(y.dims(), &[5, 10]);
        let mut names: Vec<String> = vm.data().lock().expect("lock").keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "head.dense.bias",
                "head.dense.weight",
                "head.out_proj.bias",
                "head.out_proj.weight"
            ]
        );
        assert!(ClassificationHead::new(64, 0, None, 0.0, vb.pp("x")).is_err());
        assert!(ClassificationHead::new(64, 3, None, 1.0, vb.pp("y")).is_err());
        Ok(())
    }
}
