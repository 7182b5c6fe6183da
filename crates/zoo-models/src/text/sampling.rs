//! Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)
//! sampling, seeded so a generation can be repeated.

use candle_core::{DType, Result, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens; the defaults sample from the model's distribution unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Divides the logits; `0` means greedy (always the most likely token).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 42,
        }
    }
}

/// A seeded sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    /// Checks the configuration and seeds the generator.
    pub fn new(cfg: &SamplingConfig) -> Result<Self> {
        if !(cfg.temperature >= 0.0 && cfg.temperature.is_finite()) {
            candle_core::bail!(
                "sampling: temperature {} must be finite and >= 0",
                cfg.temperature
            );
        }
        if cfg.top_k == Some(0) {
            candle_core::bail!("sampling: top_k must be at least 1");
        }
        if let Some(p) = cfg.top_p {
            if !(p > 0.0 && p <= 1.0) {
                candle_core::bail!("sampling: top_p {p} must be in (0, 1]");
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
        })
    }

    /// The next token from `logits (vocab,)`.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let logits: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(self.sample_slice(&logits) as u32)
    }

    /// The next token index from raw logits.
    pub fn sample_slice(&mut self, logits: &[f32]) -> usize {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, (i, &x)| if x > best.1 { (i, x) } else { best },
                )
                .0
        };
        if self.cfg.temperature == 0.0 || logits.len() <= 1 {
            return argmax();
        }
        // Candidates sorted by logit, most likely first.
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.cfg.top_k {
            order.truncate(k.min(order.len()));
        }
        let t = self.cfg.temperature as f32;
        let top = logits[order[0]] / t;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] / t - top) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.cfg.top_p {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    acc += q;
                    acc >= p
                })
                .map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, &q) in probs.iter().enumerate() {
            r -= q;
            if r <= 0.0 {
                return order[i];
            }
        }
        order[probs.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p_restrict_the_choice() -> Result<()> {
        let logits = [0.0f32, 3.0, 2.9, -5.0, 1.0];
        let mut greedy = Sampler::new(&SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        })?;
        assert_eq!(greedy.sample_slice(&logits), 1);
        let mut top2 = Sampler::new(&SamplingConfig {
            top_k: Some(2),
            ..Default::default()
        })?;
        let mut top_p = Sampler::new(&SamplingConfig {
            top_p: Some(0.5),
            seed: 3,
            ..Default::default()
        })?;
        let mut free = Sampler::new(&SamplingConfig::default())?;
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            assert!([1, 2].contains(&top2.sample_slice(&logits)));
            // p(1) ≈ 0.47 < 0.5, so the nucleus holds tokens 1 and 2.
            assert!([1, 2].contains(&top_p.sample_slice(&logits)));
            seen[free.sample_slice(&logits)] += 1;
        }
        assert!(
            seen[0] > 0 && seen[4] > 0,
            "unrestricted sampling reaches unlikely tokens: {seen:?}"
        );
        // Same seed, same sequence.
        let mut a = Sampler::new(&SamplingConfig::default())?;
        let mut b = Sampler::new(&SamplingConfig::default())?;
        let sa: Vec<usize> = (0..20).map(|_| a.sample_slice(&logits)).collect();
        let sb: Vec<usize> = (0..20).map(|_| b.sample_slice(&logits)).collect();
        assert_eq!(sa, sb);
        assert!(Sampler::new(&SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        })
        .is_err());
        Ok(())
    }
}
