//! Shared by the GPU kernel tests (CUDA, Metal, and their CPU emulators): test cases, random
//! data, and the fused attention run through candle on any device (the CPU kernel is the
//! baseline the GPU kernels must match).

#![allow(dead_code)] // each test file uses a subset

pub mod emulator;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use zoo_kernels::{flash_attention_with_backend, AttentionBackend, AttentionMask, AttentionOptions};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub struct Case {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub causal: bool,
    pub kv_lengths: Option<Vec<u32>>,
    /// Additive mask of shape (b, 1, nq, nk) (broadcast over heads).
    pub mask: bool,
}

pub struct Data {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub dout: Vec<f32>,
    pub mask: Vec<f32>,
}

pub fn random(r: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0) * 1.7).collect()
}

pub fn make_data(c: &Case, seed: u64) -> Data {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let (nqe, nke) = (c.b * c.h * c.nq * c.d, c.b * c.hkv * c.nk * c.d);
    let mask = if c.mask {
        (0..c.b * c.nq * c.nk)
            .map(|i| {
                // Forbid a scattered set of keys, and every key of query row 2 of batch 0.
                let (row, key) = ((i / c.nk) % c.nq, i % c.nk);
                if (i < c.nq * c.nk && row == 2) || (row * 7 + key * 3) % 5 == 0 {
                    f32::NEG_INFINITY
                } else {
                    r.random_range(-1.0f32..1.0)
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Data {
        q: random(&mut r, nqe),
        k: random(&mut r, nke),
        v: random(&mut r, nke),
        dout: random(&mut r, nqe),
        mask,
    }
}

/// Rounds to `dt` and back, so the CPU kernel sees exactly the emulated kernel's inputs.
pub fn rounded(x: &[f32], dt: DType) -> Result<Vec<f32>> {
    Ok(Tensor::new(x, &Device::Cpu)?
        .to_dtype(dt)?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

impl Data {
    /// The same data rounded to `dt` and back (the mask stays f32), so every implementation
    /// sees exactly the inputs a `dt` kernel sees.
    pub fn rounded(&self, dt: DType) -> Result<Data> {
        Ok(Data {
            q: rounded(&self.q, dt)?,
            k: rounded(&self.k, dt)?,
            v: rounded(&self.v, dt)?,
            dout: rounded(&self.dout, dt)?,
            mask: self.mask.clone(),
        })
    }
}

/// Which implementation [`run_attention`] calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Impl {
    /// `flash_attention`, which must pick a fused backend (CPU or CUDA).
    Fused,
    /// `reference_attention` (plain candle ops), e.g. in f64 as the ground truth.
    Reference,
}

/// Output and gradients `[out, dq, dk, dv]` (as f32) of `(out · dout).sum()` for inputs `x`
/// placed on `dev` in dtype `dt`.
pub fn run_attention(c: &Case, x: &Data, dev: &Device, dt: DType, imp: Impl) -> Result<[Vec<f32>; 4]> {
    let put = |v: &[f32], shape: (usize, usize, usize, usize)| -> Result<Tensor> {
        Ok(Tensor::from_slice(v, shape, &Device::Cpu)?
            .to_dtype(dt)?
            .to_device(dev)?)
    };
    let q = Var::from_tensor(&put(&x.q, (c.b, c.h, c.nq, c.d))?)?;
    let k = Var::from_tensor(&put(&x.k, (c.b, c.hkv, c.nk, c.d))?)?;
    let v = Var::from_tensor(&put(&x.v, (c.b, c.hkv, c.nk, c.d))?)?;
    let dout = put(&x.dout, (c.b, c.h, c.nq, c.d))?;
    let opts = AttentionOptions {
        causal: c.causal,
        kv_lengths: match &c.kv_lengths {
            Some(l) => Some(Tensor::new(l.as_slice(), dev)?),
            None => None,
        },
        mask: if c.mask {
            let m = Tensor::from_slice(&x.mask, (c.b, 1, c.nq, c.nk), &Device::Cpu)?;
            Some(AttentionMask::Additive(m.to_dtype(dt)?.to_device(dev)?))
        } else {
            None
        },
        ..Default::default()
    };
    let out = match imp {
        Impl::Fused => {
            let (out, backend) = flash_attention_with_backend(&q, &k, &v, &opts)?;
            if !matches!(
                backend,
                AttentionBackend::CpuFused | AttentionBackend::CudaFused | AttentionBackend::MetalFused
            ) {
                return Err(format!("the fused kernel was not taken on {dev:?} {dt:?}: {backend:?}").into());
            }
            out
        }
        Impl::Reference => zoo_kernels::reference_attention(&q, &k, &v, &opts)?,
    };
    let grads = (&out * &dout)?.sum_all()?.backward()?;
    let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
    let g = |t: &Var| -> Result<Vec<f32>> { flat(grads.get(t).ok_or("missing gradient")?) };
    Ok([flat(&out)?, g(&q)?, g(&k)?, g(&v)?])
}

pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, &w| m.max(w.abs() as f64)).max(1e-30);
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            if g.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w as f64).abs()
            }
        })
        .fold(0f64, f64::max);
    worst / scale
}

/// Runs case `c` on the GPU device `dev` for each `(dtype, tolerance)`: output and gradients
/// against the f64 reference (within the tolerance) and, in f32, against the CPU kernel (2e-5).
pub fn check_on_device(dev: &Device, c: &Case, seed: u64, dtypes: &[(DType, f64)]) -> Result<()> {
    let raw = make_data(c, seed);
    for &(dt, tol) in dtypes {
        let x = raw.rounded(dt)?;
        let got = run_attention(c, &x, dev, dt, Impl::Fused)?;
        let exact = run_attention(c, &x, &Device::Cpu, DType::F64, Impl::Reference)?;
        let cpu = run_attention(c, &x, &Device::Cpu, DType::F32, Impl::Fused)?;
        let label = format!(
            "{dt:?} b{} h{} hkv{} nq{} nk{} d{} causal={} kv_len={:?} mask={}",
            c.b, c.h, c.hkv, c.nq, c.nk, c.d, c.causal, c.kv_lengths, c.mask
        );
        for (i, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
            let e = rel_err(&got[i], &exact[i]);
            eprintln!("{label}: {what} error vs f64 reference {e:.2e}");
            assert!(
                e <= tol,
                "{label}: {what} error vs f64 reference {e:.2e} > {tol:.0e}"
            );
            if dt == DType::F32 {
                let e = rel_err(&got[i], &cpu[i]);
                assert!(e <= 2e-5, "{label}: {what} error vs CPU kernel {e:.2e} > 2e-5");
            }
        }
    }
    Ok(())
}
