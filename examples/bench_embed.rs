//! Sentence-embedding throughput of all-MiniLM-L6-v2 on the CPU, as
//! `../shared/bench/torch_minilm.py` measures sentence-transformers: the first `--count`
//! sentences of SST-2's test split, `--batch` at a time (length-sorted batches), median of
//! repeats. Prints one JSON line in the PyTorch script's format.
//!
//! ```text
//! cargo run --release --example bench_embed -- --model ../shared/models/all-MiniLM-L6-v2
//! ```

use anyhow::{Context, Result};
use candle_zoo::candle_core::Device;
use candle_zoo::data::hub::HubOptions;
use candle_zoo::models::text::SentenceEncoder;
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Model directory or hub id (the hub cache is used offline when HF_HUB_OFFLINE=1).
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    model: String,
    /// Sentences to embed.
    #[arg(long, default_value_t = 512)]
    count: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    candle_zoo::kernels::allocator::retain_freed_memory();
    let model = if args.model.contains('/') && !PathBuf::from(&args.model).exists() {
        // A hub id: fall back to the shared copy when it is not cached and we are offline.
        let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/all-MiniLM-L6-v2");
        match candle_zoo::models::text::PretrainedFiles::resolve(&args.model, &HubOptions::default()) {
            Ok(_) => args.model.clone(),
            Err(_) if shared.exists() => shared.display().to_string(),
            Err(e) => return Err(e.into()),
        }
    } else {
        args.model.clone()
    };
    let enc = SentenceEncoder::from_pretrained(&model, &HubOptions::default(), &Device::Cpu)?;
    let tsv = candle_zoo::data::find_data(
        "sst2/test.tsv",
        &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")],
    )?;
    let text = std::fs::read_to_string(&tsv).with_context(|| tsv.display().to_string())?;
    let texts: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .take(args.count)
        .collect();
    enc.encode(&texts, args.batch)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..args.reps.max(1) {
        let t = Instant::now();
        enc.encode(&texts, args.batch)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{{\"impl\":\"zoo\",\"batch\":{},\"count\":{},\"sentences_per_s\":{:.1},\"ms_per_batch\":{:.2}}}",
        args.batch,
        texts.len(),
        texts.len() as f64 / med,
        med * 1e3 / texts.len().div_ceil(args.batch) as f64
    );
    Ok(())
}
