//! # zoo-train: the training loop of candle-zoo
//!
//! [`Trainer`] trains any `candle_core::ModuleT` on any [`zoo_data::BatchSource`]: Adam,
//! AdamW or SGD with (Nesterov) momentum, learning-rate schedules, gradient clipping,
//! per-epoch evaluation, a progress bar, `metrics.jsonl`, `curves.svg`, atomic safetensors
//! checkpoints and exact resumption. [`check_gradient_flow`] is the test every model passes.
//!
//! ```no_run
//! use candle_core::{DType, Device};
//! use candle_nn::VarMap;
//! use zoo_data::{Dataset, ImageBatcher, MnistLoader};
//! use zoo_models::vision::{MnistCnn, MnistCnnConfig};
//! use zoo_train::{Trainer, TrainerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let data = MnistLoader::new(Dataset::Mnist).load()?;
//! let stats = Dataset::Mnist.mean_std();
//! let train = ImageBatcher::new(data.train, 64, stats, &dev)?.shuffle(42);
//! let test = ImageBatcher::new(data.test, 1000, stats, &dev)?;
//! let varmap = VarMap::new();
//! let vb = zoo_nn::init::seeded_var_builder(&varmap, 42, DType::F32, &dev);
//! let model = MnistCnn::new(&MnistCnnConfig::default(), vb)?;
//! let cfg = TrainerConfig { epochs: 3, out_dir: Some("runs/mnist".into()), ..Default::default() };
//! let report = Trainer::new(cfg, &varmap)?.fit(&model, &train, Some(&test))?;
//! println!("{:?}", report.history.last());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bleu;
pub mod checkpoint;
pub mod clip;
pub mod curves;
pub mod error;
pub mod gradcheck;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod progress;
pub mod schedule;
pub mod trainer;

pub use bleu::{corpus_bleu, Bleu};
pub use error::{Result, TrainError};
pub use gradcheck::check_gradient_flow;
pub use metrics::{EpochMetrics, EvalMetrics};
pub use objective::{CrossEntropy, Objective, TokenCrossEntropy};
pub use optim::{AdamW, AdamWConfig, Optimizer, OptimizerConfig, Sgd, SgdConfig};
pub use progress::ProgressMode;
pub use schedule::LrSchedule;
pub use trainer::{evaluate, files, BatchModel, TrainReport, Trainer, TrainerConfig, TrainerState};
