//! Attention from plain candle ops: the definition the fused kernels are tested against, and
//! the fallback where no fused kernel serves. Every op has a backward pass (it uses
//! `candle_nn::ops::softmax`, not the gradient-less `softmax_last_dim`).

use super::{kv_lengths_host, mask_dims4, scale_of, validate, AttentionMask, AttentionOptions, Dims};
use candle_core::{DType, Device, Result, Tensor, D};

/// Reference attention with the same signature and semantics as
/// [`flash_attention`](super::flash_attention); materializes the `(q_len × kv_len)` scores.
/// Half-precision inputs are computed in f32 and returned in their dtype; f64 stays f64.
pub fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let dims = validate(q, k, v, opts)?;
    attention(q, k, v, opts, dims)
}

/// The attention probabilities `softmax(scale · q kᵀ + masks)`, `(batch, heads, q_len, kv_len)`,
/// in f32 for half-precision inputs (else in the input dtype), differentiable. Rows that see no
/// key are all zeros. For callers that need the weights themselves (`need_weights`, dropout on
/// the probabilities); `v` is only used to validate shapes.
pub fn attention_probs(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    let dims = validate(q, k, v, opts)?;
    probs(q, k, opts, dims)
}

/// Repeats each of the `kv_heads` heads of `t (batch, kv_heads, len, dim)` `group` times, so
/// grouped-query keys/values line up with `kv_heads · group` query heads.
pub fn repeat_kv(t: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(t.clone());
    }
    let (b, hkv, n, d) = t.dims4()?;
    t.unsqueeze(2)?
        .expand((b, hkv, group, n, d))?
        .reshape((b, hkv * group, n, d))
}

/// The working dtype: f32 for half-precision inputs, the input dtype otherwise.
fn work_dtype(dt: DType) -> DType {
    match dt {
        DType::F16 | DType::BF16 => DType::F32,
        dt => dt,
    }
}

fn probs(q: &Tensor, k: &Tensor, opts: &AttentionOptions, dims: Dims) -> Result<Tensor> {
    let work = work_dtype(q.dtype());
    let (q, k) = (
        q.to_dtype(work)?,
        repeat_kv(&k.to_dtype(work)?, dims.h / dims.hkv)?,
    );
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale_of(opts, dims.d))?;
    let scores = match additive_bias(opts, dims, work, q.device())? {
        Some(bias) => scores.broadcast_add(&bias)?,
        None => scores,
    };
    // Rows that see no key: softmax of all -inf is NaN. Give them zeros instead (finite
    // scores, then multiply the probabilities by 0), which also zeroes their gradient.
    let visible = scores.max_keepdim(D::Minus1)?.ne(f64::NEG_INFINITY)?;
    let safe = visible
        .broadcast_as(scores.shape())?
        .where_cond(&scores, &scores.zeros_like()?)?;
    candle_nn::ops::softmax(&safe, D::Minus1)?.broadcast_mul(&visible.to_dtype(work)?)
}

pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    dims: Dims,
) -> Result<Tensor> {
    let mut p = probs(q, k, opts, dims)?;
    if let Some(dp) = opts.dropout.filter(|d| d.p > 0.0) {
        p = p.broadcast_mul(
            &dp.mask_tensor(dims, &Device::Cpu)?
                .to_device(p.device())?
                .to_dtype(p.dtype())?,
        )?;
    }
    let v = repeat_kv(&v.to_dtype(p.dtype())?, dims.h / dims.hkv)?;
    p.matmul(&v.contiguous()?)?.to_dtype(q.dtype())
}

/// The causal, key-padding and user masks as one additive tensor broadcastable to
/// `(batch, heads, q_len, kv_len)`, or `None` when nothing is masked.
pub(crate) fn additive_bias(
    opts: &AttentionOptions,
    dims: Dims,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    let Dims { b, nq, nk, .. } = dims;
    let mut parts: Vec<Tensor> = Vec::new();
    if opts.causal {
        let bias: Vec<f32> = (0..nq)
            .flat_map(|i| (0..nk).map(move |j| if j + nq <= i + nk { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        parts.push(Tensor::from_vec(bias, (1, 1, nq, nk), device)?);
    }
    if let Some(lens) = kv_lengths_host(opts, nk)? {
        let bias: Vec<f32> = lens
            .iter()
            .flat_map(|&l| (0..nk).map(move |j| if j < l { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        parts.push(Tensor::from_vec(bias, (b, 1, 1, nk), device)?);
    }
    if let Some(mask) = &opts.mask {
        let t = match mask {
            AttentionMask::Allow(t) => {
                let allowed = t.ne(0u32)?;
                allowed.where_cond(
                    &t.zeros_like()?.to_dtype(DType::F32)?,
                    &Tensor::full(f32::NEG_INFINITY, t.shape(), device)?,
                )?
            }
            AttentionMask::Additive(t) => t.to_dtype(DType::F32)?,
        };
        parts.push(t.reshape(mask_dims4(&t))?);
    }
    let mut bias: Option<Tensor> = None;
    for p in parts {
        bias = Some(match bias {
            None => p,
            Some(acc) => acc.broadcast_add(&p)?,
        });
    }
    bias.map(|t| t.to_dtype(dtype)).transpose()
}
