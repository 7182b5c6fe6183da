//! # zoo-nn: layers for candle-zoo
//!
//! Building blocks shared by the zoo's models: reproducible, Keras-style initialization
//! ([`init`]) and PyTorch-compatible [`MultiHeadAttention`] on the fused attention kernel.
//! The Transformer layers build on these.
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

pub mod attention;
pub mod init;

pub use attention::{MhaArgs, MhaOutput, MultiHeadAttention, MultiHeadAttentionConfig};
