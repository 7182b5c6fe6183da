//! `nn.Conv2d` on the zoo's convolution kernel, with an optional fused ReLU.
//!
//! Same weights, names (`weight (out, in/groups, k, k)`, `bias (out)`) and results as
//! candle-nn's `Conv2d` and PyTorch's; training is faster because the backward pass is
//! [`zoo_kernels::conv::conv2d`]'s (two matrix products per image) instead of candle's
//! transposed-convolution loops.

use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2dConfig;
use zoo_kernels::conv::{conv2d, Conv2dOptions};

/// A 2-D convolution over `(batch, channels, height, width)` inputs.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

impl Conv2d {
    /// A layer from `weight (out, in / groups, kh, kw)`, an optional `bias (out)` and candle-nn's
    /// configuration (padding, stride, dilation, groups).
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self { weight, bias, cfg }
    }

    /// The weight, `(out, in / groups, kh, kw)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(out,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Padding, stride, dilation and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.cfg
    }

    /// `relu(conv(x) + bias)` as one op: the activation and its gradient mask run inside the
    /// convolution kernel.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let c = &self.cfg;
        if c.groups == 1 {
            let opts = Conv2dOptions {
                stride: c.stride,
                padding: c.padding,
                dilation: c.dilation,
                relu,
            };
            return conv2d(x, &self.weight, self.bias.as_ref(), &opts);
        }
        // Grouped convolutions: candle's op (the zoo kernel serves one group).
        let mut y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(y)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candle_nn_conv2d_including_groups() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 9, 7), &dev)?;
        for groups in [1, 2] {
            let cfg = Conv2dConfig {
                padding: 1,
                stride: 2,
                dilation: 1,
                groups,
                ..Default::default()
            };
            let w = Tensor::randn(0f32, 0.3, (6, 4 / groups, 3, 3), &dev)?;
            let b = Tensor::randn(0f32, 0.3, 6, &dev)?;
            let ours = Conv2d::new(w.clone(), Some(b.clone()), cfg);
            let theirs = candle_nn::Conv2d::new(w, Some(b), cfg);
            let want = theirs.forward(&x)?;
            for (got, want) in [
                (ours.forward(&x)?, want.clone()),
                (ours.forward_relu(&x)?, want.relu()?),
            ] {
                let e = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(e < 1e-5, "groups {groups}: {e}");
            }
        }
        let bad = Conv2d::new(
            Tensor::zeros((2, 3, 3, 3), DType::F32, &dev)?,
            None,
            Default::default(),
        );
        assert!(bad.forward(&x).is_err());
        Ok(())
    }
}
