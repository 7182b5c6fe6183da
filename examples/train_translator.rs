//! Trains an encoder-decoder Transformer on Multi30k English→German, reports BLEU on the test
//! set (sacrebleu-compatible corpus BLEU-4), and translates sentences given on the command line.
//!
//! ```text
//! cargo run --release --example train_translator                          # ~22 min on 2 cores: BLEU ~31.6
//! cargo run --release --example train_translator -- --minutes 10 --epochs 3
//! cargo run --release --example train_translator -- --translate-only "A man is riding a bike." --beam 4
//! ```
//! A joint byte-level BPE tokenizer is trained on the training split (both languages) and saved
//! as `tokenizer.json` in the run directory with the model (`model.safetensors`), its config,
//! `metrics.jsonl` and `curves.svg`; `--resume` continues an interrupted run.

use anyhow::{bail, Context, Result};
use candle_zoo::candle_core::{DType, Tensor};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::data::multi30k::{read_multi30k, Multi30kSplit};
use candle_zoo::data::tokenize;
use candle_zoo::data::{Batch, SpecialIds, TranslationBatches};
use candle_zoo::models::text::{BeamConfig, Seq2SeqConfig, Seq2SeqTransformer};
use candle_zoo::models::vision::parameter_count;
use candle_zoo::nn::TransformerLayerConfig;
use candle_zoo::train::optim::OptimizerConfig;
use candle_zoo::train::{
    corpus_bleu, BatchModel, LrSchedule, ProgressMode, TokenCrossEntropy, Trainer, TrainerConfig,
};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Folder with Multi30k's .gz files (default: multi30k under $CANDLE_ZOO_DATA or ../shared/data).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 8000)]
    vocab_size: usize,
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    #[arg(long, default_value_t = 8)]
    nhead: usize,
    #[arg(long, default_value_t = 3)]
    layers: usize,
    #[arg(long, default_value_t = 1024)]
    dim_feedforward: usize,
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    #[arg(long, default_value_t = 0.1)]
    label_smoothing: f32,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Epochs (the cosine schedule decays over all of them). 3 epochs: BLEU 31.65 on the test
    /// set after 20 minutes of training on a 2-core CPU (docs/benchmarks.md).
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Stop after the first epoch that ends past this many minutes of training.
    #[arg(long, default_value_t = 55.0)]
    minutes: f64,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 400)]
    warmup_steps: usize,
    #[arg(long, default_value_t = 4)]
    beam: usize,
    #[arg(long, default_value_t = 0.6)]
    length_penalty: f64,
    /// Score only the first N test sentences (all 1000 by default).
    #[arg(long)]
    test_limit: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value = "runs/translator")]
    out: PathBuf,
    #[arg(long)]
    resume: bool,
    /// Skip training: load the run directory and translate these English sentences.
    #[arg(long, num_args = 1..)]
    translate_only: Vec<String>,
    /// Sentences to translate after training.
    #[arg(long, num_args = 1..)]
    translate: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The translator as the trainer sees it: source ids in `batch.inputs`, decoder input in
/// `batch.extra[0]`.
struct Teacher<'a>(&'a Seq2SeqTransformer);

impl BatchModel for Teacher<'_> {
    fn forward_batch(&self, batch: &Batch, train: bool) -> candle_zoo::candle_core::Result<Tensor> {
        let Some(tgt_in) = batch.extra.first() else {
            candle_zoo::candle_core::bail!("translation batch without a decoder input")
        };
        self.0.forward_t(&batch.inputs, tgt_in, train)
    }
}

fn data_dir(args: &Args) -> Result<PathBuf> {
    match &args.data {
        Some(p) => Ok(p.clone()),
        None => Ok(candle_zoo::data::find_data(
            "multi30k",
            &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")],
        )?),
    }
}

const SPECIAL: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<unk>"];

fn translate(
    model: &Seq2SeqTransformer,
    tok: &tokenize::HfTokenizer,
    text: &str,
    beam: &BeamConfig,
) -> Result<String> {
    let ids = tokenize::encode(tok, text)?;
    let out = model.beam_search(&ids, beam)?;
    Ok(tokenize::decode(tok, &out)?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    candle_zoo::kernels::allocator::retain_freed_memory();
    let device = candle_zoo::device_from_name(&args.device)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let (tok_path, cfg_path) = (
        args.out.join("tokenizer.json"),
        args.out.join("seq2seq_config.json"),
    );
    let beam = BeamConfig {
        beam_size: args.beam,
        length_penalty: args.length_penalty,
        max_len: 80,
    };
    let load_model = |cfg: &Seq2SeqConfig| -> Result<Seq2SeqTransformer> {
        let vm = VarMap::new();
        let model = Seq2SeqTransformer::new(
            cfg,
            candle_zoo::nn::init::seeded_var_builder(&vm, 0, DType::F32, &device),
        )?;
        let path = args.out.join("model.safetensors");
        if !path.exists() {
            bail!("{} not found: train first", path.display());
        }
        candle_zoo::train::checkpoint::load_varmap(&vm, &path)?;
        Ok(model)
    };
    if !args.translate_only.is_empty() {
        let tok = tokenize::load(&tok_path)?;
        let cfg: Seq2SeqConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
        )?;
        let model = load_model(&cfg)?;
        for s in &args.translate_only {
            println!("{s}\n  -> {}", translate(&model, &tok, s, &beam)?);
        }
        return Ok(());
    }

    let dir = data_dir(&args)?;
    let train = read_multi30k(&dir, Multi30kSplit::Train, "en", "de")?;
    let val = read_multi30k(&dir, Multi30kSplit::Val, "en", "de")?;
    let test = read_multi30k(&dir, Multi30kSplit::Test2016, "en", "de")?;
    println!(
        "Multi30k en-de: {} train / {} val / {} test pairs ({})",
        train.len(),
        val.len(),
        test.len(),
        dir.display()
    );
    let tok = if args.resume && tok_path.exists() {
        tokenize::load(&tok_path)?
    } else {
        let joint = args.out.join("train.en-de.txt");
        std::fs::write(
            &joint,
            format!("{}\n{}\n", train.src.join("\n"), train.tgt.join("\n")),
        )?;
        let t = tokenize::train_bpe(&[&joint], args.vocab_size, &SPECIAL)?;
        tokenize::save(&t, &tok_path)?;
        t
    };
    let id = |s: &str| {
        tok.token_to_id(s)
            .with_context(|| format!("{s} missing from the tokenizer"))
    };
    let ids = SpecialIds {
        pad: id("<pad>")?,
        bos: id("<bos>")?,
        eos: id("<eos>")?,
    };
    let encode_pairs = |c: &candle_zoo::data::ParallelCorpus| -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        c.src
            .iter()
            .zip(&c.tgt)
            .map(|(s, t)| Ok((tokenize::encode(&tok, s)?, tokenize::encode(&tok, t)?)))
            .collect()
    };
    let cfg = Seq2SeqConfig {
        src_vocab_size: tok.get_vocab_size(true),
        tgt_vocab_size: tok.get_vocab_size(true),
        share_embeddings: true,
        tie_generator: true,
        layer: TransformerLayerConfig {
            d_model: args.d_model,
            nhead: args.nhead,
            dim_feedforward: args.dim_feedforward,
            dropout: args.dropout,
            norm_first: true,
            ..Default::default()
        },
        num_encoder_layers: args.layers,
        num_decoder_layers: args.layers,
        max_len: 128,
        pad_id: ids.pad,
        bos_id: ids.bos,
        eos_id: ids.eos,
    };
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
    let train_b = TranslationBatches::new(encode_pairs(&train)?, args.batch_size, 100, ids, &device)?
        .shuffle(args.seed);
    let val_b = TranslationBatches::new(encode_pairs(&val)?, 128, 100, ids, &device)?;
    let vm = VarMap::new();
    let model = Seq2SeqTransformer::new(
        &cfg,
        candle_zoo::nn::init::seeded_var_builder(&vm, args.seed, DType::F32, &device),
    )?;
    println!(
        "Transformer {}+{} layers, d_model {}, {} heads, vocabulary {} (joint BPE), {} parameters",
        args.layers,
        args.layers,
        args.d_model,
        args.nhead,
        cfg.src_vocab_size,
        parameter_count(&vm.all_vars())
    );
    let tcfg = TrainerConfig {
        epochs: args.epochs,
        lr: args.lr,
        optimizer: match OptimizerConfig::adamw() {
            OptimizerConfig::AdamW(mut c) => {
                c.beta2 = 0.98;
                c.eps = 1e-9;
                OptimizerConfig::AdamW(c)
            }
            other => other,
        },
        schedule: LrSchedule::Cosine {
            warmup_steps: args.warmup_steps,
            min_lr_ratio: 0.05,
        },
        grad_clip: Some(1.0),
        seed: args.seed,
        out_dir: Some(args.out.clone()),
        resume: args.resume,
        progress: ProgressMode::Auto,
        quiet: false,
        item_name: "tok".into(),
        eval_name: "val".into(),
    };
    let objective = TokenCrossEntropy {
        ignore_index: Some(ids.pad),
        label_smoothing: args.label_smoothing,
    };
    let started = Instant::now();
    Trainer::new(tcfg, &vm)?
        .with_objective(objective)
        .with_time_budget(args.minutes)
        .fit(&Teacher(&model), &train_b, Some(&val_b))?;
    let train_min = started.elapsed().as_secs_f64() / 60.0;

    let n = args.test_limit.unwrap_or(test.len()).min(test.len());
    let t0 = Instant::now();
    let hyps: Vec<String> = test.src[..n]
        .iter()
        .map(|s| translate(&model, &tok, s, &beam))
        .collect::<Result<_>>()?;
    let bleu = corpus_bleu(&hyps, &test.tgt[..n]);
    println!(
        "test BLEU {:.2} on {n} sentences (beam {}, {:.0} s to translate) after {train_min:.1} minutes of training\n{bleu}",
        bleu.score,
        args.beam,
        t0.elapsed().as_secs_f64()
    );
    for (s, h) in test.src.iter().zip(&hyps).take(3) {
        println!("  {s}\n  -> {h}");
    }
    for s in &args.translate {
        println!("{s}\n  -> {}", translate(&model, &tok, s, &beam)?);
    }
    Ok(())
}
