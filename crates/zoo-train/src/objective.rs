//! What the trainer minimizes, and how it scores predictions.

use candle_core::{DType, Result, Tensor};

/// A training objective: a scalar loss, and optionally a count of correct predictions.
pub trait Objective {
    /// Mean loss over the batch, a scalar tensor that gradients flow through.
    fn loss(&self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor>;
    /// Number of correct predictions in the batch, or `None` when accuracy has no meaning.
    fn correct(&self, outputs: &Tensor, targets: &Tensor) -> Result<Option<usize>>;
    /// How many predictions the batch's mean loss averages over (the weight of the batch in
    /// epoch means, and the denominator of accuracy): the batch size by default, scored tokens
    /// for sequence objectives.
    fn count(&self, targets: &Tensor) -> Result<usize> {
        targets.dim(0)
    }
}

/// Token-level softmax cross-entropy for sequence models: logits `(batch, seq, vocab)` (or
/// `(n, vocab)`), target ids `(batch, seq)` (or `(n,)`) u32. Targets equal to `ignore_index`
/// (padding) add nothing to the loss, the accuracy or the count. With `label_smoothing` ε the
/// target distribution is `(1 − ε)·one_hot + ε/vocab`, as PyTorch's `CrossEntropyLoss`.
/// The loss is in nats per token; `exp(loss)` is the perplexity.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenCrossEntropy {
    /// A target id that marks padding.
    pub ignore_index: Option<u32>,
    /// Label smoothing in `[0, 1)`.
    pub label_smoothing: f32,
}

impl TokenCrossEntropy {
    fn flat(outputs: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let v = outputs.dim(candle_core::D::Minus1)?;
        let logits = outputs.reshape(((), v))?;
        let t = targets.flatten_all()?;
        if logits.dim(0)? != t.dim(0)? {
            candle_core::bail!(
                "TokenCrossEntropy: logits {:?} and targets {:?} hold different numbers of positions",
                outputs.dims(),
                targets.dims()
            );
        }
        Ok((logits, t))
    }

    /// 1.0 for scored positions, 0.0 for `ignore_index`, `(n,)` f32.
    fn weights(&self, t: &Tensor) -> Result<Option<Tensor>> {
        match self.ignore_index {
            Some(i) => Ok(Some(t.ne(i)?.to_dtype(DType::F32)?)),
            None => Ok(None),
        }
    }
}

impl Objective for TokenCrossEntropy {
    fn loss(&self, outputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (logits, t) = Self::flat(outputs, targets)?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, candle_core::D::Minus1)?;
        // Ignored targets may be out of the vocabulary (e.g. -100 as u32): gather from id 0.
        let safe = match self.ignore_index {
            Some(i) => t.ne(i)?.where_cond(&t, &t.zeros_like()?)?,
            None => t.clone(),
        };
        let nll = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        let per_token = if self.label_smoothing > 0.0 {
            let eps = self.label_smoothing as f64;
            let uniform = logp.mean(candle_core::D::Minus1)?.neg()?;
            ((nll * (1.0 - eps))? + (uniform * eps)?)?
        } else {
            nll
        };
        match self.weights(&t)? {
            Some(w) => {
                let n = w.sum_all()?;
                (per_token * &w)?.sum_all()?.broadcast_div(&n.maximum(1.0)?)
            }
            None => per_token.mean_all(),
        }
    }

    fn correct(&self, outputs: &Tensor, targets: &Tensor) -> Result<Option<usize>> {
        let (logits, t) = Self::flat(outputs, targets)?;
        let hit = logits
            .argmax(candle_core::D::Minus1)?
            .eq(&t.to_dtype(DType::U32)?)?
            .to_dtype(DType::F32)?;
        let hit = match self.weights(&t)? {
            Some(w) => (hit * w)?,
            None => hit,
        };
        Ok(Some(hit.sum_all()?.to_scalar::<f32>()?.round() as usize))
    }

    fn count(&self, targets: &Tensor) -> Result<usize> {
        let t = targets.flatten_all()?;
        Ok(match self.weights(&t)? {
            Some(w) => w.sum_all()?.to_scalar::<f32>()?.round() as usize,
            None => t.dim(0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn token_cross_entropy_matches_the_definition_with_padding_and_smoothing() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [[2f32, 0.5, -1.0], [0.0, 1.0, 3.0]],
                [[1.0, 1.0, 1.0], [0.3, -0.2, 0.1]],
            ],
            &dev,
        )?;
        let targets = Tensor::new(&[[0u32, 2], [1, 9]], &dev)?; // 9 = padding
        let obj = TokenCrossEntropy {
            ignore_index: Some(9),
            label_smoothing: 0.1,
        };
        let rows = [[2f64, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]];
        let tgt = [0usize, 2, 1];
        let mut want = 0.0;
        for (r, &t) in rows.iter().zip(&tgt) {
            let lse = r.iter().map(|x| x.exp()).sum::<f64>().ln();
            let logp: Vec<f64> = r.iter().map(|x| x - lse).collect();
            want += 0.9 * -logp[t] + 0.1 * -(logp.iter().sum::<f64>() / 3.0);
        }
        want /= 3.0;
        let got = obj.loss(&logits, &targets)?.to_scalar::<f32>()? as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(obj.count(&targets)?, 3);
        // argmax: row0 -> 0 (hit), row1 -> 2 (hit), row2 -> 0 (miss, target 1); padding unscored.
        assert_eq!(obj.correct(&logits, &targets)?, Some(2));
        Ok(())
    }
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
