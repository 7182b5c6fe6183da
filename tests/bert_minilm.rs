//! BERT on the real all-MiniLM-L6-v2 files (`../shared/models/all-MiniLM-L6-v2`) against
//! sentence-transformers: token ids, hidden states and sentence embeddings of five sentences of
//! different lengths batched together with padding (`tools/make_minilm_fixtures.py` made
//! `tests/fixtures/minilm/reference.safetensors`). Tolerances (the issue's): max abs error
//! <= 1e-4 on hidden states and embeddings, cosine >= 0.99999 per sentence.
//! The loader is also exercised through a hub cache seeded from the same files, offline, and on
//! broken inputs.

mod common;

use candle_zoo::candle_core::{DType, Device, Tensor, D};
use candle_zoo::data::hub::{seed_model_dir, HubOptions};
use candle_zoo::models::text::{Bert, SentenceEncoder};
use std::path::{Path, PathBuf};

fn reference() -> std::collections::HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.safetensors");
    candle_zoo::candle_core::safetensors::load(&p, &Device::Cpu)
        .expect("fixture (tools/make_minilm_fixtures.py)")
}

fn sentences() -> Vec<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/sentences.txt");
    std::fs::read_to_string(p)
        .expect("sentences")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = common::shared("models/all-MiniLM-L6-v2") else {
        return;
    };
    let enc = SentenceEncoder::from_pretrained(
        dir.to_str().expect("utf-8 path"),
        &HubOptions::default(),
        &Device::Cpu,
    )
    .expect("load MiniLM");
    let want = reference();
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();

    // Token ids and the padding mask are the reference's exactly.
    let (ids, mask) = enc.tokenize(&texts).expect("tokenize");
    let as_i64 = |t: &Tensor| t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    assert_eq!(as_i64(&ids), as_i64(&want["input_ids"]));
    assert_eq!(as_i64(&mask), as_i64(&want["attention_mask"]));

    // Hidden states at real tokens (padded positions are not part of any output).
    let (hidden, _) = enc.token_embeddings(&texts).expect("forward");
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(D::Minus1).unwrap();
    let got = hidden.broadcast_mul(&m).unwrap();
    let exp = want["token_embeddings"].broadcast_mul(&m).unwrap();
    let e = common::max_abs_diff(&got, &exp);
    eprintln!("hidden states: max abs error {e:.2e}");
    assert!(e <= 1e-4, "hidden states differ by {e:.2e}");

    let emb = enc.embed(&texts).expect("embed");
    let exp = &want["sentence_embedding"];
    let e = common::max_abs_diff(&emb, exp);
    let cos = (&emb * exp).unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    eprintln!("sentence embeddings: max abs error {e:.2e}, cosines {cos:?}");
    assert!(e <= 1e-4, "embeddings differ by {e:.2e}");
    assert!(cos.iter().all(|&c| c >= 0.99999), "{cos:?}");

    // Batching does not change a sentence's embedding: alone equals inside the padded batch.
    let alone = enc.embed(&texts[1..2]).expect("embed one");
    let e = common::max_abs_diff(&alone, &emb.narrow(0, 1, 1).unwrap());
    assert!(e <= 1e-5, "padding changed the embedding by {e:.2e}");
}

/// The same files through the hub code path: a cache seeded from the directory, offline.
#[test]
fn loads_from_a_hub_cache_offline_and_reports_what_is_missing() {
    let Some(dir) = common::shared("models/all-MiniLM-L6-v2") else {
        return;
    };
    let cache = tempfile::tempdir().expect("tempdir");
    let repo = "sentence-transformers/all-MiniLM-L6-v2";
    let commit = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41";
    let offline = HubOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        offline: Some(true),
        revision: None,
    };
    // Nothing cached yet: a clear offline error naming the file.
    let err = Bert::from_pretrained(repo, &offline, &Device::Cpu).expect_err("empty cache");
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("offline"),
        "{err}"
    );
    let snapshot = seed_model_dir(cache.path(), repo, commit, &dir).expect("seed");
    assert!(snapshot.join("1_Pooling/config.json").is_file());
    let enc = SentenceEncoder::from_pretrained(repo, &offline, &Device::Cpu).expect("from the cache");
    let local =
        SentenceEncoder::from_pretrained(dir.to_str().expect("utf-8"), &offline, &Device::Cpu).expect("dir");
    let t = ["Offline works."];
    assert_eq!(
        common::max_abs_diff(&enc.embed(&t).unwrap(), &local.embed(&t).unwrap()),
        0.0
    );
}

fn copy_model(dir: &Path, to: &Path) {
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(dir.join(f), to.join(f)).expect("copy");
    }
}

#[test]
fn broken_inputs_give_errors_that_say_what_is_wrong() {
    let Some(dir) = common::shared("models/all-MiniLM-L6-v2") else {
        return;
    };
    let opts = HubOptions {
        offline: Some(true),
        ..Default::default()
    };
    let load = |d: &Path| Bert::from_pretrained(d.to_str().expect("utf-8"), &opts, &Device::Cpu).map(|_| ());

    // A config that does not fit the weights: the mismatched names and shapes are listed.
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_model(&dir, tmp.path());
    let cfg = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let wrong = cfg.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024");
    assert_ne!(wrong, cfg);
    std::fs::write(tmp.path().join("config.json"), wrong).expect("write");
    let e = load(tmp.path()).expect_err("mismatch").to_string();
    assert!(
        e.contains("intermediate.dense.weight") && e.contains("[1536, 384]") && e.contains("[1024, 384]"),
        "{e}"
    );

    // A corrupt safetensors file.
    let tmp = tempfile::tempdir().expect("tempdir");
    copy_model(&dir, tmp.path());
    std::fs::write(tmp.path().join("model.safetensors"), b"not a safetensors file").expect("write");
    let e = load(tmp.path()).expect_err("corrupt").to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );

    // Missing weights.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(dir.join("config.json"), tmp.path().join("config.json")).expect("copy");
    let e = load(tmp.path()).expect_err("no weights").to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("pytorch_model.bin"),
        "{e}"
    );

    // Neither a directory nor owner/name.
    let e = Bert::from_pretrained("no-such-thing", &opts, &Device::Cpu)
        .expect_err("bad id")
        .to_string();
    assert!(e.contains("neither a directory nor"), "{e}");
}

/// `encode` batches by length and returns rows in the caller's order, equal to one big batch.
#[test]
fn encode_in_length_sorted_batches_keeps_the_order() {
    let Some(dir) = common::shared("models/all-MiniLM-L6-v2") else {
        return;
    };
    let enc =
        SentenceEncoder::from_pretrained(dir.to_str().expect("utf-8"), &HubOptions::default(), &Device::Cpu)
            .expect("load");
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = enc.embed(&texts).expect("one batch");
    let batched = enc.encode(&texts, 2).expect("batches of 2");
    let e = common::max_abs_diff(&all, &batched);
    assert!(e <= 1e-5, "{e:.2e}");
    assert!(enc.encode(&texts, 0).is_err());
}
