//! The softmax steps of the block kernels, on transposed score blocks `Sᵀ (keys × rp)` whose
//! `rp` columns are stacked query rows, 16 to a SIMD register:
//!
//! - [`online_block`]: one step of the forward's running (online) softmax over a key block;
//! - [`probs_block`]: the backward's probabilities `P = exp(S − lse)`, recomputed per block.
//!
//! Both hide the keys a row may not see (key-padding length, causal diagonal) from the
//! per-row limit `hi`: key `j` is visible to column `r` when `j < hi[r]`.
//!
//! Written three times, computing the same step: with AVX-512 intrinsics, used when the CPU
//! has AVX-512F (the compiler had turned the masked loops of the portable version into scalar
//! code, and its `exp` costs ~17 instructions against 12 here), with AVX2 + FMA intrinsics
//! (8 lanes, blends for masks) on other x86 CPUs, and as plain loops for every other CPU. The
//! tests below hold all three to an f64 model of the same step.

use crate::math::exp_f32;

/// SIMD width the loops are written for (one zmm of f32); `rp` is a multiple of it.
pub(super) const LANES: usize = 16;

/// For a row whose running max moves from `m_old` to `m_new`: the shift for `exp(s − shift)`
/// and the factor `alpha` for the row's old output and sum. Rows that have seen nothing keep
/// `m = -inf`: their shift is 0 (so `exp(-inf − 0) = 0`, never NaN) and their alpha 0.
#[inline(always)]
pub(super) fn rescale(m_old: f32, m_new: f32) -> (f32, f32) {
    let shift = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
    let alpha = if m_old == f32::NEG_INFINITY {
        0.0
    } else {
        exp_f32(m_old - m_new)
    };
    (shift, alpha)
}

/// Whether the AVX-512 versions run (the CPU has AVX-512F, and `switch` allows them).
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // asked only on x86-64 (and in tests)
fn avx512() -> bool {
    crate::switch::use_avx512()
}

/// Checks the slice lengths the raw-pointer loops rely on.
fn check(st: &[f32], rp: usize, bk: usize, per_row: &[usize]) {
    assert!(
        rp.is_multiple_of(LANES) && st.len() >= bk * rp && per_row.iter().all(|&n| n >= rp),
        "softmax block: rp {rp} must be a multiple of {LANES}, st must hold {bk} × {rp}"
    );
}

/// One online-softmax step over the key block `j0..j0 + bk` held transposed in `st (bk × rp)`.
///
/// Per column `r`: with `partial`, keys `j >= hi[r]` are hidden first (without it every key of
/// the block must be visible to every column); the running max `m[r]` moves to `m_new`, the
/// scores become `exp(s − m_new)` in place (0 where hidden), `alpha[r] = exp(m_old − m_new)` is
/// the factor for the row's old output, and `l[r] = l[r]·alpha[r] + Σ_j exp(s − m_new)`.
/// Columns that have seen no key keep `m = -inf`, `alpha = 0` and zeros.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // so that the portable loops compile with each caller's features (AVX2 …)
pub(super) fn online_block(
    st: &mut [f32],
    rp: usize,
    bk: usize,
    j0: usize,
    hi: &[u32],
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
    partial: bool,
) {
    check(st, rp, bk, &[hi.len(), m.len(), l.len(), alpha.len()]);
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; `check` bounds every access.
        unsafe {
            simd::online_block(
                st.as_mut_ptr(),
                rp,
                bk,
                j0,
                hi.as_ptr(),
                m.as_mut_ptr(),
                l.as_mut_ptr(),
                alpha.as_mut_ptr(),
                partial,
            )
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::switch::use_avx2() {
        // SAFETY: AVX2 and FMA are present; `check` bounds every access.
        unsafe {
            simd_avx2::online_block(
                st.as_mut_ptr(),
                rp,
                bk,
                j0,
                hi.as_ptr(),
                m.as_mut_ptr(),
                l.as_mut_ptr(),
                alpha.as_mut_ptr(),
                partial,
            )
        };
        return;
    }
    online_block_portable(st, rp, bk, j0, hi, m, l, alpha, partial);
}

/// [`online_block`] as plain loops (any CPU).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn online_block_portable(
    st: &mut [f32],
    rp: usize,
    bk: usize,
    j0: usize,
    hi: &[u32],
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
    partial: bool,
) {
    for col in (0..rp).step_by(LANES) {
        let hi_c: &[u32; LANES] = hi[col..col + LANES].try_into().expect("16 lanes");
        let m_c: &[f32; LANES] = m[col..col + LANES].try_into().expect("16 lanes");
        let (m_new, sum, a) = online_chunk(st, rp, col, bk, j0, hi_c, m_c, partial);
        for i in 0..LANES {
            let r = col + i;
            l[r] = l[r] * a[i] + sum[i];
            m[r] = m_new[i];
            alpha[r] = a[i];
        }
    }
}

/// `P = exp(s − lse)` in place on a transposed score block `st (bk × rp)` of keys
/// `j0..j0 + bk`, 0 where hidden (key `j >= hi[r]`; rows whose `lse` is `-inf` must have
/// `hi = 0`).
#[inline(always)] // as `online_block`
pub(super) fn probs_block(st: &mut [f32], rp: usize, bk: usize, j0: usize, hi: &[u32], lse: &[f32]) {
    check(st, rp, bk, &[hi.len(), lse.len()]);
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; `check` bounds every access.
        unsafe { simd::probs_block(st.as_mut_ptr(), rp, bk, j0, hi.as_ptr(), lse.as_ptr()) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::switch::use_avx2() {
        // SAFETY: AVX2 and FMA are present; `check` bounds every access.
        unsafe { simd_avx2::probs_block(st.as_mut_ptr(), rp, bk, j0, hi.as_ptr(), lse.as_ptr()) };
        return;
    }
    probs_block_portable(st, rp, bk, j0, hi, lse);
}

/// [`probs_block`] as plain loops (any CPU).
#[inline(always)]
fn probs_block_portable(st: &mut [f32], rp: usize, bk: usize, j0: usize, hi: &[u32], lse: &[f32]) {
    for col in (0..rp).step_by(LANES) {
        let hi_c: &[u32; LANES] = hi[col..col + LANES].try_into().expect("16 lanes");
        let lse_c: &[f32; LANES] = lse[col..col + LANES].try_into().expect("16 lanes");
        probs_chunk(st, rp, col, bk, j0, hi_c, lse_c);
    }
}

/// The `LANES` entries of row `c` of a transposed score block starting at column `col`.
#[inline(always)]
fn lanes_mut(st: &mut [f32], c: usize, rp: usize, col: usize) -> &mut [f32; LANES] {
    let start = c * rp + col;
    (&mut st[start..start + LANES]).try_into().expect("16 lanes")
}

/// Portable [`online_block`] on one 16-column chunk: returns `(m_new, sum, alpha)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn online_chunk(
    st: &mut [f32],
    rp: usize,
    col: usize,
    bk: usize,
    j0: usize,
    hi: &[u32; LANES],
    m_old: &[f32; LANES],
    partial: bool,
) -> ([f32; LANES], [f32; LANES], [f32; LANES]) {
    let mut mx = *m_old;
    for c in 0..bk {
        let row = lanes_mut(st, c, rp, col);
        if partial {
            let j = (j0 + c) as u32;
            for l in 0..LANES {
                row[l] = if j >= hi[l] { f32::NEG_INFINITY } else { row[l] };
            }
        }
        for l in 0..LANES {
            mx[l] = if row[l] > mx[l] { row[l] } else { mx[l] };
        }
    }
    let mut shift = [0f32; LANES];
    let mut alpha = [0f32; LANES];
    for l in 0..LANES {
        (shift[l], alpha[l]) = rescale(m_old[l], mx[l]);
    }
    let mut sum = [0f32; LANES];
    for c in 0..bk {
        let row = lanes_mut(st, c, rp, col);
        for l in 0..LANES {
            let e = exp_f32(row[l] - shift[l]);
            row[l] = e;
            sum[l] += e;
        }
    }
    (mx, sum, alpha)
}

/// Portable [`probs_block`] on one 16-column chunk.
#[inline(always)]
fn probs_chunk(
    st: &mut [f32],
    rp: usize,
    col: usize,
    bk: usize,
    j0: usize,
    hi: &[u32; LANES],
    lse: &[f32; LANES],
) {
    for c in 0..bk {
        let row = lanes_mut(st, c, rp, col);
        let j = (j0 + c) as u32;
        for l in 0..LANES {
            let e = exp_f32(row[l] - lse[l]);
            row[l] = if j < hi[l] { e } else { 0.0 };
        }
    }
}

/// The AVX-512 versions. Each key row of the block is handled for up to 4 registers of
/// columns at once (64 stacked rows, a whole `BLOCK_Q`), which gives the max and sum
/// reductions independent chains. Hidden scores become `-inf` on the way into `exp`
/// (a masked subtraction), so they come out exactly 0.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::LANES;
    use crate::math::avx512::exp_ps;
    use std::arch::x86_64::*;

    /// Calls `$f::<W>` for each run of up to 4 registers of columns.
    macro_rules! by_width {
        ($rp:expr, |$col:ident, $w:ident| $call:expr) => {{
            let mut $col = 0;
            while $col < $rp {
                let $w = (($rp - $col) / LANES).min(4);
                $call;
                $col += $w * LANES;
            }
        }};
    }

    /// Which of 16 columns see key `j`: `j < hi`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn visible(hi: __m512i, j: __m512i) -> __mmask16 {
        _mm512_cmpgt_epu32_mask(hi, j)
    }

    /// See [`super::online_block`]; pointers as bounded there.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn online_block(
        st: *mut f32,
        rp: usize,
        bk: usize,
        j0: usize,
        hi: *const u32,
        m: *mut f32,
        l: *mut f32,
        alpha: *mut f32,
        partial: bool,
    ) {
        by_width!(rp, |col, w| {
            let args = (st, rp, bk, j0, col, hi, m, l, alpha);
            match (w, partial) {
                (1, false) => online_cols::<1, false>(args),
                (2, false) => online_cols::<2, false>(args),
                (3, false) => online_cols::<3, false>(args),
                (_, false) => online_cols::<4, false>(args),
                (1, true) => online_cols::<1, true>(args),
                (2, true) => online_cols::<2, true>(args),
                (3, true) => online_cols::<3, true>(args),
                (_, true) => online_cols::<4, true>(args),
            }
        })
    }

    /// Arguments of [`online_cols`]: `(st, rp, bk, j0, col, hi, m, l, alpha)`.
    type OnlineArgs = (
        *mut f32,
        usize,
        usize,
        usize,
        usize,
        *const u32,
        *mut f32,
        *mut f32,
        *mut f32,
    );

    /// [`online_block`] on columns `col..col + 16·W`.
    #[target_feature(enable = "avx512f")]
    unsafe fn online_cols<const W: usize, const PARTIAL: bool>(
        (st, rp, bk, j0, col, hi, m, l, alpha): OnlineArgs,
    ) {
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let zero = _mm512_setzero_ps();
        let m_old: [__m512; W] = std::array::from_fn(|i| _mm512_loadu_ps(m.add(col + LANES * i)));
        let hi_v: [__m512i; W] =
            std::array::from_fn(|i| _mm512_loadu_si512(hi.add(col + LANES * i) as *const __m512i));
        let mut mx = m_old;
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm512_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let s = _mm512_loadu_ps(row.add(LANES * i));
                let s = if PARTIAL {
                    _mm512_mask_mov_ps(neg_inf, visible(hi_v[i], j), s)
                } else {
                    s
                };
                mx[i] = _mm512_max_ps(mx[i], s);
            }
        }
        // Rows that still see nothing keep m = -inf: shift 0 (exp(-inf) = 0) and alpha 0.
        // (Unordered compares: a NaN max is kept and reaches the output, as in `rescale`.)
        let mut shift = [zero; W];
        let mut a = [zero; W];
        for i in 0..W {
            let seen_now = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(mx[i], neg_inf);
            let seen_before = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(m_old[i], neg_inf);
            shift[i] = _mm512_maskz_mov_ps(seen_now, mx[i]);
            a[i] = _mm512_maskz_mov_ps(seen_before, exp_ps(_mm512_sub_ps(m_old[i], mx[i])));
        }
        let mut sum = [zero; W];
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm512_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let p = row.add(LANES * i);
                let s = _mm512_loadu_ps(p);
                let x = if PARTIAL {
                    _mm512_mask_sub_ps(neg_inf, visible(hi_v[i], j), s, shift[i])
                } else {
                    _mm512_sub_ps(s, shift[i])
                };
                let e = exp_ps(x);
                _mm512_storeu_ps(p, e);
                sum[i] = _mm512_add_ps(sum[i], e);
            }
        }
        for i in 0..W {
            let o = col + LANES * i;
            _mm512_storeu_ps(l.add(o), _mm512_fmadd_ps(_mm512_loadu_ps(l.add(o)), a[i], sum[i]));
            _mm512_storeu_ps(m.add(o), mx[i]);
            _mm512_storeu_ps(alpha.add(o), a[i]);
        }
    }

    /// See [`super::probs_block`]; pointers as bounded there.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn probs_block(
        st: *mut f32,
        rp: usize,
        bk: usize,
        j0: usize,
        hi: *const u32,
        lse: *const f32,
    ) {
        by_width!(rp, |col, w| {
            let args = (st, rp, bk, j0, col, hi, lse);
            match w {
                1 => probs_cols::<1>(args),
                2 => probs_cols::<2>(args),
                3 => probs_cols::<3>(args),
                _ => probs_cols::<4>(args),
            }
        })
    }

    /// Arguments of [`probs_cols`]: `(st, rp, bk, j0, col, hi, lse)`.
    type ProbsArgs = (*mut f32, usize, usize, usize, usize, *const u32, *const f32);

    /// [`probs_block`] on columns `col..col + 16·W`.
    #[target_feature(enable = "avx512f")]
    unsafe fn probs_cols<const W: usize>((st, rp, bk, j0, col, hi, lse): ProbsArgs) {
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let lse_v: [__m512; W] = std::array::from_fn(|i| _mm512_loadu_ps(lse.add(col + LANES * i)));
        let hi_v: [__m512i; W] =
            std::array::from_fn(|i| _mm512_loadu_si512(hi.add(col + LANES * i) as *const __m512i));
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm512_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let p = row.add(LANES * i);
                let x = _mm512_mask_sub_ps(neg_inf, visible(hi_v[i], j), _mm512_loadu_ps(p), lse_v[i]);
                _mm512_storeu_ps(p, exp_ps(x));
            }
        }
    }
}

/// The AVX2 + FMA versions (x86 CPUs without AVX-512): the AVX-512 ones with 8 lanes, up to
/// 4 registers of columns per pass, and blends on compare masks where AVX-512 has mask
/// registers.
#[cfg(target_arch = "x86_64")]
mod simd_avx2 {
    use crate::math::avx2::exp_ps;
    use std::arch::x86_64::*;

    /// Lanes of a ymm register.
    const L: usize = 8;

    /// Calls `$f::<W>` for each run of up to 4 registers of columns.
    macro_rules! by_width {
        ($rp:expr, |$col:ident, $w:ident| $call:expr) => {{
            let mut $col = 0;
            while $col < $rp {
                let $w = (($rp - $col) / L).min(4);
                $call;
                $col += $w * L;
            }
        }};
    }

    /// All-ones lanes where key `j` is visible (`j < hi`; both below 2³¹, so signed compares do).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn visible(hi: __m256i, j: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(hi, j))
    }

    /// See [`super::online_block`]; pointers as bounded there.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn online_block(
        st: *mut f32,
        rp: usize,
        bk: usize,
        j0: usize,
        hi: *const u32,
        m: *mut f32,
        l: *mut f32,
        alpha: *mut f32,
        partial: bool,
    ) {
        by_width!(rp, |col, w| {
            let args = (st, rp, bk, j0, col, hi, m, l, alpha);
            match (w, partial) {
                (1, false) => online_cols::<1, false>(args),
                (2, false) => online_cols::<2, false>(args),
                (3, false) => online_cols::<3, false>(args),
                (_, false) => online_cols::<4, false>(args),
                (1, true) => online_cols::<1, true>(args),
                (2, true) => online_cols::<2, true>(args),
                (3, true) => online_cols::<3, true>(args),
                (_, true) => online_cols::<4, true>(args),
            }
        })
    }

    /// Arguments of [`online_cols`]: `(st, rp, bk, j0, col, hi, m, l, alpha)`.
    type OnlineArgs = (
        *mut f32,
        usize,
        usize,
        usize,
        usize,
        *const u32,
        *mut f32,
        *mut f32,
        *mut f32,
    );

    /// [`online_block`] on columns `col..col + 8·W`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn online_cols<const W: usize, const PARTIAL: bool>(
        (st, rp, bk, j0, col, hi, m, l, alpha): OnlineArgs,
    ) {
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let zero = _mm256_setzero_ps();
        let m_old: [__m256; W] = std::array::from_fn(|i| _mm256_loadu_ps(m.add(col + L * i)));
        let hi_v: [__m256i; W] =
            std::array::from_fn(|i| _mm256_loadu_si256(hi.add(col + L * i) as *const __m256i));
        let mut mx = m_old;
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm256_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let s = _mm256_loadu_ps(row.add(L * i));
                let s = if PARTIAL {
                    _mm256_blendv_ps(neg_inf, s, visible(hi_v[i], j))
                } else {
                    s
                };
                // `vmaxps` returns its second operand when either is NaN: a NaN score is kept.
                mx[i] = _mm256_max_ps(mx[i], s);
            }
        }
        // Rows that still see nothing keep m = -inf: shift 0 (exp(-inf) = 0) and alpha 0.
        let mut shift = [zero; W];
        let mut a = [zero; W];
        for i in 0..W {
            let seen_now = _mm256_cmp_ps::<_CMP_NEQ_UQ>(mx[i], neg_inf);
            let seen_before = _mm256_cmp_ps::<_CMP_NEQ_UQ>(m_old[i], neg_inf);
            shift[i] = _mm256_and_ps(seen_now, mx[i]);
            a[i] = _mm256_and_ps(seen_before, exp_ps(_mm256_sub_ps(m_old[i], mx[i])));
        }
        let mut sum = [zero; W];
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm256_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let p = row.add(L * i);
                let x = _mm256_sub_ps(_mm256_loadu_ps(p), shift[i]);
                let x = if PARTIAL {
                    _mm256_blendv_ps(neg_inf, x, visible(hi_v[i], j))
                } else {
                    x
                };
                let e = exp_ps(x);
                _mm256_storeu_ps(p, e);
                sum[i] = _mm256_add_ps(sum[i], e);
            }
        }
        for i in 0..W {
            let o = col + L * i;
            _mm256_storeu_ps(l.add(o), _mm256_fmadd_ps(_mm256_loadu_ps(l.add(o)), a[i], sum[i]));
            _mm256_storeu_ps(m.add(o), mx[i]);
            _mm256_storeu_ps(alpha.add(o), a[i]);
        }
    }

    /// See [`super::probs_block`]; pointers as bounded there.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn probs_block(
        st: *mut f32,
        rp: usize,
        bk: usize,
        j0: usize,
        hi: *const u32,
        lse: *const f32,
    ) {
        by_width!(rp, |col, w| {
            let args = (st, rp, bk, j0, col, hi, lse);
            match w {
                1 => probs_cols::<1>(args),
                2 => probs_cols::<2>(args),
                3 => probs_cols::<3>(args),
                _ => probs_cols::<4>(args),
            }
        })
    }

    /// Arguments of [`probs_cols`]: `(st, rp, bk, j0, col, hi, lse)`.
    type ProbsArgs = (*mut f32, usize, usize, usize, usize, *const u32, *const f32);

    /// [`probs_block`] on columns `col..col + 8·W`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn probs_cols<const W: usize>((st, rp, bk, j0, col, hi, lse): ProbsArgs) {
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let lse_v: [__m256; W] = std::array::from_fn(|i| _mm256_loadu_ps(lse.add(col + L * i)));
        let hi_v: [__m256i; W] =
            std::array::from_fn(|i| _mm256_loadu_si256(hi.add(col + L * i) as *const __m256i));
        for c in 0..bk {
            let row = st.add(c * rp + col);
            let j = _mm256_set1_epi32((j0 + c) as i32);
            for i in 0..W {
                let p = row.add(L * i);
                let x = _mm256_sub_ps(_mm256_loadu_ps(p), lse_v[i]);
                let x = _mm256_blendv_ps(neg_inf, x, visible(hi_v[i], j));
                _mm256_storeu_ps(p, exp_ps(x));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() * n as f32) as usize % n.max(1)
        }
    }

    /// One test block: scores (some `-inf`, as an additive mask leaves them), per-column
    /// limits, running max and sum (some columns still at `-inf` / 0).
    struct Case {
        rp: usize,
        bk: usize,
        j0: usize,
        st: Vec<f32>,
        hi: Vec<u32>,
        m: Vec<f32>,
        l: Vec<f32>,
    }

    fn case(rng: &mut Rng, rp: usize, bk: usize, partial: bool) -> Case {
        let j0 = 128 * rng.below(3);
        let st = (0..bk * rp)
            .map(|_| {
                if rng.next() < 0.05 {
                    f32::NEG_INFINITY
                } else {
                    (rng.next() - 0.5) * 40.0
                }
            })
            .collect();
        let hi = (0..rp)
            .map(|_| match (partial, rng.below(4)) {
                (false, _) => (j0 + bk + rng.below(50)) as u32,
                (true, 0) => 0,
                (true, 1) => j0 as u32,
                _ => (j0 + rng.below(bk + 2)) as u32,
            })
            .collect();
        let m: Vec<f32> = (0..rp)
            .map(|_| {
                if rng.next() < 0.3 {
                    f32::NEG_INFINITY
                } else {
                    (rng.next() - 0.5) * 40.0
                }
            })
            .collect();
        let l = m
            .iter()
            .map(|&x| {
                if x == f32::NEG_INFINITY {
                    0.0
                } else {
                    1.0 + rng.next() * 10.0
                }
            })
            .collect();
        Case {
            rp,
            bk,
            j0,
            st,
            hi,
            m,
            l,
        }
    }

    /// `(P, m_new, l_new, alpha)` of one online step, in f64.
    fn model(c: &Case) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut p = vec![0f64; c.bk * c.rp];
        let (mut m, mut l, mut alpha) = (vec![0f64; c.rp], vec![0f64; c.rp], vec![0f64; c.rp]);
        for r in 0..c.rp {
            let seen = |k: usize| c.j0 + k < c.hi[r] as usize;
            let mut mx = c.m[r] as f64;
            for k in (0..c.bk).filter(|&k| seen(k)) {
                mx = mx.max(c.st[k * c.rp + r] as f64);
            }
            m[r] = mx;
            alpha[r] = if c.m[r] == f32::NEG_INFINITY {
                0.0
            } else {
                (c.m[r] as f64 - mx).exp()
            };
            let mut sum = 0.0;
            for k in (0..c.bk).filter(|&k| seen(k)) {
                let e = if mx == f64::NEG_INFINITY {
                    0.0
                } else {
                    (c.st[k * c.rp + r] as f64 - mx).exp()
                };
                p[k * c.rp + r] = e;
                sum += e;
            }
            l[r] = c.l[r] as f64 * alpha[r] + sum;
        }
        (p, m, l, alpha)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let ok = if w.is_finite() {
                (g as f64 - w).abs() <= 5e-6 * w.abs().max(1e-30)
            } else {
                g as f64 == w
            };
            assert!(ok, "{what}[{i}]: {g} vs {w}");
        }
    }

    type Online = fn(&mut [f32], usize, usize, usize, &[u32], &mut [f32], &mut [f32], &mut [f32], bool);
    type Probs = fn(&mut [f32], usize, usize, usize, &[u32], &[f32]);

    /// The dispatching entry points (AVX-512 here when the CPU has it), the AVX2 versions
    /// (when the CPU has AVX2 + FMA) and the portable loops.
    fn versions() -> Vec<(&'static str, Online, Probs)> {
        let mut v: Vec<(&'static str, Online, Probs)> = vec![
            ("dispatched", online_block, probs_block),
            ("portable", online_block_portable, probs_block_portable),
        ];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            v.push(("avx2", online_avx2, probs_avx2));
        }
        v
    }

    /// [`simd_avx2::online_block`] behind the safe signature (the caller checked the CPU).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn online_avx2(
        st: &mut [f32],
        rp: usize,
        bk: usize,
        j0: usize,
        hi: &[u32],
        m: &mut [f32],
        l: &mut [f32],
        a: &mut [f32],
        partial: bool,
    ) {
        check(st, rp, bk, &[hi.len(), m.len(), l.len(), a.len()]);
        // SAFETY: `versions` lists this only when the CPU has AVX2 + FMA; `check` bounds it.
        unsafe {
            simd_avx2::online_block(
                st.as_mut_ptr(),
                rp,
                bk,
                j0,
                hi.as_ptr(),
                m.as_mut_ptr(),
                l.as_mut_ptr(),
                a.as_mut_ptr(),
                partial,
            )
        }
    }

    /// [`simd_avx2::probs_block`] behind the safe signature (the caller checked the CPU).
    #[cfg(target_arch = "x86_64")]
    fn probs_avx2(st: &mut [f32], rp: usize, bk: usize, j0: usize, hi: &[u32], lse: &[f32]) {
        check(st, rp, bk, &[hi.len(), lse.len()]);
        // SAFETY: as `online_avx2`.
        unsafe { simd_avx2::probs_block(st.as_mut_ptr(), rp, bk, j0, hi.as_ptr(), lse.as_ptr()) }
    }

    /// Relative tolerance 5e-6 against f64: both `exp`s are within ~2e-7, but their argument
    /// `s − m` is rounded to f32 first, which moves `exp` by up to `|s − m|·2⁻²⁴` relative
    /// (3e-6 for the differences up to 40 these blocks have).
    #[test]
    fn online_steps_match_an_f64_model() {
        if !avx512() {
            eprintln!("note: no AVX-512F here: the dispatched version is the portable one");
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for (name, online, _) in versions() {
            for &rp in &[16, 48, 64, 80] {
                for &bk in &[1, 7, 128] {
                    for partial in [false, true] {
                        let c = case(&mut rng, rp, bk, partial);
                        let (p, m, l, alpha) = model(&c);
                        let (mut st, mut mm, mut ll, mut aa) =
                            (c.st.clone(), c.m.clone(), c.l.clone(), vec![9.0; rp]);
                        online(&mut st, rp, bk, c.j0, &c.hi, &mut mm, &mut ll, &mut aa, partial);
                        let what = format!("{name} rp {rp} bk {bk} partial {partial}");
                        close(&st, &p, &format!("{what}: P"));
                        close(&mm, &m, &format!("{what}: m"));
                        close(&ll, &l, &format!("{what}: l"));
                        close(&aa, &alpha, &format!("{what}: alpha"));
                        // exp(0) is exactly 1: an unchanged max must leave alpha at 1 (the
                        // kernel skips rescaling the output then).
                        for r in 0..rp {
                            if c.m[r] != f32::NEG_INFINITY && mm[r] == c.m[r] {
                                assert_eq!(aa[r], 1.0, "{what}: alpha of an unchanged max");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn recomputed_probabilities_match_an_f64_model() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for (name, _, probs) in versions() {
            for &rp in &[16, 64, 80] {
                for &bk in &[1, 9, 128] {
                    let mut c = case(&mut rng, rp, bk, true);
                    // lse = the row's max plus a positive log-sum; rows that saw nothing: -inf, hi 0.
                    let lse: Vec<f32> = c.m.iter().map(|&m| m + rng.next() * 3.0).collect();
                    for (h, &x) in c.hi.iter_mut().zip(&lse) {
                        if x == f32::NEG_INFINITY {
                            *h = 0;
                        }
                    }
                    let want: Vec<f64> = (0..bk * rp)
                        .map(|i| {
                            let (k, r) = (i / rp, i % rp);
                            if c.j0 + k < c.hi[r] as usize {
                                (c.st[i] as f64 - lse[r] as f64).exp()
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    probs(&mut c.st, rp, bk, c.j0, &c.hi, &lse);
                    close(&c.st, &want, &format!("{name} rp {rp} bk {bk}: P"));
                }
            }
        }
    }

    #[test]
    fn nan_scores_reach_the_row_sum() {
        for (name, online, _) in versions() {
            let (rp, bk) = (16, 4);
            let mut st = vec![0.5f32; bk * rp];
            st[2 * rp + 3] = f32::NAN;
            let (mut m, mut l, mut a) = (vec![f32::NEG_INFINITY; rp], vec![0f32; rp], vec![0f32; rp]);
            online(
                &mut st,
                rp,
                bk,
                0,
                &[bk as u32; 16],
                &mut m,
                &mut l,
                &mut a,
                false,
            );
            assert!(l[3].is_nan(), "{name}: column 3 saw a NaN score");
            assert!(l[4].is_finite(), "{name}: column 4 did not");
        }
    }
}
