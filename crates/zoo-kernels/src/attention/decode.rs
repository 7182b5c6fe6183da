//! The forward pass for a handful of query rows per kv head: KV-cache decoding.
//!
//! `cpu.rs` keeps scores transposed, (keys × query rows), with the query rows on the SIMD lanes
//! padded to 16. Decoding one token with grouped-query attention stacks only `heads / kv_heads`
//! rows (4 for GQA 8/2), so three quarters of every score product and of the softmax would be
//! padding. Here the scores are row-major instead, `S = (scale·Q) · Kᵀ` as (rows × keys), keys
//! on the lanes: `microkernel::nt` reduces the dot products with a key block in registers
//! (with AVX-512 or AVX2: up to 8 rows in groups of 4 sharing each key load, or with AVX-512
//! the last 1 or 2 rows one by one)
//! or transposes the block once in cache (16 × 16 transposes), the
//! softmax runs along the keys of each row, and `O += P · V` streams V. Same semantics as
//! `cpu::forward` (masks, padding lengths, causal alignment, dropout, rows with no visible key);
//! the backward pass is `cpu::backward`'s, from the same row log-sum-exp.

use super::cpu::{finish_row, key_splits, merge_splits, Dims, Params, BLOCK_K};
use super::microkernel::{nn, nt};
use super::softmax::rescale;
use crate::aligned::Scratch;
use crate::math::exp_f32;
use crate::parallel::{for_each_index, DisjointMut};

/// Stacked query rows per kv head up to which [`forward`] is used: at 8 rows the
/// transposed layout already wastes half of its 16 lanes.
pub(crate) const MAX_ROWS: usize = 8;

/// Lanes of the row loops (one zmm of f32).
const LANES: usize = 16;

/// One online-softmax step on a row of scores whose length is a multiple of 16, in place:
/// `exp(s − m_new)`. Returns `(m_new, alpha, sum)` with `alpha` the factor for the row's old
/// output and sum (0 while the row has seen no key: `m` stays `-inf`).
#[inline(always)]
fn softmax_row(row: &mut [f32], m_old: f32) -> (f32, f32, f32) {
    let mut mx = [m_old; LANES];
    for chunk in row.chunks_exact(LANES) {
        for (a, &x) in mx.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mx = mx.iter().fold(m_old, |a, &x| if x > a { x } else { a });
    let (shift, alpha) = rescale(m_old, mx);
    #[cfg(target_arch = "x86_64")]
    if crate::switch::use_avx512() {
        // SAFETY: the CPU has AVX-512F (checked); the row's length is a multiple of 16.
        return (mx, alpha, unsafe { simd::exp_shift_sum(row, shift) });
    }
    let mut sum = [0f32; LANES];
    for chunk in row.chunks_exact_mut(LANES) {
        for (acc, x) in sum.iter_mut().zip(chunk.iter_mut()) {
            let e = exp_f32(*x - shift);
            *x = e;
            *acc += e;
        }
    }
    (mx, alpha, sum.iter().sum())
}

/// The exponential pass of [`softmax_row`] with AVX-512 intrinsics: the 12-instruction
/// `exp` of `math::avx512` instead of the ~17 the compiled loop gets from `exp_f32`.
#[cfg(target_arch = "x86_64")]
mod simd {
    use crate::math::avx512::exp_ps;
    use std::arch::x86_64::*;

    /// `row[i] = exp(row[i] − shift)` in place; returns the sum. `row.len() % 16 == 0`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
        let sh = _mm512_set1_ps(shift);
        let mut sums = [_mm512_setzero_ps(); 2];
        for (i, chunk) in row.chunks_exact_mut(16).enumerate() {
            let p = chunk.as_mut_ptr();
            let e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p), sh));
            _mm512_storeu_ps(p, e);
            sums[i % 2] = _mm512_add_ps(sums[i % 2], e);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]))
    }
}

/// Forward pass of every group when each has at most [`MAX_ROWS`] stacked rows: writes the
/// output `out (b, h, nq, d)` and row log-sum-exp `lse (b, h, nq)`, both fully. When there are
/// fewer groups than threads (batch 1 with one or two kv heads), each group's keys are split
/// between threads and the partial softmaxes merged ("flash-decoding").
pub(crate) fn forward(q: &[f32], k: &[f32], v: &[f32], p: &Params, out: &mut [f32], lse: &mut [f32]) {
    let Dims { b, h, hkv, nq, nk, d } = p.dims;
    let (groups, rows) = (b * hkv, h / hkv * nq);
    let splits = key_splits(groups, nk);
    let per_split = nk.div_ceil(BLOCK_K).div_ceil(splits) * BLOCK_K;
    let (out_w, lse_w) = (DisjointMut::new(out), DisjointMut::new(lse));
    // SAFETY (for callers): each group's rows `grp·rows..(grp + 1)·rows` are taken by one item.
    let group_out = |grp: usize| unsafe {
        (
            out_w.range_mut(grp * rows * d, rows * d),
            lse_w.range_mut(grp * rows, rows),
        )
    };
    if splits == 1 {
        // One item per group, finishing its rows in place (no merge pass).
        for_each_index(groups, |grp| {
            let (o, ls) = group_out(grp);
            let (mut m, mut l) = (vec![0f32; rows], vec![0f32; rows]);
            partial(q, k, v, p, (grp / hkv, grp % hkv), (0, nk), o, &mut m, &mut l);
            for r in 0..rows {
                ls[r] = finish_row(&mut o[r * d..(r + 1) * d], m[r], l[r]);
            }
        });
        return;
    }
    let items = groups * splits;
    // Partial results per item: o (rows × d), then m and l (rows each).
    let stride = rows * (d + 2);
    let mut parts = vec![0f32; items * stride];
    let parts_w = DisjointMut::new(&mut parts);
    for_each_index(items, |item| {
        let (grp, split) = (item / splits, item % splits);
        let keys = (split * per_split, ((split + 1) * per_split).min(nk));
        // SAFETY: item `item` owns its partial-result range.
        let part = unsafe { parts_w.range_mut(item * stride, stride) };
        let (o, ml) = part.split_at_mut(rows * d);
        let (m, l) = ml.split_at_mut(rows);
        partial(q, k, v, p, (grp / hkv, grp % hkv), keys, o, m, l);
    });
    for_each_index(groups, |grp| {
        let (o, ls) = group_out(grp);
        let part = |s: usize| {
            let at = (grp * splits + s) * stride;
            let (o, ml) = parts[at..at + stride].split_at(rows * d);
            (o, &ml[..rows], &ml[rows..])
        };
        merge_splits(o, ls, d, splits, part);
    });
}

multiversion! {
    /// The online softmax of the `rows` stacked query rows of group `(bi, kvh)` over keys
    /// `keys.0..keys.1` (a multiple of `BLOCK_K` apart, but for the last): leaves the
    /// unnormalized output `o (rows × d)`, each row's running max `m` and sum `l`
    /// (`-inf` and 0 for rows that saw no key).
    fn partial(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: &Params,
        group: (usize, usize),
        keys: (usize, usize),
        o: &mut [f32],
        m: &mut [f32],
        l: &mut [f32],
    ) {
        let (bi, kvh) = group;
        let Dims { h, hkv, nq, nk, d, .. } = p.dims;
        let g = h / hkv;
        let rows = m.len();
        let row0 = (bi * h + kvh * g) * nq;
        let q_rows: Vec<f32> = q[row0 * d..(row0 + rows) * d].iter().map(|x| x * p.scale).collect();
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        // Keys visible to each row before the additive mask.
        let hi: Vec<usize> = (0..rows).map(|r| p.hi(bi, r % nq)).collect();
        let max_hi = hi.iter().copied().max().unwrap_or(0).min(keys.1);
        let mut kt = Vec::new();
        // Scores and the output accumulator in cache-line aligned scratch, as the products
        // stream them with 64-byte loads and stores (1–4% on decode shapes, eleventh sitting).
        let mut s = Scratch::new(rows * BLOCK_K);
        let mut acc = Scratch::new(rows * d);
        acc.fill(0.0);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        let row_keys: Vec<u32> = match &p.dropout {
            Some(dp) => (0..rows).map(|r| dp.row_key(row0 + r)).collect(),
            None => Vec::new(),
        };
        for j0 in (keys.0..max_hi).step_by(BLOCK_K) {
            let bk = BLOCK_K.min(max_hi - j0);
            let bkp = bk.next_multiple_of(16);
            // S = (scale·Q) Kᵀ (rows × bkp), padding columns zero.
            nt((rows, bk, d), &q_rows, d, &k_all[j0 * d..(j0 + bk) * d], &mut s, bkp, &mut kt);
            for r in 0..rows {
                let row = &mut s[r * bkp..(r + 1) * bkp];
                if let Some(mask) = &p.mask {
                    let (base, sj) = (p.mask_offset(mask, bi, kvh, r, j0), mask.strides[3]);
                    for (c, x) in row[..bk].iter_mut().enumerate() {
                        *x += mask.data[base + c * sj];
                    }
                }
                // Keys at or past the row's limit, and the padding columns, are hidden.
                let visible = hi[r].saturating_sub(j0).min(bk);
                row[visible..].fill(f32::NEG_INFINITY);
                let (mx, alpha, sum) = softmax_row(row, m[r]);
                l[r] = l[r] * alpha + sum;
                m[r] = mx;
                if alpha != 1.0 {
                    for x in &mut acc[r * d..(r + 1) * d] {
                        *x *= alpha;
                    }
                }
                // The row sums above are of the undropped P; only P·V sees the mask.
                if let Some(dp) = &p.dropout {
                    for (c, x) in row[..bk].iter_mut().enumerate() {
                        *x *= dp.factor(row_keys[r], j0 + c);
                    }
                }
            }
            // O += P V
            nn((rows, d, bk), &s, bkp, &v_all[j0 * d..], d, &mut acc, d, true);
        }
        o[..rows * d].copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{forward_block, MaskRef};
    use super::super::dropout::AttentionDropout;
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The row-major decode forward (keys split between threads when there are fewer groups
    /// than threads) against the transposed block forward of `cpu.rs` on the same inputs, with
    /// every option that changes which keys a row sees: they must agree to f32 rounding (both
    /// are f32 kernels summing in different orders).
    #[test]
    fn decode_rows_match_the_block_kernel() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for &(h, hkv, nq, nk, d, causal, padded, masked, dropout) in &[
            (
                8usize, 2usize, 1usize, 300usize, 64usize, false, false, false, false,
            ),
            (8, 2, 2, 300, 64, true, false, false, false),
            (6, 2, 2, 129, 40, true, true, false, false),
            (4, 1, 2, 517, 32, false, true, true, false),
            (3, 3, 5, 70, 7, true, false, true, true),
            // One and two rows per group (in-register dot products with AVX-512), head_dim
            // with a partial last 16-lane chunk.
            (4, 4, 1, 77, 19, true, true, true, false),
            (6, 3, 1, 300, 100, false, true, false, true),
            // One group: its keys are split between the threads and merged.
            (4, 1, 1, 1100, 64, true, true, true, true),
        ] {
            let b = if hkv == 1 && h == 4 { 1 } else { 2 };
            let rnd = |n: usize, rng: &mut rand::rngs::StdRng| -> Vec<f32> {
                (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect()
            };
            let (q, k, v) = (
                rnd(b * h * nq * d, &mut rng),
                rnd(b * hkv * nk * d, &mut rng),
                rnd(b * hkv * nk * d, &mut rng),
            );
            let kv_len = [nk, nk / 2];
            // Additive mask broadcast over heads, with one fully hidden row per batch.
            let mut mask_data: Vec<f32> = (0..b * nq * nk)
                .map(|_| {
                    if rng.random::<f32>() < 0.3 {
                        f32::NEG_INFINITY
                    } else {
                        0.5
                    }
                })
                .collect();
            mask_data[..nk].fill(f32::NEG_INFINITY);
            let p = Params {
                dims: Dims { b, h, hkv, nq, nk, d },
                scale: 0.3,
                causal,
                kv_len: padded.then_some(&kv_len[..]),
                mask: masked.then_some(MaskRef {
                    data: &mask_data,
                    strides: [nq * nk, 0, nk, 1],
                }),
                dropout: dropout.then(|| AttentionDropout { p: 0.2, seed: 5 }.params()),
            };
            let rows = h / hkv * nq;
            assert!(rows <= MAX_ROWS);
            let (mut o1, mut l1) = (vec![0f32; b * h * nq * d], vec![0f32; b * h * nq]);
            forward(&q, &k, &v, &p, &mut o1, &mut l1);
            for (bi, kvh) in (0..b).flat_map(|bi| (0..hkv).map(move |kvh| (bi, kvh))) {
                let grp = bi * hkv + kvh;
                let (mut o2, mut l2) = (vec![0f32; rows * d], vec![0f32; rows]);
                forward_block(&q, &k, &v, &p, bi, kvh, 0, &mut o2, &mut l2);
                let (o1, l1) = (
                    &o1[grp * rows * d..(grp + 1) * rows * d],
                    &l1[grp * rows..(grp + 1) * rows],
                );
                for (x, y) in o1.iter().zip(&o2).chain(l1.iter().zip(&l2)) {
                    let ok = (x == y) || (x - y).abs() <= 1e-5 * (1.0 + y.abs());
                    assert!(ok, "h {h} hkv {hkv} nq {nq} nk {nk} d {d}: {x} vs {y}");
                }
            }
        }
    }
}
