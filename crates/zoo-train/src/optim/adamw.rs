//! Adam / AdamW with inspectable state (Loshchilov & Hutter's decoupled weight decay).

use super::{take_buffer, NamedParams, Optimizer};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Hyper-parameters of [`AdamW`]; defaults are PyTorch's `torch.optim.AdamW`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    /// Coefficient of the running mean of gradients.
    pub beta1: f64,
    /// Coefficient of the running mean of squared gradients.
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay (`θ ← θ·(1 − lr·wd)` before the Adam step); 0 gives Adam.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct Slot {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named parameters. The update is candle-nn's `AdamW` operation for operation:
/// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
/// `θ ← θ·(1 − lr·wd) − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps)`.
pub struct AdamW {
    slots: Vec<Slot>,
    cfg: AdamWConfig,
    t: usize,
}

impl AdamW {
    /// An optimizer over `params` with zeroed moments.
    pub fn new(params: NamedParams, cfg: AdamWConfig) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.beta1) || !(0.0..1.0).contains(&cfg.beta2) {
            candle_core::bail!(
                "AdamW: betas must lie in [0, 1), got ({}, {})",
                cfg.beta1,
                cfg.beta2
            );
        }
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                Ok(Slot {
                    exp_avg: var.zeros_like()?,
                    exp_avg_sq: var.zeros_like()?,
                    name,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { slots, cfg, t: 0 })
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let scale_m = 1.0 / (1.0 - beta1.powi(self.t as i32));
        let scale_v = 1.0 / (1.0 - beta2.powi(self.t as i32));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let m = ((&slot.exp_avg * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&slot.exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let theta = (slot.var.as_tensor() * (1.0 - lr * weight_decay))?;
            let adjusted = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + eps)?)?;
            slot.var.set(&(theta - (adjusted * lr)?)?)?;
            // Detached: a buffer that kept its op graph would chain every step's graph
            // (forward and backward included) to the next, and memory would grow without bound.
            slot.exp_avg = m.detach();
            slot.exp_avg_sq = v.detach();
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.t
    }

    fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("exp_avg.{}", s.name), s.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.clone());
        }
        out
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for s in &mut self.slots {
            let like = s.var.as_tensor();
            s.exp_avg = take_buffer(state, &format!("exp_avg.{}", s.name), like)?;
            s.exp_avg_sq = take_buffer(state, &format!("exp_avg_sq.{}", s.name), like)?;
        }
        self.t = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer as _;

    fn problem(seed: u64) -> Result<(Var, Tensor)> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(
            &Tensor::arange(0f32, 12., &dev)?
                .reshape((3, 4))?
                .affine(0.1, -0.4)?,
        )?;
        let x = Tensor::arange(0f32, 20., &dev)?
            .reshape((4, 5))?
            .affine(0.05 * (seed as f64 + 1.0), 0.3)?
            .sin()?;
        Ok((w, x))
    }

    /// Our AdamW must reproduce candle-nn's AdamW exactly: same operations, same order.
    #[test]
    fn matches_candle_nn_adamw() -> Result<()> {
        for wd in [0.0, 0.05] {
            let (w1, x) = problem(1)?;
            let (w2, _) = problem(1)?;
            let cfg = AdamWConfig {
                weight_decay: wd,
                ..Default::default()
            };
            let mut ours = AdamW::new(vec![("w".into(), w1.clone())], cfg.clone())?;
            let mut theirs = candle_nn::AdamW::new(
                vec![w2.clone()],
                candle_nn::ParamsAdamW {
                    lr: 0.01,
                    beta1: cfg.beta1,
                    beta2: cfg.beta2,
                    eps: cfg.eps,
                    weight_decay: wd,
                },
            )?;
            for _ in 0..7 {
                let g1 = w1.matmul(&x)?.sqr()?.sum_all()?.backward()?;
                ours.step(&g1, 0.01)?;
                let g2 = w2.matmul(&x)?.sqr()?.sum_all()?.backward()?;
                theirs.step(&g2)?;
            }
            let diff = (w1.as_tensor() - w2.as_tensor())?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "weight decay {wd}");
        }
        Ok(())
    }

    /// The moment buffers must not hold an op graph (which would keep every step's forward
    /// and backward alive): they are plain, untracked tensors after a step.
    #[test]
    fn buffers_hold_no_graph() -> Result<()> {
        let (w, x) = problem(3)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        opt.step(&w.matmul(&x)?.sqr()?.sum_all()?.backward()?, 1e-2)?;
        for t in opt.state().values() {
            assert!(!t.track_op(), "optimizer buffer still tracks an op");
        }
        Ok(())
    }

    #[test]
    fn state_round_trip_continues_identically() -> Result<()> {
        let run = |split: Option<usize>| -> Result<Vec<f32>> {
            let (w, x) = problem(2)?;
            let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
            for i in 0..6 {
                if Some(i) == split {
                    let (state, steps) = (opt.state(), opt.steps());
                    opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
                    opt.load_state(&state, steps)?;
                }
                opt.step(&w.matmul(&x)?.sqr()?.sum_all()?.backward()?, 1e-2)?;
            }
            w.as_tensor().flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(run(None)?, run(Some(3))?);
        let (w, _) = problem(0)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], AdamWConfig::default())?;
        let bad: HashMap<String, Tensor> = [(
            "exp_avg.w".to_string(),
            Tensor::zeros(3, DType::F32, &Device::Cpu)?,
        )]
        .into();
        assert!(opt.load_state(&bad, 1).is_err());
        Ok(())
    }
}
