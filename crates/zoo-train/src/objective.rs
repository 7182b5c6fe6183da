//! What the trainer minimizes, and how it scores predictions.

use candle_core::{DType, Result, Tensor};

/// A training objective: a scalar loss, and optionally a count of correct predictions.
pub trait Objective {
    /// Mean loss over the batch, a scalar tensor that gradients flow through.
    fn loss(&self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor>;
    /// Number of correct predictions in the batch, or `None` when accuracy has no meaning.
    fn correct(&self, outputs: &Tensor, targets: &Tensor) -> Result<Option<usize>>;
}

/// Softmax cross-entropy for classification: logits `(batch, classes)`, class indices
/// `(batch,)` u32. Built from candle ops that all have a backward pass
/// (`log_softmax` + `nll`), unlike candle-nn's fused `softmax_last_dim`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn loss(&self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        candle_nn::loss::cross_entropy(outputs, targets)
    }

    fn correct(&self, outputs: &Tensor, targets: &Tensor) -> Result<Option<usize>> {
        let predicted = outputs.argmax(candle_core::D::Minus1)?;
        let hits = predicted
            .eq(&targets.to_dtype(predicted.dtype())?)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok(Some(hits.round() as usize))
    }
}
