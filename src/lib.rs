//! # candle-zoo
//!
//! A model zoo on Hugging Face's Candle: the classic structures of deep learning as real,
//! trainable library code. This facade re-exports the member crates:
//!
//! - [`kernels`]: our own kernels as candle ops (fused attention; CPU training ops),
//! - [`nn`]: layers and seeded initialization,
//! - [`models`]: `MnistCnn`, baselines, (next) Transformers and BERT,
//! - [`train`]: the training loop, optimizers, schedules, metrics, checkpoints,
//! - [`data`]: MNIST / Fashion-MNIST loading and batching.
//!
//! ```no_run
//! use candle_zoo::candle_core::{DType, Device};
//! use candle_zoo::candle_nn::VarMap;
//! use candle_zoo::data::{Dataset, ImageBatcher, MnistLoader};
//! use candle_zoo::models::vision::{MnistCnn, MnistCnnConfig};
//! use candle_zoo::train::{Trainer, TrainerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let data = MnistLoader::new(Dataset::Mnist).load()?;
//! let train = ImageBatcher::new(data.train, 64, Dataset::Mnist.mean_std(), &dev)?.shuffle(0);
//! let varmap = VarMap::new();
//! let model = MnistCnn::new(&MnistCnnConfig::default(), candle_zoo::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
//! Trainer::new(TrainerConfig::default(), &varmap)?.fit(&model, &train, None)?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod device;

pub use candle_core;
pub use candle_nn;
pub use device::device_from_name;
pub use zoo_data as data;
pub use zoo_kernels as kernels;
pub use zoo_models as models;
pub use zoo_nn as nn;
pub use zoo_train as train;

/// The README's examples, compiled as doctests so the front page cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
