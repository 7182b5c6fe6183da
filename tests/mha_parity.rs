//! Parity with PyTorch's `nn.MultiheadAttention`: fixtures made by
//! `tools/make_mha_fixtures.py` hold a state_dict, inputs, and the float64 reference output,
//! attention weights and gradients. The state_dict loads unchanged (same names, same shapes);
//! outputs and every gradient agree within 1e-5 of each tensor's largest magnitude (f32
//! arithmetic against a float64 reference; observed errors are ~1e-7).

mod common;

use candle_zoo::candle_core::{DType, Device, Tensor, Var};
use candle_zoo::candle_nn::VarMap;
use candle_zoo::kernels::AttentionBackend;
use candle_zoo::nn::{MhaArgs, MultiHeadAttention, MultiHeadAttentionConfig};
use candle_zoo::train::checkpoint::load_tensors;
use common::{fixtures, rel_err};
use std::collections::{BTreeSet, HashMap};

#[test]
fn pytorch_multihead_attention_parity() {
    for path in fixtures("mha", 5, "make_mha_fixtures.py") {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let (t, meta) = load_tensors(&path, &Device::Cpu).unwrap();
        let c: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
        let cfg = MultiHeadAttentionConfig {
            embed_dim: c["embed_dim"].as_u64().unwrap() as usize,
            num_heads: c["num_heads"].as_u64().unwrap() as usize,
            kdim: c["kdim"].as_u64().map(|x| x as usize),
            vdim: c["vdim"].as_u64().map(|x| x as usize),
            bias: c["bias"].as_bool().unwrap(),
            batch_first: c["batch_first"].as_bool().unwrap(),
            ..Default::default()
        };
        let varmap = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let mha = MultiHeadAttention::new(&cfg, vb).unwrap();
        // The parameter names are exactly PyTorch's state_dict keys.
        let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        let theirs: BTreeSet<String> = t
            .keys()
            .filter(|k| {
                !k.starts_with("input.") && !k.starts_with("grad.") && *k != "output" && *k != "weights"
            })
            .cloned()
            .collect();
        assert_eq!(
            ours, theirs,
            "{name}: parameter names differ from the PyTorch state_dict"
        );
        for (k, var) in varmap.data().lock().unwrap().iter() {
            var.set(&t[k]).unwrap_or_else(|e| panic!("{name}: {k}: {e}"));
        }
        let query = Var::from_tensor(&t["input.query"]).unwrap();
        let self_attn = c["self_attention"].as_bool().unwrap();
        let (key, value) = if self_attn {
            (query.as_tensor().clone(), query.as_tensor().clone())
        } else {
            (t["input.key"].clone(), t["input.value"].clone())
        };
        let args = MhaArgs {
            key_padding_mask: t.get("input.key_padding_mask"),
            attn_mask: t.get("input.attn_mask"),
            is_causal: c["is_causal"].as_bool().unwrap(),
            need_weights: c["need_weights"].as_bool().unwrap(),
            average_attn_weights: c["average_attn_weights"].as_bool().unwrap(),
            train: false,
            ..Default::default()
        };
        let out = mha.forward(query.as_tensor(), &key, &value, &args).unwrap();
        if !args.need_weights {
            assert_eq!(
                out.backend,
                AttentionBackend::CpuFused,
                "{name}: the fused kernel must serve this case"
            );
        }
        let mut checks: Vec<(String, f64)> = vec![("output".into(), rel_err(&out.output, &t["output"]))];
        if let Some(w) = &out.weights {
            checks.push(("weights".into(), rel_err(w, &t["weights"])));
        }
        let grads = (out.output * &t["input.grad_output"])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        checks.push((
            "grad.query".into(),
            rel_err(grads.get(&query).unwrap(), &t["grad.query"]),
        ));
        let vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
        for (k, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {k}"));
            checks.push((format!("grad.{k}"), rel_err(g, &t[&format!("grad.{k}")])));
        }
        for (what, e) in checks {
            eprintln!("{name:<46} {what:<24} {e:.2e}");
            assert!(e <= 1e-5, "{name}: {what} differs from PyTorch by {e:.2e}");
        }
    }
}

/// The zoo's gradient-flow check on `MultiHeadAttention`, plain and grouped-query, on both the
/// fused path and the explicit-weights path.
#[test]
fn every_attention_parameter_receives_a_gradient() {
    for (num_kv_heads, kdim, need_weights) in
        [(None, None, false), (Some(2), None, false), (None, Some(6), true)]
    {
        let cfg = MultiHeadAttentionConfig {
            embed_dim: 16,
            num_heads: 4,
            num_kv_heads,
            kdim,
            ..Default::default()
        };
        let varmap = VarMap::new();
        let vb = candle_zoo::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        let mha = MultiHeadAttention::new(&cfg, vb).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 5, 16), &Device::Cpu).unwrap();
        let kv = Tensor::randn(0f32, 1., (2, 7, kdim.unwrap_or(16)), &Device::Cpu).unwrap();
        let args = MhaArgs {
            need_weights,
            is_causal: kdim.is_none(),
            ..Default::default()
        };
        let (key, value) = if kdim.is_some() {
            (
                kv.clone(),
                Tensor::randn(0f32, 1., (2, 7, 16), &Device::Cpu).unwrap(),
            )
        } else {
            (x.clone(), x.clone())
        };
        let out = mha.forward(&x, &key, &value, &args).unwrap();
        let loss = out.output.sqr().unwrap().sum_all().unwrap();
        candle_zoo::train::check_gradient_flow(&loss, &varmap)
            .unwrap_or_else(|e| panic!("kv_heads {num_kv_heads:?} kdim {kdim:?}: {e}"));
    }
}
