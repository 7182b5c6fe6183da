//! The position-wise feed-forward block of a Transformer layer.

use crate::activation::Activation;
use crate::init::linear_torch;
use crate::linear::Linear;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Sizes and options of [`FeedForward`]; defaults are PyTorch's Transformer layer's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeedForwardConfig {
    /// Model width.
    pub d_model: usize,
    /// Hidden width.
    pub dim_feedforward: usize,
    /// Activation of the hidden layer.
    pub activation: Activation,
    /// Gated (GLU) variant: `linear2(act(linear_gate(x)) · linear1(x))`; with `Silu` this is
    /// SwiGLU (LLaMA), with `Gelu` GeGLU.
    pub gated: bool,
    /// Dropout on the hidden activations while training.
    pub dropout: f32,
    /// Biases on the linear layers.
    pub bias: bool,
}

impl Default for FeedForwardConfig {
    fn default() -> Self {
        Self {
            d_model: 512,
            dim_feedforward: 2048,
            activation: Activation::Relu,
            gated: false,
            dropout: 0.1,
            bias: true,
        }
    }
}

/// `linear2(dropout(act(linear1(x))))` (PyTorch's `_ff_block` without its outer dropout), or
/// its gated form. Weight names: `linear1`, `linear2`, and `linear_gate` when gated.
#[derive(Debug, Clone)]
pub struct FeedForward {
    linear1: Linear,
    linear2: Linear,
    gate: Option<Linear>,
    activation: Activation,
    dropout: f32,
}

impl FeedForward {
    /// Builds the block through `vb` with PyTorch's `nn.Linear` initialization.
    pub fn new(cfg: &FeedForwardConfig, vb: VarBuilder) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("FeedForward: dropout {} must be in [0, 1)", cfg.dropout);
        }
        let (d, f) = (cfg.d_model, cfg.dim_feedforward);
        Ok(Self {
            linear1: linear_torch(d, f, cfg.bias, vb.pp("linear1"))?,
            linear2: linear_torch(f, d, cfg.bias, vb.pp("linear2"))?,
            gate: if cfg.gated {
                Some(linear_torch(d, f, cfg.bias, vb.pp("linear_gate"))?)
            } else {
                None
            },
            activation: cfg.activation,
            dropout: cfg.dropout,
        })
    }

    /// `x (…, d_model) → (…, d_model)`; dropout only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &self.gate {
            // ReLU runs inside the fused linear op (one autograd node instead of two).
            None if self.activation == Activation::Relu => self.linear1.forward_relu(x)?,
            None if self.activation == Activation::Gelu => self.linear1.forward_gelu(x)?,
            None => self.activation.forward(&self.linear1.forward(x)?)?,
            Some(g) => (self.activation.forward(&g.forward(x)?)? * self.linear1.forward(x)?)?,
        };
        let h = zoo_kernels::dropout::dropout_t(h, self.dropout, train)?;
        self.linear2.forward(&h)
    }
}

impl Module for FeedForward {
    /// Evaluation mode (no dropout).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
