//! 2-D convolution (NCHW) with bias and an optional fused ReLU, forward and backward.
//!
//! candle 0.11.1 computes a convolution's input gradient with a direct `conv_transpose2d` loop
//! and its weight gradient through a transposed convolution: in the MNIST CNN's training step
//! the backward of the first two convolutions took 57 of 114 ms (`docs/benchmarks.md`).
//! This op lowers both directions to matrix products per image (im2col + gemm):
//!
//! - forward: `out[n] (oc, oh·ow) = W (oc, c·kh·kw) · cols[n] (c·kh·kw, oh·ow) + bias`;
//! - weight gradient: `dW += g[n] · cols[n]ᵀ`, accumulated per task, then summed;
//! - input gradient: `dcols = Wᵀ · g[n]`, scattered back into the image (col2im).
//!
//! With `relu`, the activation is applied in the same pass and its mask (output > 0) is applied to
//! the incoming gradient in the backward, so candle's autograd sees one node instead of three
//! (conv, bias add, ReLU). Gradients are only computed for inputs that track them (a batch of
//! images never does).

use crate::gemm::{matmul, MatRef};
use crate::host::{f32_slice, grad_like, storage_f32};
use crate::linear::relu_mask;
use crate::parallel::{for_each_index, DisjointMut};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Images per task of the weight-gradient pass: each task owns a private `dW` that is summed
/// at the end, so fewer, larger tasks mean less memory and a shorter reduction.
const IMAGES_PER_TASK: usize = 8;

/// Geometry of a convolution, as candle-nn's `Conv2dConfig` (square stride/padding/dilation,
/// one group) plus the fused activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between windows, in pixels (≥ 1).
    pub stride: usize,
    /// Zero padding added on every side.
    pub padding: usize,
    /// Spacing between kernel taps (≥ 1).
    pub dilation: usize,
    /// Apply ReLU to the output (and mask the gradient) inside the op.
    pub relu: bool,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            relu: false,
        }
    }
}

/// `relu?(conv2d(x, weight) + bias)`: input `(batch, in_channels, height, width)`, weight
/// `(out_channels, in_channels, kh, kw)`, bias `(out_channels,)`; output
/// `(batch, out_channels, out_h, out_w)` with `out_h = (height + 2·padding − dilation·(kh−1) − 1)
/// / stride + 1`, as PyTorch's `Conv2d`.
///
/// Fused (this module's kernels) for f32 on the CPU; candle's `conv2d` + `broadcast_add` + `relu`
/// on other devices and dtypes. Differentiable in all three inputs.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, opts: &Conv2dOptions) -> Result<Tensor> {
    let g = Geometry::new(x, weight, bias, opts)?;
    let fused = crate::fused_kernels()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.is_none_or(|b| b.dtype() == DType::F32);
    if fused {
        let bias = match bias {
            Some(b) => b.clone(),
            None => Tensor::zeros(g.oc, DType::F32, x.device())?,
        };
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, Conv2dOp { g });
    }
    conv2d_composed(x, weight, bias, opts)
}

/// The same convolution from candle's ops (`conv2d`, `broadcast_add`, `relu`), for any device
/// and dtype, and as the reference the fused kernel is tested against.
pub fn conv2d_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    opts: &Conv2dOptions,
) -> Result<Tensor> {
    Geometry::new(x, weight, bias, opts)?;
    let mut y = x.conv2d(weight, opts.padding, opts.stride, opts.dilation, 1)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
    }
    if opts.relu {
        y = y.relu()?;
    }
    Ok(y)
}

/// Every size of one convolution, checked once.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    relu: bool,
}

impl Geometry {
    fn new(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, o: &Conv2dOptions) -> Result<Self> {
        let (n, c, h, w) = x.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "conv2d: input must be (batch, channels, height, width), got {:?}",
                x.dims()
            ))
        })?;
        let (oc, wc, kh, kw) = weight.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "conv2d: weight must be (out_channels, in_channels, kh, kw), got {:?}",
                weight.dims()
            ))
        })?;
        if wc != c {
            candle_core::bail!(
                "conv2d: weight {:?} expects {wc} input channels, the input {:?} has {c}",
                weight.dims(),
                x.dims()
            );
        }
        if let Some(b) = bias {
            if b.dims() != [oc] {
                candle_core::bail!(
                    "conv2d: bias must be ({oc},) for weight {:?}, got {:?}",
                    weight.dims(),
                    b.dims()
                );
            }
        }
        if o.stride == 0 || o.dilation == 0 || kh == 0 || kw == 0 {
            candle_core::bail!(
                "conv2d: stride ({}), dilation ({}) and kernel size ({kh}x{kw}) must be at least 1",
                o.stride,
                o.dilation
            );
        }
        let out = |len: usize, k: usize| -> Option<usize> {
            let span = o.dilation * (k - 1) + 1;
            (len + 2 * o.padding).checked_sub(span).map(|r| r / o.stride + 1)
        };
        let (Some(oh), Some(ow)) = (out(h, kh), out(w, kw)) else {
            candle_core::bail!(
                "conv2d: a {kh}x{kw} kernel with dilation {} does not fit a {h}x{w} input padded by {}",
                o.dilation,
                o.padding
            );
        };
        Ok(Self {
            n,
            c,
            h,
            w,
            oc,
            kh,
            kw,
            oh,
            ow,
            stride: o.stride,
            pad: o.padding,
            dil: o.dilation,
            relu: o.relu,
        })
    }

    /// Rows of the im2col matrix: `in_channels · kh · kw`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output pixels per channel: `out_h · out_w`.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1, stride-1, unpadded convolution reads the image itself as its im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// For kernel tap `t` along an axis of length `len`, the output range whose input index
    /// `o·stride + t·dil − pad` lies inside `0..len`.
    fn valid_range(&self, t: usize, len: usize, out_len: usize) -> (usize, usize) {
        let off = t * self.dil;
        // smallest o with o·stride + off ≥ pad
        let lo = if off >= self.pad {
            0
        } else {
            (self.pad - off).div_ceil(self.stride)
        };
        // largest o with o·stride + off − pad ≤ len − 1, plus one
        let hi = if len + self.pad > off {
            ((len + self.pad - off - 1) / self.stride + 1).min(out_len)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Fills `cols (k, p)` from one image `(c, h, w)`, zeros where a tap falls in the padding.
    fn im2col(&self, img: &[f32], cols: &mut [f32]) {
        im2col_impl(self, img, cols)
    }

    /// Adds `cols (k, p)` back into one image gradient `(c, h, w)`: the transpose of `im2col`.
    fn col2im(&self, cols: &[f32], img: &mut [f32]) {
        col2im_impl(self, cols, img)
    }
}

multiversion! {
    /// [`Geometry::im2col`], compiled per x86 feature level (its row copies are short).
    fn im2col_impl(geo: &Geometry, img: &[f32], cols: &mut [f32]) {
        let (p, ow) = (geo.p(), geo.ow);
        for ci in 0..geo.c {
            let plane = &img[ci * geo.h * geo.w..(ci + 1) * geo.h * geo.w];
            for ki in 0..geo.kh {
                let (ylo, yhi) = geo.valid_range(ki, geo.h, geo.oh);
                for kj in 0..geo.kw {
                    let row = &mut cols[((ci * geo.kh + ki) * geo.kw + kj) * p..][..p];
                    let (xlo, xhi) = geo.valid_range(kj, geo.w, geo.ow);
                    row[..ylo * ow].fill(0.0);
                    row[yhi * ow..].fill(0.0);
                    for oy in ylo..yhi {
                        let iy = oy * geo.stride + ki * geo.dil - geo.pad;
                        let dst = &mut row[oy * ow..(oy + 1) * ow];
                        dst[..xlo].fill(0.0);
                        dst[xhi..].fill(0.0);
                        let src = &plane[iy * geo.w..(iy + 1) * geo.w];
                        let x0 = kj * geo.dil;
                        if geo.stride == 1 {
                            let a = xlo + x0 - geo.pad;
                            dst[xlo..xhi].copy_from_slice(&src[a..a + (xhi - xlo)]);
                        } else {
                            for (ox, d) in dst.iter_mut().enumerate().take(xhi).skip(xlo) {
                                *d = src[ox * geo.stride + x0 - geo.pad];
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// [`Geometry::col2im`], compiled per x86 feature level.
    fn col2im_impl(geo: &Geometry, cols: &[f32], img: &mut [f32]) {
        let (p, ow) = (geo.p(), geo.ow);
        for ci in 0..geo.c {
            let plane = &mut img[ci * geo.h * geo.w..(ci + 1) * geo.h * geo.w];
            for ki in 0..geo.kh {
                let (ylo, yhi) = geo.valid_range(ki, geo.h, geo.oh);
                for kj in 0..geo.kw {
                    let row = &cols[((ci * geo.kh + ki) * geo.kw + kj) * p..][..p];
                    let (xlo, xhi) = geo.valid_range(kj, geo.w, geo.ow);
                    let x0 = kj * geo.dil;
                    for oy in ylo..yhi {
                        let iy = oy * geo.stride + ki * geo.dil - geo.pad;
                        let dst = &mut plane[iy * geo.w..(iy + 1) * geo.w];
                        let src = &row[oy * ow..(oy + 1) * ow];
                        if geo.stride == 1 {
                            let a = xlo + x0 - geo.pad;
                            for (d, &s) in dst[a..a + (xhi - xlo)].iter_mut().zip(&src[xlo..xhi]) {
                                *d += s;
                            }
                        } else {
                            for (ox, &s) in src.iter().enumerate().take(xhi).skip(xlo) {
                                dst[ox * geo.stride + x0 - geo.pad] += s;
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `dst += src`.
    fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// Adds `bias[o]` to row `o` of `out (oc, p)`, then clamps at zero when `relu`.
    fn bias_act(out: &mut [f32], bias: &[f32], relu: bool) {
        let p = out.len() / bias.len().max(1);
        for (row, &b) in out.chunks_mut(p.max(1)).zip(bias) {
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

multiversion! {
    /// `acc[o] += Σ_p g[o, p]` for a `(oc, p)` gradient block.
    fn row_sums_into(acc: &mut [f32], g: &[f32]) {
        let p = g.len() / acc.len().max(1);
        for (a, row) in acc.iter_mut().zip(g.chunks(p.max(1))) {
            *a += row.iter().sum::<f32>();
        }
    }
}

/// The fused op; its inputs are `(x, weight, bias)`, all contiguous f32.
struct Conv2dOp {
    g: Geometry,
}

fn f32_of<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    f32_slice(s, l, "conv2d", name)
}

impl Conv2dOp {
    fn forward(&self, x: &[f32], wt: &[f32], bias: &[f32]) -> Vec<f32> {
        let g = self.g;
        let (k, p, oc) = (g.k(), g.p(), g.oc);
        let mut out = vec![0f32; g.n * oc * p];
        let ow = DisjointMut::new(&mut out);
        let img_len = g.c * g.h * g.w;
        for_each_index(g.n, |i| {
            let img = &x[i * img_len..(i + 1) * img_len];
            // SAFETY: image i owns output block i.
            let dst = unsafe { ow.range_mut(i * oc * p, oc * p) };
            if g.is_pointwise() {
                matmul(oc, p, k, dst, false, MatRef::rows(wt, k), MatRef::rows(img, p));
            } else {
                let mut cols = vec![0f32; k * p];
                g.im2col(img, &mut cols);
                matmul(oc, p, k, dst, false, MatRef::rows(wt, k), MatRef::rows(&cols, p));
            }
            bias_act(dst, bias, g.relu);
        });
        out
    }

    /// `(dx, dW, db)` for the output gradient `grad` (`out` is the op's output, for the ReLU
    /// mask); each is computed only when asked for.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        x: &[f32],
        wt: &[f32],
        out: &[f32],
        grad: &[f32],
        want: (bool, bool, bool),
    ) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
        let g = self.g;
        let (k, p, oc) = (g.k(), g.p(), g.oc);
        let img_len = g.c * g.h * g.w;
        // The gradient with ReLU's mask applied.
        let masked;
        let grad = if g.relu {
            let mut m = vec![0f32; grad.len()];
            let mw = DisjointMut::new(&mut m);
            for_each_index(g.n, |i| {
                let r = i * oc * p..(i + 1) * oc * p;
                // SAFETY: image i owns block i.
                relu_mask(
                    unsafe { mw.range_mut(r.start, oc * p) },
                    &grad[r.clone()],
                    &out[r],
                );
            });
            masked = m;
            &masked[..]
        } else {
            grad
        };
        let (want_dx, want_dw, want_db) = want;

        let mut dx = want_dx.then(|| vec![0f32; g.n * img_len]);
        let tasks = g.n.div_ceil(IMAGES_PER_TASK);
        let mut dw_parts = if want_dw {
            vec![0f32; tasks * oc * k]
        } else {
            Vec::new()
        };
        let mut db_parts = if want_db {
            vec![0f32; tasks * oc]
        } else {
            Vec::new()
        };
        {
            let dxw = dx.as_mut().map(|d| DisjointMut::new(d.as_mut_slice()));
            let dww = DisjointMut::new(&mut dw_parts);
            let dbw = DisjointMut::new(&mut db_parts);
            for_each_index(tasks, |t| {
                let mut cols = vec![0f32; if g.is_pointwise() { 0 } else { k * p }];
                for i in t * IMAGES_PER_TASK..((t + 1) * IMAGES_PER_TASK).min(g.n) {
                    let gi = &grad[i * oc * p..(i + 1) * oc * p];
                    let img = &x[i * img_len..(i + 1) * img_len];
                    if want_db {
                        // SAFETY: task t owns partial row t.
                        row_sums_into(unsafe { dbw.range_mut(t * oc, oc) }, gi);
                    }
                    if want_dw {
                        let first = i == t * IMAGES_PER_TASK;
                        // SAFETY: task t owns partial block t.
                        let dst = unsafe { dww.range_mut(t * oc * k, oc * k) };
                        let colsv = if g.is_pointwise() {
                            MatRef::transposed(img, p)
                        } else {
                            g.im2col(img, &mut cols);
                            MatRef::transposed(&cols, p)
                        };
                        // dW (oc, k) += g_i (oc, p) · cols_iᵀ (p, k)
                        matmul(oc, k, p, dst, !first, MatRef::rows(gi, p), colsv);
                    }
                    if let Some(dxw) = &dxw {
                        // SAFETY: image i belongs to task t only.
                        let dimg = unsafe { dxw.range_mut(i * img_len, img_len) };
                        // dcols (k, p) = Wᵀ (k, oc) · g_i (oc, p)
                        if g.is_pointwise() {
                            matmul(
                                k,
                                p,
                                oc,
                                dimg,
                                false,
                                MatRef::transposed(wt, k),
                                MatRef::rows(gi, p),
                            );
                        } else {
                            matmul(
                                k,
                                p,
                                oc,
                                &mut cols,
                                false,
                                MatRef::transposed(wt, k),
                                MatRef::rows(gi, p),
                            );
                            g.col2im(&cols, dimg);
                        }
                    }
                }
            });
        }
        let sum_parts = |parts: Vec<f32>, len: usize| -> Vec<f32> {
            let mut acc = vec![0f32; len];
            for part in parts.chunks(len.max(1)) {
                add_into(&mut acc, part);
            }
            acc
        };
        let dw = want_dw.then(|| sum_parts(dw_parts, oc * k));
        let db = want_db.then(|| sum_parts(db_parts, oc));
        (dx, dw, db)
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "zoo-conv2d"
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
        let g = self.g;
        let out = self.forward(
            f32_of(s1, l1, "input")?,
            f32_of(s2, l2, "weight")?,
            f32_of(s3, l3, "bias")?,
        );
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.oc, g.oh, g.ow))))
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
        let (dx, dw, db) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = weight.storage_and_layout();
            let (os, ol) = res.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            self.backward(
                storage_f32(&xs, xl, "conv2d", "input")?,
                storage_f32(&ws, wl, "conv2d", "weight")?,
                storage_f32(&os, ol, "conv2d", "output")?,
                storage_f32(&gs, gl, "conv2d", "gradient")?,
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
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// `(out, dx, dw, db)` of `relu?(conv(x, w) + b)` and the loss `Σ out · probe`, by direct
    /// loops in f64.
    #[allow(clippy::type_complexity, clippy::needless_range_loop)]
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        probe: &[f32],
        g: &Geometry,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, c, h, wd, oc, kh, kw, oh, ow) = (g.n, g.c, g.h, g.w, g.oc, g.kh, g.kw, g.oh, g.ow);
        let tap = |o: usize, t: usize| (o * g.stride + t * g.dil).checked_sub(g.pad);
        let mut out = vec![0f64; n * oc * oh * ow];
        for ni in 0..n {
            for o in 0..oc {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut s = b[o] as f64;
                        for ci in 0..c {
                            for i in 0..kh {
                                for j in 0..kw {
                                    if let (Some(iy), Some(ix)) = (tap(y, i), tap(xx, j)) {
                                        if iy < h && ix < wd {
                                            s += x[((ni * c + ci) * h + iy) * wd + ix] as f64
                                                * w[((o * c + ci) * kh + i) * kw + j] as f64;
                                        }
                                    }
                                }
                            }
                        }
                        out[((ni * oc + o) * oh + y) * ow + xx] = if g.relu { s.max(0.0) } else { s };
                    }
                }
            }
        }
        let (mut dx, mut dw, mut db) = (vec![0f64; x.len()], vec![0f64; w.len()], vec![0f64; oc]);
        for ni in 0..n {
            for o in 0..oc {
                for y in 0..oh {
                    for xx in 0..ow {
                        let idx = ((ni * oc + o) * oh + y) * ow + xx;
                        let gm = if g.relu && out[idx] <= 0.0 {
                            0.0
                        } else {
                            probe[idx] as f64
                        };
                        db[o] += gm;
                        for ci in 0..c {
                            for i in 0..kh {
                                for j in 0..kw {
                                    if let (Some(iy), Some(ix)) = (tap(y, i), tap(xx, j)) {
                                        if iy < h && ix < wd {
                                            let xi = ((ni * c + ci) * h + iy) * wd + ix;
                                            let wi = ((o * c + ci) * kh + i) * kw + j;
                                            dx[xi] += gm * w[wi] as f64;
                                            dw[wi] += gm * x[xi] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (out, dx, dw, db)
    }

    fn max_rel_err(got: &Tensor, want: &[f64]) -> Result<f64> {
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        Ok(got
            .iter()
            .zip(want)
            .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()))
            / scale)
    }

    /// Random shapes, odd sizes, strides, padding, dilation, with and without ReLU and bias:
    /// the fused op's output and all three gradients within 1e-5 (relative to the largest
    /// magnitude) of an f64 direct-loop reference.
    #[test]
    fn conv2d_matches_a_direct_f64_reference_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = StdRng::seed_from_u64(7);
        // (n, c, h, w, oc, kh, kw, stride, pad, dil)
        let mut cases = vec![
            (1, 1, 1, 1, 1, 1, 1, 1, 0, 1),
            (3, 1, 28, 28, 32, 3, 3, 1, 0, 1),
            (2, 5, 7, 9, 3, 1, 1, 1, 0, 1),
            (2, 3, 11, 8, 4, 3, 2, 2, 1, 1),
            (1, 2, 9, 9, 3, 3, 3, 1, 2, 2),
            (9, 4, 6, 5, 6, 3, 3, 3, 1, 1),
            (17, 3, 5, 5, 2, 5, 5, 1, 2, 1),
        ];
        for _ in 0..6 {
            let (kh, kw): (usize, usize) = (rng.random_range(1..4), rng.random_range(1..4));
            let (stride, pad, dil): (usize, usize, usize) = (
                rng.random_range(1..3),
                rng.random_range(0..3),
                rng.random_range(1..3),
            );
            let h = rng.random_range((dil * (kh - 1) + 1).saturating_sub(2 * pad).max(1)..12);
            let w = rng.random_range((dil * (kw - 1) + 1).saturating_sub(2 * pad).max(1)..12);
            cases.push((
                rng.random_range(1..10),
                rng.random_range(1..6),
                h,
                w,
                rng.random_range(1..7),
                kh,
                kw,
                stride,
                pad,
                dil,
            ));
        }
        for (i, &(n, c, h, w, oc, kh, kw, stride, padding, dilation)) in cases.iter().enumerate() {
            let relu = i % 2 == 1;
            let opts = Conv2dOptions {
                stride,
                padding,
                dilation,
                relu,
            };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (oc, c, kh, kw), &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, oc, &dev)?)?;
            let y = conv2d(&x, &wt, Some(&b), &opts)?;
            let probe = Tensor::randn(0f32, 1.0, y.shape(), &dev)?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let geo = Geometry::new(&x, &wt, Some(&b), &opts)?;
            let v = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
            let (out, dx, dw, db) = reference(&v(&x)?, &v(&wt)?, &v(&b)?, &v(&probe)?, &geo);
            let errs = [
                max_rel_err(&y, &out)?,
                max_rel_err(grads.get(&x).expect("dx"), &dx)?,
                max_rel_err(grads.get(&wt).expect("dw"), &dw)?,
                max_rel_err(grads.get(&b).expect("db"), &db)?,
            ];
            assert!(
                errs.iter().all(|&e| e < 1e-5),
                "case {:?}: out/dx/dw/db errors {errs:?}",
                cases[i]
            );
        }
        Ok(())
    }

    #[test]
    fn conv2d_agrees_with_candle_and_skips_gradients_nobody_asked_for() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 10, 10), &dev)?; // data: no gradient wanted
        let wt = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 3, 3, 3), &dev)?)?;
        let opts = Conv2dOptions {
            padding: 1,
            relu: true,
            ..Default::default()
        };
        let y = conv2d(&x, &wt, None, &opts)?;
        let want = conv2d_composed(&x, &wt, None, &opts)?;
        let e = (&y - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(e < 1e-5, "{e}");
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&wt).is_some());
        Ok(())
    }

    #[test]
    fn conv2d_rejects_bad_shapes_with_a_message() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
        let bad = [
            conv2d(
                &x,
                &Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?,
                None,
                &Default::default(),
            ),
            conv2d(
                &x,
                &Tensor::zeros((2, 3, 5, 5), DType::F32, &dev)?,
                None,
                &Default::default(),
            ),
            conv2d(
                &x,
                &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev)?,
                Some(&Tensor::zeros(3, DType::F32, &dev)?),
                &Default::default(),
            ),
            conv2d(
                &x,
                &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev)?,
                None,
                &Conv2dOptions {
                    stride: 0,
                    ..Default::default()
                },
            ),
        ];
        for r in bad {
            let msg = r.expect_err("must fail").to_string();
            assert!(msg.contains("conv2d"), "{msg}");
        }
        Ok(())
    }
}
