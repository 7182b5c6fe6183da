//! Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

use super::{take_buffer, NamedParams, Optimizer};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Hyper-parameters of [`Sgd`]; defaults are PyTorch's `torch.optim.SGD` (plain SGD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SgdConfig {
    /// Momentum factor (0 disables momentum).
    pub momentum: f64,
    /// Dampening of the momentum buffer's gradient term.
    pub dampening: f64,
    /// L2 penalty added to the gradient (`g ← g + wd·θ`).
    pub weight_decay: f64,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    momentum_buffer: Option<Tensor>,
}

/// SGD over named parameters, following `torch.optim.SGD` exactly:
/// `g ← g + wd·θ`; `b ← g` on the first step, then `b ← μ·b + (1−τ)·g`;
/// `g ← g + μ·b` (Nesterov) or `g ← b`; `θ ← θ − lr·g`.
pub struct Sgd {
    slots: Vec<Slot>,
    cfg: SgdConfig,
    t: usize,
}

impl Sgd {
    /// An optimizer over `params`.
    pub fn new(params: NamedParams, cfg: SgdConfig) -> Result<Self> {
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            candle_core::bail!("SGD: Nesterov momentum requires momentum > 0 and dampening = 0");
        }
        if cfg.momentum < 0.0 || cfg.weight_decay < 0.0 {
            candle_core::bail!("SGD: momentum and weight decay must be non-negative");
        }
        let slots = params
            .into_iter()
            .map(|(name, var)| Slot {
                name,
                var,
                momentum_buffer: None,
            })
            .collect();
        Ok(Self { slots, cfg, t: 0 })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let c = &self.cfg;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let mut g = g.clone();
            if c.weight_decay != 0.0 {
                g = (g + (slot.var.as_tensor() * c.weight_decay)?)?;
            }
            if c.momentum != 0.0 {
                let buf = match &slot.momentum_buffer {
                    None => g.detach(),
                    Some(b) => ((b * c.momentum)? + (&g * (1.0 - c.dampening))?)?,
                };
                g = if c.nesterov {
                    (g + (&buf * c.momentum)?)?
                } else {
                    buf.clone()
                };
                // Detached so the buffer does not keep this step's graph alive.
                slot.momentum_buffer = Some(buf.detach());
            }
            slot.var.set(&(slot.var.as_tensor() - (g * lr)?)?)?;
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.t
    }

    fn state(&self) -> HashMap<String, Tensor> {
        self.slots
            .iter()
            .filter_map(|s| {
                s.momentum_buffer
                    .as_ref()
                    .map(|b| (format!("momentum_buffer.{}", s.name), b.clone()))
            })
            .collect()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            let key = format!("momentum_buffer.{}", s.name);
            s.momentum_buffer = if state.contains_key(&key) {
                Some(take_buffer(state, &key, s.var.as_tensor())?)
            } else if self.cfg.momentum != 0.0 && steps > 0 {
                candle_core::bail!(
                    "optimizer state has no `{key}` although {steps} momentum steps were taken"
                )
            } else {
                None
            };
        }
        self.t = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// f(θ) = θ²/2 has gradient θ: the updates can be written out by hand.
    fn run(cfg: SgdConfig, steps: usize) -> Result<f32> {
        let w = Var::new(&[1.0f32], &Device::Cpu)?;
        let mut opt = Sgd::new(vec![("w".into(), w.clone())], cfg)?;
        for _ in 0..steps {
            let grads = (w.as_tensor().sqr()? * 0.5)?.sum_all()?.backward()?;
            opt.step(&grads, 0.1)?;
        }
        Ok(w.as_tensor().to_vec1::<f32>()?[0])
    }

    #[test]
    fn matches_hand_computed_updates() -> Result<()> {
        // Plain: θ ← 0.9·θ.
        assert!((run(SgdConfig::default(), 2)? - 0.81).abs() < 1e-6);
        // Momentum 0.9: b1 = 1, θ1 = 0.9; g2 = 0.9, b2 = 0.9 + 0.9 = 1.8, θ2 = 0.72.
        let m = SgdConfig {
            momentum: 0.9,
            ..Default::default()
        };
        assert!((run(m, 2)? - 0.72).abs() < 1e-6);
        // Nesterov: b1 = 1, step 1 + 0.9 = 1.9, θ1 = 0.81; g2 = 0.81, b2 = 0.9 + 0.81 = 1.71,
        // step 0.81 + 0.9·1.71 = 2.349, θ2 = 0.81 − 0.2349 = 0.5751.
        let n = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        };
        assert!((run(n, 2)? - 0.5751).abs() < 1e-6);
        // Weight decay 0.5 makes the gradient 1.5·θ: θ ← 0.85·θ.
        let wd = SgdConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        assert!((run(wd, 1)? - 0.85).abs() < 1e-6);
        assert!(Sgd::new(
            vec![],
            SgdConfig {
                nesterov: true,
                ..Default::default()
            }
        )
        .is_err());
        // The momentum buffer must not keep the step's op graph alive.
        let w = Var::new(&[1.0f32], &Device::Cpu)?;
        let mut opt = Sgd::new(
            vec![("w".into(), w.clone())],
            SgdConfig {
                momentum: 0.9,
                ..Default::default()
            },
        )?;
        for _ in 0..2 {
            opt.step(&(w.as_tensor().sqr()? * 0.5)?.sum_all()?.backward()?, 0.1)?;
        }
        assert!(opt.state().values().all(|t| !t.track_op()));
        Ok(())
    }
}
