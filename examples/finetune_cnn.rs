//! Transfer learning with the MNIST CNN: pretrain `MnistCnn` on MNIST (or load
//! `train_mnist`'s `runs/mnist/model.safetensors`), put a new head on its 64-wide features, and
//! fine-tune on a small labelled slice of Fashion-MNIST, comparing — on the same budget —
//! a frozen backbone (only the head trains), full fine-tuning, and training from scratch.
//! Prints one table; test accuracy is on all 10,000 Fashion-MNIST test images.
//!
//! ```text
//! cargo run --release --example finetune_cnn
//! cargo run --release --example finetune_cnn -- --labelled 1000 --epochs 20 --pretrained runs/mnist/model.safetensors
//! ```
//!
//! Fashion-MNIST: `--fashion-dir`, else `$CANDLE_ZOO_DATA/fashion-mnist`, else
//! `../shared/data/fashion-mnist`, else the hub.

use anyhow::{Context, Result};
use candle_zoo::candle_core::{DType, Device, ModuleT, Tensor};
use candle_zoo::candle_nn::{VarBuilder, VarMap};
use candle_zoo::data::{Dataset, ImageBatcher, ImageSplit, MnistLoader};
use candle_zoo::models::text::pretrained::load_into_varmap;
use candle_zoo::models::vision::{MnistCnn, MnistCnnConfig};
use candle_zoo::models::ClassificationHead;
use candle_zoo::train::optim::named_params;
use candle_zoo::train::{evaluate, LrSchedule, OptimizerConfig, ProgressMode, Trainer, TrainerConfig};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// MnistCnn weights to start from; without it (and without runs/mnist/model.safetensors),
    /// the backbone is pretrained here for `--pretrain-epochs` epochs.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// Epochs of MNIST pretraining when no weights are given.
    #[arg(long, default_value_t = 2)]
    pretrain_epochs: usize,
    /// Labelled Fashion-MNIST training images (the small budget).
    #[arg(long, default_value_t = 1000)]
    labelled: usize,
    /// Epochs over the labelled images, for each of the three runs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Fashion-MNIST folder.
    #[arg(long)]
    fashion_dir: Option<PathBuf>,
    /// Seed (subset choice, head initialization, batch order).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// A backbone's features into a new head; with `frozen`, the backbone is cut from the graph.
struct Transfer<'a> {
    backbone: &'a MnistCnn,
    head: &'a ClassificationHead,
    frozen: bool,
}

impl ModuleT for Transfer<'_> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_zoo::candle_core::Result<Tensor> {
        let f = self.backbone.features(xs)?;
        let f = if self.frozen { f.detach() } else { f };
        self.head.forward_t(&f, train)
    }
}

fn trainer_config(epochs: usize, lr: f64, seed: u64) -> TrainerConfig {
    TrainerConfig {
        epochs,
        lr,
        optimizer: OptimizerConfig::adam(),
        schedule: LrSchedule::Cosine {
            warmup_steps: 0,
            min_lr_ratio: 0.05,
        },
        grad_clip: None,
        seed,
        out_dir: None,
        resume: false,
        progress: ProgressMode::Off,
        quiet: true,
        item_name: "img".into(),
        eval_name: "test".into(),
    }
}

/// `n` images of `split`, chosen at random with `seed`, 10 classes represented as drawn.
fn subset(split: &ImageSplit, n: usize, seed: u64) -> ImageSplit {
    let order = candle_zoo::data::shuffled_order(split.len(), seed, 0);
    let px = split.rows * split.cols;
    let mut images = Vec::with_capacity(n * px);
    let mut labels = Vec::with_capacity(n);
    for &i in order.iter().take(n) {
        images.extend_from_slice(&split.images[i * px..(i + 1) * px]);
        labels.push(split.labels[i]);
    }
    ImageSplit {
        images,
        labels,
        rows: split.rows,
        cols: split.cols,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    candle_zoo::kernels::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let cfg = MnistCnnConfig::default();

    // 1. The pretrained backbone.
    let pre_vm = VarMap::new();
    let pre = MnistCnn::new(
        &cfg,
        candle_zoo::nn::init::seeded_var_builder(&pre_vm, args.seed, DType::F32, &dev),
    )?;
    let default_ckpt = PathBuf::from("runs/mnist/model.safetensors");
    let ckpt = args
        .pretrained
        .clone()
        .or_else(|| default_ckpt.exists().then_some(default_ckpt));
    let pre_note =
        match &ckpt {
            Some(p) => {
                let missing = load_into_varmap(&pre_vm, p)?;
                anyhow::ensure!(missing.is_empty(), "{}: missing {missing:?}", p.display());
                format!("loaded {}", p.display())
            }
            None => {
                let mnist = MnistLoader::new(Dataset::Mnist).load().context("loading MNIST")?;
                let stats = Dataset::Mnist.mean_std();
                let train = ImageBatcher::new(mnist.train, 64, stats, &dev)?.shuffle(args.seed);
                let test = ImageBatcher::new(mnist.test, 1000, stats, &dev)?;
                let t = Instant::now();
                let report = Trainer::new(trainer_config(args.pretrain_epochs, 1e-3, args.seed), &pre_vm)?
                    .fit(&pre, &train, Some(&test))?;
                let acc = report.history.last().and_then(|m| m.eval_acc).unwrap_or(f64::NAN);
                format!(
                    "pretrained here on MNIST: {} epochs, {:.2}% test accuracy, {:.0} s",
                    args.pretrain_epochs,
                    acc * 100.0,
                    t.elapsed().as_secs_f64()
                )
            }
        };
    println!("backbone: {pre_note}");

    // 2. The small labelled budget on Fashion-MNIST.
    let mut loader = MnistLoader::new(Dataset::FashionMnist);
    let dir = match &args.fashion_dir {
        Some(d) => Some(d.clone()),
        None => candle_zoo::data::find_data(
            "fashion-mnist",
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")],
        )
        .ok(),
    };
    if let Some(d) = dir {
        loader = loader.data_dir(d);
    }
    let fashion = loader.load().context("loading Fashion-MNIST")?;
    let stats = Dataset::FashionMnist.mean_std();
    let small = subset(&fashion.train, args.labelled, args.seed);
    let train = ImageBatcher::new(small, 64, stats, &dev)?.shuffle(args.seed);
    let test = ImageBatcher::new(fashion.test, 1000, stats, &dev)?;
    println!(
        "Fashion-MNIST: {} labelled training images, {} test images, {} epochs per run\n",
        args.labelled,
        test_len(&test),
        args.epochs
    );

    // 3. Three runs on the same budget.
    println!("| start | what trains | parameters trained | test accuracy | time |");
    println!("|---|---|---|---|---|");
    for (name, pretrained, frozen, lr) in [
        ("pretrained on MNIST", true, true, 3e-3),
        ("pretrained on MNIST", true, false, 1e-3),
        ("random (from scratch)", false, false, 1e-3),
    ] {
        let vm = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&vm, args.seed + 1, DType::F32, &dev);
        let backbone = MnistCnn::new(&cfg, vb.clone())?;
        if pretrained {
            let tmp = tempfile_path(args.seed);
            pre_vm.save(&tmp)?;
            load_into_varmap(&vm, &tmp)?;
            let _ = std::fs::remove_file(&tmp);
        }
        // The new head replaces fc2: 64 features → 10 Fashion classes.
        let head = ClassificationHead::new(
            cfg.hidden,
            10,
            None,
            0.0,
            VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("new_head"),
        )?;
        let params: Vec<_> = named_params(&vm)?
            .into_iter()
            .filter(|(n, _)| !frozen || n.starts_with("new_head."))
            // fc2 (the old MNIST head) is not part of the model any more.
            .filter(|(n, _)| !n.starts_with("fc2."))
            .collect();
        let count: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
        let model = Transfer {
            backbone: &backbone,
            head: &head,
            frozen,
        };
        let t = Instant::now();
        Trainer::new(trainer_config(args.epochs, lr, args.seed), &vm)?
            .with_params(params)
            .fit(&model, &train, None)?;
        let m = evaluate(&model, &test, &candle_zoo::train::CrossEntropy)?;
        println!(
            "| {name} | {} | {count} | {:.2}% | {:.0} s |",
            if frozen {
                "new head only (backbone frozen)"
            } else {
                "everything"
            },
            m.accuracy.unwrap_or(f64::NAN) * 100.0,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn test_len(b: &ImageBatcher) -> usize {
    use candle_zoo::data::BatchSource;
    b.num_items()
}

/// A scratch file for handing weights from one VarMap to another.
fn tempfile_path(seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!(
        "candle-zoo-finetune-cnn-{}-{seed}.safetensors",
        std::process::id()
    ))
}
