//! LoRA (Hu et al. 2021): a frozen `Linear` plus a trainable low-rank update,
//! `y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ`, with `A (r, in)` Kaiming-uniform and `B (out, r)`
//! zero, so training starts from the pretrained function exactly.
//!
//! Names follow PEFT: the adapter of module `encoder.layer.0.attention.self.query` is
//! `….query.lora_A.weight` and `….query.lora_B.weight`, so adapters saved alone
//! ([`save_adapters`]) are the tensors PEFT's `adapter_model.safetensors` holds (PEFT adds a
//! `base_model.model.` prefix, which [`load_adapters`] accepts too). [`LoraLinear::merge`]
//! folds the update into the weight for inference at the base model's speed.

use crate::linear::Linear;
use candle_core::{Module, Result, Tensor};
use candle_nn::init::{FanInOut, Init, NonLinearity, NormalOrUniform};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which modules get adapters, and their size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f32,
    /// Modules adapted, matched against the last component of a module's name (`"query"`,
    /// `"value"`) or its full dotted name.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
        }
    }
}

impl LoraConfig {
    /// Whether the module called `name` (dotted path) is a target.
    pub fn targets(&self, name: &str) -> bool {
        let last = name.rsplit('.').next().unwrap_or(name);
        self.target_modules.iter().any(|t| t == name || t == last)
    }
}

/// A `Linear` with an optional LoRA update.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapter: Option<Adapter>,
}

#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f32,
}

impl LoraLinear {
    /// No adapter: exactly `base`.
    pub fn plain(base: Linear) -> Self {
        Self { base, adapter: None }
    }

    /// `base` plus an adapter whose `lora_A` / `lora_B` are created (or loaded) through
    /// `adapter_vb` (already at the module's path; typically a separate `VarMap`, so that only
    /// adapters reach the optimizer).
    pub fn new(base: Linear, cfg: &LoraConfig, adapter_vb: VarBuilder) -> Result<Self> {
        if cfg.r == 0 {
            candle_core::bail!("LoraConfig: rank r must be at least 1");
        }
        let (out, inp) = base.weight().dims2()?;
        // PEFT: kaiming_uniform_(A, a=sqrt(5)) (bound 1/sqrt(in)), B = 0.
        let a_init = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::ExplicitGain(1.0 / 3f64.sqrt()),
        };
        let a = adapter_vb
            .pp("lora_A")
            .get_with_hints((cfg.r, inp), "weight", a_init)?;
        let b = adapter_vb
            .pp("lora_B")
            .get_with_hints((out, cfg.r), "weight", Init::Const(0.0))?;
        Ok(Self {
            base,
            adapter: Some(Adapter {
                a,
                b,
                scale: cfg.alpha / cfg.r as f64,
                dropout: cfg.dropout,
            }),
        })
    }

    /// The frozen layer.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// `(lora_A (r, in), lora_B (out, r))`, when adapted.
    pub fn adapter(&self) -> Option<(&Tensor, &Tensor)> {
        self.adapter.as_ref().map(|a| (&a.a, &a.b))
    }

    /// `x Wᵀ + b (+ update)`; dropout on the adapter input only while `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let Some(ad) = &self.adapter else { return Ok(y) };
        let xin = zoo_kernels::dropout::dropout_t(x.clone(), ad.dropout, train)?;
        let low = crate::linear::linear(&xin, &ad.a, None)?;
        let up = crate::linear::linear(&low, &ad.b, None)?;
        y + (up * ad.scale)?
    }

    /// `relu(forward_t(x))`, fused when there is no adapter.
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.adapter {
            None => self.base.forward_relu(x),
            Some(_) => self.forward_t(x, train)?.relu(),
        }
    }

    /// `gelu(forward_t(x))` (exact GELU), fused when there is no adapter.
    pub fn forward_gelu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.adapter {
            None => self.base.forward_gelu(x),
            Some(_) => self.forward_t(x, train)?.gelu_erf(),
        }
    }

    /// A plain `Linear` with the update folded in: `W + (α/r)·B·A` (the same outputs in
    /// evaluation mode, at the base layer's cost).
    pub fn merge(&self) -> Result<Linear> {
        let Some(ad) = &self.adapter else {
            return Ok(self.base.clone());
        };
        let w = (self.base.weight() + (ad.b.matmul(&ad.a)? * ad.scale)?)?;
        Ok(Linear::new(w.detach(), self.base.bias().map(|b| b.detach())))
    }
}

impl Module for LoraLinear {
    /// Evaluation mode.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

/// Writes the adapter variables of `adapters` (a `VarMap` holding only `…lora_A.weight` /
/// `…lora_B.weight`) as safetensors, with `config` as metadata-free companion JSON
/// `adapter_config.json` beside it.
pub fn save_adapters(adapters: &VarMap, cfg: &LoraConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))?;
    adapters.save(dir.join("adapter_model.safetensors"))?;
    let json = serde_json::to_string_pretty(cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    std::fs::write(dir.join("adapter_config.json"), json)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", dir.display())))
}

/// Reads `adapter_config.json` and fills the variables of `adapters` from
/// `adapter_model.safetensors` in `dir` (names with or without PEFT's `base_model.model.`
/// prefix). Every adapter variable must be found.
pub fn load_adapters(adapters: &VarMap, dir: &Path) -> Result<LoraConfig> {
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", cfg_path.display())))?;
    let cfg: LoraConfig = serde_json::from_str(&text)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", cfg_path.display())))?;
    let path = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
    let vars = adapters
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    for (name, var) in vars.iter() {
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(&format!("base_model.model.{name}")))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: no adapter tensor {name}", path.display()))
            })?;
        if t.shape() != var.shape() {
            candle_core::bail!(
                "{}: {name} is {:?}, the model expects {:?}",
                path.display(),
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn starts_as_the_base_merges_exactly_and_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let base = Linear::new(
            Tensor::randn(0f32, 0.3, (6, 10), &dev)?,
            Some(Tensor::randn(0f32, 0.3, 6, &dev)?),
        );
        let cfg = LoraConfig {
            r: 3,
            alpha: 6.0,
            dropout: 0.0,
            target_modules: vec!["q".into()],
        };
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let lora = LoraLinear::new(base.clone(), &cfg, vb.pp("layer.q"))?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 10), &dev)?;
        // B = 0: the adapted layer is the base layer.
        let d = (lora.forward(&x)? - base.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        // Give B values, then merged == unmerged.
        for (name, v) in vm.data().lock().expect("lock").iter() {
            if name.ends_with("lora_B.weight") {
                v.set(&Tensor::randn(0f32, 0.5, v.shape(), &dev)?)?;
            }
        }
        let merged = lora.merge()?;
        let d = (lora.forward(&x)? - merged.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "merge differs by {d}");
        // Only the adapter trains: gradients reach A and B.
        let vars: Vec<Var> = vm.all_vars();
        let g = lora.forward_t(&x, true)?.sum_all()?.backward()?;
        assert!(vars.iter().all(|v| g.get(v).is_some()));
        // Save and load the adapters alone.
        let dir = tempfile::tempdir().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        save_adapters(&vm, &cfg, dir.path())?;
        let vm2 = VarMap::new();
        let lora2 = LoraLinear::new(
            base,
            &cfg,
            VarBuilder::from_varmap(&vm2, DType::F32, &dev).pp("layer.q"),
        )?;
        assert_eq!(load_adapters(&vm2, dir.path())?, cfg);
        let d = (lora.forward(&x)? - lora2.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        assert!(cfg.targets("encoder.layer.0.attention.self.q") && !cfg.targets("key"));
        Ok(())
    }
}
