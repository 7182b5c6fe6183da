//! Learning-rate schedules, evaluated per optimizer step.

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// How the learning rate evolves over training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `epochs` epochs (PyTorch's `StepLR` stepped per epoch).
    Step {
        /// Epochs between decays.
        epochs: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Linear warm-up from `base/warmup_steps` to the base rate over `warmup_steps` steps, then
    /// half a cosine down to `min_lr_ratio · base` at the last step.
    Cosine {
        /// Steps of linear warm-up (0: none).
        warmup_steps: usize,
        /// Final rate as a fraction of the base rate.
        min_lr_ratio: f64,
    },
}

impl LrSchedule {
    /// The rate for 0-based `step` out of `total_steps`, with `steps_per_epoch` steps an epoch.
    pub fn lr(&self, base: f64, step: usize, steps_per_epoch: usize, total_steps: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { epochs, gamma } => {
                let period = (epochs.max(1) * steps_per_epoch.max(1)) as i32;
                base * gamma.powi(step as i32 / period)
            }
            LrSchedule::Cosine {
                warmup_steps,
                min_lr_ratio,
            } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).saturating_sub(1).max(1);
                let progress = ((step - warmup_steps) as f64 / span as f64).min(1.0);
                let min = base * min_lr_ratio;
                min + (base - min) * 0.5 * (1.0 + (PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_schedules() {
        assert_eq!(LrSchedule::Constant.lr(0.1, 999, 10, 1000), 0.1);
        let s = LrSchedule::Step {
            epochs: 2,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 19, 10, 100), 1.0);
        assert_eq!(s.lr(1.0, 20, 10, 100), 0.5);
        assert_eq!(s.lr(1.0, 45, 10, 100), 0.25);
        let c = LrSchedule::Cosine {
            warmup_steps: 10,
            min_lr_ratio: 0.1,
        };
        assert!((c.lr(1.0, 0, 10, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr(1.0, 9, 10, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 109, 10, 110) - 0.1).abs() < 1e-12);
        let mid = c.lr(1.0, 10 + 99 / 2, 10, 110);
        assert!((mid - 0.55).abs() < 0.01, "{mid}");
        let rates: Vec<f64> = (10..110).map(|s| c.lr(1.0, s, 10, 110)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    }
}
