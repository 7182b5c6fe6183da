//! Fine-tunes a pretrained BERT (default: sentence-transformers/all-MiniLM-L6-v2) with a
//! classification head on SST-2 or TREC, and reports test accuracy; `--predict` classifies text
//! with a saved fine-tuned model.
//!
//! ```text
//! cargo run --release --example finetune_classifier -- --dataset sst2
//! cargo run --release --example finetune_classifier -- --dataset trec --strategy last-k --k 2
//! cargo run --release --example finetune_classifier -- --dataset sst2 --strategy head   # frozen backbone
//! cargo run --release --example finetune_classifier -- --dataset sst2 --predict "a gorgeous, witty film"
//! ```
//!
//! Data: `../shared/data/{sst2,trec}` (or `--data`, or `$CANDLE_ZOO_DATA`). Model: a directory or
//! a hub id (hf-hub cache first; offline with `HF_HUB_OFFLINE=1`); the shared copy
//! `../shared/models/all-MiniLM-L6-v2` is used when the hub has nothing. The run directory gets
//! `model.safetensors` (Hugging Face names: `bert.*`, `classifier.*`), `config.json` (the BERT
//! config plus `num_labels`, `id2label`, `classifier_input`) and `tokenizer.json`.

use anyhow::{bail, Context, Result};
use candle_zoo::candle_core::{DType, Device, Tensor, D};
use candle_zoo::candle_nn::{VarBuilder, VarMap};
use candle_zoo::data::hub::HubOptions;
use candle_zoo::data::{read_labelled_tsv, Batch, BatchSource, ClassificationBatches};
use candle_zoo::models::text::pretrained::load_into_varmap;
use candle_zoo::models::text::{
    layer_lr_scale, BertConfig, BertForSequenceClassification, ClassifierInput, FineTuneStrategy,
    PretrainedFiles, ProblemType,
};
use candle_zoo::nn::lora::save_adapters;
use candle_zoo::nn::LoraConfig;
use candle_zoo::train::optim::named_params;
use candle_zoo::train::{BatchModel, LrSchedule, OptimizerConfig, ProgressMode, Trainer, TrainerConfig};
use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::Tokenizer;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DatasetArg {
    Sst2,
    Trec,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum StrategyArg {
    /// Train the classifier only (frozen backbone).
    Head,
    /// Train the classifier and the last `--k` encoder layers.
    LastK,
    /// Train everything.
    Full,
    /// LoRA adapters (`--lora-r`, `--lora-alpha`, on query and value) and the classifier.
    Lora,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum InputArg {
    /// Mean of the token states (sentence-transformers models).
    Mean,
    /// BERT's pooler on [CLS] (Hugging Face's default).
    Pooler,
}

#[derive(Parser, Debug)]
struct Args {
    /// Data set.
    #[arg(long, value_enum, default_value = "sst2")]
    dataset: DatasetArg,
    /// What trains.
    #[arg(long, value_enum, default_value = "full")]
    strategy: StrategyArg,
    /// Layers trained by `--strategy last-k`.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// Discriminative learning rates: encoder layer i trains at lr · decay^(layers − i), the
    /// embeddings at lr · decay^(layers + 1), the head at lr (1 = one rate for all).
    #[arg(long, default_value_t = 1.0)]
    layer_decay: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// What the classifier reads.
    #[arg(long, value_enum, default_value = "mean")]
    input: InputArg,
    /// Model directory or hub id.
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    model: String,
    /// Folder holding `sst2/` and `trec/` (default: $CANDLE_ZOO_DATA, then ../shared/data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Peak learning rate (default: 1e-4, or 2e-3 for `--strategy head`).
    #[arg(long)]
    lr: Option<f64>,
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sentence (longer ones are truncated, keeping [SEP]).
    #[arg(long, default_value_t = 64)]
    max_len: usize,
    /// Stop after the first epoch that ends past this many minutes of training.
    #[arg(long, default_value_t = 25.0)]
    minutes: f64,
    /// Random seed (head initialization, batch order, dropout is per call).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run directory (default runs/finetune-<dataset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Classify these texts with the model saved in the run directory, instead of training.
    #[arg(long)]
    predict: Vec<String>,
}

/// Label names of the two data sets (TREC's coarse classes, as in its README).
fn label_names(d: DatasetArg) -> Vec<&'static str> {
    match d {
        DatasetArg::Sst2 => vec!["negative", "positive"],
        DatasetArg::Trec => vec!["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"],
    }
}

/// The classifier as the Trainer sees it: token ids in `inputs`, the mask in `extra[0]`.
struct Classifier<'a>(&'a BertForSequenceClassification);

impl BatchModel for Classifier<'_> {
    fn forward_batch(&self, batch: &Batch, train: bool) -> candle_zoo::candle_core::Result<Tensor> {
        let Some(mask) = batch.extra.first() else {
            candle_zoo::candle_core::bail!("classification batch without an attention mask")
        };
        self.0.forward(&batch.inputs, mask, train)
    }
}

fn model_files(model: &str) -> Result<PretrainedFiles> {
    match PretrainedFiles::resolve(model, &HubOptions::default()) {
        Ok(f) => Ok(f),
        Err(e) => {
            let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/all-MiniLM-L6-v2");
            if model == "sentence-transformers/all-MiniLM-L6-v2" && shared.is_dir() {
                eprintln!(
                    "{model} is not in the hub cache ({e}); using {}",
                    shared.display()
                );
                Ok(PretrainedFiles::resolve(
                    &shared.display().to_string(),
                    &HubOptions::default(),
                )?)
            } else {
                Err(e.into())
            }
        }
    }
}

fn tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer> {
    let mut tok = candle_zoo::data::tokenize::load(path)?;
    candle_zoo::data::tokenize::set_batch_lengths(&mut tok, false, max_len)?;
    Ok(tok)
}

fn encode(tok: &Tokenizer, rows: &[(String, u32)]) -> Result<Vec<(Vec<u32>, u32)>> {
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    let enc = tok
        .encode_batch(texts, true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(enc
        .iter()
        .zip(rows)
        .map(|(e, (_, y))| (e.get_ids().to_vec(), *y))
        .collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    candle_zoo::kernels::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/finetune-{:?}", args.dataset).to_lowercase()));
    if !args.predict.is_empty() {
        return predict(&out, &args.predict, &dev);
    }
    let names = label_names(args.dataset);
    let data = match &args.data {
        Some(d) => d.clone(),
        None => candle_zoo::data::find_data(
            "sst2",
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")],
        )?
        .parent()
        .context("data folder")?
        .to_path_buf(),
    };
    let dir = data.join(format!("{:?}", args.dataset).to_lowercase());
    let train_rows = read_labelled_tsv(&dir.join("train.tsv"), 1)?;
    let test_rows = read_labelled_tsv(&dir.join("test.tsv"), 1)?;
    if let Some((_, y)) = train_rows
        .iter()
        .chain(&test_rows)
        .find(|(_, y)| *y as usize >= names.len())
    {
        bail!(
            "{}: label {y} is outside the {} classes",
            dir.display(),
            names.len()
        );
    }

    let files = model_files(&args.model)?;
    let cfg = BertConfig::from_json(&std::fs::read_to_string(&files.config)?)?;
    let tok_path = files
        .tokenizer
        .clone()
        .context("the model has no tokenizer.json")?;
    let tok = tokenizer(&tok_path, args.max_len.min(cfg.max_position_embeddings))?;
    let train = ClassificationBatches::new(
        encode(&tok, &train_rows)?,
        args.batch_size,
        args.max_len,
        cfg.pad_token_id,
        &dev,
    )?
    .shuffle(args.seed);
    let test = ClassificationBatches::new(
        encode(&tok, &test_rows)?,
        128,
        args.max_len,
        cfg.pad_token_id,
        &dev,
    )?;

    let strategy = match args.strategy {
        StrategyArg::Head => FineTuneStrategy::Head,
        StrategyArg::LastK => FineTuneStrategy::LastK(args.k),
        StrategyArg::Full => FineTuneStrategy::Full,
        StrategyArg::Lora => FineTuneStrategy::Lora,
    };
    let lora_cfg = LoraConfig {
        r: args.lora_r,
        alpha: args.lora_alpha,
        dropout: 0.1,
        target_modules: vec!["query".into(), "value".into()],
    };
    let input = match args.input {
        InputArg::Mean => ClassifierInput::MeanPooling,
        InputArg::Pooler => ClassifierInput::Pooler,
    };
    let vm = VarMap::new();
    let vb = candle_zoo::nn::init::seeded_var_builder(&vm, args.seed, DType::F32, &dev);
    let adapters = VarMap::new();
    let lora = (strategy == FineTuneStrategy::Lora)
        .then(|| (&lora_cfg, VarBuilder::from_varmap(&adapters, DType::F32, &dev)));
    let mut model = BertForSequenceClassification::new_with_lora(
        &cfg,
        names.len(),
        ProblemType::SingleLabelClassification,
        input,
        vb,
        lora,
    )?;
    let missing = load_into_varmap(&vm, &files.weights)?;
    if let Some(m) = missing.iter().find(|n| !n.starts_with("classifier.")) {
        bail!("{}: the pretrained weights have no {m}", files.weights.display());
    }
    model.set_strategy(strategy);
    let layers = cfg.num_hidden_layers;
    let mut params: Vec<_> = named_params(&vm)?
        .into_iter()
        .filter(|(n, _)| strategy.trains(n, layers))
        .collect();
    params.extend(named_params(&adapters)?);
    let trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let total: usize = vm
        .all_vars()
        .iter()
        .chain(&adapters.all_vars())
        .map(|v| v.elem_count())
        .sum();
    println!(
        "{:?}: {} train / {} test sentences, {} classes; {} ({} layers, hidden {}), strategy {strategy:?}: {trainable} of {total} parameters train",
        args.dataset,
        train_rows.len(),
        test_rows.len(),
        names.len(),
        files.weights.display(),
        layers,
        cfg.hidden_size
    );
    let lr = args.lr.unwrap_or(match strategy {
        FineTuneStrategy::Head => 2e-3,
        FineTuneStrategy::Lora => 1e-3,
        _ => 1e-4,
    });
    let steps = train.num_batches() * args.epochs;
    let tcfg = TrainerConfig {
        epochs: args.epochs,
        lr,
        optimizer: OptimizerConfig::adamw(),
        schedule: LrSchedule::Cosine {
            warmup_steps: steps / 10,
            min_lr_ratio: 0.0,
        },
        grad_clip: Some(1.0),
        seed: args.seed,
        out_dir: Some(out.clone()),
        resume: false,
        progress: ProgressMode::Auto,
        quiet: false,
        item_name: "sent".into(),
        eval_name: "test".into(),
    };
    let started = Instant::now();
    let layer_decay = args.layer_decay;
    let report = Trainer::new(tcfg, &vm)?
        .with_params(params)
        .with_lr_scales(move |name| layer_lr_scale(name, layers, layer_decay))
        .with_time_budget(args.minutes)
        .fit(&Classifier(&model), &train, Some(&test))?;
    let acc = report.history.last().and_then(|m| m.eval_acc).unwrap_or(f64::NAN);
    // What `--predict` (and any BERT loader) needs beside the weights the Trainer saved.
    let mut config = serde_json::to_value(&cfg)?;
    config["num_labels"] = names.len().into();
    config["id2label"] = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), (*n).into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    config["classifier_input"] = serde_json::to_value(input)?;
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    if strategy == FineTuneStrategy::Lora {
        // The adapters alone (PEFT names), beside the base weights the Trainer saved.
        save_adapters(&adapters, &lora_cfg, &out.join("adapter"))?;
        config["lora"] = serde_json::to_value(&lora_cfg)?;
    }
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    std::fs::copy(&tok_path, out.join("tokenizer.json"))?;
    println!(
        "final test_acc {:.2}% ({:?}, strategy {strategy:?}, {:.1} minutes); saved to {}",
        acc * 100.0,
        args.dataset,
        started.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
    Ok(())
}

/// Loads a run directory written above and prints the most likely label of each text.
fn predict(dir: &Path, texts: &[String], dev: &Device) -> Result<()> {
    let cfg_path = dir.join("config.json");
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: train a model first", cfg_path.display()))?,
    )?;
    let (model, files) = BertForSequenceClassification::from_pretrained(
        dir.to_str().context("run directory path is not UTF-8")?,
        &HubOptions::default(),
        dev,
    )?;
    let tok_path = files
        .tokenizer
        .context("the run directory has no tokenizer.json")?;
    let tok = tokenizer(&tok_path, model.bert().config().max_position_embeddings)?;
    for text in texts {
        let enc = tok
            .encode(text.as_str(), true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ids = Tensor::new(enc.get_ids(), dev)?.unsqueeze(0)?;
        let mask = Tensor::new(enc.get_attention_mask(), dev)?.unsqueeze(0)?;
        let probs = candle_zoo::candle_nn::ops::softmax(&model.forward(&ids, &mask, false)?, D::Minus1)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let label = raw["id2label"][best.to_string()].as_str().unwrap_or("?");
        println!("{label} ({:.1}%)  {text}", probs[best] * 100.0);
    }
    Ok(())
}
