//! Pretrains a decoder-only Transformer (GPT) on Tiny Shakespeare, reports the validation loss
//! (nats per token) and samples text with a KV cache.
//!
//! ```text
//! cargo run --release --example pretrain_gpt                                  # char-level, defaults
//! cargo run --release --example pretrain_gpt -- --minutes 5 --n-layer 2       # a quick run
//! cargo run --release --example pretrain_gpt -- --sample-only --prompt "ROMEO:" --temperature 0.8 --top-k 40
//! ```
//! The corpus is split 90/10 (train/validation) as nanoGPT does; the tokenizer (character-level
//! by default, `--tokenizer bpe` for byte-level BPE) is built from the training split only and
//! saved as `tokenizer.json` in the run directory with the model, its config and the curves.

use anyhow::{bail, Context, Result};
use candle_zoo::candle_core::DType;
use candle_zoo::candle_nn::VarMap;
use candle_zoo::data::text_lm::{read_split_text, LmBlocks, LmEvalBlocks};
use candle_zoo::data::tokenize;
use candle_zoo::models::text::{Gpt, GptConfig, PositionKind, SamplingConfig};
use candle_zoo::models::vision::parameter_count;
use candle_zoo::train::optim::OptimizerConfig;
use candle_zoo::train::{evaluate, LrSchedule, ProgressMode, TokenCrossEntropy, Trainer, TrainerConfig};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TokenizerArg {
    Char,
    Bpe,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PositionsArg {
    Learned,
    Rotary,
}

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The corpus (default: tinyshakespeare/input.txt under $CANDLE_ZOO_DATA or ../shared/data).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "char")]
    tokenizer: TokenizerArg,
    /// BPE vocabulary size (with --tokenizer bpe).
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    #[arg(long, default_value_t = 128)]
    block_size: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 4)]
    n_layer: usize,
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    #[arg(long, default_value_t = 256)]
    n_embd: usize,
    /// Dropout (0 keeps attention on the fused kernel; in-kernel dropout is not written yet).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, value_enum, default_value = "learned")]
    positions: PositionsArg,
    /// Training blocks per epoch (an "epoch" is one evaluation interval).
    #[arg(long, default_value_t = 6400)]
    blocks_per_epoch: usize,
    /// Epochs (the cosine schedule decays over all of them; --minutes stops earlier if needed).
    #[arg(long, default_value_t = 9)]
    epochs: usize,
    /// Stop after the first epoch that ends past this many minutes of training.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    #[arg(long, default_value_t = 1.5e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    #[arg(long, default_value_t = 200)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[arg(long, default_value = "runs/gpt")]
    out: PathBuf,
    #[arg(long)]
    resume: bool,
    /// Skip training: load the run directory's model and tokenizer, then sample.
    #[arg(long)]
    sample_only: bool,
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn corpus(args: &Args) -> Result<PathBuf> {
    match &args.data {
        Some(p) => Ok(p.clone()),
        None => Ok(candle_zoo::data::find_data(
            "tinyshakespeare/input.txt",
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")],
        )?),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    candle_zoo::kernels::allocator::retain_freed_memory();
    let device = candle_zoo::device_from_name(&args.device)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let tok_path = args.out.join("tokenizer.json");
    let cfg_path = args.out.join("gpt_config.json");

    let (tokenizer, cfg) = if args.sample_only {
        let tok = tokenize::load(&tok_path)?;
        let cfg: GptConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
        )?;
        (tok, cfg)
    } else {
        let path = corpus(&args)?;
        let (train_text, val_text) = read_split_text(&path, 0.9)?;
        let tok = match args.tokenizer {
            TokenizerArg::Char => tokenize::char_tokenizer(&train_text)?,
            TokenizerArg::Bpe => {
                let train_file = args.out.join("train_split.txt");
                std::fs::write(&train_file, &train_text)?;
                tokenize::train_bpe(&[&train_file], args.vocab_size, &["<|endoftext|>"])?
            }
        };
        tokenize::save(&tok, &tok_path)?;
        let cfg = GptConfig {
            vocab_size: tok.get_vocab_size(true),
            block_size: args.block_size,
            n_layer: args.n_layer,
            n_head: args.n_head,
            n_embd: args.n_embd,
            dropout: args.dropout,
            positions: match args.positions {
                PositionsArg::Learned => PositionKind::Learned,
                PositionsArg::Rotary => PositionKind::Rotary,
            },
            ..Default::default()
        };
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
        let train_ids = tokenize::encode(&tok, &train_text)?;
        let val_ids = tokenize::encode(&tok, &val_text)?;
        println!(
            "{}: {} train / {} validation tokens, vocabulary {}",
            path.display(),
            train_ids.len(),
            val_ids.len(),
            cfg.vocab_size
        );
        let train = LmBlocks::new(train_ids, cfg.block_size, args.batch_size, args.seed, &device)?
            .with_blocks_per_epoch(args.blocks_per_epoch);
        let val = LmEvalBlocks::new(val_ids, cfg.block_size, 64, &device)?;

        let varmap = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, args.seed, DType::F32, &device);
        let gpt = Gpt::new(&cfg, vb)?;
        println!(
            "GPT: {} layers, {} heads, width {}, context {}, {} parameters, run directory {}",
            cfg.n_layer,
            cfg.n_head,
            cfg.n_embd,
            cfg.block_size,
            parameter_count(&varmap.all_vars()),
            args.out.display()
        );
        let tcfg = TrainerConfig {
            epochs: args.epochs,
            lr: args.lr,
            optimizer: match OptimizerConfig::adamw() {
                OptimizerConfig::AdamW(mut c) => {
                    c.weight_decay = args.weight_decay;
                    c.beta2 = 0.99;
                    OptimizerConfig::AdamW(c)
                }
                other => other,
            },
            schedule: LrSchedule::Cosine {
                warmup_steps: args.warmup_steps,
                min_lr_ratio: 0.1,
            },
            grad_clip: Some(args.grad_clip),
            seed: args.seed,
            out_dir: Some(args.out.clone()),
            resume: args.resume,
            progress: ProgressMode::Auto,
            quiet: false,
            item_name: "tok".into(),
            eval_name: "val".into(),
        };
        let started = Instant::now();
        let objective = TokenCrossEntropy::default();
        let report = Trainer::new(tcfg, &varmap)?
            .with_objective(objective)
            .with_time_budget(args.minutes)
            .fit(&gpt, &train, Some(&val))?;
        let val_loss = match report.history.last().and_then(|m| m.eval_loss) {
            Some(l) => l,
            None => evaluate(&gpt, &val, &objective)?.loss,
        };
        println!(
            "final val_loss {val_loss:.4} nats/token (perplexity {:.2}) after {:.1} minutes",
            val_loss.exp(),
            started.elapsed().as_secs_f64() / 60.0
        );
        (tok, cfg)
    };

    // Sample from the latest weights of the run directory.
    let varmap = VarMap::new();
    let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &device);
    let gpt = Gpt::new(&cfg, vb)?;
    let model_path = args.out.join("model.safetensors");
    if !model_path.exists() {
        bail!(
            "{} not found: train first (without --sample-only)",
            model_path.display()
        );
    }
    candle_zoo::train::checkpoint::load_varmap(&varmap, &model_path)?;
    let prompt = tokenize::encode(&tokenizer, &args.prompt)?;
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let t0 = Instant::now();
    let ids = gpt.generate(&prompt, args.max_new_tokens, &sampling)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "--- sample ({} tokens, {:.0} tokens/s) ---",
        ids.len(),
        ids.len() as f64 / secs
    );
    println!("{}{}", args.prompt, tokenize::decode(&tokenizer, &ids)?);
    Ok(())
}
