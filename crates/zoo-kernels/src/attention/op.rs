//! The fused CPU attention as a candle `CustomOp3`: the forward runs the tiled kernel and
//! keeps the row log-sum-exp (O(batch·heads·q_len) floats) in the op; `bwd` runs the fused
//! backward kernel from it. No `(q_len × kv_len)` matrix exists at any point.

use super::cpu::{self, MaskRef, Params};
use super::{kv_lengths_host, mask_dims4, scale_of, AttentionMask, AttentionOptions, Dims};
use crate::host::{lock_state, saved};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};
use std::sync::Mutex;

/// An additive mask on the host with broadcast strides over `(batch, heads, q_len, kv_len)`.
struct HostMask {
    data: Vec<f32>,
    strides: [usize; 4],
}

impl HostMask {
    fn new(mask: &AttentionMask) -> Result<Self> {
        let t = match mask {
            AttentionMask::Allow(t) | AttentionMask::Additive(t) => t,
        };
        let dims = mask_dims4(t);
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let data = match mask {
            AttentionMask::Allow(_) => values
                .into_iter()
                .map(|x| if x != 0.0 { 0.0 } else { f32::NEG_INFINITY })
                .collect(),
            AttentionMask::Additive(_) => values,
        };
        let mut strides = [0usize; 4];
        let mut acc = 1;
        for i in (0..4).rev() {
            strides[i] = if dims[i] == 1 { 0 } else { acc };
            acc *= dims[i];
        }
        Ok(Self { data, strides })
    }
}

struct FlashAttention {
    dims: Dims,
    scale: f32,
    causal: bool,
    kv_len: Option<Vec<usize>>,
    mask: Option<HostMask>,
    dropout: Option<super::dropout::DropoutParams>,
    /// Row log-sum-exp saved by the forward pass for the backward pass.
    lse: Mutex<Option<Vec<f32>>>,
}

impl FlashAttention {
    fn params(&self) -> Params<'_> {
        Params {
            dims: self.dims,
            scale: self.scale,
            causal: self.causal,
            kv_len: self.kv_len.as_deref(),
            mask: self.mask.as_ref().map(|m| MaskRef {
                data: &m.data,
                strides: m.strides,
            }),
            dropout: self.dropout,
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    crate::host::f32_slice(s, l, "flash attention", name)
}

/// A read lock on a CPU f32 tensor's data, and where its elements are.
struct HostView<'a> {
    guard: StorageRef<'a>,
    layout: &'a Layout,
    name: &'static str,
}

impl<'a> HostView<'a> {
    fn new(t: &'a Tensor, name: &'static str) -> Self {
        let (guard, layout) = t.storage_and_layout();
        Self { guard, layout, name }
    }

    fn slice(&self) -> Result<&[f32]> {
        match &*self.guard {
            Storage::Cpu(s) => f32_slice(s, self.layout, self.name),
            _ => candle_core::bail!("flash attention: {} is not on the CPU", self.name),
        }
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "zoo-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            f32_slice(s1, l1, "q")?,
            f32_slice(s2, l2, "k")?,
            f32_slice(s3, l3, "v")?,
        );
        let (out, lse) = cpu::forward(q, k, v, &self.params());
        *lock_state(&self.lse, "flash attention")? = Some(lse);
        let Dims { b, h, nq, d, .. } = self.dims;
        Ok((CpuStorage::F32(out), Shape::from((b, h, nq, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse_guard = lock_state(&self.lse, "flash attention")?;
        let lse = saved(&lse_guard, "flash attention")?;
        let dout = grad_res.to_dtype(DType::F32)?.contiguous()?;
        let views = [
            HostView::new(q, "q"),
            HostView::new(k, "k"),
            HostView::new(v, "v"),
            HostView::new(res, "output"),
            HostView::new(&dout, "output gradient"),
        ];
        let [qs, ks, vs, os, dos] = [0, 1, 2, 3, 4].map(|i| views[i].slice());
        let (dq, dk, dv) = cpu::backward(qs?, ks?, vs?, os?, dos?, lse, &self.params());
        drop(views);
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}

/// Runs the fused CPU kernel: half-precision inputs are computed in f32 and converted back.
pub(crate) fn cpu_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    dims: Dims,
) -> Result<Tensor> {
    let in_dtype = q.dtype();
    let prep = |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::F32)?.contiguous() };
    let op = FlashAttention {
        dims,
        scale: scale_of(opts, dims.d) as f32,
        causal: opts.causal,
        kv_len: kv_lengths_host(opts, dims.nk)?,
        mask: opts.mask.as_ref().map(HostMask::new).transpose()?,
        dropout: opts.dropout.filter(|d| d.p > 0.0).map(|d| d.params()),
        lse: Mutex::new(None),
    };
    let out = prep(q)?.apply_op3(&prep(k)?, &prep(v)?, op)?;
    out.to_dtype(in_dtype)
}
