//! Token-level BERT heads with Hugging Face's names: `BertForTokenClassification`
//! (`bert.*`, `classifier`) and `BertForQuestionAnswering` (`bert.*`, `qa_outputs`).

use super::bert::{Bert, BertConfig};
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use zoo_nn::init::linear_torch;
use zoo_nn::Linear;

/// Hugging Face's ignore label for token classification.
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross-entropy of `logits (n, classes)` against `labels (n,)` i64, skipping labels equal
/// to [`IGNORE_INDEX`] (0 when every label is ignored).
pub fn cross_entropy_ignoring(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::I64)?;
    let keep = labels.ne(IGNORE_INDEX)?;
    let safe = keep
        .where_cond(&labels, &labels.zeros_like()?)?
        .to_dtype(DType::U32)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?;
    let w = keep.to_dtype(logits.dtype())?;
    let count = w.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    (picked * w)?.sum_all()?.neg()? / count
}

/// BERT with a per-token classifier (named-entity tagging, chunking).
#[derive(Debug, Clone)]
pub struct BertForTokenClassification {
    bert: Bert,
    classifier: Linear,
    dropout: f32,
}

impl BertForTokenClassification {
    /// Builds (or loads) `bert.*` and `classifier (num_labels, hidden)` through `vb`.
    pub fn new(cfg: &BertConfig, num_labels: usize, vb: VarBuilder) -> Result<Self> {
        if num_labels == 0 {
            candle_core::bail!("BertForTokenClassification: num_labels must be at least 1");
        }
        Ok(Self {
            bert: Bert::new(cfg, vb.pp("bert"), false)?,
            classifier: linear_torch(cfg.hidden_size, num_labels, true, vb.pp("classifier"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Logits `(batch, seq, num_labels)`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bert.forward(input_ids, Some(attention_mask), None, train)?;
        let h = zoo_kernels::dropout::dropout_t(h, self.dropout, train)?;
        self.classifier.forward(&h)
    }

    /// Mean token cross-entropy; `labels (batch, seq)` i64 with [`IGNORE_INDEX`] on padding
    /// and sub-word continuations, as Hugging Face's data collators write them.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (b, l, c) = logits.dims3()?;
        cross_entropy_ignoring(&logits.reshape((b * l, c))?, &labels.reshape(b * l)?)
    }
}

/// BERT with a span-extraction head: start and end logits per token (SQuAD).
#[derive(Debug, Clone)]
pub struct BertForQuestionAnswering {
    bert: Bert,
    qa_outputs: Linear,
}

impl BertForQuestionAnswering {
    /// Builds (or loads) `bert.*` and `qa_outputs (2, hidden)` through `vb`.
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            bert: Bert::new(cfg, vb.pp("bert"), false)?,
            qa_outputs: linear_torch(cfg.hidden_size, 2, true, vb.pp("qa_outputs"))?,
        })
    }

    /// `(start_logits, end_logits)`, each `(batch, seq)`; padded positions get `-inf` so they
    /// are never chosen.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let h = self
            .bert
            .forward(input_ids, Some(attention_mask), token_type_ids, train)?;
        let logits = self.qa_outputs.forward(&h)?;
        let pad = attention_mask.eq(0u32)?;
        let neg = Tensor::full(f32::NEG_INFINITY, pad.shape(), h.device())?;
        let pick = |i: usize| -> Result<Tensor> {
            let x = logits.narrow(D::Minus1, i, 1)?.squeeze(D::Minus1)?;
            pad.where_cond(&neg, &x)
        };
        Ok((pick(0)?, pick(1)?))
    }

    /// Hugging Face's loss: the mean of the start and end cross-entropies; positions `(batch,)`.
    pub fn loss(
        &self,
        start_logits: &Tensor,
        end_logits: &Tensor,
        start: &Tensor,
        end: &Tensor,
    ) -> Result<Tensor> {
        let s = candle_nn::loss::cross_entropy(start_logits, &start.to_dtype(DType::U32)?)?;
        let e = candle_nn::loss::cross_entropy(end_logits, &end.to_dtype(DType::U32)?)?;
        (s + e)? / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn tiny() -> BertConfig {
        BertConfig {
            vocab_size: 30,
            hidden_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 8,
            ..Default::default()
        }
    }

    #[test]
    fn token_and_span_heads_have_hf_names_shapes_and_losses() -> Result<()> {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[1u32, 5, 6, 2], [1, 7, 2, 0]], &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &dev)?;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let tok = BertForTokenClassification::new(&tiny(), 3, vb.pp("t"))?;
        let logits = tok.forward(&ids, &mask, false)?;
        assert_eq!(logits.dims(), &[2, 4, 3]);
        // Ignored labels do not count: equal to the CE over the kept tokens only.
        let labels = Tensor::new(
            &[
                [IGNORE_INDEX, 1, 2, IGNORE_INDEX],
                [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX],
            ],
            &dev,
        )?;
        let got = tok.loss(&logits, &labels)?.to_scalar::<f32>()?;
        let flat = logits.reshape((8, 3))?;
        let kept = Tensor::new(&[1u32, 2, 5], &dev)?;
        let want = candle_nn::loss::cross_entropy(
            &flat.index_select(&kept, 0)?,
            &Tensor::new(&[1u32, 2, 0], &dev)?,
        )?
        .to_scalar::<f32>()?;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let qa = BertForQuestionAnswering::new(&tiny(), vb.pp("q"))?;
        let (s, e) = qa.forward(&ids, &mask, None, false)?;
        assert_eq!(s.dims(), &[2, 4]);
        assert_eq!(e.to_vec2::<f32>()?[1][3], f32::NEG_INFINITY);
        let l = qa.loss(
            &s,
            &e,
            &Tensor::new(&[1u32, 1], &dev)?,
            &Tensor::new(&[2u32, 2], &dev)?,
        )?;
        assert!(l.to_scalar::<f32>()?.is_finite());
        let names: Vec<String> = vm.data().lock().expect("lock").keys().cloned().collect();
        assert!(
            names.contains(&"t.classifier.weight".to_string())
                && names.contains(&"q.qa_outputs.weight".to_string())
        );
        assert!(names.contains(&"q.bert.encoder.layer.0.attention.self.query.weight".to_string()));
        Ok(())
    }
}
