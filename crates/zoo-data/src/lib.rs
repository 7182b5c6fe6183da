//! # zoo-data: data sets and batching for candle-zoo
//!
//! Reads MNIST and Fashion-MNIST from IDX files (gzip or raw) or from the Hugging Face hub's
//! parquet files, with checks that turn truncated, corrupt or mismatched files into errors
//! that name the file. Batches them with a seeded per-epoch shuffle on any candle `Device`.
//! Text: tokenizers from the `tokenizers` crate ([`tokenize`]: character-level or byte-level
//! BPE, saved as `tokenizer.json`) and language-model blocks ([`LmBlocks`]).
//!
//! ```no_run
//! use zoo_data::{Dataset, ImageBatcher, MnistLoader, BatchSource};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let data = MnistLoader::new(Dataset::Mnist).load()?; // data/mnist, $CANDLE_ZOO_DATA or the hub
//! assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
//! let batches = ImageBatcher::new(data.train, 64, Dataset::Mnist.mean_std(), &candle_core::Device::Cpu)?
//!     .shuffle(42);
//! assert_eq!(batches.num_batches(), 938);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batcher;
pub mod error;
pub mod hub;
pub mod idx;
pub mod locate;
pub mod mnist;
pub mod multi30k;
pub mod parquet;
pub mod text_classification;
pub mod text_lm;
pub mod tokenize;
pub mod translation;

pub use batcher::{epoch_batches, shuffled_order, Batch, BatchSource, ImageBatcher};
pub use error::{DataError, Result};
pub use hub::HubOptions;
pub use locate::find_data;
pub use mnist::{DataOrigin, Dataset, ImageSplit, MnistData, MnistLoader};
pub use multi30k::{read_multi30k, Multi30kSplit, ParallelCorpus};
pub use text_classification::{read_labelled_tsv, ClassificationBatches};
pub use text_lm::{read_split_text, LmBlocks, LmEvalBlocks};
pub use translation::{SpecialIds, TranslationBatches};
