//! Fine-tuning mechanics on a small random BERT (no files needed): what each strategy trains,
//! frozen parameters bit-identical after optimizer steps while trained ones move, the three
//! problem types' losses, save → reload giving identical logits, and a short run that learns.

mod common;

use candle_zoo::candle_core::{DType, Device, Tensor};
use candle_zoo::candle_nn::{VarBuilder, VarMap};
use candle_zoo::models::text::pretrained::load_into_varmap;
use candle_zoo::models::text::{
    BertConfig, BertForSequenceClassification, ClassifierInput, FineTuneStrategy, ProblemType,
};
use candle_zoo::train::optim::named_params;
use candle_zoo::train::OptimizerConfig;
use common::max_abs_diff;

fn tiny() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 32,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 16,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..Default::default()
    }
}

fn model(
    vm: &VarMap,
    input: ClassifierInput,
    problem: ProblemType,
    labels: usize,
) -> BertForSequenceClassification {
    let vb = candle_zoo::nn::init::seeded_var_builder(vm, 3, DType::F32, &Device::Cpu);
    BertForSequenceClassification::new(&tiny(), labels, problem, input, vb).expect("model")
}

/// Two classes told apart by their first token; right-padded batch.
fn batch() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids: Vec<u32> = vec![
        1, 5, 6, 2, 0, 0, 3, 7, 2, 0, 0, 0, 1, 8, 9, 10, 2, 0, 3, 5, 6, 7, 8, 2,
    ];
    let mask: Vec<u32> = ids.iter().map(|&t| (t != 0) as u32).collect();
    (
        Tensor::from_vec(ids, (4, 6), &dev).unwrap(),
        Tensor::from_vec(mask, (4, 6), &dev).unwrap(),
        Tensor::new(&[0u32, 1, 0, 1], &dev).unwrap(),
    )
}

fn snapshot(vm: &VarMap) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> = named_params(vm)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn strategies_train_exactly_their_parameters_and_frozen_ones_stay_bit_identical() {
    for strategy in [
        FineTuneStrategy::Head,
        FineTuneStrategy::LastK(1),
        FineTuneStrategy::Full,
    ] {
        let vm = VarMap::new();
        let mut m = model(
            &vm,
            ClassifierInput::Pooler,
            ProblemType::SingleLabelClassification,
            2,
        );
        m.set_strategy(strategy);
        let params: Vec<_> = named_params(&vm)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| strategy.trains(n, 3))
            .collect();
        let mut opt = OptimizerConfig::adamw().build(params).unwrap();
        let before = snapshot(&vm);
        let (ids, mask, y) = batch();
        for _ in 0..3 {
            let loss = m.loss(&m.forward(&ids, &mask, true).unwrap(), &y).unwrap();
            opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
        }
        for ((name, a), (_, b)) in before.iter().zip(&snapshot(&vm)) {
            let trains = strategy.trains(name, 3);
            if trains {
                assert_ne!(a, b, "{strategy:?}: {name} should have moved");
            } else {
                assert_eq!(a, b, "{strategy:?}: frozen {name} changed");
            }
        }
    }
    let s = FineTuneStrategy::LastK(1);
    assert!(!s.trains("bert.embeddings.word_embeddings.weight", 3));
    assert!(!s.trains("bert.encoder.layer.1.output.dense.weight", 3));
    assert!(s.trains("bert.encoder.layer.2.output.dense.weight", 3));
    assert!(s.trains("classifier.weight", 3));
}

#[test]
fn problem_types_save_reload_and_a_short_run_learns() {
    let dev = Device::Cpu;
    let (ids, mask, y) = batch();
    // Multi-label and regression losses have the right form.
    let vm = VarMap::new();
    let m = model(
        &vm,
        ClassifierInput::MeanPooling,
        ProblemType::MultiLabelClassification,
        3,
    );
    let logits = m.forward(&ids, &mask, false).unwrap();
    let targets = Tensor::new(&[[1f32, 0., 1.], [0., 0., 1.], [1., 1., 0.], [0., 1., 0.]], &dev).unwrap();
    let bce = m.loss(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
    let p = candle_zoo::candle_nn::ops::sigmoid(&logits).unwrap();
    let want = ((&targets * p.log().unwrap()).unwrap()
        + ((1.0 - &targets).unwrap() * (1.0 - &p).unwrap().log().unwrap()).unwrap())
    .unwrap()
    .mean_all()
    .unwrap()
    .to_scalar::<f32>()
    .unwrap();
    assert!((bce + want).abs() < 1e-5, "bce {bce} vs {}", -want);
    let vm = VarMap::new();
    let r = model(&vm, ClassifierInput::MeanPooling, ProblemType::Regression, 1);
    let out = r.forward(&ids, &mask, false).unwrap();
    let t = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &dev).unwrap();
    let mse = r.loss(&out, &t).unwrap().to_scalar::<f32>().unwrap();
    let want = (out.squeeze(1).unwrap() - &t)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((mse - want).abs() < 1e-6);

    // Single-label: a few steps learn the toy batch; save, reload, identical logits.
    let vm = VarMap::new();
    let mut m = model(
        &vm,
        ClassifierInput::Pooler,
        ProblemType::SingleLabelClassification,
        2,
    );
    m.set_strategy(FineTuneStrategy::Full);
    let mut opt = OptimizerConfig::adamw()
        .build(named_params(&vm).unwrap())
        .unwrap();
    let first = m
        .loss(&m.forward(&ids, &mask, true).unwrap(), &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for _ in 0..30 {
        let loss = m.loss(&m.forward(&ids, &mask, true).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap(), 3e-3).unwrap();
    }
    let last = m
        .loss(&m.forward(&ids, &mask, false).unwrap(), &y)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(last < first * 0.2, "loss {first} -> {last}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    vm.save(&path).unwrap();
    // Through a memory-mapped VarBuilder (as `--predict` loads) ...
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev) }.unwrap();
    let reloaded = BertForSequenceClassification::new(
        &tiny(),
        2,
        ProblemType::SingleLabelClassification,
        ClassifierInput::Pooler,
        vb,
    )
    .unwrap();
    let a = m.forward(&ids, &mask, false).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(
        a,
        reloaded
            .forward(&ids, &mask, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    );
    // ... and into a fresh VarMap (as fine-tuning starts from a checkpoint): nothing missing.
    let vm2 = VarMap::new();
    let m2 = model(
        &vm2,
        ClassifierInput::Pooler,
        ProblemType::SingleLabelClassification,
        2,
    );
    assert!(load_into_varmap(&vm2, &path).unwrap().is_empty());
    assert_eq!(
        a,
        m2.forward(&ids, &mask, false).unwrap().to_vec2::<f32>().unwrap()
    );
}

/// LoRA on BERT: adapters start as a no-op, only adapters (and the head) train, the merged model
/// equals the unmerged one, and adapters saved alone reload to the same logits.
#[test]
fn lora_trains_adapters_only_and_merges_exactly() {
    use candle_zoo::nn::lora::{load_adapters, save_adapters};
    use candle_zoo::nn::LoraConfig;
    let dev = Device::Cpu;
    let (ids, mask, y) = batch();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["query".into(), "value".into()],
    };
    let base_vm = VarMap::new();
    let plain = model(
        &base_vm,
        ClassifierInput::Pooler,
        ProblemType::SingleLabelClassification,
        2,
    );
    let build = |adapters: &VarMap| {
        let vb = candle_zoo::nn::init::seeded_var_builder(&base_vm, 3, DType::F32, &dev);
        let avb = VarBuilder::from_varmap(adapters, DType::F32, &dev);
        BertForSequenceClassification::new_with_lora(
            &tiny(),
            2,
            ProblemType::SingleLabelClassification,
            ClassifierInput::Pooler,
            vb,
            Some((&cfg, avb)),
        )
        .unwrap()
    };
    let adapters = VarMap::new();
    let mut m = build(&adapters);
    // PEFT's names, on query and value only: 3 layers × 2 modules × (A, B).
    let names: Vec<String> = adapters.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 12);
    assert!(names.contains(&"bert.encoder.layer.0.attention.self.query.lora_A.weight".to_string()));
    let before = plain
        .forward(&ids, &mask, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(
        m.forward(&ids, &mask, false).unwrap().to_vec2::<f32>().unwrap(),
        before
    );

    m.set_strategy(FineTuneStrategy::Lora);
    let mut params = named_params(&adapters).unwrap();
    params.extend(
        named_params(&base_vm)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| FineTuneStrategy::Lora.trains(n, 3)),
    );
    let base_before = snapshot(&base_vm);
    let mut opt = OptimizerConfig::adamw().build(params).unwrap();
    for _ in 0..5 {
        let loss = m.loss(&m.forward(&ids, &mask, true).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
    }
    for ((name, a), (_, b)) in base_before.iter().zip(&snapshot(&base_vm)) {
        if name.starts_with("bert.") && !name.starts_with("bert.pooler") {
            assert_eq!(a, b, "frozen {name} changed under LoRA");
        }
    }
    let after = m.forward(&ids, &mask, false).unwrap();
    assert_ne!(after.to_vec2::<f32>().unwrap(), before, "adapters did not learn");
    let merged = m.merged().unwrap().forward(&ids, &mask, false).unwrap();
    let d = max_abs_diff(&after, &merged);
    assert!(d < 1e-5, "merged differs by {d}");

    let dir = tempfile::tempdir().unwrap();
    save_adapters(&adapters, &cfg, dir.path()).unwrap();
    let adapters2 = VarMap::new();
    let m2 = build(&adapters2);
    assert_eq!(load_adapters(&adapters2, dir.path()).unwrap(), cfg);
    assert_eq!(
        m2.forward(&ids, &mask, false).unwrap().to_vec2::<f32>().unwrap(),
        after.to_vec2::<f32>().unwrap()
    );
}

/// A fine-tuned classifier saved as weights + config reloads through `from_pretrained(dir)`
/// with identical logits (what `finetune_classifier --predict` does).
#[test]
fn from_pretrained_reloads_a_saved_classifier() {
    use candle_zoo::data::hub::HubOptions;
    let (ids, mask, _) = batch();
    let vm = VarMap::new();
    let m = model(
        &vm,
        ClassifierInput::MeanPooling,
        ProblemType::SingleLabelClassification,
        3,
    );
    let dir = tempfile::tempdir().unwrap();
    vm.save(dir.path().join("model.safetensors")).unwrap();
    let mut cfg = serde_json::to_value(tiny()).unwrap();
    cfg["id2label"] = serde_json::json!({"0": "a", "1": "b", "2": "c"});
    cfg["classifier_input"] = serde_json::to_value(ClassifierInput::MeanPooling).unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let (loaded, files) = BertForSequenceClassification::from_pretrained(
        dir.path().to_str().unwrap(),
        &HubOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    assert!(files.tokenizer.is_none());
    assert_eq!(
        m.forward(&ids, &mask, false).unwrap().to_vec2::<f32>().unwrap(),
        loaded
            .forward(&ids, &mask, false)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    );
    // Without num_labels / id2label the config is rejected with a message.
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&tiny()).unwrap(),
    )
    .unwrap();
    let e = BertForSequenceClassification::from_pretrained(
        dir.path().to_str().unwrap(),
        &HubOptions::default(),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("num_labels"), "{e}");
}
