//! # zoo-nn: layers for candle-zoo
//!
//! Building blocks shared by the zoo's models: reproducible initialization ([`init`]),
//! PyTorch-compatible [`MultiHeadAttention`] on the fused attention kernel, normalization that
//! trains ([`LayerNorm`], [`RmsNorm`]), [`FeedForward`] (ReLU / GELU / SwiGLU), positional
//! encodings (sinusoidal, learned, rotary), mask helpers, and PyTorch's Transformer family
//! ([`TransformerEncoderLayer`] … [`Transformer`]) with its `state_dict` names.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::VarMap;
//! let varmap = VarMap::new();
//! let vb = zoo_nn::init::seeded_var_builder(&varmap, 42, DType::F32, &Device::Cpu);
//! let fc = zoo_nn::init::linear_glorot(3, 2, vb.pp("fc"))?;
//! let y = fc.forward(&Tensor::ones((1, 3), DType::F32, &Device::Cpu)?)?;
//! assert_eq!(y.dims(), &[1, 2]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod conv;
pub mod feed_forward;
pub mod init;
pub mod linear;
pub mod lora;
pub mod masks;
pub mod norm;
pub mod positional;
pub mod transformer;

pub use activation::Activation;
pub use attention::{KvCache, MhaArgs, MhaOutput, MultiHeadAttention, MultiHeadAttentionConfig};
pub use conv::Conv2d;
pub use feed_forward::{FeedForward, FeedForwardConfig};
pub use linear::Linear;
pub use lora::{LoraConfig, LoraLinear};
pub use norm::{LayerNorm, Norm, NormKind, RmsNorm};
pub use positional::{LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding};
pub use transformer::{
    DecoderArgs, DecoderCache, EncoderArgs, Transformer, TransformerConfig, TransformerDecoder,
    TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
};
