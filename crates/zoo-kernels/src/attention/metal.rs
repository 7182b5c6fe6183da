//! Host side of the fused Metal attention (`kernels/metal/flash_attention.metal`, feature
//! `metal`). Structured like the CUDA host code (`cuda.rs`), call for call.
//!
//! UNVERIFIED ON HARDWARE: this file cannot be compiled on the Linux machines this project is
//! built and tested on (candle's `metal` feature links Apple frameworks). The kernels it launches
//! are tested on every machine through a CPU emulator (`tests/metal_emulated.rs`); this host code
//! is checked only when someone runs `cargo test --features metal -p zoo-kernels` on a Mac.
//!
//! The forward is a candle `CustomOp3` that writes the output and keeps the row log-sum-exp
//! (`(batch, heads, q_len)` f32) in a GPU buffer; its `bwd` runs three kernels (row term
//! `delta`, then dQ and dK/dV, each recomputing the probabilities from the log-sum-exp) through
//! a second op that returns `[dq | dk | dv]` in one buffer. f32/f16/bf16 stay in their dtype in
//! memory and are computed in f32. The source is compiled once per device, at first use, with
//! fast math off (the kernels rely on IEEE infinities), and the pipelines are cached.

use super::gpu_common::{split_grads, DeviceMask};
use super::metal_layout::{tg_bytes, Kernel, DQ_BM, FWD_BM, KV_BN, MAX_HEAD_DIM, MAX_TG_MEMORY, THREADS};
use super::{kv_lengths_host, scale_of, AttentionOptions, Dims};
use crate::host::{lock_state, saved};
use candle_core::backend::BackendStorage;
use candle_core::metal_backend::DeviceId;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, MetalDevice, MetalStorage, Result, Shape, Storage,
    Tensor,
};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline, Library};
use objc2_metal::{MTLCompileOptions, MTLSize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The kernel source, compiled at run time by the Metal driver.
const SOURCE: &str = include_str!("../../../../kernels/metal/flash_attention.metal");

/// Why the Metal kernels cannot serve a call, or `None` when they can.
pub(crate) fn unsupported_reason(dev: &MetalDevice, dtype: DType, d: usize) -> Option<String> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Some(format!(
            "{dtype:?} inputs: the Metal kernels take f32, f16 and bf16"
        ));
    }
    if d > MAX_HEAD_DIM {
        return Some(format!(
            "head_dim {d} is above {MAX_HEAD_DIM}, the largest the Metal kernels serve"
        ));
    }
    if let Err(e) = pipeline(dev, &format!("zoo_flash_fwd_{}", suffix(dtype).ok()?)) {
        return Some(format!("the Metal kernels did not compile on this device: {e}"));
    }
    None
}

fn metal_err(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("flash attention (Metal): {what}: {e}"))
}

/// The compiled library and its pipelines, per device.
#[derive(Default)]
struct Compiled {
    libraries: HashMap<DeviceId, Library>,
    pipelines: HashMap<(DeviceId, String), ComputePipeline>,
}

/// The pipeline of kernel `name`, compiling the source on first use on this device.
fn pipeline(dev: &MetalDevice, name: &str) -> Result<ComputePipeline> {
    static CACHE: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| metal_err("pipeline cache", "lock poisoned"))?;
    let id = dev.id();
    if let Some(p) = cache.pipelines.get(&(id, name.to_string())) {
        return Ok(p.clone());
    }
    if !cache.libraries.contains_key(&id) {
        let opts = MTLCompileOptions::new();
        #[allow(deprecated)] // `setMathMode` needs macOS 15; this works on every version
        opts.setFastMathEnabled(false);
        let lib = dev
            .metal_device()
            .new_library_with_source(SOURCE, Some(&*opts))
            .map_err(|e| metal_err("compiling kernels/metal/flash_attention.metal", e))?;
        cache.libraries.insert(id, lib);
    }
    let lib = &cache.libraries[&id];
    let func = lib
        .get_function(name, None)
        .map_err(|e| metal_err(&format!("kernel {name}"), e))?;
    let p = dev
        .metal_device()
        .new_compute_pipeline_state_with_function(&func)
        .map_err(|e| metal_err(&format!("pipeline {name}"), e))?;
    // A kernel that uses many registers may be limited to fewer threads per threadgroup; the
    // kernels' index arithmetic assumes exactly THREADS.
    let max = p.max_total_threads_per_threadgroup();
    if max < THREADS {
        return Err(metal_err(
            &format!("kernel {name}"),
            format!("this GPU runs at most {max} threads per threadgroup, the kernel needs {THREADS}"),
        ));
    }
    cache.pipelines.insert((id, name.to_string()), p.clone());
    Ok(p)
}

/// Kernel name suffix per dtype.
fn suffix(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("flash attention: the Metal kernels do not take {other:?}"),
    })
}

/// Scalar kernel arguments, bound with `setBytes` (the `zoo::Params` struct of the .metal file:
/// five ints, a float, two ints, then four 64-bit strides at offset 32).
#[repr(C)]
#[derive(Clone, Copy)]
struct Params {
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

/// A contiguous Metal tensor's buffer and byte offset, kept alive by the storage guard's owner.
fn bind_tensor(enc: &ComputeCommandEncoder, index: usize, t: &Tensor, name: &str) -> Result<()> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Metal(s) = &*storage else {
        candle_core::bail!("flash attention: {name} is not on a Metal device")
    };
    let Some((start, _)) = layout.contiguous_offsets() else {
        candle_core::bail!("flash attention: {name} must be contiguous")
    };
    enc.set_input_buffer(index, Some(s.buffer()), start * s.dtype().size_in_bytes());
    Ok(())
}

fn bind_storage(
    enc: &ComputeCommandEncoder,
    index: usize,
    s: &MetalStorage,
    l: &Layout,
    name: &str,
) -> Result<()> {
    let Some((start, _)) = l.contiguous_offsets() else {
        candle_core::bail!("flash attention: {name} must be contiguous")
    };
    enc.set_input_buffer(index, Some(s.buffer()), start * s.dtype().size_in_bytes());
    Ok(())
}

fn size(width: usize, height: usize) -> MTLSize {
    MTLSize {
        width,
        height,
        depth: 1,
    }
}

/// Dispatches `groups` threadgroups of [`THREADS`] threads with `tg` bytes of threadgroup memory
/// (Metal wants a multiple of 16 bytes).
fn dispatch(enc: &ComputeCommandEncoder, groups: MTLSize, tg: usize) {
    if tg > 0 {
        enc.set_threadgroup_memory_length(0, tg.div_ceil(16) * 16);
    }
    enc.dispatch_thread_groups(groups, size(THREADS, 1));
}

struct MetalFlashAttention {
    dims: Dims,
    scale: f32,
    causal: bool,
    kv_len: Vec<i32>,
    mask: Option<DeviceMask>,
    /// Row log-sum-exp of the forward pass, kept on the GPU for the backward pass.
    lse: Mutex<Option<Arc<Buffer>>>,
}

impl MetalFlashAttention {
    fn params(&self) -> Params {
        let Dims {
            h, hkv, nq, nk, d, ..
        } = self.dims;
        Params {
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

    /// Binds the mask at `index`, or a 1-element dummy when there is none (Metal wants every
    /// buffer argument bound).
    fn bind_mask(
        &self,
        dev: &MetalDevice,
        enc: &ComputeCommandEncoder,
        index: usize,
    ) -> Result<Option<Arc<Buffer>>> {
        match &self.mask {
            Some(m) => bind_tensor(enc, index, &m.tensor, "mask").map(|_| None),
            None => {
                let dummy = dev.new_buffer_with_data(&[0f32])?;
                enc.set_input_buffer(index, Some(&*dummy), 0);
                Ok(Some(dummy))
            }
        }
    }
}

impl CustomOp3 for MetalFlashAttention {
    fn name(&self) -> &'static str {
        "zoo-flash-attention-metal"
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
        candle_core::bail!("flash attention: the Metal op got CPU tensors (dispatch error)")
    }

    fn metal_fwd(
        &self,
        qs: &MetalStorage,
        ql: &Layout,
        ks: &MetalStorage,
        kl: &Layout,
        vs: &MetalStorage,
        vl: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        let dev = qs.device().clone();
        let dt = qs.dtype();
        let Dims { b, h, nq, d, .. } = self.dims;
        let rows = b * h * nq;
        let out = dev.new_buffer(rows * d, dt, "zoo-flash-attention-out")?;
        let lse = dev.new_buffer(rows.max(1), DType::F32, "zoo-flash-attention-lse")?;
        if rows > 0 {
            let kv_len = dev.new_buffer_with_data(self.kv_len.as_slice())?;
            let pipe = pipeline(&dev, &format!("zoo_flash_fwd_{}", suffix(dt)?))?;
            let params = self.params();
            let encoder = dev.command_encoder()?;
            let enc: &ComputeCommandEncoder = encoder.as_ref();
            enc.set_compute_pipeline_state(&pipe);
            bind_storage(enc, 0, qs, ql, "q")?;
            bind_storage(enc, 1, ks, kl, "k")?;
            bind_storage(enc, 2, vs, vl, "v")?;
            enc.set_output_buffer(3, Some(&*out), 0);
            enc.set_output_buffer(4, Some(&*lse), 0);
            enc.set_input_buffer(5, Some(&*kv_len), 0);
            let _dummy = self.bind_mask(&dev, enc, 6)?;
            enc.set_bytes(7, &params);
            dispatch(
                enc,
                size(nq.div_ceil(FWD_BM), b * h),
                tg_bytes(Kernel::Forward, d),
            );
        }
        *lock_state(&self.lse, "flash attention")? = Some(lse);
        Ok((
            MetalStorage::new(out, dev, rows * d, dt),
            Shape::from((b, h, nq, d)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { b, h, nq, nk, .. } = self.dims;
        if b * h * nq == 0 || nk == 0 {
            // Nothing is visible: every gradient is zero (no kernel writes them).
            return Ok((
                Some(q.zeros_like()?),
                Some(k.zeros_like()?),
                Some(v.zeros_like()?),
            ));
        }
        let guard = lock_state(&self.lse, "flash attention")?;
        let lse = saved(&guard, "flash attention")?;
        let dout = grad_res.to_dtype(q.dtype())?.contiguous()?;
        let op = MetalFlashAttentionBackward {
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
struct MetalFlashAttentionBackward<'a> {
    fwd: &'a MetalFlashAttention,
    q: &'a Tensor,
    k: &'a Tensor,
    v: &'a Tensor,
    out: &'a Tensor,
    lse: &'a Arc<Buffer>,
}

impl CustomOp1 for MetalFlashAttentionBackward<'_> {
    fn name(&self) -> &'static str {
        "zoo-flash-attention-metal-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash attention: the Metal backward got a CPU tensor (dispatch error)")
    }

    fn metal_fwd(&self, dout: &MetalStorage, dl: &Layout) -> Result<(MetalStorage, Shape)> {
        let dev = dout.device().clone();
        let dt = dout.dtype();
        let sfx = suffix(dt)?;
        let Dims { b, h, hkv, nq, nk, d } = self.fwd.dims;
        let (nqe, nke, rows) = (b * h * nq * d, b * hkv * nk * d, b * h * nq);
        let esz = dt.size_in_bytes();
        let grads = dev.new_buffer(nqe + 2 * nke, dt, "zoo-flash-attention-grads")?;
        let delta = dev.new_buffer(rows, DType::F32, "zoo-flash-attention-delta")?;
        let kv_len = dev.new_buffer_with_data(self.fwd.kv_len.as_slice())?;
        let params = self.fwd.params();
        let encoder = dev.command_encoder()?;
        let enc: &ComputeCommandEncoder = encoder.as_ref();

        // delta = rowsum(dO ∘ O)
        enc.set_compute_pipeline_state(&pipeline(&dev, &format!("zoo_flash_bwd_delta_{sfx}"))?);
        bind_tensor(enc, 0, self.out, "output")?;
        bind_storage(enc, 1, dout, dl, "output gradient")?;
        enc.set_output_buffer(2, Some(&*delta), 0);
        enc.set_bytes(3, &(rows as i64));
        enc.set_bytes(4, &(d as i32));
        dispatch(enc, size(rows.div_ceil(THREADS), 1), 0);

        // Buffers 0..=5 of both gradient kernels: q, k, v, dO, lse, delta.
        let bind_inputs = |enc: &ComputeCommandEncoder| -> Result<()> {
            bind_tensor(enc, 0, self.q, "q")?;
            bind_tensor(enc, 1, self.k, "k")?;
            bind_tensor(enc, 2, self.v, "v")?;
            bind_storage(enc, 3, dout, dl, "output gradient")?;
            enc.set_input_buffer(4, Some(&**self.lse), 0);
            enc.set_input_buffer(5, Some(&*delta), 0);
            Ok(())
        };

        // dQ
        enc.set_compute_pipeline_state(&pipeline(&dev, &format!("zoo_flash_bwd_dq_{sfx}"))?);
        bind_inputs(enc)?;
        enc.set_output_buffer(6, Some(&*grads), 0);
        enc.set_input_buffer(7, Some(&*kv_len), 0);
        let _dummy = self.fwd.bind_mask(&dev, enc, 8)?;
        enc.set_bytes(9, &params);
        dispatch(enc, size(nq.div_ceil(DQ_BM), b * h), tg_bytes(Kernel::Dq, d));

        // dK, dV
        enc.set_compute_pipeline_state(&pipeline(&dev, &format!("zoo_flash_bwd_dkdv_{sfx}"))?);
        bind_inputs(enc)?;
        enc.set_output_buffer(6, Some(&*grads), nqe * esz);
        enc.set_output_buffer(7, Some(&*grads), (nqe + nke) * esz);
        enc.set_input_buffer(8, Some(&*kv_len), 0);
        let _dummy2 = self.fwd.bind_mask(&dev, enc, 9)?;
        enc.set_bytes(10, &params);
        dispatch(enc, size(nk.div_ceil(KV_BN), b * hkv), tg_bytes(Kernel::Dkdv, d));

        let n = nqe + 2 * nke;
        Ok((MetalStorage::new(grads, dev, n, dt), Shape::from(n)))
    }
}

/// Runs the fused Metal kernels (inputs made contiguous; dtype kept).
pub(crate) fn metal_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    dims: Dims,
) -> Result<Tensor> {
    debug_assert!([Kernel::Forward, Kernel::Dq, Kernel::Dkdv]
        .iter()
        .all(|&k| tg_bytes(k, dims.d) <= MAX_TG_MEMORY));
    let kv_len = match kv_lengths_host(opts, dims.nk)? {
        Some(l) => l.into_iter().map(|x| x as i32).collect(),
        None => vec![dims.nk as i32; dims.b],
    };
    let op = MetalFlashAttention {
        dims,
        scale: scale_of(opts, dims.d) as f32,
        causal: opts.causal,
        kv_len,
        mask: opts.mask.as_ref().map(DeviceMask::new).transpose()?,
        lse: Mutex::new(None),
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}
