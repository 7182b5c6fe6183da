//! The two block products every attention kernel is made of, register-tiled:
//!
//! - [`nn`]: `C[i][j] (+)= Σ_p A[i][p] · B[p][j]`
//! - [`tn`]: `C[i][j] (+)= Σ_p A[p][i] · B[p][j]`
//!
//! with A, B and C row-major (leading dimensions `lda`, `ldb`, `ldc`, in elements). The
//! attention kernels keep scores transposed (keys × queries), so these two shapes cover all
//! six products of the forward and backward passes without transposing K or V.
//!
//! On CPUs with AVX-512F and `n % 16 == 0`, a 6×64 tile of C lives in 24 zmm registers while
//! `k` rank-1 updates stream through it (one row of B loaded, 6 elements of A broadcast, 24
//! FMAs per step). With AVX2 + FMA only (or `n % 16 != 0`) and `n % 8 == 0`, 6×16 tiles do the
//! same in 12 ymm registers. Elsewhere (ARM, older x86, odd `n`) a loop version with 4×8 tiles
//! in small arrays, which the compiler vectorizes, is used. `switch::set_simd_code` can narrow
//! the choice, to measure or test the narrower code on a wider CPU.

/// `C (m×n) (+)= A (m×k) · B (k×n)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn nn(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    product::<false>((m, n, k), a, lda, b, ldb, c, ldc, accumulate)
}

/// `C (m×n) (+)= Aᵀ · B` with A stored `(k×m)`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn tn(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    product::<true>((m, n, k), a, lda, b, ldb, c, ldc, accumulate)
}

/// Most rows [`nt`] multiplies without transposing B: in groups of 4 (`nt4`: 44 reduction
/// instructions per 4 rows and 16 columns; a last group of 3 rows padded with a zero row), and
/// with AVX-512 the last 1 or 2 rows of `m % 4` one by one (45 per row). Up to 8 (nq = 2 with
/// GQA 8/2, the most `decode.rs` takes) every row count is at least as fast this way as by
/// transposing B, with AVX-512 and with AVX2, timed alternately in one process
/// (`docs/benchmarks.md`, ninth sitting).
const NT_GROUP_ROWS_MAX: usize = 8;

/// `C (m×np) = A (m×k) · Bᵀ` with B stored `(n×k)`, rows packed (as K's rows are), `np` = `n`
/// rounded up to 16; columns `n..np` of C are set to zero. For the few stacked query rows of
/// decoding, where packing Bᵀ (16 × 16 transposes) costs as much as the product. Up to 8 rows,
/// with AVX-512 or AVX2 + FMA: rows in groups of 4, one row per 128-bit block of a zmm (two per
/// ymm) against broadcast 4-column pieces of B, so that a block's lanes hold partial sums of
/// one dot product (`avx512::nt4`, `avx2::nt4`; a last group of fewer rows is padded with zero
/// rows, which are not stored). With AVX-512, 1 or 2 rows left over after the groups go one by
/// one instead, each row's dot products with 16 rows of B summed along the lanes and reduced in
/// registers (`avx512::nt`). Elsewhere Bᵀ is packed into `scratch` and multiplied by [`nn`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn nt(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    scratch: &mut Vec<f32>,
) {
    let np = n.next_multiple_of(16);
    if m == 0 || np == 0 {
        return;
    }
    assert!(ldc >= np && c.len() >= (m - 1) * ldc + np, "nt: C too small");
    #[cfg(target_arch = "x86_64")]
    if m <= NT_GROUP_ROWS_MAX && k > 0 && (avx512::available() || avx2::available()) {
        assert!(
            a.len() >= (m - 1) * lda + k && b.len() >= n * k,
            "nt: A or B too small"
        );
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // SAFETY: the CPU has the features of the code called (checked); the reads stay inside
        // rows 0..m of A and rows 0..n of B (k columns each) and the writes inside rows 0..m
        // of C (np columns), all checked above.
        unsafe {
            if avx512::available() {
                // Three left-over rows cost more one by one than as a group with a zero row.
                let grouped = if m % 4 == 3 { m } else { m / 4 * 4 };
                if grouped > 0 {
                    avx512::nt4(grouped, n, k, a, lda, b, c, ldc, scratch)
                }
                if m > grouped {
                    let rest = (a.add(grouped * lda), c.add(grouped * ldc));
                    avx512::nt(m - grouped, n, k, rest.0, lda, b, rest.1, ldc)
                }
            } else {
                avx2::nt4(m, n, k, a, lda, b, c, ldc, scratch)
            }
        }
        return;
    }
    if scratch.len() < k * np {
        scratch.resize(k * np, 0.0);
    }
    pack_transposed(scratch, b, n, np, k, 1.0);
    nn((m, np, k), a, lda, scratch, np, c, ldc, false);
}

/// Prefetches `rows` of B (packed, `k` each) for the decode products, a page ahead for 16 rows
/// at k = 64: the hardware prefetchers do not cross pages, and the first row would wait on each
/// line.
///
/// # Safety
/// `b` must be a pointer into (or one past) B's allocation; prefetches never fault, but the
/// address arithmetic must stay inside it, so `rows` must end at or before B's row count.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn prefetch_rows(b: *const f32, rows: std::ops::Range<usize>, k: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for j in rows {
        for off in (0..k).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(b.add(j * k + off) as *const i8);
        }
    }
}

/// Packs `rows <= 4` rows of A (`k` columns, stride `lda`) for the grouped `nt4` kernels: `qp
/// (k/4 rounded up × 16)` holds, per 4 columns, the four rows' values side by side, zero past
/// `k` and for rows past `rows`.
///
/// # Safety
/// `a` must hold `rows` rows of `k` columns at stride `lda`.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_rows4(qp: &mut Vec<f32>, a: *const f32, lda: usize, k: usize, rows: usize) {
    let chunks = k.div_ceil(4);
    let at = qp.len();
    qp.resize(at + chunks * 16, 0.0);
    for p in 0..chunks {
        for r in 0..rows {
            for t in 0..(k - 4 * p).min(4) {
                qp[at + p * 16 + 4 * r + t] = *a.add(r * lda + 4 * p + t);
            }
        }
    }
}

/// Which part of each row tile of C a [`nn_ranged`] / [`tn_ranged`] product needs: called with
/// a tile's rows `(i0, r)`, it returns the columns `(j_lo, j_hi)` (multiples of 16, or the
/// whole width) to compute
/// and the span `(p_lo, p_hi)` of the sum to run over. Used on score blocks that the causal
/// diagonal or a padding length cuts, to skip what no row can see.
///
/// The ranges are a license, not a promise: elsewhere the product may be computed in full
/// (without AVX-512, or when `n % 16 != 0`), so the caller must be right either way — columns
/// outside `j_lo..j_hi` may hold results or stale values, and the terms left out of the sum
/// must be zeros.
pub(crate) type Ranges<'a> = &'a dyn Fn(usize, usize) -> ((usize, usize), (usize, usize));

/// [`nn`] computing, per row tile, only what `ranges` asks for (see [`Ranges`]).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn nn_ranged(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    ranges: Ranges,
) {
    product_ranged::<false>((m, n, k), a, lda, b, ldb, c, ldc, accumulate, ranges)
}

/// [`tn`] computing, per row tile, only what `ranges` asks for (see [`Ranges`]).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn tn_ranged(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    ranges: Ranges,
) {
    product_ranged::<true>((m, n, k), a, lda, b, ldb, c, ldc, accumulate, ranges)
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn product_ranged<const TA: bool>(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    ranges: Ranges,
) {
    if let (true, Some((kernel, mr, lanes))) = (m > 0, tiled::<TA>(n)) {
        // Bounds of the whole product; each tile's ranges are clamped into them below.
        check_bounds::<TA>((m, n, k), a, lda, b, ldb, c, ldc);
        let mut i0 = 0;
        while i0 < m {
            let r = (m - i0).min(mr);
            let ((j_lo, j_hi), (p_lo, p_hi)) = ranges(i0, r);
            let (j_hi, p_hi) = (j_hi.min(n), p_hi.min(k));
            if j_lo < j_hi {
                assert!(
                    j_lo.is_multiple_of(lanes) && j_hi.is_multiple_of(lanes),
                    "column ranges must be multiples of the kernel's {lanes} lanes"
                );
                let kk = p_hi.saturating_sub(p_lo);
                let a0 = if kk == 0 {
                    0
                } else if TA {
                    p_lo * lda + i0
                } else {
                    i0 * lda + p_lo
                };
                // SAFETY: `tiled` checked the CPU features; rows i0..i0 + r < m, columns
                // j_lo..j_hi <= n and sum indices p_lo..p_hi <= k lie inside the bounds checked
                // above.
                unsafe {
                    kernel(
                        r,
                        j_hi - j_lo,
                        kk,
                        a.as_ptr().add(a0),
                        lda,
                        b.as_ptr().add(if kk == 0 { 0 } else { p_lo * ldb } + j_lo),
                        ldb,
                        c.as_mut_ptr().add(i0 * ldc + j_lo),
                        ldc,
                        accumulate,
                    )
                };
            }
            i0 += r;
        }
        return;
    }
    let _ = ranges; // computed in full (allowed, see `Ranges`)
    product::<TA>((m, n, k), a, lda, b, ldb, c, ldc, accumulate)
}

/// A register-tiled product, `(m, n, k, a, lda, b, ldb, c, ldc, accumulate)` on raw pointers.
type Kernel = unsafe fn(usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize, bool);

/// The register-tiled kernel for an `n`-column product on this CPU, with its rows per tile and
/// lanes (its column granularity): AVX-512 (n a multiple of 16), else AVX2 + FMA (n a multiple
/// of 8), as `switch` allows; `None` leaves the plain loop.
#[inline]
fn tiled<const TA: bool>(n: usize) -> Option<(Kernel, usize, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        if n.is_multiple_of(16) && avx512::available() {
            return Some((avx512::product::<TA> as Kernel, avx512::MR, 16));
        }
        if n.is_multiple_of(8) && avx2::available() {
            return Some((avx2::product::<TA> as Kernel, avx2::MR, 8));
        }
    }
    let _ = n;
    None
}

/// Every element the strides of an `m × n × k` product address must be inside the slices
/// (`m, n > 0`; checked, not assumed: the SIMD paths read through raw pointers).
#[allow(clippy::too_many_arguments)]
#[inline]
fn check_bounds<const TA: bool>(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &[f32],
    ldc: usize,
) {
    assert!(c.len() >= (m - 1) * ldc + n, "C too small");
    if k > 0 {
        let a_need = if TA { (k - 1) * lda + m } else { (m - 1) * lda + k };
        assert!(
            a.len() >= a_need && b.len() >= (k - 1) * ldb + n,
            "A or B too small"
        );
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn product<const TA: bool>(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    check_bounds::<TA>((m, n, k), a, lda, b, ldb, c, ldc);
    if let Some((kernel, ..)) = tiled::<TA>(n) {
        // SAFETY: `tiled` checked the CPU features; bounds are checked above.
        unsafe {
            kernel(
                m,
                n,
                k,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
                accumulate,
            )
        };
        return;
    }
    portable(m, n, k, TA, a, lda, b, ldb, c, ldc, accumulate);
}

/// Packs `rows` rows of `src` (row stride `d`) transposed and scaled into `dst` `(d × rp)`:
/// `dst[e·rp + r] = scale · src[r·d + e]`, with columns `rows..rp` zero. Whole 16 × 16 tiles
/// go through an in-register AVX-512 transpose, or 8 × 8 tiles through an AVX one (a scalar
/// loop writes `dst` with stride `rp`, one cache line per element); the edges use the loop.
pub(crate) fn pack_transposed(dst: &mut [f32], src: &[f32], rows: usize, rp: usize, d: usize, scale: f32) {
    assert!(
        rows <= rp && dst.len() >= d * rp && src.len() >= rows * d,
        "pack_transposed: buffers too small"
    );
    for e in 0..d {
        dst[e * rp + rows..(e + 1) * rp].fill(0.0);
    }
    // Whole t × t tiles through an in-register transpose (t = 16 with AVX-512, 8 with AVX2);
    // `full_r × full_e` is the part they cover.
    #[allow(unused_mut)]
    let (mut full_r, mut full_e) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    {
        type Transpose = unsafe fn(*const f32, usize, *mut f32, usize, f32);
        let tiles: Option<(usize, Transpose)> = if avx512::available() {
            Some((16, avx512::transpose16 as Transpose))
        } else if avx2::available() {
            Some((8, avx2::transpose8 as Transpose))
        } else {
            None
        };
        if let Some((t, transpose)) = tiles {
            (full_r, full_e) = (rows / t * t, d / t * t);
            for r0 in (0..full_r).step_by(t) {
                for e0 in (0..full_e).step_by(t) {
                    // SAFETY: the CPU has the transpose's features (checked just above); the
                    // tile reads rows r0..r0+t, columns e0..e0+t of src (inside rows × d) and
                    // writes rows e0..e0+t, columns r0..r0+t of dst (inside d × rp, as
                    // r0 + t <= rows <= rp), checked by the assert above.
                    unsafe {
                        transpose(
                            src.as_ptr().add(r0 * d + e0),
                            d,
                            dst.as_mut_ptr().add(e0 * rp + r0),
                            rp,
                            scale,
                        )
                    };
                }
            }
        }
    }
    let scalar = |r: usize, e_from: usize, dst: &mut [f32]| {
        for e in e_from..d {
            dst[e * rp + r] = src[r * d + e] * scale;
        }
    };
    for r in 0..full_r {
        scalar(r, full_e, dst);
    }
    for r in full_r..rows {
        scalar(r, 0, dst);
    }
}

multiversion! {
    /// Loop version for CPUs without the SIMD kernels: tiles of up to 4 rows × 8 columns whose
    /// accumulators are small fixed-size arrays (the compiler keeps them in vector registers),
    /// and a plain loop for the last `n % 8` columns.
    fn portable(
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let a_at = |i: usize, p: usize| if ta { a[p * lda + i] } else { a[i * lda + p] };
        let full_n = n / PORTABLE_W * PORTABLE_W;
        let mut i0 = 0;
        while i0 < m {
            let r = (m - i0).min(4);
            for j0 in (0..full_n).step_by(PORTABLE_W) {
                match r {
                    1 => portable_tile::<1>(k, &a_at, i0, b, ldb, j0, c, ldc, accumulate),
                    2 => portable_tile::<2>(k, &a_at, i0, b, ldb, j0, c, ldc, accumulate),
                    3 => portable_tile::<3>(k, &a_at, i0, b, ldb, j0, c, ldc, accumulate),
                    _ => portable_tile::<4>(k, &a_at, i0, b, ldb, j0, c, ldc, accumulate),
                }
            }
            for i in i0..i0 + r {
                for j in full_n..n {
                    let sum = (0..k).fold(0f32, |s, p| s + a_at(i, p) * b[p * ldb + j]);
                    let x = &mut c[i * ldc + j];
                    *x = if accumulate { *x + sum } else { sum };
                }
            }
            i0 += r;
        }
    }
}

/// Columns of a [`portable`] tile.
const PORTABLE_W: usize = 8;

/// One `R × 8` tile of [`portable`] at rows `i0..`, columns `j0..`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn portable_tile<const R: usize>(
    k: usize,
    a_at: &impl Fn(usize, usize) -> f32,
    i0: usize,
    b: &[f32],
    ldb: usize,
    j0: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[0f32; PORTABLE_W]; R];
    for p in 0..k {
        let row: &[f32; PORTABLE_W] = b[p * ldb + j0..p * ldb + j0 + PORTABLE_W]
            .try_into()
            .expect("8 columns");
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let av = a_at(i0 + i, p);
            for (x, &bv) in acc_i.iter_mut().zip(row) {
                // One fused multiply-add where the baseline has it (every ARMv8 CPU); on the
                // x86 baseline `mul_add` would be a library call.
                #[cfg(target_arch = "aarch64")]
                {
                    *x = av.mul_add(bv, *x);
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    *x += av * bv;
                }
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        let out = &mut c[(i0 + i) * ldc + j0..(i0 + i) * ldc + j0 + PORTABLE_W];
        for (x, &y) in out.iter_mut().zip(acc_i) {
            *x = if accumulate { *x + y } else { y };
        }
    }
}

/// The AVX2 + FMA kernels for x86 CPUs without AVX-512: the same register tiling with 8-lane
/// registers. A 6 × 16 tile keeps 12 accumulators in the 16 ymm registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Whether the AVX2 + FMA code runs: the CPU has both and `switch` allows it.
    #[inline]
    pub(super) fn available() -> bool {
        crate::switch::use_avx2()
    }

    /// [`super::avx512`]'s 4-key reduction on the two 128-bit halves of a ymm: lane `u` of
    /// half `r` of the result is the sum of half `r` of `acc[u]`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn reduce4(acc: &[__m256; 4]) -> __m256 {
        let s01 = _mm256_add_ps(
            _mm256_unpacklo_ps(acc[0], acc[1]),
            _mm256_unpackhi_ps(acc[0], acc[1]),
        );
        let s23 = _mm256_add_ps(
            _mm256_unpacklo_ps(acc[2], acc[3]),
            _mm256_unpackhi_ps(acc[2], acc[3]),
        );
        _mm256_add_ps(
            _mm256_shuffle_ps::<0x44>(s01, s23),
            _mm256_shuffle_ps::<0xEE>(s01, s23),
        )
    }

    /// `C = A · Bᵀ` (see [`super::nt`]), any `m`: the AVX-512 `nt4` with two
    /// rows per ymm, one per 128-bit half (rows 0–1 and 2–3 in two registers), each 4-column
    /// chunk of a row of B broadcast to both halves. The packed rows come from memory (for
    /// k = 64 they would fill 32 of the 16 registers), 8 keys at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; A must hold rows `0..m` (`k` columns, stride
    /// `lda`), B rows `0..n` (packed, `k` each) and C rows `0..m` (`n` rounded up to 16
    /// columns, stride `ldc`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn nt4(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        qp: &mut Vec<f32>,
    ) {
        let (full, rem) = (k / 4, k % 4);
        // Lanes 0..rem of the last, partial chunk (maskload reads nothing else).
        let tail_mask = _mm_cmpgt_epi32(_mm_set1_epi32(rem as i32), _mm_setr_epi32(0, 1, 2, 3));
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
        for g in 0..m.div_ceil(4) {
            // The last group may hold fewer rows: zero rows in the packing, not stored.
            let rows = (m - 4 * g).min(4);
            qp.clear();
            super::pack_rows4(qp, a.add(4 * g * lda), lda, k, rows);
            let (q, c) = (qp.as_ptr(), c.add(4 * g * ldc));
            for j0 in (0..n.next_multiple_of(16)).step_by(8) {
                super::prefetch_rows(b, (j0 + 8)..(j0 + 16).min(n), k);
                // Per 4 keys: rows 0–1 and rows 2–3, lane u of a half = key 4s + u.
                let mut sums = [[_mm256_setzero_ps(); 2]; 2];
                for (s, sum) in sums.iter_mut().enumerate() {
                    let base = j0 + 4 * s;
                    if base >= n {
                        break;
                    }
                    let valid = (n - base).min(4);
                    // Keys past n repeat the last valid one; their lanes are cleared below.
                    let rows: [*const f32; 4] = std::array::from_fn(|u| b.add((base + u.min(valid - 1)) * k));
                    let mut lo = [_mm256_setzero_ps(); 4];
                    let mut hi = [_mm256_setzero_ps(); 4];
                    for p in 0..full {
                        let (ql, qh) = (_mm256_loadu_ps(q.add(16 * p)), _mm256_loadu_ps(q.add(16 * p + 8)));
                        for u in 0..4 {
                            let x = _mm_loadu_ps(rows[u].add(4 * p));
                            let kv = _mm256_set_m128(x, x);
                            lo[u] = _mm256_fmadd_ps(ql, kv, lo[u]);
                            hi[u] = _mm256_fmadd_ps(qh, kv, hi[u]);
                        }
                    }
                    if rem > 0 {
                        let (ql, qh) = (
                            _mm256_loadu_ps(q.add(16 * full)),
                            _mm256_loadu_ps(q.add(16 * full + 8)),
                        );
                        for u in 0..4 {
                            let part = _mm_maskload_ps(rows[u].add(4 * full), tail_mask);
                            let kv = _mm256_set_m128(part, part);
                            lo[u] = _mm256_fmadd_ps(ql, kv, lo[u]);
                            hi[u] = _mm256_fmadd_ps(qh, kv, hi[u]);
                        }
                    }
                    let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lane));
                    *sum = [
                        _mm256_and_ps(keep, reduce4(&lo)),
                        _mm256_and_ps(keep, reduce4(&hi)),
                    ];
                }
                // Row 2h + r's 8 keys: half r of sums[0][h] and of sums[1][h].
                let [first, second] = sums;
                for (h, (x, y)) in first.into_iter().zip(second).enumerate() {
                    if 2 * h < rows {
                        _mm256_storeu_ps(c.add(2 * h * ldc + j0), _mm256_permute2f128_ps::<0x20>(x, y));
                    }
                    if 2 * h + 1 < rows {
                        _mm256_storeu_ps(
                            c.add((2 * h + 1) * ldc + j0),
                            _mm256_permute2f128_ps::<0x31>(x, y),
                        );
                    }
                }
            }
        }
    }

    /// Tiles of `MR` rows × `NV`·8 columns.
    pub(super) const MR: usize = 6;

    /// `dst[i·ld_dst + j] = scale · src[j·ld_src + i]` for an 8 × 8 tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose8(
        src: *const f32,
        ld_src: usize,
        dst: *mut f32,
        ld_dst: usize,
        scale: f32,
    ) {
        let s = _mm256_set1_ps(scale);
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_mul_ps(_mm256_loadu_ps(src.add(i * ld_src)), s));
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves exchanged.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for i in 0..4 {
            _mm256_storeu_ps(
                dst.add(i * ld_dst),
                _mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]),
            );
            _mm256_storeu_ps(
                dst.add((i + 4) * ld_dst),
                _mm256_permute2f128_ps::<0x31>(u[i], u[i + 4]),
            );
        }
    }

    /// One `R × 8·NV` tile, `R <= 6`, `NV <= 2`: the accumulators stay in registers.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const TA: bool, const R: usize, const NV: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        for p in 0..k {
            let bp = b.add(p * ldb);
            let bv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(8 * v)));
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(if TA {
                    *a.add(p * lda + i)
                } else {
                    *a.add(i * lda + p)
                });
                for (x, y) in row.iter_mut().zip(&bv) {
                    *x = _mm256_fmadd_ps(av, *y, *x);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let cp = c.add(i * ldc + 8 * v);
                let r = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(cp), *x)
                } else {
                    *x
                };
                _mm256_storeu_ps(cp, r);
            }
        }
    }

    /// The whole product, `n % 8 == 0`: column panels of up to 16, row tiles of up to 6.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product<const TA: bool>(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let nv = ((n - j0) / 8).min(2);
            let mut i0 = 0;
            while i0 < m {
                let r = (m - i0).min(MR);
                let ai = if TA { a.add(i0) } else { a.add(i0 * lda) };
                let (bj, cij) = (b.add(j0), c.add(i0 * ldc + j0));
                macro_rules! tile_rn {
                    ($($r:literal, $nv:literal);*) => {
                        match (r, nv) {
                            $(($r, $nv) => tile::<TA, $r, $nv>(k, ai, lda, bj, ldb, cij, ldc, accumulate),)*
                            _ => unreachable!("r <= 6 and nv <= 2"),
                        }
                    };
                }
                tile_rn!(1, 1; 2, 1; 3, 1; 4, 1; 5, 1; 6, 1; 1, 2; 2, 2; 3, 2; 4, 2; 5, 2; 6, 2);
                i0 += r;
            }
            j0 += 8 * nv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Whether the AVX-512 code runs: the CPU has AVX-512F and `switch` allows it.
    #[inline]
    pub(super) fn available() -> bool {
        crate::switch::use_avx512()
    }

    /// Tiles of `MR` rows × `NV`·16 columns.
    pub(super) const MR: usize = 6;

    /// Rows of the tiles of a one-vector panel: 6 accumulators would leave the FMA units
    /// waiting on their 4-cycle latency; 12 keep both busy.
    const MR_NARROW: usize = 12;

    /// `dst[i·ld_dst + j] = scale · src[j·ld_src + i]` for a 16 × 16 tile.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(
        src: *const f32,
        ld_src: usize,
        dst: *mut f32,
        ld_dst: usize,
        scale: f32,
    ) {
        let s = _mm512_set1_ps(scale);
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, x) in r.iter_mut().enumerate() {
            *x = _mm512_mul_ps(_mm512_loadu_ps(src.add(i * ld_src)), s);
        }
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let a = [0, 1, 2, 3].map(|j| _mm512_castps_pd(t[4 * i + j]));
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a[0], a[2]));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a[0], a[2]));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a[1], a[3]));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a[1], a[3]));
        }
        for i in 0..2 {
            for j in 0..4 {
                t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * i + j], r[8 * i + 4 + j]);
                t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(r[8 * i + j], r[8 * i + 4 + j]);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
            r[8 + j] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[8 + j]);
        }
        for (i, x) in r.iter().enumerate() {
            _mm512_storeu_ps(dst.add(i * ld_dst), *x);
        }
    }

    /// Key `ORDER[s]` of a 16-column group accumulates in slot `s`, so that [`reduce16`]
    /// leaves column `j` of the group in lane `j` (its shuffles pair slots, not keys).
    const ORDER: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];

    /// The 16 lane sums of `v`, slot `s`'s in lane `ORDER[s]`: four halving steps (256-, 128-,
    /// 64-, 32-bit), each two shuffles and an add per pair, 45 instructions in all.
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce16(v: &[__m512; 16]) -> __m512 {
        let w: [__m512; 8] = std::array::from_fn(|j| {
            let (a, b) = (v[j], v[j + 8]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xee>(a, b),
            )
        });
        let x: [__m512; 4] = std::array::from_fn(|j| {
            let (a, b) = (w[j], w[j + 4]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xdd>(a, b),
            )
        });
        let y: [__m512; 2] = std::array::from_fn(|j| {
            let (a, b) = (_mm512_castps_pd(x[j]), _mm512_castps_pd(x[j + 2]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            )
        });
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(y[0], y[1]),
            _mm512_shuffle_ps::<0xdd>(y[0], y[1]),
        )
    }

    /// Dot products of one row of A (`k` elements; a masked load for the last `k % 16`) with
    /// the rows `j0..j0 + 16` of B (`n × k`) that exist, as one vector: lane `j` holds row
    /// `j0 + j`'s product, 0 past `n`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dots16(a: *const f32, k: usize, b: *const f32, j0: usize, n: usize) -> __m512 {
        let mut v = [_mm512_setzero_ps(); 16];
        let full = j0 + 16 <= n;
        let chunks = k / 16;
        let tail = (k % 16) as u32;
        for c0 in 0..chunks {
            let av = _mm512_loadu_ps(a.add(16 * c0));
            if full {
                for (s, x) in v.iter_mut().enumerate() {
                    let bv = _mm512_loadu_ps(b.add((j0 + ORDER[s]) * k + 16 * c0));
                    *x = _mm512_fmadd_ps(bv, av, *x);
                }
            } else {
                for (s, x) in v.iter_mut().enumerate() {
                    if j0 + ORDER[s] < n {
                        let bv = _mm512_loadu_ps(b.add((j0 + ORDER[s]) * k + 16 * c0));
                        *x = _mm512_fmadd_ps(bv, av, *x);
                    }
                }
            }
        }
        if tail > 0 {
            let mask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
            let at = 16 * chunks;
            let av = _mm512_maskz_loadu_ps(mask, a.add(at));
            for (s, x) in v.iter_mut().enumerate() {
                if j0 + ORDER[s] < n {
                    let bv = _mm512_maskz_loadu_ps(mask, b.add((j0 + ORDER[s]) * k + at));
                    *x = _mm512_fmadd_ps(bv, av, *x);
                }
            }
        }
        reduce16(&v)
    }

    /// Sums the four 128-bit blocks' lanes of each of `acc[0..4]`: lane `u` of block `r` of
    /// the result is the sum of block `r` of `acc[u]` (9 in-lane instructions).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn reduce4(acc: &[__m512; 4]) -> __m512 {
        let s01 = _mm512_add_ps(
            _mm512_unpacklo_ps(acc[0], acc[1]),
            _mm512_unpackhi_ps(acc[0], acc[1]),
        );
        let s23 = _mm512_add_ps(
            _mm512_unpacklo_ps(acc[2], acc[3]),
            _mm512_unpackhi_ps(acc[2], acc[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(s01, s23),
            _mm512_shuffle_ps::<0xEE>(s01, s23),
        )
    }

    /// `C = A · Bᵀ` (see [`super::nt`]), rows `4·g..4·g + 4` at a time (the last group may have
    /// fewer)
    /// with the four rows on the four 128-bit blocks of a zmm: `qp (chunks × 16)` holds, per 4
    /// columns of A, the four rows' values side by side (zero past `k`), and each 4-column
    /// chunk of a row of B is broadcast to all blocks. A block's four lanes then hold partial
    /// sums of one row's dot product, so 4 keys × 4 rows need 9 in-lane reduction
    /// instructions, and a 16-key group 8 block shuffles more to put each row's 16 results
    /// together. The FMAs are as many as with per-row dot products; the reductions a fifth.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; A must hold rows `0..m` (`k` columns, stride `lda`), B
    /// rows `0..n` (packed, `k` each) and C rows `0..m` (`n` rounded up to 16 columns, stride
    /// `ldc`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn nt4(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        qp: &mut Vec<f32>,
    ) {
        let groups = m.div_ceil(4);
        let mut g = 0;
        while g < groups {
            // The last group may hold fewer rows: zero rows in the packing, not stored.
            let rows = (m - 4 * g).min(4);
            qp.clear();
            super::pack_rows4(qp, a.add(4 * g * lda), lda, k, rows);
            let out = c.add(4 * g * ldc);
            if g + 1 < groups {
                // Two groups share each load of B (5–8 rows): half the traffic from L2.
                let rows2 = (m - 4 * (g + 1)).min(4);
                super::pack_rows4(qp, a.add(4 * (g + 1) * lda), lda, k, rows2);
                let (q0, q1) = (qp.as_ptr(), qp.as_ptr().add(k.div_ceil(4) * 16));
                match k {
                    64 => nt8_rows::<16>(n, k, q0, q1, b, out, ldc, rows2),
                    32 => nt8_rows::<8>(n, k, q0, q1, b, out, ldc, rows2),
                    _ => nt8_rows::<0>(n, k, q0, q1, b, out, ldc, rows2),
                }
                g += 2;
                continue;
            }
            let q = qp.as_ptr();
            match k {
                64 => nt4_rows::<16>(n, k, q, b, out, ldc, rows),
                32 => nt4_rows::<8>(n, k, q, b, out, ldc, rows),
                _ => nt4_rows::<0>(n, k, q, b, out, ldc, rows),
            }
            g += 1;
        }
    }

    /// Two groups of [`nt4`] at once, rows `0..4` from `q0` and `4..4 + rows2` from `q1`: each
    /// 4-column chunk of a row of B is loaded once for both (the A values come from L1, two
    /// loads per chunk instead of registers), so B streams from L2 once for up to 8 rows.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn nt8_rows<const C: usize>(
        n: usize,
        k: usize,
        q0: *const f32,
        q1: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows2: usize,
    ) {
        let (full, rem) = if C > 0 { (C, 0) } else { (k / 4, k % 4) };
        let tail_mask: __mmask16 = (1 << rem) - 1;
        for j0 in (0..n).step_by(16) {
            super::prefetch_rows(b, (j0 + 16)..(j0 + 32).min(n), k);
            let mut sums0 = [_mm512_setzero_ps(); 4];
            let mut sums1 = [_mm512_setzero_ps(); 4];
            for s in 0..4 {
                let base = j0 + 4 * s;
                if base >= n {
                    break;
                }
                let valid = (n - base).min(4);
                // Keys past n repeat the last valid one; their lanes are cleared below.
                let rows: [*const f32; 4] = std::array::from_fn(|u| b.add((base + u.min(valid - 1)) * k));
                let mut acc0 = [_mm512_setzero_ps(); 4];
                let mut acc1 = [_mm512_setzero_ps(); 4];
                for p in 0..full {
                    let (qv0, qv1) = (_mm512_loadu_ps(q0.add(16 * p)), _mm512_loadu_ps(q1.add(16 * p)));
                    for u in 0..4 {
                        let kv = _mm512_broadcast_f32x4(_mm_loadu_ps(rows[u].add(4 * p)));
                        acc0[u] = _mm512_fmadd_ps(qv0, kv, acc0[u]);
                        acc1[u] = _mm512_fmadd_ps(qv1, kv, acc1[u]);
                    }
                }
                if rem > 0 {
                    let (qv0, qv1) = (
                        _mm512_loadu_ps(q0.add(16 * full)),
                        _mm512_loadu_ps(q1.add(16 * full)),
                    );
                    for u in 0..4 {
                        let part = _mm512_maskz_loadu_ps(tail_mask, rows[u].add(4 * full));
                        let kv = _mm512_shuffle_f32x4::<0>(part, part);
                        acc0[u] = _mm512_fmadd_ps(qv0, kv, acc0[u]);
                        acc1[u] = _mm512_fmadd_ps(qv1, kv, acc1[u]);
                    }
                }
                let lanes: __mmask16 = 0x1111 * ((1 << valid) - 1);
                sums0[s] = _mm512_maskz_mov_ps(lanes, reduce4(&acc0));
                sums1[s] = _mm512_maskz_mov_ps(lanes, reduce4(&acc1));
            }
            store_rows16(&sums0, c.add(j0), ldc, 4);
            store_rows16(&sums1, c.add(4 * ldc + j0), ldc, rows2);
        }
    }

    /// Writes the first `rows` of the four rows held by `sums` (block `r` of `sums[s]` = row
    /// `r`'s keys `4s..4s + 4`) as 16 values each, at stride `ldc`: 8 block shuffles gather
    /// each row's 16.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_rows16(sums: &[__m512; 4], c: *mut f32, ldc: usize, rows: usize) {
        let x0 = _mm512_shuffle_f32x4::<0x44>(sums[0], sums[1]);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(sums[0], sums[1]);
        let x2 = _mm512_shuffle_f32x4::<0x44>(sums[2], sums[3]);
        let x3 = _mm512_shuffle_f32x4::<0xEE>(sums[2], sums[3]);
        let out = [
            _mm512_shuffle_f32x4::<0x88>(x0, x2),
            _mm512_shuffle_f32x4::<0xDD>(x0, x2),
            _mm512_shuffle_f32x4::<0x88>(x1, x3),
            _mm512_shuffle_f32x4::<0xDD>(x1, x3),
        ];
        for (r, v) in out.into_iter().enumerate().take(rows) {
            _mm512_storeu_ps(c.add(r * ldc), v);
        }
    }

    /// One group of 4 rows of [`nt4`]; `C > 0` is the number of 4-column chunks when it is a
    /// compile-time constant (then `k = 4·C` and `qp` stays in registers), `C = 0` any `k`.
    #[target_feature(enable = "avx512f")]
    unsafe fn nt4_rows<const C: usize>(
        n: usize,
        k: usize,
        qp: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
    ) {
        let (full, rem) = if C > 0 { (C, 0) } else { (k / 4, k % 4) };
        let qreg: [__m512; C] = std::array::from_fn(|p| _mm512_loadu_ps(qp.add(16 * p)));
        let tail_mask: __mmask16 = (1 << rem) - 1;
        for j0 in (0..n).step_by(16) {
            super::prefetch_rows(b, (j0 + 16)..(j0 + 32).min(n), k);
            let mut sums = [_mm512_setzero_ps(); 4];
            for (s, sum) in sums.iter_mut().enumerate() {
                let base = j0 + 4 * s;
                if base >= n {
                    break;
                }
                let valid = (n - base).min(4);
                // Keys past n repeat the last valid one; their lanes are cleared below.
                let rows: [*const f32; 4] = std::array::from_fn(|u| b.add((base + u.min(valid - 1)) * k));
                let mut acc = [_mm512_setzero_ps(); 4];
                // `qreg` is empty when C = 0 (then A comes from `qp`): indices, not an iterator.
                #[allow(clippy::needless_range_loop)]
                for p in 0..full {
                    let qv = if C > 0 {
                        qreg[p]
                    } else {
                        _mm512_loadu_ps(qp.add(16 * p))
                    };
                    for (x, row) in acc.iter_mut().zip(&rows) {
                        let kv = _mm512_broadcast_f32x4(_mm_loadu_ps(row.add(4 * p)));
                        *x = _mm512_fmadd_ps(qv, kv, *x);
                    }
                }
                if rem > 0 {
                    let qv = _mm512_loadu_ps(qp.add(16 * full));
                    for (x, row) in acc.iter_mut().zip(&rows) {
                        let part = _mm512_maskz_loadu_ps(tail_mask, row.add(4 * full));
                        let kv = _mm512_shuffle_f32x4::<0>(part, part);
                        *x = _mm512_fmadd_ps(qv, kv, *x);
                    }
                }
                let lanes: __mmask16 = 0x1111 * ((1 << valid) - 1);
                *sum = _mm512_maskz_mov_ps(lanes, reduce4(&acc));
            }
            store_rows16(&sums, c.add(j0), ldc, rows);
        }
    }

    /// `C (m×np) = A · Bᵀ`, B stored `(n×k)`: see [`super::nt`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn nt(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        for j0 in (0..n).step_by(16) {
            super::prefetch_rows(b, (j0 + 16)..(j0 + 32).min(n), k);
            // Every row against these 16 rows of B while they are in L1.
            for i in 0..m {
                let out = dots16(a.add(i * lda), k, b, j0, n);
                _mm512_storeu_ps(c.add(i * ldc + j0), out);
            }
        }
    }

    /// One `mr × 16·nv` tile, `mr <= 6`, `nv <= 4`: the accumulators stay in registers.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const TA: bool, const R: usize, const NV: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for p in 0..k {
            let bp = b.add(p * ldb);
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(if TA {
                    *a.add(p * lda + i)
                } else {
                    *a.add(i * lda + p)
                });
                for (x, y) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, *y, *x);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let cp = c.add(i * ldc + 16 * v);
                let r = if accumulate {
                    _mm512_add_ps(_mm512_loadu_ps(cp), *x)
                } else {
                    *x
                };
                _mm512_storeu_ps(cp, r);
            }
        }
    }

    /// Dispatches a tile of `r` rows and `nv` vectors to its monomorphized kernel.
    macro_rules! tile_for {
        ($ta:ident, $r:expr, $nv:expr, $($arg:expr),*) => {
            match ($r, $nv) {
                (1, 1) => tile::<$ta, 1, 1>($($arg),*), (1, 2) => tile::<$ta, 1, 2>($($arg),*),
                (1, 3) => tile::<$ta, 1, 3>($($arg),*), (1, 4) => tile::<$ta, 1, 4>($($arg),*),
                (2, 1) => tile::<$ta, 2, 1>($($arg),*), (2, 2) => tile::<$ta, 2, 2>($($arg),*),
                (2, 3) => tile::<$ta, 2, 3>($($arg),*), (2, 4) => tile::<$ta, 2, 4>($($arg),*),
                (3, 1) => tile::<$ta, 3, 1>($($arg),*), (3, 2) => tile::<$ta, 3, 2>($($arg),*),
                (3, 3) => tile::<$ta, 3, 3>($($arg),*), (3, 4) => tile::<$ta, 3, 4>($($arg),*),
                (4, 1) => tile::<$ta, 4, 1>($($arg),*), (4, 2) => tile::<$ta, 4, 2>($($arg),*),
                (4, 3) => tile::<$ta, 4, 3>($($arg),*), (4, 4) => tile::<$ta, 4, 4>($($arg),*),
                (5, 1) => tile::<$ta, 5, 1>($($arg),*), (5, 2) => tile::<$ta, 5, 2>($($arg),*),
                (5, 3) => tile::<$ta, 5, 3>($($arg),*), (5, 4) => tile::<$ta, 5, 4>($($arg),*),
                (6, 1) => tile::<$ta, 6, 1>($($arg),*), (6, 2) => tile::<$ta, 6, 2>($($arg),*),
                (6, 3) => tile::<$ta, 6, 3>($($arg),*), (6, 4) => tile::<$ta, 6, 4>($($arg),*),
                (7, _) => tile::<$ta, 7, 1>($($arg),*), (8, _) => tile::<$ta, 8, 1>($($arg),*),
                (9, _) => tile::<$ta, 9, 1>($($arg),*), (10, _) => tile::<$ta, 10, 1>($($arg),*),
                (11, _) => tile::<$ta, 11, 1>($($arg),*), _ => tile::<$ta, 12, 1>($($arg),*),
            }
        };
    }

    /// The whole product, `n % 16 == 0`: column panels of up to 64, row tiles of up to 6 (of up
    /// to 12 in a 16-column panel, where 6 accumulators would wait on the FMA latency).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product<const TA: bool>(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let nv = ((n - j0) / 16).min(4);
            let mr = if nv == 1 { MR_NARROW } else { MR };
            let mut i0 = 0;
            while i0 < m {
                let r = (m - i0).min(mr);
                let ai = if TA { a.add(i0) } else { a.add(i0 * lda) };
                let (bj, cij) = (b.add(j0), c.add(i0 * ldc + j0));
                tile_for!(TA, r, nv, k, ai, lda, bj, ldb, cij, ldc, accumulate);
                i0 += r;
            }
            j0 += 16 * nv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive<const TA: bool>(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if TA { a[p * lda + i] } else { a[i * lda + p] };
                    c[i * n + j] += av as f64 * b[p * ldb + j] as f64;
                }
            }
        }
        c
    }

    #[test]
    fn packing_transposes_scales_and_zero_pads() {
        for &(rows, rp, d) in &[
            (0usize, 16usize, 8usize),
            (1, 16, 1),
            (16, 16, 16),
            (37, 48, 64),
            (64, 64, 70),
            (130, 144, 33),
        ] {
            let src: Vec<f32> = (0..rows * d).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![f32::NAN; d * rp + 3];
            pack_transposed(&mut dst, &src, rows, rp, d, 2.0);
            for e in 0..d {
                for r in 0..rp {
                    let want = if r < rows { src[r * d + e] * 2.0 } else { 0.0 };
                    assert_eq!(dst[e * rp + r], want, "rows {rows} rp {rp} d {d}: ({e}, {r})");
                }
            }
            assert!(
                dst[d * rp..].iter().all(|x| x.is_nan()),
                "nothing written past d × rp"
            );
        }
    }

    /// Ranged products: per row tile, the columns asked for hold the product, the others are
    /// untouched or hold it too (a full computation is allowed), and a sum stopped early equals
    /// the full one when the terms left out are zeros (the contract of `Ranges`).
    #[test]
    fn ranged_products_compute_what_each_tile_asks_for() {
        let val = |i: usize| ((i * 7919 % 1009) as f32 / 1009.0) - 0.5;
        // Tile (i0, r) → columns and sum span that move with the tile, some empty.
        let ranges = |i0: usize, _r: usize| {
            let cols = match i0 % 4 {
                0 => (0, 64),
                1 => (16, 48),
                2 => (32, 32),
                _ => (48, 64),
            };
            (cols, (i0 % 5, 40 - i0 % 7))
        };
        // n = 40 takes the AVX2 tiles on an AVX-512 machine (not a multiple of 16).
        for &(m, n, k) in &[
            (13usize, 64usize, 40usize),
            (30, 64, 40),
            (7, 48, 33),
            (9, 40, 20),
        ] {
            for ta in [false, true] {
                let lda = if ta { m + 1 } else { k + 3 };
                let mut a: Vec<f32> = (0..(if ta { k } else { m }) * lda).map(val).collect();
                // Zero A outside each tile's sum span (tiles of 6 rows, as the kernel cuts them).
                for i in 0..m {
                    let (_, (p_lo, p_hi)) = ranges(i / 6 * 6, 6);
                    for p in (0..k).filter(|&p| p < p_lo || p >= p_hi) {
                        a[if ta { p * lda + i } else { i * lda + p }] = 0.0;
                    }
                }
                let b: Vec<f32> = (0..k * n).map(|i| val(i + 5)).collect();
                let want = if ta {
                    naive::<true>(m, n, k, &a, lda, &b, n)
                } else {
                    naive::<false>(m, n, k, &a, lda, &b, n)
                };
                for accumulate in [false, true] {
                    let before: Vec<f32> = (0..m * n).map(|i| val(i + 9)).collect();
                    let mut c = before.clone();
                    if ta {
                        tn_ranged((m, n, k), &a, lda, &b, n, &mut c, n, accumulate, &ranges);
                    } else {
                        nn_ranged((m, n, k), &a, lda, &b, n, &mut c, n, accumulate, &ranges);
                    }
                    for i in 0..m {
                        let ((j_lo, j_hi), _) = ranges(i / 6 * 6, 6);
                        for j in 0..n {
                            let full =
                                want[i * n + j] + if accumulate { before[i * n + j] as f64 } else { 0.0 };
                            let got = c[i * n + j] as f64;
                            let is_full = (got - full).abs() < 1e-4;
                            let what = format!("m{m} n{n} k{k} ta={ta} acc={accumulate} ({i},{j})");
                            if (j_lo..j_hi).contains(&j) {
                                assert!(is_full, "{what}: {got} vs {full}");
                            } else {
                                assert!(
                                    is_full || got == before[i * n + j] as f64,
                                    "{what}: {got} is neither"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The in-register transposes themselves, whichever `pack_transposed` picks on this CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn in_register_transposes_transpose_and_scale() {
        let src: Vec<f32> = (0..20 * 19).map(|i| i as f32 - 7.0).collect();
        type T = unsafe fn(*const f32, usize, *mut f32, usize, f32);
        let mut kinds: Vec<(usize, T)> = Vec::new();
        if std::is_x86_feature_detected!("avx512f") {
            kinds.push((16, avx512::transpose16));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            kinds.push((8, avx2::transpose8));
        }
        for (t, transpose) in kinds {
            let mut dst = vec![f32::NAN; t * 21];
            // SAFETY: the CPU has the features (checked above); a t × t tile of src (row
            // stride 19, t <= 16 rows) and of dst (row stride 21) is inside both.
            unsafe { transpose(src.as_ptr().add(2), 19, dst.as_mut_ptr(), 21, 0.5) };
            for i in 0..t {
                for j in 0..t {
                    assert_eq!(dst[i * 21 + j], 0.5 * src[2 + j * 19 + i], "t {t}: ({i}, {j})");
                }
                assert!(
                    dst[i * 21 + t..(i + 1) * 21].iter().all(|x| x.is_nan()),
                    "t {t}: row {i} tail"
                );
            }
        }
    }

    /// `nt` on all of its paths (with AVX-512: groups of 4 rows, with k a multiple of 4 or
    /// not, 32 and 64 (the register-held versions) or other, a padded last group of 3 rows and
    /// per-row dot products for 1 or 2 left over, up to m = 8; the packed transpose past 8 rows;
    /// the AVX2 groups, called directly, for every m up to 8) against an f64 loop: every column
    /// of the padded width, with n and k odd, 1, and past one 16-group (n cut inside a group
    /// of 4 keys), and rows of A wider than k.
    #[test]
    fn nt_matches_a_naive_loop_and_zero_pads() {
        let val = |i: usize| ((i * 7919 % 1009) as f32 / 1009.0) - 0.5;
        for &(m, n, k) in &[
            (1usize, 1usize, 1usize),
            (1, 16, 64),
            (4, 300, 64),
            (3, 17, 7),
            (2, 33, 40),
            (4, 64, 256),
            (5, 48, 64),
            (8, 29, 33),
            (8, 130, 64),
            (9, 40, 64),
            (12, 17, 19),
            (4, 5, 0),
            (4, 1, 64),
            (4, 17, 7),
            (4, 33, 32),
            (4, 22, 18),
            (4, 16, 5),
            (4, 50, 256),
            (8, 3, 100),
            (8, 1, 1),
            (8, 47, 64),
            (6, 33, 64),
            (7, 20, 19),
            (4, 20, 62),
            (8, 9, 30),
            // Two groups in one pass (`nt8_rows`) with 8 chunks of A in registers' place.
            (8, 40, 32),
            (7, 33, 32),
        ] {
            let lda = k + 3;
            let np = n.next_multiple_of(16);
            let ldc = np + 2;
            let a: Vec<f32> = (0..m * lda).map(val).collect();
            // NaNs right after B: a read past its last row would turn results into NaN.
            let mut b_buf: Vec<f32> = (0..n * k).map(|i| val(i + 5)).collect();
            b_buf.extend([f32::NAN; 16]);
            let b = &b_buf[..n * k];
            let mut c = vec![f32::NAN; (m + 1) * ldc];
            let mut scratch = Vec::new();
            nt((m, n, k), &a, lda, b, &mut c, ldc, &mut scratch);
            check_nt((m, n, k), &a, lda, b, &c, ldc, "nt");
            // The AVX2 groups, which `nt` takes only on CPUs without AVX-512.
            #[cfg(target_arch = "x86_64")]
            if m <= NT_GROUP_ROWS_MAX && k > 0 && avx2::available() {
                let mut c = vec![f32::NAN; (m + 1) * ldc];
                // SAFETY: AVX2 and FMA present (checked); sizes as `nt` asserts them.
                unsafe {
                    avx2::nt4(
                        m,
                        n,
                        k,
                        a.as_ptr(),
                        lda,
                        b.as_ptr(),
                        c.as_mut_ptr(),
                        ldc,
                        &mut scratch,
                    )
                };
                check_nt((m, n, k), &a, lda, b, &c, ldc, "avx2::nt4");
            }
        }
    }

    /// Checks `c = a · bᵀ` as [`nt`] defines it (see `nt_matches_a_naive_loop_and_zero_pads`).
    fn check_nt(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        lda: usize,
        b: &[f32],
        c: &[f32],
        ldc: usize,
        what: &str,
    ) {
        let np = n.next_multiple_of(16);
        // One row more than C: nothing may be stored there.
        assert!(
            c[m * ldc..].iter().all(|x| x.is_nan()),
            "{what} m{m} n{n} k{k}: stored past row m"
        );
        for i in 0..m {
            for j in 0..ldc {
                let got = c[i * ldc + j];
                if j >= np {
                    assert!(got.is_nan(), "{what} m{m} n{n} k{k}: ({i},{j}) written past np");
                    continue;
                }
                let (want, size) = (0..k).filter(|_| j < n).fold((0f64, 0f64), |(w, s), p| {
                    let t = a[i * lda + p] as f64 * b[j * k + p] as f64;
                    (w + t, s + t.abs())
                });
                // f32 sums of <= 256 terms: the error bound is 256 · 2⁻²⁴ ≈ 1.5e-5 of the
                // terms' magnitudes, the blocked and tree sums here land below 1e-6 of it
                // (an absolute 1e-5 was too tight for the AVX2 path at k = 256).
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * (1.0 + size),
                    "{what} m{m} n{n} k{k} ({i},{j}): {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn both_products_match_a_naive_loop_on_awkward_sizes() {
        let val = |i: usize| ((i * 7919 % 1009) as f32 / 1009.0) - 0.5;
        for &(m, n, k) in &[
            (1, 16, 1),
            (7, 48, 5),
            (13, 80, 64),
            (64, 64, 128),
            (128, 64, 3),
            (5, 7, 9),
            (6, 128, 0),
            (11, 24, 17),
            // One-vector panels take tiles of up to 12 rows.
            (30, 16, 64),
            (12, 16, 7),
        ] {
            for ta in [false, true] {
                let (lda, ldb, ldc) = (if ta { m + 3 } else { k + 2 }, n + 16, n + 5);
                let a: Vec<f32> = (0..(if ta { k } else { m }) * lda).map(val).collect();
                let b: Vec<f32> = (0..k.max(1) * ldb).map(|i| val(i + 3)).collect();
                for accumulate in [false, true] {
                    let mut c: Vec<f32> = (0..m * ldc).map(|i| val(i + 11)).collect();
                    let before = c.clone();
                    if ta {
                        tn((m, n, k), &a, lda, &b, ldb, &mut c, ldc, accumulate);
                    } else {
                        nn((m, n, k), &a, lda, &b, ldb, &mut c, ldc, accumulate);
                    }
                    let want = if ta {
                        naive::<true>(m, n, k, &a, lda, &b, ldb)
                    } else {
                        naive::<false>(m, n, k, &a, lda, &b, ldb)
                    };
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j] as f64;
                            let expect = if j >= n {
                                before[i * ldc + j] as f64 // outside the product: untouched
                            } else {
                                want[i * n + j]
                                    + if accumulate {
                                        before[i * ldc + j] as f64
                                    } else {
                                        0.0
                                    }
                            };
                            assert!(
                                (got - expect).abs() < 1e-4,
                                "m{m} n{n} k{k} ta={ta} acc={accumulate} ({i},{j}): {got} vs {expect}"
                            );
                        }
                    }
                }
            }
        }
    }
}
