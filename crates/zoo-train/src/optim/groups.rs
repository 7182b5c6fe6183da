//! Parameter groups with their own learning-rate multipliers (discriminative fine-tuning:
//! lower layers of a pretrained model move more slowly than the new head).

use super::{NamedParams, Optimizer, OptimizerConfig};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use std::collections::HashMap;

/// One optimizer per group, each stepped with `lr · scale`; state names stay the parameters'
/// own, so a grouped run saves and resumes like an ungrouped one.
pub struct GroupedOptimizer {
    groups: Vec<(f64, Box<dyn Optimizer>)>,
}

impl GroupedOptimizer {
    /// Builds `cfg`'s optimizer for each `(scale, params)` group. Scales must be finite and
    /// non-negative; a parameter may be in only one group.
    pub fn new(cfg: &OptimizerConfig, groups: Vec<(f64, NamedParams)>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut built = Vec::with_capacity(groups.len());
        for (scale, params) in groups {
            if !(scale.is_finite() && scale >= 0.0) {
                candle_core::bail!("parameter group learning-rate scale {scale} must be finite and >= 0");
            }
            for (name, _) in &params {
                if !seen.insert(name.clone()) {
                    candle_core::bail!("parameter {name} is in two parameter groups");
                }
            }
            built.push((scale, cfg.build(params)?));
        }
        Ok(Self { groups: built })
    }
}

impl Optimizer for GroupedOptimizer {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for (scale, opt) in &mut self.groups {
            opt.step(grads, lr * *scale)?;
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        self.groups.first().map_or(0, |(_, o)| o.steps())
    }

    fn state(&self) -> HashMap<String, Tensor> {
        self.groups.iter().flat_map(|(_, o)| o.state()).collect()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (_, o) in &mut self.groups {
            o.load_state(state, steps)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// With SGD (no momentum), a group's update is exactly its scale times the base update.
    #[test]
    fn each_group_moves_by_its_scale() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f32, 2.0], &dev)?;
        let b = Var::new(&[1.0f32, 2.0], &dev)?;
        let mut opt = GroupedOptimizer::new(
            &OptimizerConfig::Sgd(Default::default()),
            vec![
                (1.0, vec![("a".into(), a.clone())]),
                (0.25, vec![("b".into(), b.clone())]),
            ],
        )?;
        let loss = (a.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?;
        opt.step(&loss.backward()?, 0.1)?;
        assert_eq!(a.to_vec1::<f32>()?, vec![0.9, 1.9]);
        assert_eq!(b.to_vec1::<f32>()?, vec![0.975, 1.975]);
        assert!(GroupedOptimizer::new(
            &OptimizerConfig::adam(),
            vec![(1.0, vec![("a".into(), a.clone())]), (1.0, vec![("a".into(), a)])]
        )
        .is_err());
        Ok(())
    }
}
