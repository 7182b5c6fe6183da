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
//! Groups of at most `decode::MAX_ROWS` stacked rows (decoding a token) would leave most of
//! those lanes padding: their forward runs row-major in `decode.rs` instead.
//! Block products are the register-tiled micro-kernels of `microkernel.rs`; the softmax steps
//! between them are in `softmax.rs` (AVX-512 intrinsics, or plain loops); the remaining loops
//! are compiled for AVX-512, AVX2+FMA and the baseline and chosen at run time (a portable
//! build would otherwise leave them at SSE2). Blocks that the causal diagonal or a padding
//! length cuts skip the corner no row sees ([`Visibility`], the `*_ranged` products).
//!
//! Work items are (batch, kv head, query block) in the forward and (batch, kv head) groups in
//! the backward. When there are fewer of them than threads (one kv head at batch 1, a short
//! prompt, many cores), the forward also splits each block's keys between items and merges
//! the partial softmaxes, and the backward deals a group's query blocks to several items.

use super::decode;
use super::dropout::DropoutParams;
use super::microkernel::{nn, nn_ranged, pack_transposed, tn, tn_ranged};
use super::softmax::{online_block, probs_block};
use crate::aligned::{AlignedSlice, Scratch};
use crate::math::exp_f32;
use crate::parallel::{for_each_index, threads, DisjointMut, UninitVec};

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
    /// Dropout on the probabilities (see `dropout.rs`).
    pub dropout: Option<DropoutParams>,
}

impl Params<'_> {
    /// Index in `mask.data` of key `j0` for stacked row `row` of group `(bi, kvh)`; the next
    /// keys follow with stride `mask.strides[3]`.
    #[inline(always)]
    pub(super) fn mask_offset(&self, mask: &MaskRef, bi: usize, kvh: usize, row: usize, j0: usize) -> usize {
        let Dims { h, hkv, nq, .. } = self.dims;
        let [sb, sh, si, sj] = mask.strides;
        bi * sb + (kvh * (h / hkv) + row / nq) * sh + (row % nq) * si + j0 * sj
    }

    /// Keys `j < hi` are visible to query `i` of batch `b` (before the additive mask): the
    /// key-padding length, and with `causal` the bottom-right diagonal `j <= i + nk - nq`.
    #[inline(always)]
    pub(super) fn hi(&self, b: usize, i: usize) -> usize {
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

/// Which keys of a score block `(keys j0..j0 + bk) × (stacked rows 0..rp)` each row can see,
/// from the rows' limits `hi` (key `j` visible to row `r` when `j < hi[r]`, before any
/// additive mask): where the causal diagonal or a padding length cuts a block, the products
/// skip the corner no row sees — keys at 16-row granularity for the score products (one
/// chunk of rows per SIMD register), exact key counts for the products summed over keys.
struct Visibility<'a> {
    hi: &'a [u32],
    /// Per 16-row chunk: the largest `hi` of its rows.
    chunk_hi: [u32; BLOCK_Q / 16],
    chunks: usize,
    rb: usize,
    j0: usize,
    bk: usize,
}

impl<'a> Visibility<'a> {
    /// For rows `0..rb` (`rb <= BLOCK_Q`; `hi` covers them) against keys `j0..j0 + bk`.
    fn new(hi: &'a [u32], rb: usize, j0: usize, bk: usize) -> Self {
        let chunks = rb.div_ceil(16);
        let mut chunk_hi = [0u32; BLOCK_Q / 16];
        for (ch, x) in chunk_hi[..chunks].iter_mut().enumerate() {
            *x = hi[16 * ch..rb.min(16 * ch + 16)]
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
        }
        Visibility {
            hi,
            chunk_hi,
            chunks,
            rb,
            j0,
            bk,
        }
    }

    /// Whether every chunk of rows sees every key of the block (no corner to skip).
    fn full(&self) -> bool {
        self.chunk_hi[..self.chunks]
            .iter()
            .all(|&h| h as usize >= self.j0 + self.bk)
    }

    /// The columns `(lo, hi)` (multiples of 16) spanning the chunks in which some row sees key
    /// `j0 + c`; `(0, 0)` when none does.
    fn cols(&self, c: usize) -> (usize, usize) {
        let j = (self.j0 + c) as u32;
        let seen = |ch: &usize| self.chunk_hi[*ch] > j;
        match (0..self.chunks).find(seen) {
            Some(lo) => {
                let hi = (lo..self.chunks).rev().find(seen).unwrap_or(lo);
                (16 * lo, 16 * (hi + 1))
            }
            None => (0, 0),
        }
    }

    /// The keys `0..n` of the block (block-relative) that some row of `r0..r0 + r` sees.
    fn keys(&self, r0: usize, r: usize) -> usize {
        let top = self.hi[r0..(r0 + r).min(self.rb)]
            .iter()
            .copied()
            .max()
            .unwrap_or(0) as usize;
        top.saturating_sub(self.j0).min(self.bk)
    }
}

/// Multiplies the transposed probabilities `st (bk × rp)` of rows `row0..row0 + rb` and keys
/// `j0..j0 + bk` by the dropout mask; `keys` is scratch for the per-row hash keys.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn drop_block(
    st: &mut [f32],
    rp: usize,
    rb: usize,
    bk: usize,
    j0: usize,
    row0: usize,
    dp: &DropoutParams,
    keys: &mut [u32],
) {
    for (r, key) in keys[..rb].iter_mut().enumerate() {
        *key = dp.row_key(row0 + r);
    }
    for c in 0..bk {
        let row = &mut st[c * rp..c * rp + rb];
        for (x, &key) in row.iter_mut().zip(&keys[..rb]) {
            *x *= dp.factor(key, j0 + c);
        }
    }
}

/// A zero-filled buffer whose pages are first touched by a write. `vec![0.0; n]` becomes
/// `calloc`, whose large blocks start as copy-on-write zero pages: the kernels read them
/// before writing (they accumulate), so each page would fault twice and the copy-on-write
/// would flush the TLB on every CPU of the process (measured: ~25% of a backward pass at
/// n = 512).
fn zeroed(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
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
    let sj = m.strides[3];
    for r in 0..rb {
        let base = p.mask_offset(&m, bi, kvh, r0 + r, j0);
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
    let mut lse = vec![f32::NEG_INFINITY; b * h * nq];
    if rows == 0 || d == 0 {
        return (zeroed(b * h * nq * d), lse);
    }
    if rows <= decode::MAX_ROWS {
        // A few rows per kv head (decoding): scores row-major, keys split between threads.
        let mut out = zeroed(b * h * nq * d);
        decode::forward(q, k, v, p, &mut out, &mut lse);
        return (out, lse);
    }
    let splits = key_splits(b * hkv * rows.div_ceil(BLOCK_Q), p.dims.nk);
    let out = forward_blocks(q, k, v, p, splits, &mut lse);
    (out, lse)
}

/// [`forward`] by query blocks, each block's keys split between `splits` work items: returns
/// the output and fills `lse`.
fn forward_blocks(q: &[f32], k: &[f32], v: &[f32], p: &Params, splits: usize, lse: &mut [f32]) -> Vec<f32> {
    let Dims { b, h, hkv, nq, d, .. } = p.dims;
    let rows = p.dims.group() * nq;
    // Every item zeroes and writes its own rows of the output (no serial memset up front).
    let mut out = UninitVec::new(b * h * nq * d);
    let (out_w, lse_w) = (out.writer(), DisjointMut::new(lse));
    // One item per (batch, kv head, query block): items write disjoint rows of `out` and `lse`.
    let blocks = rows.div_ceil(BLOCK_Q);
    let items = b * hkv * blocks;
    let item_rows = |item: usize| {
        let (bk, blk) = (item / blocks, item % blocks);
        let r0 = blk * BLOCK_Q;
        (bk / hkv, bk % hkv, r0, BLOCK_Q.min(rows - r0), bk * rows + r0)
    };
    // SAFETY (for the callers below): item `item` owns its rows `row..row + rb` of both.
    let item_out =
        |row: usize, rb: usize| unsafe { (out_w.zeroed_range(row * d, rb * d), lse_w.range_mut(row, rb)) };
    if splits == 1 {
        for_each_index(items, |item| {
            let (bi, kvh, r0, rb, row) = item_rows(item);
            let (o_blk, lse_blk) = item_out(row, rb);
            forward_block(q, k, v, p, bi, kvh, r0, o_blk, lse_blk)
        });
    } else {
        // Fewer query blocks than threads: each block's keys are split between items too, and
        // the partial softmaxes merged (as `decode.rs` does for a handful of rows).
        let per_split = p.dims.nk.div_ceil(BLOCK_K).div_ceil(splits) * BLOCK_K;
        let stride = BLOCK_Q * (d + 2); // o (rb × d), then m and l (rb each)
        let mut parts = vec![0f32; items * splits * stride];
        let parts_w = DisjointMut::new(&mut parts);
        for_each_index(items * splits, |i| {
            let (item, split) = (i / splits, i % splits);
            let (bi, kvh, r0, rb, _) = item_rows(item);
            let keys = (split * per_split, ((split + 1) * per_split).min(p.dims.nk));
            // SAFETY: work item i owns its partial-result range.
            let part = unsafe { parts_w.range_mut(i * stride, stride) };
            let (o, ml) = part.split_at_mut(rb * d);
            let (m, l) = ml.split_at_mut(rb);
            forward_keys(q, k, v, p, bi, kvh, r0, keys, o, &mut m[..rb], &mut l[..rb]);
        });
        for_each_index(items, |item| {
            let (_, _, _, rb, row) = item_rows(item);
            let (o_blk, lse_blk) = item_out(row, rb);
            let part = |s: usize| {
                let at = (item * splits + s) * stride;
                let (o, ml) = parts[at..at + stride].split_at(rb * d);
                (o, &ml[..rb], &ml[rb..2 * rb])
            };
            merge_splits(o_blk, lse_blk, d, splits, part);
        });
    }
    // SAFETY: the query blocks of every group cover the output.
    unsafe { out.assume_init() }
}

/// How many parts to split each work item's keys into when there are fewer items than
/// threads: enough items for every thread, with at least two key blocks per part.
pub(super) fn key_splits(items: usize, nk: usize) -> usize {
    threads()
        .div_ceil(items.max(1))
        .min(nk.div_ceil(BLOCK_K) / 2)
        .max(1)
}

/// Finishes rows whose keys were split between work items: `part(s)` gives split `s`'s
/// unnormalized output rows `(rows × d)`, running maxima and sums (`rows = lse.len()`).
/// With `M = max m_s`: `L = Σ l_s·e^(m_s − M)`, `O = Σ o_s·e^(m_s − M) / L`, `lse = M + ln L`.
pub(super) fn merge_splits<'a>(
    o: &mut [f32],
    lse: &mut [f32],
    d: usize,
    splits: usize,
    part: impl Fn(usize) -> (&'a [f32], &'a [f32], &'a [f32]),
) {
    for r in 0..lse.len() {
        let mx = (0..splits)
            .map(|s| part(s).1[r])
            .fold(f32::NEG_INFINITY, f32::max);
        let o_row = &mut o[r * d..(r + 1) * d];
        o_row.fill(0.0);
        let mut sum = 0f32;
        for s in 0..splits {
            let (o_s, m_s, l_s) = part(s);
            if l_s[r].is_nan() {
                // NaN scores (their max skipped them): the row is NaN, as unsplit.
                sum = f32::NAN;
            } else if m_s[r] > f32::NEG_INFINITY {
                let w = exp_f32(m_s[r] - mx);
                sum += l_s[r] * w;
                for (x, &y) in o_row.iter_mut().zip(&o_s[r * d..(r + 1) * d]) {
                    *x += w * y;
                }
            }
        }
        lse[r] = finish_row(o_row, mx, sum);
    }
}

/// One block of up to `BLOCK_Q` stacked query rows starting at row `r0` of group `(bi, kvh)`,
/// against all keys: its output rows and log-sum-exp. `o_blk` must be zero on entry (the
/// callers hand it over freshly zeroed).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_block(
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
    let (rb, d) = (lse_blk.len(), p.dims.d);
    // Stack arrays, as in `forward_keys`.
    let (mut m, mut l) = ([0f32; BLOCK_Q], [0f32; BLOCK_Q]);
    let (m, l) = (&mut m[..rb], &mut l[..rb]);
    forward_keys(q, k, v, p, bi, kvh, r0, (0, p.dims.nk), o_blk, m, l);
    for r in 0..rb {
        lse_blk[r] = finish_row(&mut o_blk[r * d..(r + 1) * d], m[r], l[r]);
    }
}

multiversion! {
    /// The online softmax of a block of `rb = m_out.len()` stacked query rows starting at row
    /// `r0` of group `(bi, kvh)`, over keys `keys.0..keys.1` (`keys.0` a multiple of
    /// `BLOCK_K`): leaves the unnormalized output in `o_blk` (zero on entry) and each row's
    /// running max and sum in `m_out` and `l_out` (`-inf` and 0 for rows that saw no key).
    fn forward_keys(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        p: &Params,
        bi: usize,
        kvh: usize,
        r0: usize,
        keys: (usize, usize),
        o_blk: &mut [f32],
        m_out: &mut [f32],
        l_out: &mut [f32],
    ) {
        let Dims { h, hkv, nq, nk, d, .. } = p.dims;
        let g = h / hkv;
        let rb = m_out.len();
        let rp = rb.div_ceil(16) * 16;
        let q_blk = &q[((bi * h + kvh * g) * nq + r0) * d..][..rb * d];
        let kv_base = (bi * hkv + kvh) * nk * d;
        let (k_all, v_all) = (&k[kv_base..kv_base + nk * d], &v[kv_base..kv_base + nk * d]);
        let mut qt = Scratch::new(d * rp);
        pack_transposed(&mut qt, q_blk, rb, rp, d, p.scale);
        // Per stacked row: keys visible before the additive mask (0 for padding rows). This
        // and the other per-row state live in stack arrays (rp <= BLOCK_Q): heap allocations
        // per work item were ~2% of a forward pass at n = 128.
        let mut hi = [0u32; BLOCK_Q];
        let hi = &mut hi[..rp];
        for (r, x) in hi[..rb].iter_mut().enumerate() {
            *x = p.hi(bi, (r0 + r) % nq) as u32;
        }
        let max_hi = (hi[..rb].iter().copied().max().unwrap_or(0) as usize).min(keys.1);
        let min_hi = hi[..rb].iter().copied().min().unwrap_or(0) as usize;
        let (mut m, mut l, mut alpha) = ([f32::NEG_INFINITY; BLOCK_Q], [0f32; BLOCK_Q], [0f32; BLOCK_Q]);
        let (m, l, alpha) = (&mut m[..rp], &mut l[..rp], &mut alpha[..rp]);
        let mut st = Scratch::new(BLOCK_K * rp);
        let mut row_keys = [0u32; BLOCK_Q];
        for j0 in (keys.0..max_hi).step_by(BLOCK_K) {
            let bk = BLOCK_K.min(max_hi - j0);
            let vis = Visibility::new(hi, rb, j0, bk);
            let full = vis.full();
            // Sᵀ = K (scale·Q)ᵀ, (bk × rp); on a cut block only the chunks of rows that see
            // each key tile (the rest is hidden below, whatever it holds).
            let k_blk = &k_all[j0 * d..];
            if full {
                nn((bk, rp, d), k_blk, d, &qt, rp, &mut st, rp, false);
            } else {
                nn_ranged((bk, rp, d), k_blk, d, &qt, rp, &mut st, rp, false, &|c, _| (vis.cols(c), (0, d)));
            }
            add_mask_transposed(p, &mut st, rp, bk, bi, kvh, r0, rb, j0);
            // Padding columns (hi = 0) are hidden by the same test as partial rows; a cut
            // block always has a row with j0 + bk > hi, so it is partial too.
            let partial = p.mask.is_some() || j0 + bk > min_hi || rb < rp;
            debug_assert!(full || partial, "a cut block must hide what it skipped");
            online_block(&mut st, rp, bk, j0, hi, m, l, alpha, partial);
            for r in 0..rb {
                if alpha[r] != 1.0 {
                    for x in &mut o_blk[r * d..(r + 1) * d] {
                        *x *= alpha[r];
                    }
                }
            }
            if let Some(dp) = &p.dropout {
                // The row sums `l` above are of the undropped P; only P·V sees the mask.
                let row0 = (bi * h + kvh * g) * nq + r0;
                drop_block(&mut st, rp, rb, bk, j0, row0, dp, &mut row_keys);
            }
            // O += P V with P = (Sᵀ)ᵀ; on a cut block each row tile stops at its last visible
            // key (P is 0 beyond it).
            let v_blk = &v_all[j0 * d..];
            if full {
                tn((rb, d, bk), &st, rp, v_blk, d, o_blk, d, true);
            } else {
                tn_ranged((rb, d, bk), &st, rp, v_blk, d, o_blk, d, true, &|r0, r| ((0, d), (0, vis.keys(r0, r))));
            }
        }
        m_out.copy_from_slice(&m[..rb]);
        l_out.copy_from_slice(&l[..rb]);
    }
}

/// The end of a row's online softmax: divides its accumulated output by the row sum `l` and
/// returns the row log-sum-exp `m + ln l`; a row that saw no key (`l = 0`) gets zeros and
/// `-inf`, and a row whose scores held a NaN (`l` NaN) gets NaN, as in PyTorch.
#[inline]
pub(super) fn finish_row(o_row: &mut [f32], m: f32, l: f32) -> f32 {
    if l > 0.0 {
        let inv = 1.0 / l;
        o_row.iter_mut().for_each(|x| *x *= inv);
        m + l.ln()
    } else if l.is_nan() {
        o_row.fill(f32::NAN);
        f32::NAN
    } else {
        o_row.fill(0.0);
        f32::NEG_INFINITY
    }
}

/// Backward pass: gradients `(dq, dk, dv)` from the saved output and row log-sum-exp.
///
/// Memory beyond the gradients: per-thread block scratch, and when there are fewer (batch,
/// kv-head) groups than threads, up to `threads − 1` partial copies of dK and dV (kv-sized,
/// so small in exactly that case: one kv head at batch 1).
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
    if rows == 0 || nk == 0 || d == 0 {
        return (
            zeroed(b * h * nq * d),
            zeroed(b * hkv * nk * d),
            zeroed(b * hkv * nk * d),
        );
    }
    // Few groups for the threads (batch 1 with one kv head, or many cores): each group's query
    // blocks are dealt to `splits` items, interleaved so that causal blocks even out. Split 0
    // accumulates dK and dV in the outputs, the others in buffers of their own (kv-sized:
    // small exactly when groups are few), added in after.
    let splits = threads().div_ceil(b * hkv).min(rows.div_ceil(BLOCK_Q)).max(1);
    backward_split(q, k, v, out, dout, lse, p, splits)
}

/// [`backward`] with each group's query blocks dealt to `splits` work items.
#[allow(clippy::too_many_arguments)]
fn backward_split(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    p: &Params,
    splits: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { b, h, hkv, nq, nk, d } = p.dims;
    let groups = b * hkv;
    let per_head = nk * d;
    // Every item zeroes the ranges it owns (no serial memsets up front).
    let mut dq = UninitVec::new(b * h * nq * d);
    let mut dk = UninitVec::new(groups * per_head);
    let mut dv = UninitVec::new(groups * per_head);
    let mut dk_more = UninitVec::new(groups * (splits - 1) * per_head);
    let mut dv_more = UninitVec::new(groups * (splits - 1) * per_head);
    let (dq_w, dk_w, dv_w) = (dq.writer(), dk.writer(), dv.writer());
    let (dk_more_w, dv_more_w) = (dk_more.writer(), dv_more.writer());
    for_each_index(groups * splits, |item| {
        let (grp, split) = (item / splits, item % splits);
        // SAFETY: split 0 of group `grp` owns its kv head's rows of dk and dv, split s > 0 its
        // own partial buffers; each query block of the group goes to one split (in
        // `backward_group`, through `dq_w`).
        let (dk_acc, dv_acc) = unsafe {
            if split == 0 {
                (
                    dk_w.zeroed_range(grp * per_head, per_head),
                    dv_w.zeroed_range(grp * per_head, per_head),
                )
            } else {
                let at = (grp * (splits - 1) + split - 1) * per_head;
                (
                    dk_more_w.zeroed_range(at, per_head),
                    dv_more_w.zeroed_range(at, per_head),
                )
            }
        };
        backward_group(
            q,
            k,
            v,
            out,
            dout,
            lse,
            p,
            grp,
            (split, splits),
            &dq_w,
            dk_acc,
            dv_acc,
        )
    });
    // SAFETY: the query blocks of every group cover dq; split 0 of each group covers its dk and
    // dv; the partial buffers are covered by splits 1.. of every group.
    let (dq, mut dk, mut dv) = unsafe { (dq.assume_init(), dk.assume_init(), dv.assume_init()) };
    if splits > 1 {
        let (dk_more, dv_more) = unsafe { (dk_more.assume_init(), dv_more.assume_init()) };
        add_partials(&mut dk, &dk_more, splits - 1, per_head);
        add_partials(&mut dv, &dv_more, splits - 1, per_head);
    }
    (dq, dk, dv)
}

/// `sums[g] += Σ_s parts[g][s]` for every group `g`, with `sums` made of `per_group`-element
/// groups and `parts` of `extra` such groups per group; in parallel chunks.
fn add_partials(sums: &mut [f32], parts: &[f32], extra: usize, per_group: usize) {
    const CHUNK: usize = 16 * 1024;
    let chunks = per_group.div_ceil(CHUNK);
    let groups = sums.len() / per_group.max(1);
    let out = DisjointMut::new(sums);
    for_each_index(groups * chunks, |item| {
        let (g, c) = (item / chunks, item % chunks);
        let (start, len) = (c * CHUNK, CHUNK.min(per_group - c * CHUNK));
        // SAFETY: item (g, c) owns chunk c of group g.
        let dst = unsafe { out.range_mut(g * per_group + start, len) };
        for s in 0..extra {
            let src = &parts[(g * extra + s) * per_group + start..][..len];
            dst.iter_mut().zip(src).for_each(|(x, y)| *x += y);
        }
    });
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
    /// Gradients of one (batch, kv-head) group `grp` from query blocks `split, split + splits,
    /// …`: writes dQ of those blocks (zeroing each first, through `dq_w`) and adds their part
    /// of dK and dV into `dk_head` / `dv_head` (the kv head's `nk × d`, zero on entry). Query
    /// blocks are the outer loop, so Qᵀ and dOᵀ are packed once per block.
    fn backward_group(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        dout: &[f32],
        lse: &[f32],
        p: &Params,
        grp: usize,
        splits: (usize, usize),
        dq_w: &DisjointMut<'_, std::mem::MaybeUninit<f32>>,
        dk_head: &mut [f32],
        dv_head: &mut [f32],
    ) {
        let Dims { h, hkv, nq, nk, d, .. } = p.dims;
        let (bi, kvh) = (grp / hkv, grp % hkv);
        let (split, splits) = splits;
        let g = h / hkv;
        let rows = g * nq;
        let row_base = (bi * h + kvh * g) * nq;
        let kv_base = (bi * hkv + kvh) * nk * d;
        // K, Q and dO are the streamed operands of the dQ, dK and dV products: copies of them
        // when they do not start on a cache line (extra memory per thread only).
        let k_all = AlignedSlice::new(&k[kv_base..kv_base + nk * d], d);
        let v_all = &v[kv_base..kv_base + nk * d];
        let rp_max = BLOCK_Q;
        // Qᵀ and dOᵀ are streamed by the score products, Pᵀ and dSᵀ written by them (`aligned.rs`).
        let mut qt = Scratch::new(d * rp_max);
        let mut dot = Scratch::new(d * rp_max);
        let mut st = Scratch::new(BLOCK_K * rp_max);
        let mut dpt = Scratch::new(BLOCK_K * rp_max);
        let mut hi = vec![0u32; rp_max];
        let mut lse_b = vec![0f32; rp_max];
        let mut delta_b = vec![0f32; rp_max];
        let mut row_keys = vec![0u32; rp_max];
        for r0 in (split * BLOCK_Q..rows).step_by(splits * BLOCK_Q) {
            let rb = BLOCK_Q.min(rows - r0);
            let rp = rb.div_ceil(16) * 16;
            let span = (row_base + r0) * d..(row_base + r0 + rb) * d;
            let (q_copy, do_copy) = (AlignedSlice::new(&q[span.clone()], d), AlignedSlice::new(&dout[span.clone()], d));
            let (q_blk, do_blk): (&[f32], &[f32]) = (&q_copy, &do_copy);
            pack_transposed(&mut qt, q_blk, rb, rp, d, p.scale);
            pack_transposed(&mut dot, do_blk, rb, rp, d, 1.0);
            hi[..rp].fill(0);
            lse_b[..rp].fill(f32::NEG_INFINITY);
            delta_b[..rp].fill(0.0);
            // delta_r = Σ_e dO_re · O_re: the softmax backward's row term.
            row_dots(&mut delta_b[..rb], &out[span.clone()], &dout[span], d);
            for r in 0..rb {
                hi[r] = p.hi(bi, (r0 + r) % nq) as u32;
                lse_b[r] = lse[row_base + r0 + r];
                if lse_b[r] == f32::NEG_INFINITY {
                    hi[r] = 0; // a row that sees no key has zero gradient
                }
            }
            let max_hi = hi[..rb].iter().copied().max().unwrap_or(0) as usize;
            // SAFETY: query block r0 of this group is this item's alone (see `backward`).
            let dq_blk = unsafe { dq_w.zeroed_range((grp * rows + r0) * d, rb * d) };
            for j0 in (0..max_hi).step_by(BLOCK_K) {
                let bk = BLOCK_K.min(max_hi - j0);
                let (k_blk, v_blk) = (&k_all[j0 * d..], &v_all[j0 * d..]);
                let vis = Visibility::new(&hi, rb, j0, bk);
                let full = vis.full();
                let key_cols = |c: usize, _| (vis.cols(c), (0, d));
                // Pᵀ = exp(K (scale·Q)ᵀ + mask − lse); on a cut block, computed where some row
                // of the chunk sees the key tile, and zeroed by the hiding below elsewhere.
                if full {
                    nn((bk, rp, d), k_blk, d, &qt, rp, &mut st, rp, false);
                } else {
                    nn_ranged((bk, rp, d), k_blk, d, &qt, rp, &mut st, rp, false, &key_cols);
                }
                add_mask_transposed(p, &mut st, rp, bk, bi, kvh, r0, rb, j0);
                probs_block(&mut st, rp, bk, j0, &hi, &lse_b);
                // dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ − delta) · scale (the gradient of Q Kᵀ)
                if full {
                    nn((bk, rp, d), v_blk, d, &dot, rp, &mut dpt, rp, false);
                } else {
                    nn_ranged((bk, rp, d), v_blk, d, &dot, rp, &mut dpt, rp, false, &key_cols);
                }
                // Columns of a cut block that no row of their chunk sees: dSᵀ = 0 there (dPᵀ
                // may be stale; every product below reads dSᵀ and Pᵀ as written here).
                let cols = |c: usize| if full { (0, rp) } else { vis.cols(c) };
                match &p.dropout {
                    None => {
                        for c in 0..bk {
                            let (lo, hi_c) = cols(c);
                            let (pr, dr) = (&st[c * rp..(c + 1) * rp], &mut dpt[c * rp..(c + 1) * rp]);
                            dr[..lo].fill(0.0);
                            dr[hi_c..].fill(0.0);
                            for ((x, &pv), &dl) in dr[lo..hi_c].iter_mut().zip(&pr[lo..hi_c]).zip(&delta_b[lo..hi_c]) {
                                *x = pv * (*x - dl) * p.scale;
                            }
                        }
                    }
                    Some(dp) => {
                        // With mask M: dP = (V dOᵀ)∘M, dS = P∘(dP − δ); dV then needs P∘M.
                        for (r, key) in row_keys[..rb].iter_mut().enumerate() {
                            *key = dp.row_key(row_base + r0 + r);
                        }
                        for c in 0..bk {
                            let (lo, hi_c) = cols(c);
                            let hi_c = hi_c.min(rb).max(lo);
                            let (pr, dr) = (&mut st[c * rp..(c + 1) * rp], &mut dpt[c * rp..(c + 1) * rp]);
                            dr[..lo].fill(0.0);
                            dr[hi_c..].fill(0.0);
                            for (((x, pv), &dl), &key) in dr[lo..hi_c]
                                .iter_mut()
                                .zip(pr[lo..hi_c].iter_mut())
                                .zip(&delta_b[lo..hi_c])
                                .zip(&row_keys[lo..hi_c])
                            {
                                let m = dp.factor(key, j0 + c);
                                *x = *pv * (*x * m - dl) * p.scale;
                                *pv *= m;
                            }
                        }
                    }
                }
                let (dv_blk, dk_blk) = (&mut dv_head[j0 * d..], &mut dk_head[j0 * d..]);
                if full {
                    // dV += P dO... in kv-major form: dV[c] += Σ_r Pᵀ[c][r] dO[r]
                    nn((bk, d, rb), &st, rp, do_blk, d, dv_blk, d, true);
                    // dK[c] += Σ_r dSᵀ[c][r] Q[r]
                    nn((bk, d, rb), &dpt, rp, q_blk, d, dk_blk, d, true);
                    // dQ[r] += Σ_c dSᵀ[c][r] K[c]
                    tn((rb, d, bk), &dpt, rp, k_blk, d, dq_blk, d, true);
                } else {
                    // The same sums over the rows that see each key tile, and over the keys each
                    // row tile sees (the terms left out are zeros).
                    let rows_of = |c: usize, _| ((0, d), vis.cols(c));
                    nn_ranged((bk, d, rb), &st, rp, do_blk, d, dv_blk, d, true, &rows_of);
                    nn_ranged((bk, d, rb), &dpt, rp, q_blk, d, dk_blk, d, true, &rows_of);
                    let keys_of = |r0: usize, r: usize| ((0, d), (0, vis.keys(r0, r)));
                    tn_ranged((rb, d, bk), &dpt, rp, k_blk, d, dq_blk, d, true, &keys_of);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::dropout::AttentionDropout;

    /// Splitting each query block's keys between work items (what few blocks on many threads
    /// get) gives the forward of one item per block, up to rounding: the partial softmaxes
    /// merge exactly. Causal, padded, masked (with a fully masked row) and dropout; more splits
    /// than key blocks leave parts without keys.
    #[test]
    fn split_keys_forward_matches_one_item_per_block() {
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 3.0;
        let lens = [300usize, 41];
        let drop = AttentionDropout::with_seed(0.2, 5);
        for &(b, h, hkv, nq, nk, d) in &[(1, 2, 1, 20, 600, 32), (2, 3, 3, 70, 333, 16)] {
            let mask: Vec<f32> = (0..nq * nk)
                .map(|i| {
                    if i / nk == 3 || i % 7 == 0 {
                        f32::NEG_INFINITY
                    } else {
                        val(i, 9)
                    }
                })
                .collect();
            for (causal, padded, masked, dropout) in [
                (false, false, false, false),
                (true, false, false, false),
                (true, true, true, false),
                (false, true, false, true),
            ] {
                let p = Params {
                    dims: Dims { b, h, hkv, nq, nk, d },
                    scale: 0.3,
                    causal,
                    kv_len: padded.then_some(&lens[..b]),
                    mask: masked.then_some(MaskRef {
                        data: &mask,
                        strides: [0, 0, nk, 1],
                    }),
                    dropout: dropout.then(|| drop.params()),
                };
                let q: Vec<f32> = (0..b * h * nq * d).map(|i| val(i, 1)).collect();
                let k: Vec<f32> = (0..b * hkv * nk * d).map(|i| val(i, 2)).collect();
                let v: Vec<f32> = (0..b * hkv * nk * d).map(|i| val(i, 3)).collect();
                let mut lse1 = vec![0f32; b * h * nq];
                let one = forward_blocks(&q, &k, &v, &p, 1, &mut lse1);
                for splits in [2, 3, nk.div_ceil(BLOCK_K) + 2] {
                    let mut lse = vec![0f32; b * h * nq];
                    let many = forward_blocks(&q, &k, &v, &p, splits, &mut lse);
                    let what = format!("{:?} causal {causal} padded {padded} masked {masked} dropout {dropout} splits {splits}", p.dims);
                    for (i, (x, y)) in one.iter().zip(&many).enumerate() {
                        assert!((x - y).abs() <= 2e-6, "{what}: out[{i}] {x} vs {y}");
                    }
                    for (i, (x, y)) in lse1.iter().zip(&lse).enumerate() {
                        assert!(
                            x == y || (x - y).abs() <= 2e-6 * x.abs().max(1.0),
                            "{what}: lse[{i}] {x} vs {y}"
                        );
                    }
                    if masked {
                        let row3 = 3 * d..4 * d;
                        assert!(
                            many[row3].iter().all(|&x| x == 0.0) && lse[3] == f32::NEG_INFINITY,
                            "{what}: fully masked row"
                        );
                    }
                }
            }
        }
    }

    /// Dealing a group's query blocks to several work items (what few groups on many threads
    /// get) gives the gradients of one item per group: dQ exactly (same sums), dK and dV up to
    /// the order of their additions. Shapes with 1–5 query blocks per group, causal and
    /// padded, with dropout; more splits than blocks leave items without work.
    #[test]
    fn split_backward_matches_one_item_per_group() {
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 2.0;
        let lens = [70usize, 41];
        let drop = AttentionDropout::with_seed(0.2, 9);
        for &(b, h, hkv, nq, nk, d) in &[
            (1, 4, 1, 40, 90, 32),
            (2, 3, 1, 100, 100, 16),
            (1, 2, 2, 17, 60, 8),
        ] {
            for (causal, padded, dropout) in [(false, false, false), (true, false, false), (true, true, true)]
            {
                let dims = Dims { b, h, hkv, nq, nk, d };
                let p = Params {
                    dims,
                    scale: 0.3,
                    causal,
                    kv_len: padded.then_some(&lens[..b]),
                    mask: None,
                    dropout: dropout.then(|| drop.params()),
                };
                let q: Vec<f32> = (0..b * h * nq * d).map(|i| val(i, 1)).collect();
                let k: Vec<f32> = (0..b * hkv * nk * d).map(|i| val(i, 2)).collect();
                let v: Vec<f32> = (0..b * hkv * nk * d).map(|i| val(i, 3)).collect();
                let dout: Vec<f32> = (0..b * h * nq * d).map(|i| val(i, 4)).collect();
                let (out, lse) = forward(&q, &k, &v, &p);
                let one = backward_split(&q, &k, &v, &out, &dout, &lse, &p, 1);
                let blocks = (h / hkv * nq).div_ceil(BLOCK_Q);
                for splits in [2, 3, blocks + 1] {
                    let many = backward_split(&q, &k, &v, &out, &dout, &lse, &p, splits);
                    let what =
                        format!("{dims:?} causal {causal} padded {padded} dropout {dropout} splits {splits}");
                    assert_eq!(one.0, many.0, "{what}: dq");
                    for (name, x, y) in [("dk", &one.1, &many.1), ("dv", &one.2, &many.2)] {
                        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let diff = x.iter().zip(y).fold(0f32, |m, (a, c)| m.max((a - c).abs()));
                        assert!(
                            diff <= 1e-6 * scale.max(1e-30),
                            "{what}: {name} differs by {diff:e} (scale {scale:e})"
                        );
                    }
                }
            }
        }
    }
}
