//! Optimizers whose state can be saved and restored, so a resumed run continues exactly.
//!
//! candle-nn's `AdamW` keeps its moment estimates private; [`AdamW`] here performs the same
//! update (tested to match it) and exposes its state. [`Sgd`] adds the momentum, Nesterov
//! momentum and weight decay that candle-nn's `SGD` lacks, with PyTorch's semantics.

mod adamw;
mod groups;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use groups::GroupedOptimizer;
pub use sgd::{Sgd, SgdConfig};

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Named trainable parameters, sorted by name so every run visits them in the same order.
pub type NamedParams = Vec<(String, Var)>;

/// All variables of a `VarMap`, sorted by name.
pub fn named_params(varmap: &candle_nn::VarMap) -> Result<NamedParams> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut params: NamedParams = vars
        .iter()
        .filter(|(_, v)| v.dtype().is_float())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(params)
}

/// An optimizer over a fixed set of named parameters.
pub trait Optimizer {
    /// Applies one update with learning rate `lr`; parameters without a gradient are skipped.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;
    /// Number of updates applied so far.
    fn steps(&self) -> usize;
    /// The state buffers (e.g. `exp_avg.<param>`), to be saved beside the model.
    fn state(&self) -> HashMap<String, Tensor>;
    /// Restores buffers saved by [`Optimizer::state`] and the step count.
    fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()>;
}

/// Which optimizer to build, with its hyper-parameters; serialized into the run state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Adam (AdamW with no weight decay).
    Adam(AdamWConfig),
    /// AdamW: Adam with decoupled weight decay.
    AdamW(AdamWConfig),
    /// SGD with optional (Nesterov) momentum and weight decay.
    Sgd(SgdConfig),
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay).
    pub fn adam() -> Self {
        Self::Adam(AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        })
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01).
    pub fn adamw() -> Self {
        Self::AdamW(AdamWConfig::default())
    }

    /// SGD with momentum 0.9 (Nesterov when `nesterov`).
    pub fn sgd_momentum(nesterov: bool) -> Self {
        Self::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov,
            ..SgdConfig::default()
        })
    }

    /// Builds the optimizer over `params`.
    pub fn build(&self, params: NamedParams) -> Result<Box<dyn Optimizer>> {
        Ok(match self {
            Self::Adam(c) => Box::new(AdamW::new(
                params,
                AdamWConfig {
                    weight_decay: 0.0,
                    ..c.clone()
                },
            )?),
            Self::AdamW(c) => Box::new(AdamW::new(params, c.clone())?),
            Self::Sgd(c) => Box::new(Sgd::new(params, c.clone())?),
        })
    }
}

/// Takes `name` from a saved state map, checking its shape against `like`.
pub(crate) fn take_buffer(state: &HashMap<String, Tensor>, name: &str, like: &Tensor) -> Result<Tensor> {
    let t = state.get(name).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "optimizer state has no `{name}`: it was saved for a different model"
        ))
    })?;
    if t.shape() != like.shape() {
        candle_core::bail!(
            "optimizer state `{name}` has shape {:?}, the parameter has {:?}",
            t.shape(),
            like.shape()
        );
    }
    t.to_dtype(like.dtype())?.to_device(like.device())
}
