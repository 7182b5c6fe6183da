//! The CPU flash-attention kernels: tiled, online-softmax forward and the FlashAttention-2
//! backward, in f32, on contiguous `(batch, heads, seq, head_dim)` data.
//!
//! Layout trick: the `group = heads / kv_heads` query heads that share one key/value head sit
//! next to each other in memory, so their rows form one contiguous `(group·q_len, head_dim)`
//! matrix. Every kernel works on that stacked matrix against the shared K/V: each key block is
//! loaded once per group (this is what makes grouped-query decoding fast), and the backward
//! pass owns dQ for the whole group, so per-(batch, kv-head) tasks never write the same memory.
//!
//! Scores are kept transposed, `Sᵀ = K · (scale·Q)ᵀ` as (keys × query rows): the online
//! softmax then runs down the columns, vectorized across query rows, with no horizontal
//! reductions; `Qᵀ` (and `dOᵀ`) are packed once per query block, K and V are used in place.
//! Block products are the register-tiled micro-kernels of `microkernel.rs`; the loops between
//! them are compiled for AVX-512, AVX2+FMA and the baseline and chosen at run time (a portable
//! build would otherwise leave them at SSE2).

use super::microkernel::{nn, tn};
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

/// Packs `rows` rows of `src` (row stride `d`) transposed and scaled into `dst` `(d × rp)`,
/// with columns `rows..rp` zero.
#[inline(always)]
fn pack_transposed(dst: &mut [f32], src: &[f32], rows: usize, rp: usize, d: usize, scale: f32) {
    dst[..d * rp].fill(0.0);
    for r in 0..rows {
        for (e, &x) in src[r * d..(r + 1) * d].iter().enumerate() {
            dst[e * rp + r] = x * scale;
        }
    }
}

/// Adds the additive mask to a transposed score block `st (bk × rp)` for stacked rows
/// `r0..r0 + rb` of group `(bi, kvh)` and keys `j0..j0 + bk`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_mask_transposed(
    p: &Params,
    st: &mut [f32],
    rp: usize,
    bk: usize,
    bi: usize,
    kvh: usize,
    r0: usize,
    rb: usize,
    j0: usize,
) {
    let Some(m) = p.mask else { return };
    let Dims { h, hkv, nq, .. } = p.dims;
    let g = h / hkv;
    let [sb, sh, si, sj] = m.strides;
    for r in 0..rb {
        let row = r0 + r;
        let base = bi * sb + (kvh * g + row / nq) * sh + (row % nq) * si + j0 * sj;
        for c in 0..bk {
            st[c * rp + r] += m.data[base + c * sj];
        }
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
        let rp = rb.div_ceil(16) * 16;
        let q_blk = &q[((bi * h + kvh * g) * nq + r0) * d..][..rb * d];
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        let mut qt = vec![0f32; d * rp];
        pack_transposed(&mut qt, q_blk, rb, rp, d, p.scale);
        // Per stacked row: keys visible before the additive mask (0 for padding rows).
        let mut hi = vec![0usize; rp];
        for (r, x) in hi[..rb].iter_mut().enumerate() {
            *x = p.hi(bi, (r0 + r) % nq);
        }
        let max_hi = hi[..rb].iter().copied().max().unwrap_or(0);
        let min_hi = hi[..rb].iter().copied().min().unwrap_or(0);
        let mut m = vec![f32::NEG_INFINITY; rp];
        let mut l = vec![0f32; rp];
        let mut m_new = vec![0f32; rp];
        let mut sum = vec![0f32; rp];
        let mut st = vec![0f32; BLOCK_K * rp];
        o_blk.fill(0.0);
        for j0 in (0..max_hi).step_by(BLOCK_K) {
            let bk = BLOCK_K.min(max_hi - j0);
            // Sᵀ = K (scale·Q)ᵀ, (bk × rp)
            nn((bk, rp, d), &k_all[j0 * d..], d, &qt, rp, &mut st, rp, false);
            add_mask_transposed(p, &mut st, rp, bk, bi, kvh, r0, rb, j0);
            let partial = p.mask.is_some() || j0 + bk > min_hi;
            if partial {
                // Hide keys beyond each row's limit (and all keys of padding rows).
                for c in 0..bk {
                    let row = &mut st[c * rp..(c + 1) * rp];
                    for (x, &lim) in row.iter_mut().zip(&hi) {
                        if j0 + c >= lim {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            m_new.copy_from_slice(&m);
            for c in 0..bk {
                for (mx, &x) in m_new.iter_mut().zip(&st[c * rp..(c + 1) * rp]) {
                    *mx = if x > *mx { x } else { *mx };
                }
            }
            // Shift by the new maximum (0 where a row still sees nothing: exp(-inf) = 0).
            for (mx, s) in m_new.iter_mut().zip(sum.iter_mut()) {
                *s = 0.0;
                if *mx == f32::NEG_INFINITY {
                    *mx = 0.0;
                }
            }
            for c in 0..bk {
                let row = &mut st[c * rp..(c + 1) * rp];
                for ((x, &mx), s) in row.iter_mut().zip(&m_new).zip(sum.iter_mut()) {
                    let e = exp_f32(*x - mx);
                    *x = e;
                    *s += e;
                }
            }
            for r in 0..rb {
                // m[r] = -inf: nothing accumulated yet, alpha = 0 (and O, l are 0 anyway).
                let alpha = if m[r] == f32::NEG_INFINITY { 0.0 } else { (m[r] - m_new[r]).exp() };
                l[r] = l[r] * alpha + sum[r];
                if sum[r] > 0.0 || m[r] != f32::NEG_INFINITY {
                    m[r] = m_new[r].max(m[r]);
                }
                if alpha != 1.0 {
                    for x in &mut o_blk[r * d..(r + 1) * d] {
                        *x *= alpha;
                    }
                }
            }
            // O += P V with P = (Sᵀ)ᵀ
            tn((rb, d, bk), &st, rp, &v_all[j0 * d..], d, o_blk, d, true);
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
    /// All gradients of one (batch, kv-head) group: dK, dV of the kv head and dQ of its query
    /// heads. Query blocks are the outer loop, so Qᵀ and dOᵀ are packed once per block.
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
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        let rp_max = BLOCK_Q;
        let mut qt = vec![0f32; d * rp_max];
        let mut dot = vec![0f32; d * rp_max];
        let mut st = vec![0f32; BLOCK_K * rp_max];
        let mut dpt = vec![0f32; BLOCK_K * rp_max];
        let mut hi = vec![0usize; rp_max];
        let mut lse_b = vec![0f32; rp_max];
        let mut delta_b = vec![0f32; rp_max];
        for r0 in (0..rows).step_by(BLOCK_Q) {
            let rb = BLOCK_Q.min(rows - r0);
            let rp = rb.div_ceil(16) * 16;
            let q_blk = &q[(row_base + r0) * d..(row_base + r0 + rb) * d];
            let do_blk = &dout[(row_base + r0) * d..(row_base + r0 + rb) * d];
            pack_transposed(&mut qt, q_blk, rb, rp, d, p.scale);
            pack_transposed(&mut dot, do_blk, rb, rp, d, 1.0);
            hi[..rp].fill(0);
            lse_b[..rp].fill(f32::NEG_INFINITY);
            delta_b[..rp].fill(0.0);
            for r in 0..rb {
                hi[r] = p.hi(bi, (r0 + r) % nq);
                lse_b[r] = lse[row_base + r0 + r];
                delta_b[r] = delta[row_base + r0 + r];
                if lse_b[r] == f32::NEG_INFINITY {
                    hi[r] = 0; // a row that sees no key has zero gradient
                }
            }
            let max_hi = hi[..rb].iter().copied().max().unwrap_or(0);
            let min_hi = hi[..rb].iter().copied().min().unwrap_or(0);
            let dq_blk = &mut dq_group[r0 * d..(r0 + rb) * d];
            for j0 in (0..max_hi).step_by(BLOCK_K) {
                let bk = BLOCK_K.min(max_hi - j0);
                let (k_blk, v_blk) = (&k_all[j0 * d..], &v_all[j0 * d..]);
                // Pᵀ = exp(K (scale·Q)ᵀ + mask − lse)
                nn((bk, rp, d), k_blk, d, &qt, rp, &mut st, rp, false);
                add_mask_transposed(p, &mut st, rp, bk, bi, kvh, r0, rb, j0);
                let partial = p.mask.is_some() || j0 + bk > min_hi;
                for c in 0..bk {
                    let row = &mut st[c * rp..(c + 1) * rp];
                    for ((x, &lim), &ls) in row.iter_mut().zip(&hi[..rp]).zip(&lse_b[..rp]) {
                        let visible = !partial || j0 + c < lim;
                        *x = if visible { exp_f32(*x - ls) } else { 0.0 };
                    }
                }
                // dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − delta) · scale (the gradient of Q Kᵀ)
                nn((bk, rp, d), v_blk, d, &dot, rp, &mut dpt, rp, false);
                for c in 0..bk {
                    let (pr, dr) = (&st[c * rp..(c + 1) * rp], &mut dpt[c * rp..(c + 1) * rp]);
                    for ((x, &pv), &dl) in dr.iter_mut().zip(pr).zip(&delta_b[..rp]) {
                        *x = pv * (*x - dl) * p.scale;
                    }
                }
                // dV += P dO... in kv-major form: dV[c] += Σ_r Pᵀ[c][r] dO[r]
                nn((bk, d, rb), &st, rp, do_blk, d, &mut dv_head[j0 * d..], d, true);
                // dK[c] += Σ_r dSᵀ[c][r] Q[r]
                nn((bk, d, rb), &dpt, rp, q_blk, d, &mut dk_head[j0 * d..], d, true);
                // dQ[r] += Σ_c dSᵀ[c][r] K[c]
                tn((rb, d, bk), &dpt, rp, k_blk, d, dq_blk, d, true);
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
