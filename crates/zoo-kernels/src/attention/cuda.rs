//! Host side of the fused CUDA attention (`kernels/cuda/flash_attention.cu`, feature `cuda`).
//!
//! The forward is a candle `CustomOp3` that writes the output and keeps the row log-sum-exp
//! (`(batch, heads, q_len)` f32) on the GPU; its `bwd` runs three kernels (row term `delta`,
//! then dQ and dK/dV, each recomputing the probabilities from the log-sum-exp) through a second
//! op that returns `[dq | dk | dv]` in one buffer. f32/f16/bf16 stay in their dtype in memory and
//! are computed in f32. Every launch goes through cudarc's checked API, so a failed launch is a
//! candle error, not a crash.
//!
//! The tiles live in dynamic shared memory (f32, up to ~146 KiB at head_dim 128), which needs
//! an opt-in above 48 KiB and a GPU that offers enough: [`unsupported_reason`] checks it, and
//! the dispatcher falls back to the reference with that reason otherwise.

use super::gpu_common::{split_grads, DeviceMask};
use super::{kv_lengths_host, scale_of, AttentionOptions, Dims};
use crate::host::{lock_state, saved};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use std::sync::Mutex;

/// PTX of `kernels/cuda/flash_attention.cu`, built by `build.rs` for `CUDA_COMPUTE_CAP`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attention.ptx"));
/// Name under which candle caches the loaded module.
const MODULE: &str = "zoo_flash_attention";

use super::cuda_layout::{smem_bytes, Kernel, DEFAULT_SMEM, MAX_HEAD_DIM};
const BM: usize = super::cuda_layout::BM;
const BN: usize = super::cuda_layout::BN;
const THREADS: u32 = super::cuda_layout::THREADS;

/// Whether dtype `dt` runs on the tensor-core kernels.
fn tensor_cores(dt: DType) -> bool {
    matches!(dt, DType::F16 | DType::BF16)
}

/// Why the CUDA kernels cannot serve a call, or `None` when they can.
pub(crate) fn unsupported_reason(dev: &CudaDevice, dtype: DType, d: usize) -> Option<String> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Some(format!(
            "{dtype:?} inputs: the CUDA kernels take f32, f16 and bf16"
        ));
    }
    if d > MAX_HEAD_DIM {
        return Some(format!(
            "head_dim {d} is above {MAX_HEAD_DIM}, the largest the CUDA kernels serve"
        ));
    }
    let tc = tensor_cores(dtype);
    let need = [Kernel::Forward, Kernel::Dq, Kernel::Dkdv]
        .map(|k| smem_bytes(k, tc, d))
        .into_iter()
        .max()
        .unwrap_or(0);
    let attr = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
    match dev.cuda_stream().context().attribute(attr) {
        Ok(have) if (have as usize) >= need => None,
        Ok(have) => Some(format!(
            "head_dim {d} needs {need} bytes of shared memory per block; this GPU offers {have}"
        )),
        Err(e) => Some(format!("could not read the GPU's shared-memory limit: {e}")),
    }
}

/// Element types the kernels take: f32, f16, bf16.
trait Elem: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType {}
impl<T: CudaDType + DeviceRepr + ValidAsZeroBits + WithDType> Elem for T {}

/// Scalar kernel arguments shared by the forward and backward kernels (same order as the
/// `ZOO_SHAPE_PARAMS` of the .cu file).
struct ShapeArgs {
    h: i32,
    hkv: i32,
    nq: i32,
    nk: i32,
    d: i32,
    scale: f32,
    causal: i32,
    has_mask: i32,
    strides: [i64; 4],
}

/// Reads a contiguous CUDA tensor's storage as a typed slice view and runs `f` on it.
fn with_cuda_slice<T: CudaDType, R>(
    t: &Tensor,
    name: &str,
    f: impl FnOnce(&CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("flash attention: {name} is not on a CUDA device")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("flash attention: {name} must be contiguous")
    };
    f(&s.as_cuda_slice::<T>()?.slice(start..end))
}

fn view_of<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, name: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("flash attention: {name} must be contiguous")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// Loads kernel `name` and allows it `smem` bytes of dynamic shared memory.
fn kernel(dev: &CudaDevice, name: &str, smem: usize) -> Result<CudaFunction> {
    let func = dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function();
    if smem > DEFAULT_SMEM {
        let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        func.set_attribute(attr, smem as i32).w()?;
    }
    Ok(func)
}

fn grid(x: usize, y: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// Kernel name suffix: the tensor-core variants for f16/bf16, the f32-FMA ones for f32.
fn suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::F16 => "tc_f16",
        DType::BF16 => "tc_bf16",
        other => candle_core::bail!("flash attention: the CUDA kernels do not take {other:?}"),
    })
}

struct CudaFlashAttention {
    dims: Dims,
    scale: f32,
    causal: bool,
    kv_len: Vec<i32>,
    mask: Option<DeviceMask>,
    /// Row log-sum-exp of the forward pass, kept on the GPU for the backward pass.
    lse: Mutex<Option<CudaSlice<f32>>>,
}

impl CudaFlashAttention {
    fn shape_args(&self) -> ShapeArgs {
        let Dims {
            h, hkv, nq, nk, d, ..
        } = self.dims;
        ShapeArgs {
            h: h as i32,
            hkv: hkv as i32,
            nq: nq as i32,
            nk: nk as i32,
            d: d as i32,
            scale: self.scale,
            causal: self.causal as i32,
            has_mask: self.mask.is_some() as i32,
            strides: self.mask.as_ref().map_or([0; 4], |m| m.strides),
        }
    }

    /// Runs `f` with the mask's device slice, or a 1-element dummy when there is no mask.
    fn with_mask<R>(&self, dev: &CudaDevice, f: impl FnOnce(&CudaView<'_, f32>) -> Result<R>) -> Result<R> {
        match &self.mask {
            Some(m) => with_cuda_slice::<f32, R>(&m.tensor, "mask", f),
            None => {
                let dummy = dev.alloc_zeros::<f32>(1)?;
                f(&dummy.slice(..))
            }
        }
    }

    fn forward<T: Elem>(
        &self,
        dev: &CudaDevice,
        (qs, ql): (&CudaStorage, &Layout),
        (ks, kl): (&CudaStorage, &Layout),
        (vs, vl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let Dims { b, h, nq, d, .. } = self.dims;
        let (q, k, v) = (
            view_of::<T>(qs, ql, "q")?,
            view_of::<T>(ks, kl, "k")?,
            view_of::<T>(vs, vl, "v")?,
        );
        let rows = b * h * nq;
        let mut out = dev.alloc_zeros::<T>(rows * d)?;
        let mut lse = dev.alloc_zeros::<f32>(rows.max(1))?;
        if rows > 0 {
            let stream = dev.cuda_stream();
            let kv_len = dev.clone_htod(&self.kv_len)?;
            let smem = smem_bytes(Kernel::Forward, tensor_cores(T::DTYPE), d);
            let func = kernel(dev, &format!("zoo_flash_fwd_{}", suffix(T::DTYPE)?), smem)?;
            let a = self.shape_args();
            self.with_mask(dev, |mask| {
                let mut builder = stream.launch_builder(&func);
                builder
                    .arg(&q)
                    .arg(&k)
                    .arg(&v)
                    .arg(&mut out)
                    .arg(&mut lse)
                    .arg(&kv_len)
                    .arg(mask);
                push_shape(&mut builder, &a);
                // SAFETY: the argument list matches the kernel's signature; every buffer holds
                // the elements the grid addresses (checked shapes, contiguous views).
                unsafe { builder.launch(grid(nq.div_ceil(BM), b * h, smem)) }.w()?;
                Ok(())
            })?;
        }
        *lock_state(&self.lse, "flash attention")? = Some(lse);
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

fn push_shape<'a>(b: &mut LaunchArgs<'a>, a: &'a ShapeArgs) {
    b.arg(&a.h)
        .arg(&a.hkv)
        .arg(&a.nq)
        .arg(&a.nk)
        .arg(&a.d)
        .arg(&a.scale)
        .arg(&a.causal)
        .arg(&a.has_mask);
    for s in &a.strides {
        b.arg(s);
    }
}

impl CustomOp3 for CudaFlashAttention {
    fn name(&self) -> &'static str {
        "zoo-flash-attention-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash attention: the CUDA op got CPU tensors (dispatch error)")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = qs.device().clone();
        let args = ((qs, ql), (ks, kl), (vs, vl));
        let out = match qs.dtype() {
            DType::F32 => self.forward::<f32>(&dev, args.0, args.1, args.2)?,
            DType::F16 => self.forward::<half::f16>(&dev, args.0, args.1, args.2)?,
            DType::BF16 => self.forward::<half::bf16>(&dev, args.0, args.1, args.2)?,
            other => candle_core::bail!("flash attention: the CUDA kernels do not take {other:?}"),
        };
        let Dims { b, h, nq, d, .. } = self.dims;
        Ok((out, Shape::from((b, h, nq, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = lock_state(&self.lse, "flash attention")?;
        let lse = saved(&guard, "flash attention")?;
        let dout = grad_res.to_dtype(q.dtype())?.contiguous()?;
        let op = CudaFlashAttentionBackward {
            fwd: self,
            q,
            k,
            v,
            out: res,
            lse,
        };
        split_grads(&dout.apply_op1_no_bwd(&op)?, q, k, v)
    }
}

/// `dout -> [dq | dk | dv]` (flattened, input dtype), reading q, k, v, the output and the
/// log-sum-exp of the forward pass.
struct CudaFlashAttentionBackward<'a> {
    fwd: &'a CudaFlashAttention,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    lse: &'a CudaSlice<f32>,
}

impl CudaFlashAttentionBackward<'_> {
    fn run<T: Elem>(&self, dev: &CudaDevice, dout: &CudaStorage, dl: &Layout) -> Result<CudaStorage> {
        let Dims { b, h, hkv, nq, nk, d } = self.fwd.dims;
        let (nqe, nke, rows) = (b * h * nq * d, b * hkv * nk * d, b * h * nq);
        let dout = view_of::<T>(dout, dl, "output gradient")?;
        let mut grads = dev.alloc_zeros::<T>(nqe + 2 * nke)?;
        if rows == 0 || nk == 0 {
            return Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()));
        }
        let sfx = suffix(T::DTYPE)?;
        let stream = dev.cuda_stream();
        let a = self.fwd.shape_args();
        let kv_len = dev.clone_htod(&self.fwd.kv_len)?;
        let mut delta = dev.alloc_zeros::<f32>(rows)?;
        with_cuda_slice::<T, ()>(self.out, "output", |o| {
            let plain = sfx.trim_start_matches("tc_");
            let func = kernel(dev, &format!("zoo_flash_bwd_delta_{plain}"), 0)?;
            let (rows_i, d_i) = (rows as i64, d as i32);
            let mut builder = stream.launch_builder(&func);
            builder.arg(o).arg(&dout).arg(&mut delta).arg(&rows_i).arg(&d_i);
            // SAFETY: matches `zoo_flash_bwd_delta_*`; one thread per row of o and dout.
            unsafe { builder.launch(grid(rows.div_ceil(THREADS as usize), 1, 0)) }.w()?;
            Ok(())
        })?;
        let (mut dq, mut dkv) = grads.split_at_mut(nqe);
        let (mut dk, mut dv) = dkv.split_at_mut(nke);
        with_cuda_slice::<T, ()>(self.q, "q", |q| {
            with_cuda_slice::<T, ()>(self.k, "k", |k| {
                with_cuda_slice::<T, ()>(self.v, "v", |v| {
                    self.fwd.with_mask(dev, |mask| {
                        let smem = smem_bytes(Kernel::Dq, tensor_cores(T::DTYPE), d);
                        let func = kernel(dev, &format!("zoo_flash_bwd_dq_{sfx}"), smem)?;
                        let mut builder = stream.launch_builder(&func);
                        builder.arg(q).arg(k).arg(v).arg(&dout).arg(self.lse).arg(&delta);
                        builder.arg(&mut dq).arg(&kv_len).arg(mask);
                        push_shape(&mut builder, &a);
                        // SAFETY: matches `zoo_flash_bwd_dq_*`; buffers sized by the checked dims.
                        unsafe { builder.launch(grid(nq.div_ceil(BM), b * h, smem)) }.w()?;

                        let smem = smem_bytes(Kernel::Dkdv, tensor_cores(T::DTYPE), d);
                        let func = kernel(dev, &format!("zoo_flash_bwd_dkdv_{sfx}"), smem)?;
                        let mut builder = stream.launch_builder(&func);
                        builder.arg(q).arg(k).arg(v).arg(&dout).arg(self.lse).arg(&delta);
                        builder.arg(&mut dk).arg(&mut dv).arg(&kv_len).arg(mask);
                        push_shape(&mut builder, &a);
                        // SAFETY: matches `zoo_flash_bwd_dkdv_*`; buffers sized by the checked dims.
                        unsafe { builder.launch(grid(nk.div_ceil(BN), b * hkv, smem)) }.w()?;
                        Ok(())
                    })
                })
            })
        })?;
        Ok(CudaStorage::wrap_cuda_slice(grads, dev.clone()))
    }
}

impl CustomOp1 for CudaFlashAttentionBackward<'_> {
    fn name(&self) -> &'static str {
        "zoo-flash-attention-cuda-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash attention: the CUDA backward got a CPU tensor (dispatch error)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let grads = match s.dtype() {
            DType::F32 => self.run::<f32>(&dev, s, l)?,
            DType::F16 => self.run::<half::f16>(&dev, s, l)?,
            DType::BF16 => self.run::<half::bf16>(&dev, s, l)?,
            other => candle_core::bail!("flash attention: the CUDA kernels do not take {other:?}"),
        };
        let n = self.q.elem_count() + 2 * self.k.elem_count();
        Ok((grads, Shape::from(n)))
    }
}

/// Runs the fused CUDA kernels (inputs made contiguous; dtype kept).
pub(crate) fn cuda_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    dims: Dims,
) -> Result<Tensor> {
    let kv_len = match kv_lengths_host(opts, dims.nk)? {
        Some(l) => l.into_iter().map(|x| x as i32).collect(),
        None => vec![dims.nk as i32; dims.b],
    };
    let op = CudaFlashAttention {
        dims,
        scale: scale_of(opts, dims.d) as f32,
        causal: opts.causal,
        kv_len,
        mask: opts.mask.as_ref().map(DeviceMask::new).transpose()?,
        lse: Mutex::new(None),
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
