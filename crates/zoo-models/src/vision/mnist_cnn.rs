//! The classic MNIST convolutional network, layer for layer the Keras model of the
//! TensorFlow tutorial this zoo started from.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use zoo_kernels::pool::max_pool2d;
use zoo_nn::init::{conv2d_glorot, linear_glorot};
use zoo_nn::Conv2d;

/// Sizes of [`MnistCnn`]; the defaults are the seed's network (93,322 parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MnistCnnConfig {
    /// Input channels (1 for grayscale).
    pub in_channels: usize,
    /// Output classes.
    pub num_classes: usize,
    /// Channels of the three 3×3 convolutions.
    pub channels: [usize; 3],
    /// Width of the hidden fully connected layer.
    pub hidden: usize,
    /// Input side length in pixels (28 for MNIST).
    pub image_side: usize,
}

impl Default for MnistCnnConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            num_classes: 10,
            channels: [32, 64, 64],
            hidden: 64,
            image_side: 28,
        }
    }
}

impl MnistCnnConfig {
    /// Side of the last feature map: 28 → 26 → 13 → 11 → 5 → 3.
    pub fn feature_side(&self) -> usize {
        let s = (self.image_side.saturating_sub(2)) / 2;
        let s = (s.saturating_sub(2)) / 2;
        s.saturating_sub(2)
    }

    /// Length of the flattened features fed to `fc1` (576 for the defaults).
    pub fn flat_features(&self) -> usize {
        self.channels[2] * self.feature_side() * self.feature_side()
    }
}

/// Conv2d(1→32, 3×3) ReLU, MaxPool 2, Conv2d(32→64, 3×3) ReLU, MaxPool 2,
/// Conv2d(64→64, 3×3) ReLU, Flatten (576), Linear(576→64) ReLU, Linear(64→10).
///
/// Input `(batch, 1, 28, 28)`, output logits `(batch, 10)`. Weights are named as a PyTorch
/// module with attributes `conv1..3`, `fc1`, `fc2` would name them, Glorot-uniform
/// initialized with zero biases (Keras' defaults).
#[derive(Debug, Clone)]
pub struct MnistCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
    cfg: MnistCnnConfig,
}

impl MnistCnn {
    /// Builds the network, creating or loading its weights through `vb`.
    pub fn new(cfg: &MnistCnnConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.feature_side() == 0 {
            candle_core::bail!(
                "MnistCnn: image_side {} is too small for three 3x3 convolutions and two 2x2 poolings (need at least 18)",
                cfg.image_side
            );
        }
        let [c1, c2, c3] = cfg.channels;
        let conv = Conv2dConfig::default();
        Ok(Self {
            conv1: conv2d_glorot(cfg.in_channels, c1, 3, conv, vb.pp("conv1"))?,
            conv2: conv2d_glorot(c1, c2, 3, conv, vb.pp("conv2"))?,
            conv3: conv2d_glorot(c2, c3, 3, conv, vb.pp("conv3"))?,
            fc1: linear_glorot(cfg.flat_features(), cfg.hidden, vb.pp("fc1"))?,
            fc2: linear_glorot(cfg.hidden, cfg.num_classes, vb.pp("fc2"))?,
            cfg: cfg.clone(),
        })
    }

    /// The configuration this network was built with.
    pub fn config(&self) -> &MnistCnnConfig {
        &self.cfg
    }

    /// The `hidden`-wide features before the classifier `fc2`, `(batch, hidden)`: what a new
    /// head is trained on when fine-tuning.
    pub fn features(&self, xs: &Tensor) -> Result<Tensor> {
        // zoo's max pool: candle 0.11.1's max_pool2d backward is wrong (see zoo_kernels::pool).
        // Convolution, bias and ReLU run as one fused op (zoo_nn::Conv2d::forward_relu).
        let xs = max_pool2d(&self.conv1.forward_relu(xs)?, 2)?;
        let xs = max_pool2d(&self.conv2.forward_relu(&xs)?, 2)?;
        let xs = self.conv3.forward_relu(&xs)?.flatten_from(1)?;
        self.fc1.forward(&xs)?.relu()
    }
}

impl Module for MnistCnn {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.features(xs)?)
    }
}
