//! Gradient clipping by global norm (PyTorch's `clip_grad_norm_`).

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// Global L2 norm of the gradients of `params` (those without a gradient count as zero).
pub fn grad_norm(grads: &GradStore, params: &[(String, Var)]) -> Result<f64> {
    let sums = params
        .iter()
        .filter_map(|(_, v)| grads.get(v.as_tensor()))
        .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    if sums.is_empty() {
        return Ok(0.0);
    }
    Ok((Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt())
}

/// Scales all gradients by `max_norm / norm` when their global norm exceeds `max_norm`.
/// Returns the norm before clipping, as PyTorch does.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, params)?;
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for (_, v) in params {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * scale)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clips_to_max_norm_and_leaves_small_gradients() -> Result<()> {
        let a = Var::new(&[3.0f32, 0.0], &Device::Cpu)?;
        let b = Var::new(&[4.0f32], &Device::Cpu)?;
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        // Loss = Σ x²/2: gradients equal the values, global norm 5.
        let loss = ((a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)? * 0.5)?;
        let mut grads = loss.backward()?;
        assert!((clip_grad_norm(&mut grads, &params, 10.0)? - 5.0).abs() < 1e-6);
        assert!((grad_norm(&grads, &params)? - 5.0).abs() < 1e-6);
        assert!((clip_grad_norm(&mut grads, &params, 1.0)? - 5.0).abs() < 1e-6);
        assert!((grad_norm(&grads, &params)? - 1.0).abs() < 1e-5);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        assert!((ga[0] - 0.6).abs() < 1e-5 && ga[1] == 0.0);
        Ok(())
    }
}
