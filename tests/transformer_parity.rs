//! Parity with PyTorch's Transformer family (`nn.TransformerEncoderLayer`,
//! `nn.TransformerDecoderLayer`, `nn.TransformerEncoder`, `nn.Transformer`): fixtures made by
//! `tools/make_transformer_fixtures.py` hold a state_dict, inputs, masks, and the float64
//! reference output and gradients. The state_dict loads unchanged (same names and shapes).
//! Tolerances, relative to each tensor's largest magnitude: output 1e-5, gradients of the inputs
//! 1e-4 (the targets), parameter gradients 1e-4. f32 arithmetic against float64.

mod common;

use candle_zoo::candle_core::{DType, Device, Tensor, Var};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::nn::{
    Activation, DecoderArgs, EncoderArgs, Transformer, TransformerConfig, TransformerDecoderLayer,
    TransformerEncoder, TransformerEncoderLayer, TransformerLayerConfig,
};
use candle_zoo::train::checkpoint::load_tensors;
use common::{fixtures, rel_err};
use std::collections::{BTreeSet, HashMap};

enum Model {
    EncoderLayer(TransformerEncoderLayer),
    DecoderLayer(TransformerDecoderLayer),
    Encoder(TransformerEncoder),
    Transformer(Transformer),
}

#[test]
fn pytorch_transformer_family_parity() {
    for path in fixtures("transformer", 8, "make_transformer_fixtures.py") {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let (t, meta) = load_tensors(&path, &Device::Cpu).unwrap();
        let c: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
        let get = |k: &str| c[k].as_u64().map(|x| x as usize);
        let layer = TransformerLayerConfig {
            d_model: get("d_model").unwrap(),
            nhead: get("nhead").unwrap(),
            dim_feedforward: get("dim_feedforward").unwrap(),
            dropout: 0.0,
            activation: match c["activation"].as_str().unwrap() {
                "relu" => Activation::Relu,
                "gelu" => Activation::Gelu,
                other => panic!("{name}: activation {other}"),
            },
            layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap(),
            batch_first: c["batch_first"].as_bool().unwrap(),
            norm_first: c["norm_first"].as_bool().unwrap(),
            bias: c["bias"].as_bool().unwrap(),
            ..Default::default()
        };
        let varmap = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let model = match c["kind"].as_str().unwrap() {
            "encoder_layer" => Model::EncoderLayer(TransformerEncoderLayer::new(&layer, vb).unwrap()),
            "decoder_layer" => Model::DecoderLayer(TransformerDecoderLayer::new(&layer, vb).unwrap()),
            "encoder" => {
                Model::Encoder(TransformerEncoder::new(&layer, get("num_layers").unwrap(), true, vb).unwrap())
            }
            "transformer" => Model::Transformer(
                Transformer::new(
                    &TransformerConfig {
                        layer: layer.clone(),
                        num_encoder_layers: get("num_encoder_layers").unwrap(),
                        num_decoder_layers: get("num_decoder_layers").unwrap(),
                    },
                    vb,
                )
                .unwrap(),
            ),
            other => panic!("{name}: kind {other}"),
        };
        let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        let theirs: BTreeSet<String> = t
            .keys()
            .filter(|k| !k.starts_with("input.") && !k.starts_with("grad.") && *k != "output")
            .cloned()
            .collect();
        assert_eq!(
            ours, theirs,
            "{name}: parameter names differ from the PyTorch state_dict"
        );
        for (k, var) in varmap.data().lock().unwrap().iter() {
            var.set(&t[k]).unwrap_or_else(|e| panic!("{name}: {k}: {e}"));
        }
        let var = |k: &str| t.get(k).map(|x| Var::from_tensor(x).unwrap());
        let (src, tgt, memory) = (var("input.src"), var("input.tgt"), var("input.memory"));
        // Causal masks are given to PyTorch as masks (with the is_causal hint); here they are
        // the `is_causal` flags, so the fixture's causal masks are not passed again.
        let causal = |k: &str| c["causal"][k].as_bool().unwrap_or(false);
        let mask = |k: &str, is_causal: bool| if is_causal { None } else { t.get(k) };
        let enc = EncoderArgs {
            mask: mask("input.src_mask", causal("src")),
            key_padding_mask: t.get("input.src_key_padding_mask"),
            is_causal: causal("src"),
            train: false,
        };
        let dec = DecoderArgs {
            tgt_mask: mask("input.tgt_mask", causal("tgt")),
            memory_mask: t.get("input.memory_mask"),
            tgt_key_padding_mask: t.get("input.tgt_key_padding_mask"),
            memory_key_padding_mask: t.get("input.memory_key_padding_mask"),
            tgt_is_causal: causal("tgt"),
            memory_is_causal: false,
            train: false,
        };
        let out = match &model {
            Model::EncoderLayer(m) => m.forward(src.as_ref().unwrap(), &enc),
            Model::Encoder(m) => m.forward(src.as_ref().unwrap(), &enc),
            Model::DecoderLayer(m) => m.forward(tgt.as_ref().unwrap(), memory.as_ref().unwrap(), &dec),
            Model::Transformer(m) => m.forward(src.as_ref().unwrap(), tgt.as_ref().unwrap(), &enc, &dec),
        }
        .unwrap();
        let mut checks = vec![("output".to_string(), rel_err(&out, &t["output"]), 1e-5)];
        let grads = (out * &t["input.grad_output"])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (k, v) in [("src", &src), ("tgt", &tgt), ("memory", &memory)] {
            if let Some(v) = v {
                let g = grads
                    .get(v)
                    .unwrap_or_else(|| panic!("{name}: no gradient for input {k}"));
                checks.push((
                    format!("grad.input.{k}"),
                    rel_err(g, &t[&format!("grad.input.{k}")]),
                    1e-4,
                ));
            }
        }
        let vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
        for (k, v) in &vars {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
            checks.push((format!("grad.{k}"), rel_err(g, &t[&format!("grad.{k}")]), 1e-4));
        }
        let worst = checks.iter().map(|c| c.1).fold(0f64, f64::max);
        eprintln!(
            "{name:<42} {} tensors, worst relative error {worst:.2e}",
            checks.len()
        );
        for (what, e, tol) in checks {
            assert!(
                e <= tol,
                "{name}: {what} differs from PyTorch by {e:.2e} (tolerance {tol:.0e})"
            );
        }
    }
}

/// Bad configurations and inputs are errors that say what is wrong.
#[test]
fn bad_configs_and_masks_are_clear_errors() {
    let varmap = VarMap::new();
    let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let bad = TransformerLayerConfig {
        d_model: 10,
        nhead: 4,
        ..Default::default()
    };
    let e = TransformerEncoderLayer::new(&bad, vb.pp("bad"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nhead (4) must divide d_model (10)"), "{e}");
    let cfg = TransformerLayerConfig {
        d_model: 8,
        nhead: 2,
        dim_feedforward: 16,
        ..Default::default()
    };
    let layer = TransformerEncoderLayer::new(&cfg, vb.pp("ok")).unwrap();
    let x = Tensor::zeros((2, 5, 8), DType::F32, &Device::Cpu).unwrap();
    let wrong = Tensor::zeros((4, 4), DType::U8, &Device::Cpu).unwrap();
    let e = layer
        .forward(
            &x,
            &EncoderArgs {
                mask: Some(&wrong),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("attn_mask must be (tgt_len, src_len) = (5, 5)"), "{e}");
    let e = layer
        .forward(
            &x,
            &EncoderArgs {
                key_padding_mask: Some(&wrong),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key_padding_mask must be (batch, src_len) = (2, 5)"),
        "{e}"
    );
}

/// The zoo's gradient-flow check on the whole encoder-decoder, in training mode (dropout on),
/// in PyTorch's configuration and in a LLaMA-like one (pre-norm, RMSNorm, SwiGLU, GQA).
#[test]
fn every_transformer_parameter_receives_a_gradient() {
    use candle_zoo::nn::{NormKind, SinusoidalPositionalEncoding};
    use candle_zoo::train::gradcheck::check_gradient_flow;
    let dev = Device::Cpu;
    let variants = [
        TransformerLayerConfig {
            d_model: 16,
            nhead: 4,
            dim_feedforward: 32,
            dropout: 0.1,
            ..Default::default()
        },
        TransformerLayerConfig {
            d_model: 16,
            nhead: 4,
            num_kv_heads: Some(2),
            dim_feedforward: 24,
            dropout: 0.1,
            activation: Activation::Silu,
            gated_ffn: true,
            norm_first: true,
            norm: NormKind::RmsNorm,
            bias: false,
            ..Default::default()
        },
    ];
    for layer in variants {
        let varmap = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &dev);
        let model = Transformer::new(
            &TransformerConfig {
                layer: layer.clone(),
                num_encoder_layers: 2,
                num_decoder_layers: 2,
            },
            vb,
        )
        .unwrap();
        let pe = SinusoidalPositionalEncoding::new(16, 32, DType::F32, &dev).unwrap();
        let src = pe
            .forward_at(&Tensor::randn(0f32, 1., (2, 7, 16), &dev).unwrap(), 0)
            .unwrap();
        let tgt = pe
            .forward_at(&Tensor::randn(0f32, 1., (2, 5, 16), &dev).unwrap(), 0)
            .unwrap();
        let pad = candle_zoo::nn::masks::padding_mask(&[7, 4], 7, &dev).unwrap();
        let dec = DecoderArgs {
            tgt_is_causal: true,
            memory_key_padding_mask: Some(&pad),
            train: true,
            ..Default::default()
        };
        let enc = EncoderArgs {
            key_padding_mask: Some(&pad),
            ..Default::default()
        };
        let out = model.forward(&src, &tgt, &enc, &dec).unwrap();
        let loss = out.sqr().unwrap().mean_all().unwrap();
        let norms = check_gradient_flow(&loss, &varmap).unwrap_or_else(|e| panic!("{layer:?}: {e}"));
        assert_eq!(norms.len(), varmap.all_vars().len());
    }
}
