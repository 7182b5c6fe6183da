//! Trains the classic CNN (or a baseline) on MNIST / Fashion-MNIST and reports test accuracy.
//!
//! ```text
//! cargo run --release --example train_mnist                     # CNN on MNIST, >= 99.0% test accuracy
//! cargo run --release --example train_mnist -- --model mlp --epochs 10 --dataset fashion
//! cargo run --release --example train_mnist -- --out runs/mnist --resume
//! ```

use anyhow::{Context, Result};
use candle_zoo::candle_core::{DType, ModuleT};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::data::{Dataset, ImageBatcher, MnistLoader};
use candle_zoo::models::vision::{
    parameter_count, LinearClassifier, LinearClassifierConfig, Mlp, MlpConfig, MnistCnn, MnistCnnConfig,
};
use candle_zoo::train::{
    evaluate, CrossEntropy, LrSchedule, OptimizerConfig, ProgressMode, Trainer, TrainerConfig,
};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelKind {
    Cnn,
    Mlp,
    Linear,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatasetArg {
    Mnist,
    Fashion,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    Adam,
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    Constant,
    Cosine,
    Step,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Plain,
    Off,
}

/// Train an image classifier on MNIST-format data with candle-zoo.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Which network.
    #[arg(long, value_enum, default_value = "cnn")]
    model: ModelKind,
    /// Which data set.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetArg,
    /// Epochs (the default is the fewest that reach 99.0% on MNIST with the CNN).
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// Learning-rate schedule (cosine: 1 epoch... see --warmup-steps).
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Linear warm-up steps of the cosine schedule.
    #[arg(long, default_value_t = 100)]
    warmup_steps: usize,
    /// Clip gradients to this global norm.
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory holding the IDX files (default: $CANDLE_ZOO_DATA, then data/, then the hub).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// cpu, cuda, metal or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run directory: checkpoints, metrics.jsonl, curves.svg.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue the run in --out where it stopped.
    #[arg(long)]
    resume: bool,
    /// Train on the first N training images only.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Progress display within an epoch.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressArg,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Reuse freed buffers instead of faulting them in again every step (glibc; see its docs).
    candle_zoo::kernels::allocator::retain_freed_memory();
    let device = candle_zoo::device_from_name(&args.device)?;
    let dataset = match args.dataset {
        DatasetArg::Mnist => Dataset::Mnist,
        DatasetArg::Fashion => Dataset::FashionMnist,
    };
    let mut loader = MnistLoader::new(dataset);
    if let Some(dir) = &args.data_dir {
        loader = loader.data_dir(dir);
    }
    let data = loader.load().with_context(|| format!("loading {dataset}"))?;
    println!(
        "{dataset}: {} train / {} test images, {}",
        data.train.len(),
        data.test.len(),
        data.origin
    );
    let train_split = match args.limit_train {
        Some(n) => data.train.truncate(n),
        None => data.train,
    };
    let stats = dataset.mean_std();
    let train = ImageBatcher::new(train_split, args.batch_size, stats, &device)?.shuffle(args.seed);
    let test = ImageBatcher::new(data.test, 1000, stats, &device)?;

    let varmap = VarMap::new();
    let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, args.seed, DType::F32, &device);
    let model: Box<dyn ModuleT> = match args.model {
        ModelKind::Cnn => Box::new(MnistCnn::new(&MnistCnnConfig::default(), vb)?),
        ModelKind::Mlp => Box::new(Mlp::new(&MlpConfig::default(), vb)?),
        ModelKind::Linear => Box::new(LinearClassifier::new(&LinearClassifierConfig::default(), vb)?),
    };
    println!(
        "model {:?}: {} parameters, device {:?}, run directory {}",
        args.model,
        parameter_count(&varmap.all_vars()),
        device,
        args.out.display()
    );

    let cfg = TrainerConfig {
        epochs: args.epochs,
        lr: args.lr,
        optimizer: match args.optimizer {
            OptimizerArg::Adam => OptimizerConfig::adam(),
            OptimizerArg::Adamw => OptimizerConfig::adamw(),
            OptimizerArg::Sgd => OptimizerConfig::sgd_momentum(true),
        },
        schedule: match args.schedule {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Cosine => LrSchedule::Cosine {
                warmup_steps: args.warmup_steps,
                min_lr_ratio: 0.01,
            },
            ScheduleArg::Step => LrSchedule::Step {
                epochs: 1,
                gamma: 0.5,
            },
        },
        grad_clip: args.grad_clip,
        seed: args.seed,
        out_dir: Some(args.out.clone()),
        resume: args.resume,
        progress: match args.progress {
            ProgressArg::Auto => ProgressMode::Auto,
            ProgressArg::Bar => ProgressMode::Bar,
            ProgressArg::Plain => ProgressMode::Plain,
            ProgressArg::Off => ProgressMode::Off,
        },
        quiet: false,
        item_name: "img".into(),
        eval_name: "test".into(),
    };
    let report = Trainer::new(cfg, &varmap)?.fit(model.as_ref(), &train, Some(&test))?;
    // After a resume that had nothing left to do, the history's last line still describes
    // the loaded model; evaluate only when there is no history at all.
    let final_acc = match report.history.last().and_then(|m| m.eval_acc) {
        Some(acc) => acc,
        None => evaluate(model.as_ref(), &test, &CrossEntropy)?
            .accuracy
            .unwrap_or(0.0),
    };
    println!("final test_acc {:.2}%", final_acc * 100.0);
    Ok(())
}
