//! Image classifiers for 28×28 grayscale inputs `(batch, 1, 28, 28)`.

mod linear_classifier;
mod mlp;
mod mnist_cnn;

pub use linear_classifier::{LinearClassifier, LinearClassifierConfig};
pub use mlp::{Mlp, MlpConfig};
pub use mnist_cnn::{MnistCnn, MnistCnnConfig};

/// Counts the scalars in a set of parameters (e.g. `varmap.all_vars()`).
pub fn parameter_count(vars: &[candle_core::Var]) -> usize {
    vars.iter().map(|v| v.elem_count()).sum()
}
