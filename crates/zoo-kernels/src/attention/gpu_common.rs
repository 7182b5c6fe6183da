//! What the CUDA and Metal hosts share: the attention mask as their kernels read it (one additive
//! f32 tensor on the device, broadcast to `(batch, heads, q_len, kv_len)` through four strides),
//! and the split of their backward op's single `[dq | dk | dv]` buffer.

use super::{mask_dims4, AttentionMask};
use candle_core::{DType, Result, Tensor};

/// An additive f32 mask on the GPU with broadcast strides over `(batch, heads, q_len, kv_len)`.
pub(crate) struct DeviceMask {
    /// The contiguous f32 mask.
    pub tensor: Tensor,
    /// Element strides over (batch, head, query, key).
    pub strides: [i64; 4],
}

impl DeviceMask {
    /// Converts `mask` (on the GPU already) to the kernels' form.
    pub(crate) fn new(mask: &AttentionMask) -> Result<Self> {
        let (t, allow) = match mask {
            AttentionMask::Allow(t) => (t, true),
            AttentionMask::Additive(t) => (t, false),
        };
        let dims = mask_dims4(t);
        let t4 = t.reshape(dims.as_slice())?;
        let tensor = if allow {
            let zeros = Tensor::zeros(dims.as_slice(), DType::F32, t.device())?;
            let forbid = Tensor::full(f32::NEG_INFINITY, dims.as_slice(), t.device())?;
            t4.to_dtype(DType::F32)?.ne(0f64)?.where_cond(&zeros, &forbid)?
        } else {
            t4.to_dtype(DType::F32)?
        }
        .contiguous()?;
        let mut strides = [0i64; 4];
        let mut acc = 1i64;
        for i in (0..4).rev() {
            strides[i] = if dims[i] == 1 { 0 } else { acc };
            acc *= dims[i] as i64;
        }
        Ok(Self { tensor, strides })
    }
}

/// The gradients of q, k and v from the flattened `[dq | dk | dv]` a backward kernel op returns.
pub(crate) fn split_grads(
    all: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (nqe, nke) = (q.elem_count(), k.elem_count());
    Ok((
        Some(all.narrow(0, 0, nqe)?.reshape(q.shape())?),
        Some(all.narrow(0, nqe, nke)?.reshape(k.shape())?),
        Some(all.narrow(0, nqe + nke, nke)?.reshape(v.shape())?),
    ))
}
