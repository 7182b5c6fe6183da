//! Mask helpers with PyTorch's conventions.

use candle_core::{DType, Device, Result, Tensor};

/// `nn.Transformer.generate_square_subsequent_mask(len)`: a float `(len, len)` mask with `-inf`
/// above the diagonal and 0 elsewhere (position i may attend to j <= i).
pub fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len * len)
        .map(|i| if i % len > i / len { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (len, len), device)?.to_dtype(dtype)
}

/// A key-padding mask from sequence lengths: `(batch, max_len)` u8, 1 where the position is
/// padding (PyTorch's `True` = ignore), as `MultiHeadAttention` and the Transformer layers take.
pub fn padding_mask(lengths: &[usize], max_len: usize, device: &Device) -> Result<Tensor> {
    if let Some(&l) = lengths.iter().find(|&&l| l > max_len) {
        candle_core::bail!("padding_mask: length {l} is longer than max_len {max_len}");
    }
    let v: Vec<u8> = lengths
        .iter()
        .flat_map(|&l| (0..max_len).map(move |j| (j >= l) as u8))
        .collect();
    Tensor::from_vec(v, (lengths.len(), max_len), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_pytorch() -> Result<()> {
        let m = causal_mask(3, DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0., inf, inf], vec![0., 0., inf], vec![0., 0., 0.]]);
        let p = padding_mask(&[2, 0, 3], 3, &Device::Cpu)?.to_vec2::<u8>()?;
        assert_eq!(p, vec![vec![0, 0, 1], vec![1, 1, 1], vec![0, 0, 0]]);
        assert!(padding_mask(&[4], 3, &Device::Cpu).is_err());
        Ok(())
    }
}
