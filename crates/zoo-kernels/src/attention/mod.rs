//! Scaled dot-product attention that trains: a fused flash-attention kernel with a fused
//! backward pass, and a plain reference built from differentiable candle ops.
//!
//! [`flash_attention`] validates the inputs once, then picks a backend in one place (the
//! private `select_backend`): the fused CPU kernel for f32/f16/bf16 on the CPU; the fused CUDA
//! kernels (feature `cuda`, head_dim <= 128, f32/f16/bf16) on NVIDIA GPUs; the fused Metal
//! kernels (feature `metal`, same limits; unverified on hardware) on Apple GPUs; otherwise the
//! reference, with the reason reported by [`flash_attention_with_backend`]. The reference is
//! correct and differentiable, but it materializes the `(q_len × kv_len)` scores. On the CPU,
//! KV-cache decoding (at most 8 query rows per kv head) takes a row-major forward.
//!
//! Semantics shared by every backend:
//! - q `(batch, heads, q_len, head_dim)`, k and v `(batch, kv_heads, kv_len, head_dim)`;
//!   `kv_heads` must divide `heads` (grouped-query attention: query head `h` reads kv head
//!   `h / (heads / kv_heads)`).
//! - `causal` is aligned bottom-right, as in KV-cache decoding: query `i` sees keys
//!   `j <= i + kv_len - q_len`.
//! - A query that sees no key at all returns zeros and gets zero gradient, never NaN.
//!
//! On the CPU a NaN among a query's scores (NaN inputs) makes that query's output NaN, as in
//! PyTorch (tested; the GPU kernels are not held to this).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[doc(hidden)]
pub mod cuda_layout;
mod decode;
pub(crate) mod dropout;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod gpu_common;
#[cfg(feature = "metal")]
mod metal;
pub mod metal_layout;
mod microkernel;
mod op;
mod reference;
mod softmax;

pub use dropout::AttentionDropout;
pub use reference::{attention_probs, reference_attention, repeat_kv};

use candle_core::{DType, Device, Result, Tensor};

/// Which keys each query may attend to, in addition to `causal` and `kv_lengths`.
#[derive(Debug, Clone)]
pub enum AttentionMask {
    /// Integer tensor (u8/u32/i64), non-zero = may attend; broadcastable to
    /// `(batch, heads, q_len, kv_len)`. Note: PyTorch's `attn_mask` booleans mean the
    /// opposite (true = masked out); `MultiHeadAttention` converts.
    Allow(Tensor),
    /// Float tensor added to the scaled scores (`-inf` forbids a key); broadcastable to
    /// `(batch, heads, q_len, kv_len)`.
    Additive(Tensor),
}

/// Options of an attention call; `Default` is plain, unmasked attention with scale
/// `1/sqrt(head_dim)`.
#[derive(Debug, Clone, Default)]
pub struct AttentionOptions {
    /// Multiplies `q·kᵀ`; `None` is `1/sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Bottom-right aligned causal masking.
    pub causal: bool,
    /// An extra boolean or additive mask.
    pub mask: Option<AttentionMask>,
    /// Valid keys per batch row, `(batch,)` integers: keys `j >= len[b]` are padding.
    pub kv_lengths: Option<Tensor>,
    /// Dropout on the attention probabilities (training), applied inside the fused CPU kernel
    /// and its backward; the same seed gives the same mask on every backend.
    pub dropout: Option<AttentionDropout>,
}

/// The implementation an attention call ran on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionBackend {
    /// The fused, tiled CPU kernel (forward and backward).
    CpuFused,
    /// The fused CUDA kernels (forward and backward; feature `cuda`).
    CudaFused,
    /// The fused Metal kernels (forward and backward; feature `metal`; unverified on hardware
    /// until someone runs `cargo test --features metal -p zoo-kernels` on a Mac).
    MetalFused,
    /// The reference built from candle ops, and why it was used.
    Reference(String),
}

/// Largest head dimension the fused kernels serve.
pub const MAX_FUSED_HEAD_DIM: usize = 256;

/// Sizes of a validated call.
pub(crate) type Dims = cpu::Dims;

/// Fused scaled dot-product attention, `softmax(scale · q kᵀ + mask) v`, differentiable with
/// respect to q, k and v. See the module docs for shapes and semantics.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    Ok(flash_attention_with_backend(q, k, v, opts)?.0)
}

/// [`flash_attention`], also reporting which backend ran (so callers and tests can check that
/// the fast path is taken).
pub fn flash_attention_with_backend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, AttentionBackend)> {
    let dims = validate(q, k, v, opts)?;
    let backend = match select_backend(q, &dims) {
        AttentionBackend::CudaFused | AttentionBackend::MetalFused
            if opts.dropout.is_some_and(|d| d.p > 0.0) =>
        {
            AttentionBackend::Reference(
                "attention dropout is not in the GPU kernels yet: using the reference".into(),
            )
        }
        b => b,
    };
    match backend {
        AttentionBackend::CpuFused => Ok((op::cpu_fused(q, k, v, opts, dims)?, AttentionBackend::CpuFused)),
        #[cfg(feature = "cuda")]
        AttentionBackend::CudaFused => Ok((
            cuda::cuda_fused(q, k, v, opts, dims)?,
            AttentionBackend::CudaFused,
        )),
        #[cfg(feature = "metal")]
        AttentionBackend::MetalFused => Ok((
            metal::metal_fused(q, k, v, opts, dims)?,
            AttentionBackend::MetalFused,
        )),
        reference => Ok((reference::attention(q, k, v, opts, dims)?, reference)),
    }
}

/// The backend [`flash_attention`] uses for inputs like `q` with sizes `dims`.
fn select_backend(q: &Tensor, dims: &Dims) -> AttentionBackend {
    if !crate::fused_kernels() {
        return AttentionBackend::Reference(
            "fused kernels switched off (zoo_kernels::set_fused_kernels / CANDLE_ZOO_KERNELS=candle)".into(),
        );
    }
    if dims.d > MAX_FUSED_HEAD_DIM {
        return AttentionBackend::Reference(format!(
            "head_dim {} is above {MAX_FUSED_HEAD_DIM}, the largest the fused kernels serve",
            dims.d
        ));
    }
    match (q.device(), q.dtype()) {
        (Device::Cpu, DType::F32 | DType::F16 | DType::BF16) => AttentionBackend::CpuFused,
        (Device::Cpu, dt) => AttentionBackend::Reference(format!(
            "{dt:?} inputs: the fused CPU kernel computes in f32; the reference keeps {dt:?}"
        )),
        #[cfg(feature = "cuda")]
        (Device::Cuda(dev), dt) => match cuda::unsupported_reason(dev, dt, dims.d) {
            None => AttentionBackend::CudaFused,
            Some(reason) => AttentionBackend::Reference(reason),
        },
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda(_), _) => AttentionBackend::Reference(
            "candle-zoo was built without its `cuda` feature: no fused CUDA kernel, using the reference"
                .into(),
        ),
        #[cfg(feature = "metal")]
        (Device::Metal(dev), dt) => match metal::unsupported_reason(dev, dt, dims.d) {
            None => AttentionBackend::MetalFused,
            Some(reason) => AttentionBackend::Reference(reason),
        },
        #[cfg(not(feature = "metal"))]
        (Device::Metal(_), _) => AttentionBackend::Reference(
            "candle-zoo was built without its `metal` feature: no fused Metal kernel, using the reference"
                .into(),
        ),
    }
}

/// Checks shapes, dtypes, devices and options once, for every backend.
pub(crate) fn validate(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Dims> {
    let dims4 = |t: &Tensor, name: &str, what: &str| -> Result<(usize, usize, usize, usize)> {
        t.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "attention: {name} must be {what}, got shape {:?}",
                t.dims()
            ))
        })
    };
    let (b, h, nq, d) = dims4(q, "q", "(batch, heads, q_len, head_dim)")?;
    let (bk, hkv, nk, dk) = dims4(k, "k", "(batch, kv_heads, kv_len, head_dim)")?;
    if v.dims() != k.dims() {
        candle_core::bail!(
            "attention: v has shape {:?}, k has {:?}: they must match",
            v.dims(),
            k.dims()
        );
    }
    if bk != b || dk != d {
        candle_core::bail!(
            "attention: q {:?} and k {:?} disagree on batch or head_dim",
            q.dims(),
            k.dims()
        );
    }
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: kv_heads ({hkv}) must divide heads ({h}) for grouped-query attention");
    }
    if d == 0 {
        candle_core::bail!("attention: head_dim must be at least 1");
    }
    if !q.dtype().is_float() || k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!(
            "attention: q, k, v must share one float dtype, got {:?}, {:?}, {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    if !q.device().same_device(k.device()) || !q.device().same_device(v.device()) {
        candle_core::bail!("attention: q, k and v must be on the same device");
    }
    if let Some(dp) = &opts.dropout {
        if !(0.0..1.0).contains(&dp.p) {
            candle_core::bail!("attention: dropout probability {} must be in [0, 1)", dp.p);
        }
    }
    if let Some(s) = opts.scale {
        if !s.is_finite() {
            candle_core::bail!("attention: scale {s} must be finite");
        }
    }
    let target = [b, h, nq, nk];
    if let Some(mask) = &opts.mask {
        let (t, kind) = match mask {
            AttentionMask::Allow(t) => (t, "boolean"),
            AttentionMask::Additive(t) => (t, "additive"),
        };
        let padded = mask_dims4(t);
        if t.rank() > 4 || padded.iter().zip(target).any(|(&m, t)| m != 1 && m != t) {
            candle_core::bail!(
                "attention: the {kind} mask has shape {:?}, which does not broadcast to (batch, heads, q_len, kv_len) = {target:?}",
                t.dims()
            );
        }
        match mask {
            AttentionMask::Allow(t) if t.dtype().is_float() => candle_core::bail!(
                "attention: a boolean mask must be an integer tensor (u8/u32/i64, non-zero = may attend), got {:?}; use AttentionMask::Additive for float masks",
                t.dtype()
            ),
            AttentionMask::Additive(t) if !t.dtype().is_float() => {
                candle_core::bail!("attention: an additive mask must be a float tensor, got {:?}", t.dtype())
            }
            _ => {}
        }
        if !t.device().same_device(q.device()) {
            candle_core::bail!("attention: the mask must be on the same device as q");
        }
    }
    if let Some(lens) = &opts.kv_lengths {
        if lens.dims() != [b] || lens.dtype().is_float() {
            candle_core::bail!(
                "attention: kv_lengths must be integers of shape (batch,) = ({b},), got {:?} {:?}",
                lens.dtype(),
                lens.dims()
            );
        }
    }
    Ok(Dims { b, h, hkv, nq, nk, d })
}

/// A mask's shape left-padded with 1s to `(batch, heads, q_len, kv_len)` rank (masks are
/// broadcastable, so `(q_len, kv_len)` means `(1, 1, q_len, kv_len)`). Rank is checked by
/// [`validate`]; a rank above 4 keeps its own dims.
pub(crate) fn mask_dims4(t: &Tensor) -> Vec<usize> {
    std::iter::repeat_n(1, 4usize.saturating_sub(t.rank()))
        .chain(t.dims().iter().copied())
        .collect()
}

/// The effective scale of a call.
pub(crate) fn scale_of(opts: &AttentionOptions, d: usize) -> f64 {
    opts.scale.unwrap_or(1.0 / (d as f64).sqrt())
}

/// Key-padding lengths as host integers, checked against `kv_len`.
pub(crate) fn kv_lengths_host(opts: &AttentionOptions, nk: usize) -> Result<Option<Vec<usize>>> {
    let Some(lens) = &opts.kv_lengths else {
        return Ok(None);
    };
    let host = lens.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    host.iter()
        .map(|&l| {
            if l < 0 || l as usize > nk {
                candle_core::bail!("attention: kv_lengths value {l} is outside 0..={nk} (kv_len)")
            }
            Ok(l as usize)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests;
