//! # zoo-models: the models of candle-zoo
//!
//! Each model is a plain struct built from a serde config and a candle `VarBuilder`, with
//! weight names as the equivalent PyTorch module would have them.
//!
//! - [`vision::MnistCnn`]: the classic 3-convolution MNIST network (93,322 parameters),
//!   with [`vision::Mlp`] and [`vision::LinearClassifier`] as baselines.
//! - [`text::Gpt`]: a decoder-only language model with KV-cache generation
//!   ([`text::SamplingConfig`]: temperature, top-k, top-p).
//! - [`text::Seq2SeqTransformer`]: an encoder-decoder translator (greedy and beam search).
//! - [`text::Bert`]: BERT with Hugging Face's names, loaded from a directory or the hub cache
//!   ([`text::PretrainedFiles`]), and [`text::SentenceEncoder`] for sentence embeddings.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::VarMap;
//! use zoo_models::vision::{parameter_count, MnistCnn, MnistCnnConfig};
//! let varmap = VarMap::new();
//! let vb = zoo_nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
//! let cnn = MnistCnn::new(&MnistCnnConfig::default(), vb)?;
//! assert_eq!(parameter_count(&varmap.all_vars()), 93_322);
//! let logits = cnn.forward(&Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//! # Ok::<(), candle_core::Error>(())
//! ```

#![warn(missing_docs)]

pub use head::ClassificationHead;

pub mod head;
pub mod text;
pub mod vision;
