//! Multinomial logistic regression on raw pixels: the floor every other model must beat.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_nn::init::linear_glorot;

/// Sizes of [`LinearClassifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinearClassifierConfig {
    /// Flattened input length (784 for 28×28).
    pub in_features: usize,
    /// Output classes.
    pub num_classes: usize,
}

impl Default for LinearClassifierConfig {
    fn default() -> Self {
        Self {
            in_features: 28 * 28,
            num_classes: 10,
        }
    }
}

/// Flatten, then one `Linear` layer named `fc`.
#[derive(Debug, Clone)]
pub struct LinearClassifier {
    fc: Linear,
}

impl LinearClassifier {
    /// Builds the classifier through `vb`.
    pub fn new(cfg: &LinearClassifierConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc: linear_glorot(cfg.in_features, cfg.num_classes, vb.pp("fc"))?,
        })
    }
}

impl Module for LinearClassifier {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc.forward(&xs.flatten_from(1)?)
    }
}
