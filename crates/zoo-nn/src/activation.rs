//! Activation functions by name, as Transformer configs spell them.

use candle_core::{Module, Result, Tensor};
use serde::{Deserialize, Serialize};

/// An elementwise activation (all differentiable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`, PyTorch's Transformer default.
    #[default]
    Relu,
    /// Exact GELU, `x · Φ(x)` (PyTorch's `"gelu"`, BERT's `"gelu"`).
    Gelu,
    /// GELU with the tanh approximation (GPT-2's `"gelu_new"`).
    GeluTanh,
    /// `x · sigmoid(x)` (SiLU / swish).
    Silu,
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => x.silu(),
        }
    }
}
