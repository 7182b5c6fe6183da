//! The CPU flash-attention kernels: tiled, online-softmax forward and the FlashAttention-2
//! backward, in f32, on contiguous `(batch, heads, seq, head_dim)` data.
//!
//! Layout trick: the `group = heads / kv_heads` query heads that share one key/value head sit
//! next to each other in memory, so their rows form one contiguous `(group·q_len, head_dim)`
//! matrix. Every kernel works on that stacked matrix against the shared K/V: each key block is
//! loaded once per group (this is what makes grouped-query decoding fast), and the backward
//! pass owns dQ for the whole group, so per-(batch, kv-head) tasks never write the same memory.
//!
//! Block products go through the `gemm` crate (AVX-512 / AVX2 / FMA picked at run time; its
//! `x86-v4` feature is on). The softmax loops between them are compiled three times — for
//! AVX-512, AVX2+FMA and the baseline — and chosen at run time, since a portable build would
//! otherwise leave them at SSE2.

use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per block.
pub(crate) const BLOCK_Q: usize = 64;
/// Keys per block.
pub(crate) const BLOCK_K: usize = 128;

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.h / self.hkv
    }
}

/// An additive mask broadcast to `(batch, heads, q_len, kv_len)` through its strides (0 on
/// broadcast dimensions). `-inf` forbids a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskRef<'a> {
    pub data: &'a [f32],
    pub strides: [usize; 4],
}

/// Everything the kernels need besides the tensors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'a> {
    pub dims: Dims,
    pub scale: f32,
    pub causal: bool,
    pub kv_len: Option<&'a [usize]>,
    pub mask: Option<MaskRef<'a>>,
}

impl Params<'_> {
    /// Keys `j < hi` are visible to query `i` of batch `b` (before the additive mask): the
    /// key-padding length, and with `causal` the bottom-right diagonal `j <= i + nk - nq`.
    #[inline(always)]
    fn hi(&self, b: usize, i: usize) -> usize {
        let Dims { nq, nk, .. } = self.dims;
        let mut hi = nk;
        if let Some(len) = self.kv_len {
            hi = hi.min(len[b]);
        }
        if self.causal {
            hi = hi.min((i + nk + 1).saturating_sub(nq));
        }
        hi
    }

    /// Adds the mask of (batch `b`, head `h`, query `i`) for keys `j0..j0 + row.len()`.
    #[inline(always)]
    fn add_mask(&self, row: &mut [f32], b: usize, h: usize, i: usize, j0: usize) {
        if let Some(m) = self.mask {
            let [sb, sh, si, sj] = m.strides;
            let base = b * sb + h * sh + i * si + j0 * sj;
            let n = row.len();
            if sj == 1 {
                for (x, &a) in row.iter_mut().zip(&m.data[base..base + n]) {
                    *x += a;
                }
            } else {
                for (c, x) in row.iter_mut().enumerate() {
                    *x += m.data[base + c * sj];
                }
            }
        }
    }
}

/// Runs the body once per call, compiled for the best instruction set the CPU has.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) { inner($($arg),*) }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU supports every feature the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}

/// `exp(x)` for the softmax: within ~2e-7 relative, branch-free so loops over it vectorize.
/// Returns exactly 0 for `x < -87.3` (including `-inf`).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // x = n·ln2 + r with |r| <= ln2/2; ln2 split in two (Cody–Waite) so n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-88.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick (|t| < 2^22), exact in round-to-nearest mode.
    let n = (xc * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // e^r by its Taylor series to degree 7: error < 1e-8 for |r| <= 0.35.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668
                        + r * (0.008_333_334 + r * (0.001_388_888_9 + r * 0.000_198_412_7))))));
    let scale = f32::from_bits((((n as i32) + 127).max(0) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// Maximum of a row (`-inf` for an empty row).
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in rest.iter().chain(acc.iter()) {
        if v > m {
            m = v;
        }
    }
    m
}

/// Replaces `x` by `exp(x - shift)` and returns the sum.
#[inline(always)]
fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in chunks.by_ref() {
        for l in 0..16 {
            let e = exp_f32(c[l] - shift);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - shift);
        sum += *v;
    }
    sum + acc.iter().sum::<f32>()
}

/// One online-softmax step for a row of scores whose first `valid` entries are visible:
/// turns the row into unnormalized probabilities against the new running maximum, updates
/// the running maximum `m` and sum `l`, and returns the factor the row's output accumulator
/// must be multiplied by.
#[inline(always)]
fn online_softmax_row(row: &mut [f32], valid: usize, m: &mut f32, l: &mut f32) -> f32 {
    let (vis, hidden) = row.split_at_mut(valid);
    hidden.fill(0.0);
    let m_new = row_max(vis).max(*m);
    if m_new == f32::NEG_INFINITY {
        // Nothing visible yet in this row: it contributes nothing.
        vis.fill(0.0);
        return 1.0;
    }
    let alpha = if *m == f32::NEG_INFINITY {
        0.0
    } else {
        (*m - m_new).exp()
    };
    let sum = exp_shift_sum(vis, m_new);
    *l = *l * alpha + sum;
    *m = m_new;
    alpha
}

/// `dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n)`, all strides in elements.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(dst.len() > (m - 1) * dst_rs + n - 1);
    if k > 0 {
        debug_assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
        debug_assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    }
    // SAFETY: the slices cover every element the strides address (checked above in debug
    // builds, and by construction at every call site).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Forward pass: returns the output `(b, h, nq, d)` and the row log-sum-exp `(b, h, nq)`
/// (`-inf` for rows that see no key; their output is 0).
pub(crate) fn forward(q: &[f32], k: &[f32], v: &[f32], p: &Params) -> (Vec<f32>, Vec<f32>) {
    let Dims { b, h, hkv, nq, d, .. } = p.dims;
    let rows = p.dims.group() * nq;
    let mut out = vec![0f32; b * h * nq * d];
    let mut lse = vec![f32::NEG_INFINITY; b * h * nq];
    if rows == 0 || d == 0 {
        return (out, lse);
    }
    out.par_chunks_mut(rows * d)
        .zip(lse.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(bk, (o_group, lse_group))| {
            let (bi, kvh) = (bk / hkv, bk % hkv);
            o_group
                .par_chunks_mut(BLOCK_Q * d)
                .zip(lse_group.par_chunks_mut(BLOCK_Q))
                .enumerate()
                .for_each(|(blk, (o_blk, lse_blk))| {
                    forward_block(q, k, v, p, bi, kvh, blk * BLOCK_Q, o_blk, lse_blk)
                });
        });
    (out, lse)
}

multiversion! {
    /// One block of up to `BLOCK_Q` stacked query rows starting at row `r0` of group `(bi, kvh)`.
    fn forward_block(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: &Params,
        bi: usize,
        kvh: usize,
        r0: usize,
        o_blk: &mut [f32],
        lse_blk: &mut [f32],
    ) {
        let Dims { h, hkv, nq, nk, d, .. } = p.dims;
        let g = h / hkv;
        let rb = lse_blk.len();
        let q_blk = &q[((bi * h + kvh * g) * nq + r0) * d..][..rb * d];
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        let mut hi = [0usize; BLOCK_Q];
        for (r, x) in hi[..rb].iter_mut().enumerate() {
            *x = p.hi(bi, (r0 + r) % nq);
        }
        let max_hi = hi[..rb].iter().copied().max().unwrap_or(0);
        let min_hi = hi[..rb].iter().copied().min().unwrap_or(0);
        let mut m = [f32::NEG_INFINITY; BLOCK_Q];
        let mut l = [0f32; BLOCK_Q];
        let mut s = vec![0f32; BLOCK_Q * BLOCK_K];
        o_blk.fill(0.0);
        for j0 in (0..max_hi).step_by(BLOCK_K) {
            let bk = BLOCK_K.min(max_hi - j0);
            // S = scale · Q Kᵀ
            matmul((rb, bk, d), &mut s, bk, false, q_blk, (d, 1), &k_all[j0 * d..], (1, d), p.scale);
            let partial = p.mask.is_some() || j0 + bk > min_hi;
            for r in 0..rb {
                let row = &mut s[r * bk..(r + 1) * bk];
                let valid = if partial { hi[r].saturating_sub(j0).min(bk) } else { bk };
                let row_idx = r0 + r;
                p.add_mask(&mut row[..valid], bi, kvh * g + row_idx / nq, row_idx % nq, j0);
                let alpha = online_softmax_row(row, valid, &mut m[r], &mut l[r]);
                if alpha != 1.0 {
                    for x in &mut o_blk[r * d..(r + 1) * d] {
                        *x *= alpha;
                    }
                }
            }
            // O += P V
            matmul((rb, d, bk), o_blk, d, true, &s, (bk, 1), &v_all[j0 * d..], (d, 1), 1.0);
        }
        for r in 0..rb {
            let o_row = &mut o_blk[r * d..(r + 1) * d];
            if l[r] > 0.0 {
                let inv = 1.0 / l[r];
                for x in o_row.iter_mut() {
                    *x *= inv;
                }
                lse_blk[r] = m[r] + l[r].ln();
            } else {
                o_row.fill(0.0);
                lse_blk[r] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Backward pass: gradients `(dq, dk, dv)` from the saved output and row log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    p: &Params,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { b, h, hkv, nq, nk, d } = p.dims;
    let rows = p.dims.group() * nq;
    let mut dq = vec![0f32; b * h * nq * d];
    let mut dk = vec![0f32; b * hkv * nk * d];
    let mut dv = vec![0f32; b * hkv * nk * d];
    if rows == 0 || nk == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // delta_i = Σ_e dO_ie · O_ie: the softmax backward's row term, O(b·h·nq) memory.
    let mut delta = vec![0f32; b * h * nq];
    delta
        .par_chunks_mut(nq)
        .zip(out.par_chunks(nq * d).zip(dout.par_chunks(nq * d)))
        .for_each(|(dl, (o, g))| row_dots(dl, o, g, d));
    dq.par_chunks_mut(rows * d)
        .zip(dk.par_chunks_mut(nk * d).zip(dv.par_chunks_mut(nk * d)))
        .enumerate()
        .for_each(|(bk, (dq_group, (dk_head, dv_head)))| {
            let (bi, kvh) = (bk / hkv, bk % hkv);
            backward_group(q, k, v, dout, lse, &delta, p, bi, kvh, dq_group, dk_head, dv_head)
        });
    (dq, dk, dv)
}

multiversion! {
    /// `out[i] = Σ_e a[i·d + e] · b[i·d + e]`.
    fn row_dots(out: &mut [f32], a: &[f32], b: &[f32], d: usize) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = a[i * d..(i + 1) * d].iter().zip(&b[i * d..(i + 1) * d]).map(|(x, y)| x * y).sum();
        }
    }
}

multiversion! {
    /// All gradients of one (batch, kv-head) group: dK, dV of the kv head and dQ of its query heads.
    fn backward_group(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dout: &[f32],
        lse: &[f32],
        delta: &[f32],
        p: &Params,
        bi: usize,
        kvh: usize,
        dq_group: &mut [f32],
        dk_head: &mut [f32],
        dv_head: &mut [f32],
    ) {
        let Dims { h, hkv, nq, nk, d, .. } = p.dims;
        let g = h / hkv;
        let rows = g * nq;
        let row_base = (bi * h + kvh * g) * nq;
        let q_group = &q[row_base * d..(row_base + rows) * d];
        let do_group = &dout[row_base * d..(row_base + rows) * d];
        let lse_group = &lse[row_base..row_base + rows];
        let delta_group = &delta[row_base..row_base + rows];
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        let hi: Vec<usize> = (0..rows).map(|r| p.hi(bi, r % nq)).collect();
        let blocks: Vec<(usize, usize, usize, usize)> = (0..rows)
            .step_by(BLOCK_Q)
            .map(|r0| {
                let rb = BLOCK_Q.min(rows - r0);
                let his = &hi[r0..r0 + rb];
                (r0, rb, his.iter().copied().min().unwrap_or(0), his.iter().copied().max().unwrap_or(0))
            })
            .collect();
        let mut s = vec![0f32; BLOCK_Q * BLOCK_K];
        let mut dp = vec![0f32; BLOCK_Q * BLOCK_K];
        for j0 in (0..nk).step_by(BLOCK_K) {
            let bk = BLOCK_K.min(nk - j0);
            let (k_blk, v_blk) = (&k_all[j0 * d..], &v_all[j0 * d..]);
            for &(r0, rb, min_hi, max_hi) in &blocks {
                if max_hi <= j0 {
                    continue; // no row of this block sees any key of this block
                }
                let q_blk = &q_group[r0 * d..];
                let do_blk = &do_group[r0 * d..];
                // P = exp(scale · Q Kᵀ + mask - lse)
                matmul((rb, bk, d), &mut s, bk, false, q_blk, (d, 1), k_blk, (1, d), p.scale);
                let partial = p.mask.is_some() || j0 + bk > min_hi;
                for r in 0..rb {
                    let row = &mut s[r * bk..(r + 1) * bk];
                    let valid = if partial { hi[r0 + r].saturating_sub(j0).min(bk) } else { bk };
                    let (vis, hidden) = row.split_at_mut(valid);
                    hidden.fill(0.0);
                    let row_idx = r0 + r;
                    let lse_r = lse_group[row_idx];
                    if lse_r == f32::NEG_INFINITY {
                        vis.fill(0.0); // a row that sees no key has zero gradient
                        continue;
                    }
                    p.add_mask(vis, bi, kvh * g + row_idx / nq, row_idx % nq, j0);
                    for x in vis.iter_mut() {
                        *x = exp_f32(*x - lse_r);
                    }
                }
                // dV += Pᵀ dO
                matmul((bk, d, rb), &mut dv_head[j0 * d..], d, true, &s, (1, bk), do_blk, (d, 1), 1.0);
                // dP = dO Vᵀ
                matmul((rb, bk, d), &mut dp, bk, false, do_blk, (d, 1), v_blk, (1, d), 1.0);
                // dS = P ∘ (dP − delta), scaled: the gradient of Q Kᵀ.
                for r in 0..rb {
                    let dl = delta_group[r0 + r];
                    for (x, &pv) in dp[r * bk..(r + 1) * bk].iter_mut().zip(&s[r * bk..(r + 1) * bk]) {
                        *x = pv * (*x - dl) * p.scale;
                    }
                }
                // dQ += dS K, dK += dSᵀ Q
                matmul((rb, d, bk), &mut dq_group[r0 * d..], d, true, &dp, (bk, 1), k_blk, (d, 1), 1.0);
                matmul((bk, d, rb), &mut dk_head[j0 * d..], d, true, &dp, (1, bk), q_blk, (d, 1), 1.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_exactly_zero_far_below() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -90.0 + i as f32 * (90.5 / 200_000.0);
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            if want > 1e-37 {
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
