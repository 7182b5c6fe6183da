//! A multilayer perceptron baseline for flattened images.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_nn::init::linear_glorot;

/// Sizes of [`Mlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlpConfig {
    /// Flattened input length (784 for 28×28).
    pub in_features: usize,
    /// Widths of the hidden layers, each followed by ReLU.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub num_classes: usize,
    /// Dropout probability after each hidden activation while training (0 disables it).
    pub dropout: f32,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            in_features: 28 * 28,
            hidden: vec![256, 128],
            num_classes: 10,
            dropout: 0.0,
        }
    }
}

/// Flatten, then `Linear → ReLU (→ Dropout)` per hidden width, then a `Linear` classifier.
/// Layers are named `layers.0`, `layers.1`, …, the classifier `head`.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    head: Linear,
    dropout: f32,
}

impl Mlp {
    /// Builds the network through `vb`.
    pub fn new(cfg: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("Mlp: dropout {} must be in [0, 1)", cfg.dropout);
        }
        let mut layers = Vec::with_capacity(cfg.hidden.len());
        let mut width = cfg.in_features;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            layers.push(linear_glorot(width, h, vb.pp("layers").pp(i))?);
            width = h;
        }
        let head = linear_glorot(width, cfg.num_classes, vb.pp("head"))?;
        Ok(Self {
            layers,
            head,
            dropout: cfg.dropout,
        })
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = xs.flatten_from(1)?;
        for layer in &self.layers {
            xs = zoo_kernels::dropout::dropout_t(layer.forward(&xs)?.relu()?, self.dropout, train)?;
        }
        self.head.forward(&xs)
    }
}
