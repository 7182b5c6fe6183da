//! Max pooling with a correct backward pass.
//!
//! candle 0.11.1's `Tensor::max_pool2d` computes the right forward values, but its backward
//! (`backprop.rs`, `Op::MaxPool2D`) is wrong in two ways: it multiplies the gradient by the
//! window's mean of the "is maximum" mask instead of dividing by the number of maxima, so a
//! unique maximum gets `1/k²` of its gradient (¼ for 2×2); and it maps gradients back with
//! `upsample_nearest2d`, which does not follow the pooling windows when the input side is not
//! a multiple of `k` (11 → 5 in the MNIST network), sending gradients to the wrong pixels.
//!
//! [`max_pool2d`] fixes both. On the CPU (f32/f64) it is a custom op whose backward routes each
//! window's gradient to its first maximum, as PyTorch does. Elsewhere it is built from
//! differentiable candle ops (crop, reshape, max), whose backward is correct; exact ties there
//! each receive the window's gradient.

use crate::parallel::for_each_chunk_mut;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};

/// Max pooling over non-overlapping `k × k` windows (stride `k`, no padding, floor mode: a
/// trailing row/column that does not fill a window is dropped, as in PyTorch).
///
/// Input `(batch, channels, height, width)`, output `(batch, channels, height / k, width / k)`.
pub fn max_pool2d(xs: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if k == 0 || h < k || w < k {
        candle_core::bail!("max_pool2d: a {k}x{k} window does not fit a {h}x{w} input");
    }
    match (xs.device().is_cpu() && crate::fused_kernels(), xs.dtype()) {
        (true, DType::F32 | DType::F64) => xs.contiguous()?.apply_op1(MaxPool2d { k }),
        _ => max_pool2d_composed(xs, k),
    }
}

/// The same pooling from candle ops that all have a correct backward, for any device/dtype.
pub fn max_pool2d_composed(xs: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / k, w / k);
    xs.narrow(2, 0, oh * k)?
        .narrow(3, 0, ow * k)?
        .contiguous()?
        .reshape((b, c, oh, k, ow, k))?
        .max(5)?
        .max(3)
}

struct MaxPool2d {
    k: usize,
}

/// Calls `f` on the CPU slice of `storage` for the float dtypes the kernels serve.
macro_rules! float_dispatch {
    ($storage:expr, $name:expr, |$v:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32($v) => $body,
            CpuStorage::F64($v) => $body,
            other => candle_core::bail!(
                "{}: dtype {:?} is not supported on the CPU kernel",
                $name,
                other.dtype()
            ),
        }
    };
}

fn contiguous<'a, T>(v: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous input"),
    }
}

/// NaN test for any float type: NaN is the only value not comparable with itself.
fn is_nan<T: PartialOrd>(v: T) -> bool {
    v.partial_cmp(&v).is_none()
}

fn pool_fwd<T: WithDType + PartialOrd>(
    x: &[T],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
) -> Vec<T> {
    let (oh, ow) = (h / k, w / k);
    let mut out = vec![T::from_f64(0.0); b * c * oh * ow];
    for_each_chunk_mut(&mut out, oh * ow, |p, o| {
        let plane = &x[p * h * w..(p + 1) * h * w];
        for i in 0..oh {
            for j in 0..ow {
                let mut m = plane[i * k * w + j * k];
                for di in 0..k {
                    for dj in 0..k {
                        let v = plane[(i * k + di) * w + j * k + dj];
                        // `v > m` keeps the first maximum; NaN propagates as in PyTorch.
                        if v > m || is_nan(v) {
                            m = v;
                        }
                    }
                }
                o[i * ow + j] = m;
            }
        }
    });
    out
}

/// Index (0..4) of the first maximum of a 2×2 window `[a, b, c, d]` in row-major order, NaN
/// counting as the largest value (as PyTorch propagates it).
///
/// Written as selects, not branches: on real activations which of the four wins is random, and
/// a mispredicted branch per window made the branchy version 4× slower. The NaN test is a branch
/// that is always predicted (activations are not NaN).
#[inline(always)]
fn argmax4(v: [f32; 4]) -> usize {
    if v.iter().any(|x| x.is_nan()) {
        return v.iter().position(|x| x.is_nan()).unwrap_or(0);
    }
    let (mut best, mut bv) = (0, v[0]);
    for (i, &x) in v.iter().enumerate().skip(1) {
        let take = x > bv;
        best = if take { i } else { best };
        bv = if take { x } else { bv };
    }
    best
}

/// The largest of four values, NaN if any is NaN (PyTorch's max pooling propagates NaN).
#[inline(always)]
fn max4(a: f32, b: f32, c: f32, d: f32) -> f32 {
    let m = if b > a { b } else { a };
    let m = if c > m { c } else { m };
    let m = if d > m { d } else { m };
    if a.is_nan() | b.is_nan() | c.is_nan() | d.is_nan() {
        f32::NAN
    } else {
        m
    }
}

multiversion! {
    /// 2×2 max pooling of one `(h, w)` f32 plane into `(h / 2, w / 2)`: the hot case (every
    /// pooling of the MNIST CNN), without the generic loop's index arithmetic.
    fn pool2_fwd_plane(plane: &[f32], out: &mut [f32], h: usize, w: usize) {
        let ow = w / 2;
        for (i, o) in out.chunks_exact_mut(ow.max(1)).enumerate().take(h / 2) {
            let r0 = &plane[2 * i * w..2 * i * w + 2 * ow];
            let r1 = &plane[(2 * i + 1) * w..(2 * i + 1) * w + 2 * ow];
            for ((o, a), b) in o.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                *o = max4(a[0], a[1], b[0], b[1]);
            }
        }
    }
}

multiversion! {
    /// The gradient of [`pool2_fwd_plane`]: each output's gradient goes to its window's first
    /// maximum, every other input pixel (including a dropped odd row/column) gets zero.
    fn pool2_bwd_plane(plane: &[f32], go: &[f32], gi: &mut [f32], h: usize, w: usize) {
        let ow = w / 2;
        gi.fill(0.0);
        for (i, g) in go.chunks_exact(ow.max(1)).enumerate().take(h / 2) {
            for (j, &gv) in g.iter().enumerate() {
                let (t0, t1) = (2 * i * w + 2 * j, (2 * i + 1) * w + 2 * j);
                let v = [plane[t0], plane[t0 + 1], plane[t1], plane[t1 + 1]];
                let at = [t0, t0 + 1, t1, t1 + 1][argmax4(v)];
                gi[at] = gv;
            }
        }
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "zoo-max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let (b, c, h, w) = dims;
        let shape = Shape::from((b, c, h / self.k, w / self.k));
        if let (CpuStorage::F32(v), 2) = (storage, self.k) {
            let x = contiguous(v, layout, self.name())?;
            let (oh, ow) = (h / 2, w / 2);
            let mut out = vec![0f32; b * c * oh * ow];
            for_each_chunk_mut(&mut out, oh * ow, |p, o| {
                pool2_fwd_plane(&x[p * h * w..(p + 1) * h * w], o, h, w)
            });
            return Ok((CpuStorage::F32(out), shape));
        }
        let out = float_dispatch!(storage, self.name(), |v| {
            pool_fwd(contiguous(v, layout, self.name())?, dims, self.k).to_cpu_storage()
        });
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2dBackward { k: self.k })?;
        Ok(Some(grad))
    }
}

/// `(input, grad_output) -> grad_input`: each window's gradient goes to its first maximum.
struct MaxPool2dBackward {
    k: usize,
}

fn pool_bwd<T: WithDType + PartialOrd>(
    x: &[T],
    g: &[T],
    (b, c, h, w): (usize, usize, usize, usize),
    k: usize,
) -> Vec<T> {
    let (oh, ow) = (h / k, w / k);
    let mut out = vec![T::from_f64(0.0); b * c * h * w];
    for_each_chunk_mut(&mut out, h * w, |p, gi| {
        let (plane, go) = (&x[p * h * w..(p + 1) * h * w], &g[p * oh * ow..(p + 1) * oh * ow]);
        for i in 0..oh {
            for j in 0..ow {
                let mut best = i * k * w + j * k;
                for di in 0..k {
                    for dj in 0..k {
                        let idx = (i * k + di) * w + j * k + dj;
                        let (v, m) = (plane[idx], plane[best]);
                        if v > m || (is_nan(v) && !is_nan(m)) {
                            best = idx;
                        }
                    }
                }
                gi[best] += go[i * ow + j];
            }
        }
    });
    out
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "zoo-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) if self.k == 2 => {
                let (x, g) = (contiguous(x, l1, self.name())?, contiguous(g, l2, self.name())?);
                let (b, c, h, w) = dims;
                let mut out = vec![0f32; b * c * h * w];
                let og = (h / 2) * (w / 2);
                for_each_chunk_mut(&mut out, h * w, |p, gi| {
                    pool2_bwd_plane(&x[p * h * w..(p + 1) * h * w], &g[p * og..(p + 1) * og], gi, h, w)
                });
                CpuStorage::F32(out)
            }
            (CpuStorage::F32(x), CpuStorage::F32(g)) => pool_bwd(
                contiguous(x, l1, self.name())?,
                contiguous(g, l2, self.name())?,
                dims,
                self.k,
            )
            .to_cpu_storage(),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => pool_bwd(
                contiguous(x, l1, self.name())?,
                contiguous(g, l2, self.name())?,
                dims,
                self.k,
            )
            .to_cpu_storage(),
            _ => candle_core::bail!("{}: input and gradient must both be f32 or f64", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Converts a kernel's output vector into candle's CPU storage.
trait ToCpuStorage {
    fn to_cpu_storage(self) -> CpuStorage;
}

impl<T: WithDType> ToCpuStorage for Vec<T> {
    fn to_cpu_storage(self) -> CpuStorage {
        T::to_cpu_storage_owned(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Gradient of `Σ pool(x)·r` with respect to `x`, by the definition: each window's weight
    /// `r` lands on the window's first maximum.
    fn expected_grad(x: &[f32], r: &[f32], h: usize, w: usize, k: usize) -> Vec<f32> {
        let (oh, ow) = (h / k, w / k);
        let mut g = vec![0f32; h * w];
        for i in 0..oh {
            for j in 0..ow {
                let mut best = (i * k) * w + j * k;
                for di in 0..k {
                    for dj in 0..k {
                        let idx = (i * k + di) * w + j * k + dj;
                        if x[idx] > x[best] {
                            best = idx;
                        }
                    }
                }
                g[best] += r[i * ow + j];
            }
        }
        g
    }

    #[test]
    fn forward_and_backward_match_the_definition_on_odd_sizes() -> Result<()> {
        let dev = Device::Cpu;
        for (h, w, k) in [
            (5, 5, 2),
            (11, 11, 2),
            (26, 26, 2),
            (7, 9, 3),
            (2, 3, 2),
            (4, 4, 1),
        ] {
            // Two images × three channels: six planes, each checked against the definition.
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, h, w), &dev)?)?;
            let (oh, ow) = (h / k, w / k);
            let r = Tensor::randn(0f32, 1., (2, 3, oh, ow), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let rv = r.flatten_all()?.to_vec1::<f32>()?;
            let want: Vec<f32> = (0..6)
                .flat_map(|p| {
                    expected_grad(
                        &xv[p * h * w..(p + 1) * h * w],
                        &rv[p * oh * ow..(p + 1) * oh * ow],
                        h,
                        w,
                        k,
                    )
                })
                .collect();
            for composed in [false, true] {
                let y = if composed {
                    max_pool2d_composed(&x, k)?
                } else {
                    max_pool2d(&x, k)?
                };
                let reference = x
                    .as_tensor()
                    .narrow(2, 0, oh * k)?
                    .narrow(3, 0, ow * k)?
                    .max_pool2d(k)?;
                assert_eq!(
                    y.flatten_all()?.to_vec1::<f32>()?,
                    reference.flatten_all()?.to_vec1::<f32>()?
                );
                let g = (y * &r)?.sum_all()?.backward()?;
                let got = g.get(&x).expect("gradient").flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(got, want, "{h}x{w} k={k} composed={composed}");
            }
        }
        Ok(())
    }

    /// NaN propagates and receives the gradient (PyTorch's rule); infinities of both signs in one
    /// window are ordinary values.
    #[test]
    fn nan_and_infinities_in_a_window() -> Result<()> {
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let x = Var::from_tensor(&Tensor::from_vec(
            vec![1.0, nan, inf, -inf, 2.0, 3.0, 0.0, -1.0],
            (1, 1, 2, 4),
            &Device::Cpu,
        )?)?;
        let y = max_pool2d(&x, 2)?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(v[0].is_nan() && v[1] == inf, "{v:?}");
        let g = y.sum_all()?.backward()?;
        let gv = g.get(&x).expect("grad").flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(gv, vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        Ok(())
    }

    /// Documents the candle 0.11.1 bug this module works around: a unique maximum receives
    /// `1/k²` of its gradient. When this test fails, candle has fixed it; drop the workaround.
    #[test]
    fn candle_max_pool2d_backward_is_still_wrong() -> Result<()> {
        let x = Var::from_tensor(&Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?)?;
        let g = x.as_tensor().max_pool2d(2)?.sum_all()?.backward()?;
        let at_max = g.get(&x).expect("grad").flatten_all()?.to_vec1::<f32>()?[5];
        assert_eq!(
            at_max, 0.25,
            "candle's max_pool2d backward changed: re-check zoo_kernels::pool"
        );
        Ok(())
    }

    #[test]
    fn batches_channels_f64_and_non_contiguous_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1., (3, 5, 9, 8), &dev)?.transpose(2, 3)?; // (3,5,8,9), strided
        let x = Var::from_tensor(&x)?;
        let y = max_pool2d(&x, 2)?;
        assert_eq!(y.dims(), &[3, 5, 4, 4]);
        let yc = max_pool2d_composed(&x, 2)?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f64>()?,
            yc.flatten_all()?.to_vec1::<f64>()?
        );
        let g1 = y
            .sum_all()?
            .backward()?
            .get(&x)
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let g2 = yc
            .sum_all()?
            .backward()?
            .get(&x)
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f64>()?;
        assert_eq!(g1, g2);
        assert_eq!(g1.iter().sum::<f64>(), (3 * 5 * 4 * 4) as f64);
        assert!(max_pool2d(&Tensor::zeros((1, 1, 1, 4), DType::F32, &dev)?, 2).is_err());
        Ok(())
    }
}
