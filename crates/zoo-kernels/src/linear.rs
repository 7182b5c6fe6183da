//! `y = act(x Wᵀ + b)` as one differentiable op.
//!
//! Written with candle's ops, a `Linear` layer on a `(batch, seq, in)` input is a reshape, a
//! transpose of the weight, a matmul, a bias add and a reshape back (plus the activation): five
//! or six autograd nodes. candle's backward starts every node's gradient as a zeros tensor and adds
//! into it, so each node costs a `memset` and an add over a whole activation; on a Transformer
//! encoder layer's training step those were a quarter of the time (`docs/benchmarks.md`). This op
//! is one node: the forward is one matrix product with the bias preloaded, the backward two
//! products (`dx = g·W`, `dW = gᵀ·x`) and a column sum (`db`), each only when its input tracks a
//! gradient. With `relu`, the activation and its mask run inside the op too.

use crate::bias::column_sums;
use crate::gemm::{matmul, MatRef};
use crate::host::{f32_slice, grad_like, lock_state, storage_f32};
use crate::parallel::{for_each_index, DisjointMut};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use std::mem::MaybeUninit;

/// Rows per parallel task of the elementwise passes (the ReLU mask).
const ROWS_PER_TASK: usize = 128;

/// Splits `n` rows into one block per thread (at least `min` rows each): every matrix product
/// packs its right-hand operand once per call, so a few large calls beat many small ones (with
/// 128-row tasks, repacking the weight cost a quarter of the layer's time).
fn blocks(n: usize, min: usize) -> usize {
    n.div_ceil(n.div_ceil(crate::parallel::threads()).max(min))
}

/// The activation applied inside [`linear`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    /// None: `x Wᵀ + b`.
    #[default]
    Identity,
    /// `max(·, 0)`; the backward masks with the output.
    Relu,
    /// Exact (erf) GELU, as PyTorch's `gelu` and BERT's `"gelu"`; the backward uses the
    /// pre-activation, which the op keeps.
    Gelu,
}

/// `act(x (…, in) · weightᵀ + bias)`; `weight (out, in)`, `bias (out,)`; output `(…, out)`.
/// Differentiable in all three.
///
/// Fused on the CPU for f32 (unless [`crate::set_fused_kernels`] turned the kernels off);
/// candle's `matmul` + `broadcast_add` (+ `relu`) elsewhere, with the same results.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let in_dim = x.dim(D::Minus1)?;
    let (out_dim, w_in) = weight.dims2()?;
    if w_in != in_dim {
        candle_core::bail!(
            "linear: input {:?} has {in_dim} features, the weight {:?} expects {w_in}",
            x.dims(),
            weight.dims()
        );
    }
    if let Some(b) = bias {
        if b.dims() != [out_dim] {
            candle_core::bail!(
                "linear: bias must be ({out_dim},) for weight {:?}, got {:?}",
                weight.dims(),
                b.dims()
            );
        }
    }
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    let fused = crate::fused_kernels() && f32_cpu(x) && f32_cpu(weight) && bias.is_none_or(f32_cpu);
    if fused && x.elem_count() > 0 && out_dim > 0 {
        // Inference (nothing tracks a gradient): GELU's pre-activation need not be kept.
        let needs_grad = x.track_op() || weight.track_op() || bias.is_some_and(|b| b.track_op());
        let bias = match bias {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(out_dim, DType::F32, x.device())?,
        };
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias, LinearOp::new(act, needs_grad));
    }
    linear_composed(x, weight, bias, act)
}

/// [`linear`] from candle's ops: the fallback, and the reference it is tested against.
pub fn linear_composed(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = x.dim(D::Minus1)?;
    let (out_dim, _) = weight.dims2()?;
    let rows = x.elem_count() / in_dim.max(1);
    let mut y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    y = match act {
        Act::Identity => y,
        Act::Relu => y.relu()?,
        Act::Gelu => y.gelu_erf()?,
    };
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_dim;
    }
    y.reshape(out_dims)
}

/// The fused op over `(x, weight, bias)`, all contiguous f32.
struct LinearOp {
    act: Act,
    /// Keep what the backward pass needs (false when no input tracks a gradient).
    needs_grad: bool,
    /// GELU's pre-activation, kept by the forward pass for the backward pass.
    pre: std::sync::Mutex<Option<Vec<f32>>>,
}

impl LinearOp {
    fn new(act: Act, needs_grad: bool) -> Self {
        Self {
            act,
            needs_grad,
            pre: std::sync::Mutex::new(None),
        }
    }
}

multiversion! {
    /// Each row of the (uninitialized) `dst` set to `bias`.
    fn fill_rows(dst: &mut [MaybeUninit<f32>], bias: &[f32]) {
        for row in dst.chunks_exact_mut(bias.len()) {
            for (d, &b) in row.iter_mut().zip(bias) {
                d.write(b);
            }
        }
    }
}

multiversion! {
    /// `max(v, 0)` in place.
    fn relu_in_place(v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = x.max(0.0);
        }
    }
}

multiversion! {
    /// `pre ← v`, then `v ← gelu(v)`.
    fn gelu_in_place(v: &mut [f32], pre: &mut [f32]) {
        for (x, p) in v.iter_mut().zip(pre.iter_mut()) {
            *p = *x;
            *x = crate::math::gelu_f32(*x);
        }
    }
}

multiversion! {
    /// `v ← gelu(v)`.
    fn gelu_only(v: &mut [f32]) {
        for x in v.iter_mut() {
            *x = crate::math::gelu_f32(*x);
        }
    }
}

multiversion! {
    /// `dst[i] = g[i] · gelu'(pre[i])`.
    fn gelu_grad(dst: &mut [f32], g: &[f32], pre: &[f32]) {
        for ((d, &g), &p) in dst.iter_mut().zip(g).zip(pre) {
            *d = g * crate::math::gelu_grad_f32(p);
        }
    }
}

multiversion! {
    /// `dst[i] = g[i]` where `y[i] > 0`, else 0: ReLU's backward, read from its output (also
    /// used by the convolution's fused ReLU).
    pub(crate) fn relu_mask(dst: &mut [f32], g: &[f32], y: &[f32]) {
        for ((d, &g), &y) in dst.iter_mut().zip(g).zip(y) {
            *d = if y > 0.0 { g } else { 0.0 };
        }
    }
}

/// `y (rows, out) = act(x (rows, in) · wᵀ + b)`, and GELU's pre-activation.
fn forward(x: &[f32], w: &[f32], b: &[f32], act: Act, keep_pre: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let (out, inp) = (b.len(), w.len() / b.len());
    let rows = x.len() / inp;
    // The output is written once, bias first: no zero fill (a `memset` over the largest
    // activations of a layer).
    let mut y: Vec<f32> = Vec::with_capacity(rows * out);
    let mut pre = (act == Act::Gelu && keep_pre).then(|| vec![0f32; rows * out]);
    let yw = DisjointMut::new(&mut y.spare_capacity_mut()[..rows * out]);
    let pw = pre.as_mut().map(|p| DisjointMut::new(p.as_mut_slice()));
    let per = rows.div_ceil(blocks(rows, 16));
    for_each_index(rows.div_ceil(per), |t| {
        let r0 = t * per;
        let r = per.min(rows - r0);
        // SAFETY: task t owns rows r0..r0 + r.
        let dst = unsafe { yw.range_mut(r0 * out, r * out) };
        // The bias rows, filled in parallel (a serial fill left the other core idle).
        fill_rows(dst, b);
        // SAFETY: `fill_rows` initialized every element of `dst`.
        let dst = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
        matmul(
            r,
            out,
            inp,
            dst,
            true,
            MatRef::rows(&x[r0 * inp..], inp),
            MatRef::transposed(w, inp),
        );
        match (act, &pw) {
            (Act::Relu, _) => relu_in_place(dst),
            // SAFETY: task t owns the same rows of the pre-activation buffer.
            (Act::Gelu, Some(pw)) => gelu_in_place(dst, unsafe { pw.range_mut(r0 * out, r * out) }),
            (Act::Gelu, None) => gelu_only(dst),
            _ => {}
        }
    });
    // SAFETY: the tasks above wrote every one of the `rows * out` elements (a panic in one
    // is re-raised by `for_each_index` before this line).
    unsafe { y.set_len(rows * out) };
    (y, pre)
}

/// `(dx, dW, db)` for the output gradient `g (rows, out)`; `y` is the op's output (ReLU mask),
/// `pre` GELU's pre-activation.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward(
    x: &[f32],
    w: &[f32],
    y: &[f32],
    g: &[f32],
    out: usize,
    act: Act,
    pre: Option<&[f32]>,
    want: (bool, bool, bool),
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
    let inp = w.len() / out;
    let rows = g.len() / out;
    let masked;
    let g = if act != Act::Identity {
        let mut m = vec![0f32; g.len()];
        let mw = DisjointMut::new(&mut m);
        for_each_index(rows.div_ceil(ROWS_PER_TASK), |t| {
            let r0 = t * ROWS_PER_TASK;
            let span = r0 * out..(r0 + ROWS_PER_TASK).min(rows) * out;
            // SAFETY: task t owns these rows.
            let dst = unsafe { mw.range_mut(span.start, span.len()) };
            match pre {
                Some(p) => gelu_grad(dst, &g[span.clone()], &p[span]),
                None => relu_mask(dst, &g[span.clone()], &y[span]),
            }
        });
        masked = m;
        &masked[..]
    } else {
        g
    };
    let (want_dx, want_dw, want_db) = want;
    let dx = want_dx.then(|| {
        let mut dx = vec![0f32; rows * inp];
        let dw = DisjointMut::new(&mut dx);
        let per = rows.div_ceil(blocks(rows, 16));
        for_each_index(rows.div_ceil(per), |t| {
            let r0 = t * per;
            let r = per.min(rows - r0);
            // SAFETY: task t owns rows r0..r0 + r of dx.
            let dst = unsafe { dw.range_mut(r0 * inp, r * inp) };
            // dx (r, in) = g (r, out) · W (out, in)
            matmul(
                r,
                inp,
                out,
                dst,
                false,
                MatRef::rows(&g[r0 * out..], out),
                MatRef::rows(w, inp),
            );
        });
        dx
    });
    let dweight = want_dw.then(|| {
        let mut dwt = vec![0f32; out * inp];
        let ww = DisjointMut::new(&mut dwt);
        let per = out.div_ceil(blocks(out, 16));
        for_each_index(out.div_ceil(per), |t| {
            let o0 = t * per;
            let o = per.min(out - o0);
            // SAFETY: task t owns rows o0..o0 + o of dW.
            let dst = unsafe { ww.range_mut(o0 * inp, o * inp) };
            // dW[o0..] (o, in) = g[:, o0..]ᵀ (o, rows) · x (rows, in)
            matmul(
                o,
                inp,
                rows,
                dst,
                false,
                MatRef::transposed(&g[o0..], out),
                MatRef::rows(x, inp),
            );
        });
        dwt
    });
    let db = want_db.then(|| column_sums(g, out));
    (dx, dweight, db)
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "zoo-linear"
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
        let x = f32_slice(s1, l1, "linear", "input")?;
        let w = f32_slice(s2, l2, "linear", "weight")?;
        let b = f32_slice(s3, l3, "linear", "bias")?;
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = b.len();
        }
        let (y, pre) = forward(x, w, b, self.act, self.needs_grad);
        *lock_state(&self.pre, "linear")? = pre;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = (x.track_op(), weight.track_op(), bias.track_op());
        if want == (false, false, false) {
            return Ok((None, None, None));
        }
        let grad = grad.contiguous()?;
        let out = bias.dim(0)?;
        let pre_guard = lock_state(&self.pre, "linear")?;
        if self.act == Act::Gelu && pre_guard.is_none() {
            candle_core::bail!("linear: backward called before the forward pass ran");
        }
        let (dx, dw, db) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = weight.storage_and_layout();
            let (ys, yl) = res.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            backward(
                storage_f32(&xs, xl, "linear", "input")?,
                storage_f32(&ws, wl, "linear", "weight")?,
                storage_f32(&ys, yl, "linear", "output")?,
                storage_f32(&gs, gl, "linear", "gradient")?,
                out,
                self.act,
                pre_guard.as_deref(),
                want,
            )
        };
        Ok((grad_like(dx, x)?, grad_like(dw, weight)?, grad_like(db, bias)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Against candle's ops on odd and large shapes, with and without ReLU and bias: outputs and
    /// the three gradients within 1e-5 relative to the largest magnitude (f32 sums in a different
    /// order).
    #[test]
    fn fused_linear_matches_candle_ops_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let cases: [(&[usize], usize, usize); 6] = [
            (&[1, 1], 1, 1),
            (&[3, 5, 7], 7, 4),
            (&[2, 130, 33], 33, 65),
            (&[300, 17], 17, 257),
            (&[4, 64, 256], 256, 1024),
            (&[129, 1024], 1024, 3),
        ];
        for (i, &(xs, inp, out)) in cases.iter().enumerate() {
            let act = [Act::Relu, Act::Identity, Act::Gelu][i % 3];
            let with_bias = i != 3;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, xs, &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.2, (out, inp), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, out, &dev)?)?;
            let bias = with_bias.then_some(b.as_tensor());
            let mut out_shape = xs.to_vec();
            *out_shape.last_mut().expect("rank 2+") = out;
            let probe = Tensor::randn(0f32, 1.0, out_shape.as_slice(), &dev)?;
            let run = |fused: bool| -> Result<Vec<Tensor>> {
                let y = if fused {
                    linear(&x, &w, bias, act)?
                } else {
                    linear_composed(&x, &w, bias, act)?
                };
                let g = (&y * &probe)?.sum_all()?.backward()?;
                let mut v = vec![y, g.get(&x).expect("dx").clone(), g.get(&w).expect("dw").clone()];
                if with_bias {
                    v.push(g.get(&b).expect("db").clone());
                } else {
                    assert!(g.get(&b).is_none());
                }
                Ok(v)
            };
            let (got, want) = (run(true)?, run(false)?);
            for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.dims(), e.dims());
                let scale = e.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
                let err = (a - e)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
                assert!(err < 1e-5, "case {i} output/grad {j}: {err:.2e}");
            }
        }
        Ok(())
    }

    #[test]
    fn untracked_inputs_get_no_gradient_and_bad_shapes_fail() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (6, 5), &dev)?; // data: no gradient
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev)?)?;
        let g = linear(&x, &w, None, Act::Identity)?.sum_all()?.backward()?;
        assert!(g.get(&x).is_none() && g.get(&w).is_some());
        let e = linear(&x, &Tensor::zeros((3, 4), DType::F32, &dev)?, None, Act::Identity);
        assert!(e.expect_err("shape").to_string().contains("5 features"));
        let e = linear(&x, &w, Some(&Tensor::zeros(4, DType::F32, &dev)?), Act::Identity);
        assert!(e.expect_err("bias").to_string().contains("bias must be (3,)"));
        Ok(())
    }
}
