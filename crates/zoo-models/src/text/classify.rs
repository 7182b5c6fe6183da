//! `BertForSequenceClassification` with Hugging Face's names (`bert.*`, `classifier`) and
//! losses (`problem_type`), and the fine-tuning strategies that decide what trains.

use super::bert::{pool_sentences, Bert, BertConfig, Pooling};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use zoo_nn::init::linear_torch;
use zoo_nn::{Linear, LoraConfig};

/// What the labels are, as Hugging Face's `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// One class per example: labels `(batch,)` u32, softmax cross-entropy.
    #[default]
    SingleLabelClassification,
    /// Any number of classes per example: labels `(batch, num_labels)` 0/1 floats,
    /// sigmoid binary cross-entropy.
    MultiLabelClassification,
    /// Real targets `(batch, num_labels)` (or `(batch,)` for one), mean squared error.
    Regression,
}

/// What the classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierInput {
    /// BERT's pooler (`tanh(dense(h_cls))`), as Hugging Face's model.
    #[default]
    Pooler,
    /// Mean of the real tokens' states (better for sentence-transformers checkpoints, whose
    /// pooler was never trained).
    MeanPooling,
}

/// Which parameters a fine-tuning run updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FineTuneStrategy {
    /// Only the classifier (and the pooler): the backbone is frozen and not even
    /// differentiated through.
    Head,
    /// The classifier, the pooler and the last `k` encoder layers.
    LastK(usize),
    /// Everything.
    Full,
    /// LoRA: the backbone is frozen but still differentiated through (its adapters, built with
    /// [`BertForSequenceClassification::new_with_lora`] in their own `VarMap`, train), plus
    /// the classifier and the pooler.
    Lora,
}

impl FineTuneStrategy {
    /// Encoder layers whose weights stay fixed (counted from the bottom), for a model with
    /// `layers` layers; the embeddings are frozen whenever this is above 0.
    pub fn frozen_layers(&self, layers: usize) -> usize {
        match *self {
            Self::Head => layers,
            Self::LastK(k) => layers.saturating_sub(k),
            Self::Full | Self::Lora => 0,
        }
    }

    /// Whether the parameter `name` (Hugging Face naming, with or without `bert.`) trains.
    pub fn trains(&self, name: &str, layers: usize) -> bool {
        let name = name.strip_prefix("bert.").unwrap_or(name);
        if *self == Self::Lora {
            return !(name.starts_with("embeddings.") || name.starts_with("encoder."));
        }
        let frozen = self.frozen_layers(layers);
        if frozen == 0 {
            return true;
        }
        if name.starts_with("embeddings.") {
            return false;
        }
        if let Some(rest) = name.strip_prefix("encoder.layer.") {
            let idx: usize = rest.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            return idx >= frozen;
        }
        true // classifier, pooler
    }
}

/// Layer-wise learning-rate decay (discriminative fine-tuning): the multiplier for parameter
/// `name` of a `layers`-layer BERT — 1 for the classifier and pooler, `decay^(layers − i)` for
/// encoder layer `i`, `decay^(layers + 1)` for the embeddings. Give it to
/// `zoo_train::Trainer::with_lr_scales`.
pub fn layer_lr_scale(name: &str, layers: usize, decay: f64) -> f64 {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    let depth = if name.starts_with("embeddings.") {
        layers + 1
    } else if let Some(rest) = name.strip_prefix("encoder.layer.") {
        let i: usize = rest.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
        layers.saturating_sub(i)
    } else {
        0
    };
    decay.powi(depth as i32)
}

/// A BERT encoder with a linear classifier on top.
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    bert: Bert,
    classifier: Linear,
    input: ClassifierInput,
    problem_type: ProblemType,
    dropout: f32,
    frozen_layers: usize,
}

impl BertForSequenceClassification {
    /// Builds (or loads) `bert.*` and `classifier` through `vb`, Hugging Face's names.
    pub fn new(
        cfg: &BertConfig,
        num_labels: usize,
        problem_type: ProblemType,
        input: ClassifierInput,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new_with_lora(cfg, num_labels, problem_type, input, vb, None)
    }

    /// [`Self::new`] with LoRA adapters (PEFT names: `bert.encoder.layer.N.<module>.lora_A.weight`)
    /// created or loaded through the second `VarBuilder`.
    pub fn new_with_lora(
        cfg: &BertConfig,
        num_labels: usize,
        problem_type: ProblemType,
        input: ClassifierInput,
        vb: VarBuilder,
        lora: Option<(&LoraConfig, VarBuilder)>,
    ) -> Result<Self> {
        if num_labels == 0 {
            candle_core::bail!("BertForSequenceClassification: num_labels must be at least 1");
        }
        Ok(Self {
            bert: Bert::new_with_lora(
                cfg,
                vb.pp("bert"),
                input == ClassifierInput::Pooler,
                lora.map(|(c, avb)| (c, avb.pp("bert"))),
            )?,
            classifier: linear_torch(cfg.hidden_size, num_labels, true, vb.pp("classifier"))?,
            input,
            problem_type,
            dropout: cfg.hidden_dropout_prob,
            frozen_layers: 0,
        })
    }

    /// Freezes the bottom layers for `strategy`: their forward pass is cut from the graph
    /// (`detach`), so the backward pass stops above them. Give the optimizer only the
    /// parameters for which [`FineTuneStrategy::trains`] holds.
    pub fn set_strategy(&mut self, strategy: FineTuneStrategy) {
        self.frozen_layers = strategy.frozen_layers(self.bert.config().num_hidden_layers);
    }

    /// The backbone.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// The same classifier with LoRA updates folded into the backbone's weights.
    pub fn merged(&self) -> Result<Self> {
        Ok(Self {
            bert: self.bert.merged()?,
            ..self.clone()
        })
    }

    /// The problem type (which loss [`Self::loss`] uses).
    pub fn problem_type(&self) -> ProblemType {
        self.problem_type
    }

    /// Logits `(batch, num_labels)` for `input_ids (batch, seq)` and `attention_mask`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let hidden =
            self.bert
                .forward_frozen(input_ids, Some(attention_mask), None, train, self.frozen_layers)?;
        let features = match self.input {
            ClassifierInput::Pooler => self.bert.pooled(&hidden)?,
            ClassifierInput::MeanPooling => pool_sentences(&hidden, attention_mask, Pooling::Mean, false)?,
        };
        let features = zoo_kernels::dropout::dropout_t(features, self.dropout, train)?;
        self.classifier.forward(&features)
    }

    /// The loss of `logits` against `labels` for the problem type (mean over the batch).
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        match self.problem_type {
            ProblemType::SingleLabelClassification => candle_nn::loss::cross_entropy(logits, labels),
            ProblemType::MultiLabelClassification => {
                candle_nn::loss::binary_cross_entropy_with_logit(logits, &labels.to_dtype(logits.dtype())?)
            }
            ProblemType::Regression => {
                let labels = labels.to_dtype(DType::F32)?.reshape(logits.shape())?;
                candle_nn::loss::mse(logits, &labels)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_decay_scales_by_depth() {
        let s = |n: &str| layer_lr_scale(n, 6, 0.5);
        assert_eq!(s("classifier.weight"), 1.0);
        assert_eq!(s("bert.pooler.dense.weight"), 1.0);
        assert_eq!(s("bert.encoder.layer.5.output.dense.weight"), 0.5);
        assert_eq!(s("encoder.layer.0.attention.self.query.bias"), 0.5f64.powi(6));
        assert_eq!(s("bert.embeddings.word_embeddings.weight"), 0.5f64.powi(7));
    }
}
