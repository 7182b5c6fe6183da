//! Short training runs that must learn: a tiny translator on a synthetic "reverse the sentence"
//! task, and a tiny GPT on a slice of Tiny Shakespeare (skipped without ../shared/data), both
//! through the zoo's `Trainer` with the token-level cross-entropy. "Learns" means the
//! held-out loss falls well below its starting value; the translator must also reverse unseen
//! sentences with beam search.

use candle_zoo::candle_core::{DType, Device, Tensor};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::data::{Batch, SpecialIds, TranslationBatches};
use candle_zoo::models::text::{BeamConfig, Gpt, GptConfig, Seq2SeqConfig, Seq2SeqTransformer};
use candle_zoo::nn::TransformerLayerConfig;
use candle_zoo::train::{
    evaluate, BatchModel, LrSchedule, OptimizerConfig, ProgressMode, TokenCrossEntropy, Trainer,
    TrainerConfig,
};

struct Teacher<'a>(&'a Seq2SeqTransformer);

impl BatchModel for Teacher<'_> {
    fn forward_batch(&self, b: &Batch, train: bool) -> candle_zoo::candle_core::Result<Tensor> {
        self.0.forward_t(&b.inputs, &b.extra[0], train)
    }
}

fn trainer_cfg(epochs: usize, lr: f64) -> TrainerConfig {
    TrainerConfig {
        epochs,
        lr,
        optimizer: OptimizerConfig::adam(),
        schedule: LrSchedule::Cosine {
            warmup_steps: 20,
            min_lr_ratio: 0.1,
        },
        grad_clip: Some(1.0),
        seed: 1,
        out_dir: None,
        resume: false,
        progress: ProgressMode::Off,
        quiet: true,
        item_name: "tok".into(),
        eval_name: "val".into(),
    }
}

#[test]
fn a_tiny_translator_learns_to_reverse_sentences() {
    let dev = Device::Cpu;
    let ids = SpecialIds {
        pad: 0,
        bos: 1,
        eos: 2,
    };
    // Words 3..13; the target is the source reversed.
    let pairs = |n: usize, seed: u64| -> Vec<(Vec<u32>, Vec<u32>)> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = 3 + (x >> 60) as usize % 4;
                let s: Vec<u32> = (0..len).map(|i| 3 + ((x >> (8 * i + 3)) % 10) as u32).collect();
                let t: Vec<u32> = s.iter().rev().copied().collect();
                (s, t)
            })
            .collect()
    };
    let train = TranslationBatches::new(pairs(1024, 7), 32, 16, ids, &dev)
        .unwrap()
        .shuffle(3);
    let val = TranslationBatches::new(pairs(128, 99), 64, 16, ids, &dev).unwrap();
    let cfg = Seq2SeqConfig {
        src_vocab_size: 13,
        tgt_vocab_size: 13,
        share_embeddings: true,
        layer: TransformerLayerConfig {
            d_model: 32,
            nhead: 4,
            dim_feedforward: 64,
            dropout: 0.0,
            norm_first: true,
            ..Default::default()
        },
        num_encoder_layers: 1,
        num_decoder_layers: 1,
        max_len: 32,
        ..Default::default()
    };
    let vm = VarMap::new();
    let model = Seq2SeqTransformer::new(
        &cfg,
        candle_zoo::nn::init::seeded_var_builder(&vm, 2, DType::F32, &dev),
    )
    .unwrap();
    let objective = TokenCrossEntropy {
        ignore_index: Some(0),
        label_smoothing: 0.0,
    };
    let before = evaluate(&Teacher(&model), &val, &objective).unwrap().loss;
    Trainer::new(trainer_cfg(20, 3e-3), &vm)
        .unwrap()
        .with_objective(objective)
        .fit(&Teacher(&model), &train, None)
        .unwrap();
    let after = evaluate(&Teacher(&model), &val, &objective).unwrap();
    eprintln!(
        "reverse task: val loss {before:.3} -> {:.3}, token accuracy {:?}",
        after.loss, after.accuracy
    );
    assert!(
        after.loss < before * 0.25,
        "the translator did not learn: {before:.3} -> {:.3}",
        after.loss
    );
    let beam = BeamConfig {
        beam_size: 3,
        length_penalty: 0.6,
        max_len: 10,
    };
    let held_out = pairs(20, 12345);
    let right = held_out
        .iter()
        .filter(|(s, t)| model.beam_search(s, &beam).unwrap() == *t)
        .count();
    assert!(
        right >= 14,
        "beam search reversed only {right}/20 unseen sentences"
    );
}

#[test]
fn a_tiny_gpt_learns_shakespeare_characters() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tinyshakespeare/input.txt");
    if !path.exists() {
        eprintln!(
            "SKIP: {} not found (the shared data folder is absent)",
            path.display()
        );
        return;
    }
    use candle_zoo::data::{read_split_text, tokenize, LmBlocks, LmEvalBlocks};
    let dev = Device::Cpu;
    let (train, val) = read_split_text(&path, 0.9).unwrap();
    let train: String = train.chars().take(60_000).collect();
    let val: String = val.chars().take(8_000).collect();
    let tok = tokenize::char_tokenizer(&train).unwrap();
    let cfg = GptConfig {
        vocab_size: tok.get_vocab_size(true),
        block_size: 32,
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        dropout: 0.0,
        ..Default::default()
    };
    let train_b = LmBlocks::new(tokenize::encode(&tok, &train).unwrap(), 32, 32, 5, &dev)
        .unwrap()
        .with_blocks_per_epoch(1280);
    let val_b = LmEvalBlocks::new(tokenize::encode(&tok, &val).unwrap(), 32, 64, &dev).unwrap();
    let vm = VarMap::new();
    let gpt = Gpt::new(
        &cfg,
        candle_zoo::nn::init::seeded_var_builder(&vm, 4, DType::F32, &dev),
    )
    .unwrap();
    let objective = TokenCrossEntropy::default();
    let before = evaluate(&gpt, &val_b, &objective).unwrap().loss;
    Trainer::new(trainer_cfg(8, 1e-2), &vm)
        .unwrap()
        .with_objective(objective)
        .fit(&gpt, &train_b, None)
        .unwrap();
    let after = evaluate(&gpt, &val_b, &objective).unwrap().loss;
    eprintln!("tiny GPT: val loss {before:.3} -> {after:.3} nats/char");
    assert!(
        after < before - 1.2 && after < 2.9,
        "the GPT did not learn: {before:.3} -> {after:.3}"
    );
}
