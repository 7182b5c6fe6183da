//! Layer normalization and RMS normalization as fused CPU ops WITH a backward pass.
//!
//! Composed from candle ops, a layer norm over `(rows, C)` is ~9 full passes over the tensor
//! forward and ~20 backward, each allocating its result; candle-nn's own fused op has no
//! backward. These kernels make one pass per direction (row statistics kept from the forward),
//! run on candle's worker pool, and compute in f32. Other devices and dtypes use the composed
//! reference, which callers get from [`layer_norm`] / [`rms_norm`] automatically.

use crate::host::{lock_state, saved, storage_f32};
use crate::parallel::{build_vec, for_each_index, DisjointMut};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Mutex;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `(x − mean) / sqrt(var + eps) · weight + bias` over the last dimension (biased variance),
/// differentiable in `x`, `weight` and `bias`; `weight`/`bias` are `(C,)`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    check(x, weight, bias)?;
    if fused_ok(x, weight, bias) {
        let op = NormOp::new(Kind::Layer, eps);
        let xc = x.contiguous()?;
        return match bias {
            Some(b) => xc.apply_op3_arc(weight, b, std::sync::Arc::new(Box::new(op))),
            None => xc.apply_op2_arc(weight, std::sync::Arc::new(Box::new(op))),
        };
    }
    layer_norm_reference(x, weight, bias, eps)
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension, differentiable in `x` and
/// `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    check(x, weight, None)?;
    if fused_ok(x, weight, None) {
        let op = NormOp::new(Kind::Rms, eps);
        return x
            .contiguous()?
            .apply_op2_arc(weight, std::sync::Arc::new(Box::new(op)));
    }
    rms_norm_reference(x, weight, eps)
}

/// [`layer_norm`] from plain candle ops (every op has a backward pass).
pub fn layer_norm_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// [`rms_norm`] from plain candle ops.
pub fn rms_norm_reference(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)
}

fn check(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    let c = x.dim(D::Minus1)?;
    for (name, t) in [("weight", Some(weight)), ("bias", bias)] {
        if let Some(t) = t {
            if t.dims() != [c] {
                candle_core::bail!(
                    "norm: {name} must be ({c},) to match the input's last dimension, got {:?}",
                    t.dims()
                );
            }
        }
    }
    Ok(())
}

fn fused_ok(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    crate::fused_kernels() && f32_cpu(x) && f32_cpu(weight) && bias.is_none_or(f32_cpu) && x.elem_count() > 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Layer,
    Rms,
}

/// The fused op; keeps `(mean, rstd)` per row from the forward for the backward.
struct NormOp {
    kind: Kind,
    eps: f64,
    stats: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl NormOp {
    fn new(kind: Kind, eps: f64) -> Self {
        Self {
            kind,
            eps,
            stats: Mutex::new(None),
        }
    }

    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let rows = x.len() / c;
        let mut mean = vec![0f32; rows];
        let mut rstd = vec![0f32; rows];
        let (mw, rw) = (DisjointMut::new(&mut mean), DisjointMut::new(&mut rstd));
        let eps = self.eps as f32;
        let kind = self.kind;
        let y = build_vec(x.len(), ROWS_PER_TASK * c, |task, ys| {
            let r0 = task * ROWS_PER_TASK;
            // SAFETY: task owns rows r0..r0 + ROWS_PER_TASK of mean and rstd.
            let (ms, rs) = unsafe { (mw.range_mut(r0, ROWS_PER_TASK), rw.range_mut(r0, ROWS_PER_TASK)) };
            for (i, ((yr, m), r)) in ys.chunks_mut(c).zip(ms.iter_mut()).zip(rs.iter_mut()).enumerate() {
                let xr = &x[(r0 + i) * c..(r0 + i + 1) * c];
                norm_row(kind, xr, w, b, eps, yr, m, r);
            }
        });
        (y, mean, rstd)
    }

    /// `(dx, dw, db)` from the output gradient.
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        c: usize,
        mean: &[f32],
        rstd: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let rows = x.len() / c;
        let tasks = rows.div_ceil(ROWS_PER_TASK);
        let mut dx = vec![0f32; x.len()];
        // Per-task partial sums of dw and db, added up after the parallel loop.
        let mut partial = vec![0f32; tasks * 2 * c];
        let (dxw, pw) = (DisjointMut::new(&mut dx), DisjointMut::new(&mut partial));
        let kind = self.kind;
        for_each_index(tasks, |task| {
            let r0 = task * ROWS_PER_TASK;
            // SAFETY: task owns rows r0.. of dx and its own slot of the partial sums.
            let (dxs, ps) = unsafe {
                (
                    dxw.range_mut(r0 * c, ROWS_PER_TASK * c),
                    pw.range_mut(task * 2 * c, 2 * c),
                )
            };
            let (dws, dbs) = ps.split_at_mut(c);
            for (i, dxr) in dxs.chunks_mut(c).enumerate() {
                let r = r0 + i;
                let (xr, dyr) = (&x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c]);
                norm_row_backward(kind, xr, w, dyr, mean[r], rstd[r], dxr, dws, dbs);
            }
        });
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        for p in partial.chunks(2 * c) {
            for j in 0..c {
                dw[j] += p[j];
                db[j] += p[c + j];
            }
        }
        (dx, dw, db)
    }
}

multiversion! {
    /// Normalizes one row; writes the row's mean (0 for RMS) and 1/std.
    fn norm_row(kind: Kind, x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, y: &mut [f32], mean: &mut f32, rstd: &mut f32) {
        let c = x.len() as f32;
        let m = if kind == Kind::Layer { x.iter().sum::<f32>() / c } else { 0.0 };
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c;
        let rs = 1.0 / (var + eps).sqrt();
        match b {
            Some(b) => {
                for (((yo, &xv), &wv), &bv) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *yo = (xv - m) * rs * wv + bv;
                }
            }
            None => {
                for ((yo, &xv), &wv) in y.iter_mut().zip(x).zip(w) {
                    *yo = (xv - m) * rs * wv;
                }
            }
        }
        *mean = m;
        *rstd = rs;
    }
}

multiversion! {
    /// One row of the backward pass: `dx`, and the row's contributions to `dw` and `db`.
    fn norm_row_backward(kind: Kind, x: &[f32], w: &[f32], dy: &[f32], mean: f32, rstd: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        let c = x.len() as f32;
        // xhat = (x − mean)·rstd, g = dy·w; dx = rstd·(g − mean(g) − xhat·mean(g·xhat))
        // (RMS: no mean term, as the mean is not subtracted).
        let mut sum_g = 0f32;
        let mut sum_gx = 0f32;
        for (((&xv, &wv), &d), (dwj, dbj)) in x.iter().zip(w).zip(dy).zip(dw.iter_mut().zip(db.iter_mut())) {
            let xh = (xv - mean) * rstd;
            let g = d * wv;
            sum_g += g;
            sum_gx += g * xh;
            *dwj += d * xh;
            *dbj += d;
        }
        let mg = if kind == Kind::Layer { sum_g / c } else { 0.0 };
        let mgx = sum_gx / c;
        for (((o, &xv), &wv), &d) in dx.iter_mut().zip(x).zip(w).zip(dy) {
            let xh = (xv - mean) * rstd;
            *o = rstd * (d * wv - mg - xh * mgx);
        }
    }
}

fn f32_of<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    crate::host::f32_slice(s, l, "norm", name)
}

impl NormOp {
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_of(x.0, x.1, "input")?;
        let ws = f32_of(w.0, w.1, "weight")?;
        let bs = b.map(|(s, l)| f32_of(s, l, "bias")).transpose()?;
        let c = ws.len();
        let (y, mean, rstd) = self.forward(xs, ws, bs, c);
        *lock_state(&self.stats, "norm")? = Some((mean, rstd));
        Ok((CpuStorage::F32(y), x.1.shape().clone()))
    }

    fn grads(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let guard = lock_state(&self.stats, "norm")?;
        let (mean, rstd) = saved(&guard, "norm")?;
        let dy = dy.contiguous()?;
        // Read the inputs in place (copying them out was three extra passes per backward).
        let (dx, dw, db) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = dy.storage_and_layout();
            let (xv, wv, dyv) = (
                storage_f32(&xs, xl, "norm", "input")?,
                storage_f32(&ws, wl, "norm", "weight")?,
                storage_f32(&gs, gl, "norm", "gradient")?,
            );
            self.backward(xv, wv, dyv, wv.len(), mean, rstd)
        };
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
            Tensor::from_vec(db, w.shape(), w.device())?,
        ))
    }
}

impl CustomOp3 for NormOp {
    fn name(&self) -> &'static str {
        "zoo-layer-norm"
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
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, dy)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for NormOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Layer => "zoo-layer-norm-no-bias",
            Kind::Rms => "zoo-rms-norm",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-12);
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / scale
    }

    /// Fused vs composed reference: values and the gradients of x, weight and bias, on odd and
    /// large shapes. Tolerance 2e-5 relative (f32, different summation orders).
    #[test]
    fn fused_norms_match_the_composed_reference_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (i, shape) in [
            vec![1usize, 1],
            vec![3, 7],
            vec![2, 65, 33],
            vec![5, 129, 256],
            vec![4000, 17],
        ]
        .into_iter()
        .enumerate()
        {
            let c = *shape.last().expect("rank >= 1");
            let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape.as_slice(), &dev)? + 0.5 * i as f64)?)?;
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev)?)?;
            let probe = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            for kind in ["layer", "layer_no_bias", "rms"] {
                if kind == "rms" && c == 1 {
                    // One channel: y = ±w and dx ≈ 0 up to f32 cancellation noise in both
                    // implementations, so a relative comparison of dx means nothing.
                    continue;
                }
                let run = |fused: bool| -> Result<Vec<Tensor>> {
                    let y = match (kind, fused) {
                        ("layer", true) => layer_norm(&x, &w, Some(&b), 1e-5)?,
                        ("layer", false) => layer_norm_reference(&x, &w, Some(&b), 1e-5)?,
                        ("layer_no_bias", true) => layer_norm(&x, &w, None, 1e-5)?,
                        ("layer_no_bias", false) => layer_norm_reference(&x, &w, None, 1e-5)?,
                        (_, true) => rms_norm(&x, &w, 1e-6)?,
                        (_, false) => rms_norm_reference(&x, &w, 1e-6)?,
                    };
                    let g = (&y * &probe)?.sum_all()?.backward()?;
                    let mut out = vec![y, g.get(&x).expect("dx").clone(), g.get(&w).expect("dw").clone()];
                    if kind == "layer" {
                        out.push(g.get(&b).expect("db").clone());
                    }
                    Ok(out)
                };
                let (got, want) = (run(true)?, run(false)?);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    let e = max_rel(g, w);
                    assert!(
                        e < 2e-5,
                        "{kind} {shape:?}: tensor {j} (y, dx, dw, db) differs by {e:.2e}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_parameter_shapes_are_errors_and_other_dtypes_fall_back() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4), &dev)?;
        let e = layer_norm(&x, &Tensor::ones(3, DType::F32, &dev)?, None, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("weight must be (4,)"), "{e}");
        let y = layer_norm(
            &x.to_dtype(DType::F64)?,
            &Tensor::ones(4, DType::F64, &dev)?,
            None,
            1e-5,
        )?;
        assert_eq!(y.dtype(), DType::F64);
        Ok(())
    }
}
