//! The gradient-flow check every model of the zoo passes.
//!
//! candle-nn 0.11's fused `LayerNorm`/`RmsNorm`, `softmax_last_dim` and `rope` have no
//! backward pass: parameters upstream of them silently get no gradient and never train.
//! This check catches that, and any other disconnected parameter, in one forward/backward.

use crate::error::{Result, TrainError};
use crate::optim::named_params;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;

/// Backpropagates `loss` and checks that every trainable variable of `varmap` receives a
/// gradient that is finite and not identically zero. Returns each parameter's gradient
/// L2 norm, sorted by name; the error lists every parameter that failed and why.
pub fn check_gradient_flow(loss: &Tensor, varmap: &VarMap) -> Result<Vec<(String, f64)>> {
    let grads = loss.backward()?;
    let mut norms = Vec::new();
    let mut failures = Vec::new();
    for (name, var) in named_params(varmap)? {
        match grads.get(var.as_tensor()) {
            None => failures.push(format!(
                "{name}: no gradient (disconnected, or behind an op without backward)"
            )),
            Some(g) => {
                let g = g.to_dtype(DType::F32)?;
                let finite = g.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
                let norm = (g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64).sqrt();
                if !finite {
                    failures.push(format!("{name}: gradient has NaN or infinite values"));
                } else if norm == 0.0 {
                    failures.push(format!("{name}: gradient is exactly zero"));
                }
                norms.push((name, norm));
            }
        }
    }
    if failures.is_empty() {
        Ok(norms)
    } else {
        Err(TrainError::Config(format!(
            "gradient flow check failed for {} parameter(s): {}",
            failures.len(),
            failures.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn detects_a_parameter_behind_an_op_without_backward() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let fc = candle_nn::linear(4, 3, vb.pp("fc"))?;
        let x = Tensor::arange(0f32, 8., &Device::Cpu)?.reshape((2, 4))?;
        let logits = fc.forward(&x)?;
        assert_eq!(
            check_gradient_flow(&candle_nn::ops::softmax(&logits, 1)?.sqr()?.sum_all()?, &vm)?.len(),
            2
        );
        // candle-nn's fused softmax has no backward: the check must name both parameters.
        let err = check_gradient_flow(&candle_nn::ops::softmax_last_dim(&logits)?.sqr()?.sum_all()?, &vm)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fc.weight: no gradient") && err.contains("fc.bias"),
            "{err}"
        );
        Ok(())
    }
}
