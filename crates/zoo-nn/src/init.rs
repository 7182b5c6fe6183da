//! Reproducible parameter initialization.
//!
//! candle cannot seed its CPU random generator (`Device::Cpu.set_seed` is an error), so
//! models built through a plain `VarMap` start from different weights on every run. A
//! [`seeded_var_builder`] draws each new variable from a generator seeded by
//! `(seed, variable name)`: the same seed gives the same model on every device and in any
//! construction order, and resuming or comparing runs becomes exact.

use crate::conv::Conv2d;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Conv2dConfig, Linear, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::Distribution;

/// A `VarMap` backend that creates missing variables from a seeded generator.
struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a of the name mixed with the seed: a stable per-variable stream.
fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Samples `init` for a tensor of `shape` from a generator seeded with `seed`.
pub fn sample_init(init: &Init, shape: &Shape, seed: u64) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let uniform = |lo: f64, up: f64, rng: &mut rand::rngs::StdRng| -> Result<Vec<f32>> {
        if lo >= up || lo.is_nan() || up.is_nan() {
            // A degenerate range (e.g. fan 0) is a constant, not a sampling error.
            return Ok(vec![lo as f32; n]);
        }
        let d = rand_distr::Uniform::new(lo, up).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    let normal = |mean: f64, std: f64, rng: &mut rand::rngs::StdRng| -> Result<Vec<f32>> {
        let d = rand_distr::Normal::new(mean, std)
            .map_err(|e| candle_core::Error::Msg(format!("normal init N({mean}, {std}): {e}")))?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    let values = match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(lo, up, &mut rng)?,
        Init::Randn { mean, stdev } => normal(mean, stdev, &mut rng)?,
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound, &mut rng)?
                }
                NormalOrUniform::Normal => normal(0.0, std, &mut rng)?,
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` already exists with shape {:?}, requested {s:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let t = sample_init(&h, &s, stream_seed(self.seed, name))?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}`: a seeded VarMap creates variables only with a shape (use `get`)")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|v| v.contains_key(name))
            .unwrap_or(false)
    }
}

/// A `VarBuilder` over `varmap` whose new variables are drawn reproducibly from `seed`.
///
/// Existing variables are returned as they are, so building a model twice on the same map
/// shares its weights, exactly as `VarBuilder::from_varmap` does.
pub fn seeded_var_builder<'a>(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'a> {
    let backend: Box<dyn SimpleBackend + 'a> = Box::new(SeededVarMap {
        varmap: varmap.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

/// Glorot (Xavier) uniform, Keras' default kernel initializer: `U(-a, a)`,
/// `a = sqrt(6 / (fan_in + fan_out))`.
pub fn glorot_uniform(fan_in: usize, fan_out: usize) -> Init {
    let a = (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
    Init::Uniform { lo: -a, up: a }
}

/// A `Linear` layer (`weight (out, in)`, `bias (out)`) with Glorot-uniform weights and zero
/// bias, as Keras' `Dense`; key names as PyTorch's `nn.Linear`.
pub fn linear_glorot(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((out_dim, in_dim), "weight", glorot_uniform(in_dim, out_dim))?;
    let b = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// A `Conv2d` (`weight (out, in, k, k)`, `bias (out)`) with Glorot-uniform weights over
/// fans `in·k·k` / `out·k·k` and zero bias, as Keras' `Conv2D`; names as PyTorch's `nn.Conv2d`.
pub fn conv2d_glorot(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let fan_in = in_channels / cfg.groups.max(1) * kernel * kernel;
    let fan_out = out_channels * kernel * kernel;
    let w = vb.get_with_hints(
        (out_channels, in_channels / cfg.groups.max(1), kernel, kernel),
        "weight",
        glorot_uniform(fan_in, fan_out),
    )?;
    let b = vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?;
    Ok(Conv2d::new(w, Some(b), cfg))
}

/// `nn.Linear(in_dim, out_dim, bias)` with PyTorch's default initialization: weight and bias
/// uniform in `±1/sqrt(in_dim)` (what `kaiming_uniform_(a=sqrt(5))` amounts to). Names
/// `weight (out, in)` and `bias (out)`.
pub fn linear_torch(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<crate::linear::Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let w = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let b = if bias {
        Some(vb.get_with_hints(out_dim, "bias", init)?)
    } else {
        None
    };
    Ok(crate::linear::Linear::new(w, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_any_order() -> Result<()> {
        let a = VarMap::new();
        let vb = seeded_var_builder(&a, 3, DType::F32, &Device::Cpu);
        let x1 = vb.get_with_hints((4, 5), "x", glorot_uniform(5, 4))?;
        let y1 = vb.get_with_hints(
            7,
            "y",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let b = VarMap::new();
        let vb = seeded_var_builder(&b, 3, DType::F32, &Device::Cpu);
        let y2 = vb.get_with_hints(
            7,
            "y",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let x2 = vb.get_with_hints((4, 5), "x", glorot_uniform(5, 4))?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        assert_eq!(y1.to_vec1::<f32>()?, y2.to_vec1::<f32>()?);
        let c = VarMap::new();
        let x3 = seeded_var_builder(&c, 4, DType::F32, &Device::Cpu).get_with_hints(
            (4, 5),
            "x",
            glorot_uniform(5, 4),
        )?;
        assert_ne!(x1.to_vec2::<f32>()?, x3.to_vec2::<f32>()?);
        // Reuse returns the existing variable; a different shape is an error.
        assert_eq!(vb.get((4, 5), "x")?.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        assert!(vb.get((5, 4), "x").is_err());
        Ok(())
    }

    #[test]
    fn glorot_bounds_and_moments() -> Result<()> {
        let t = sample_init(&glorot_uniform(300, 100), &Shape::from((100, 300)), 1)?;
        let a = (6.0f32 / 400.0).sqrt();
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|x| x.abs() <= a));
        let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        // Variance of U(-a, a) is a²/3; 30,000 samples put the estimate within ~2%.
        assert!((var / (a * a / 3.0) - 1.0).abs() < 0.03, "variance {var}");
        Ok(())
    }
}
