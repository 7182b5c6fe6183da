//! Running averages and the per-epoch record written to `metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// Sample-weighted running loss and accuracy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Running {
    loss_sum: f64,
    items: usize,
    correct: usize,
    scored: usize,
}

impl Running {
    /// Adds a batch of `items` samples with mean loss `loss` and `correct` hits, if scored.
    pub fn add(&mut self, loss: f64, items: usize, correct: Option<usize>) {
        self.loss_sum += loss * items as f64;
        self.items += items;
        if let Some(c) = correct {
            self.correct += c;
            self.scored += items;
        }
    }

    /// Mean loss per sample so far.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.items.max(1) as f64
    }

    /// Fraction correct so far, when the objective scores predictions.
    pub fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }

    /// Samples seen so far.
    pub fn items(&self) -> usize {
        self.items
    }
}

/// Loss and accuracy of a model on a data set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean loss per sample.
    pub loss: f64,
    /// Fraction of correct predictions, for classification objectives.
    pub accuracy: Option<f64>,
    /// Samples evaluated.
    pub items: usize,
    /// Wall time in seconds.
    pub time_s: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: usize,
    /// Learning rate at the last step of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch (the model changes as it goes).
    pub train_acc: Option<f64>,
    /// Held-out loss after the epoch.
    pub eval_loss: Option<f64>,
    /// Held-out accuracy after the epoch.
    pub eval_acc: Option<f64>,
    /// Seconds spent training in this epoch.
    pub train_time_s: f64,
    /// Seconds spent evaluating after this epoch.
    pub eval_time_s: f64,
    /// Training throughput, samples per second.
    pub items_per_s: f64,
}
