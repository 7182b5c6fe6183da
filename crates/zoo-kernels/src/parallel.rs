//! Parallel loops on candle's own CPU worker pool.
//!
//! candle 0.11 runs its elementwise CPU ops (the ones a backward pass is full of: gradient
//! accumulation, the gradient of `sum`, dtype copies) on a private "barrier pool" whose worker
//! threads spin for ~25,000 `pause`s after each op before they sleep. A kernel that runs on a
//! second pool (rayon's) right after such an op shares the cores with a spinning thread: on this
//! project's 2-core machine that cost the fused attention's forward+backward at n = 128 45% of
//! its time (1.82 ms vs 1.02 ms with the spin turned off). Running our loops on candle's pool
//! instead means the thread that spins is the one that picks up our work.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs `f(i)` for every `i` in `0..n` on candle's CPU worker pool, the calling thread included.
///
/// Items are taken one at a time from a shared counter, so uneven items (causal blocks) balance.
/// A nested call (from inside `f`) runs inline: candle's pool is not re-entrant. A panic in `f`
/// is caught on whichever thread it happens and re-raised on the calling thread once the pool is
/// idle, so it never poisons candle's pool for the ops that follow.
pub(crate) fn for_each_index(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || IN_LOOP.with(Cell::get) {
        (0..n).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let payload: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    let pool = candle_core::utils::barrier_pool();
    // One range per thread; each thread then takes single items from `next`.
    pool.execute_chunked(pool.n_workers() + 1, |_| {
        let _flag = InLoopFlag::set();
        let run = catch_unwind(AssertUnwindSafe(|| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n || failed.load(Ordering::Relaxed) {
                break;
            }
            f(i);
        }));
        if let Err(p) = run {
            failed.store(true, Ordering::Relaxed);
            if let Ok(mut slot) = payload.lock() {
                slot.get_or_insert(p);
            }
        }
    });
    if let Some(p) = payload.into_inner().ok().flatten() {
        resume_unwind(p);
    }
}

/// Threads that run a `for_each_index` loop: candle's pool workers plus the caller.
pub(crate) fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `f(i, chunk_i)` for the consecutive `chunk`-element chunks of `data` (the last may be
/// shorter) on candle's CPU worker pool: the pool's counterpart of rayon's `par_chunks_mut`.
pub(crate) fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    let n = data.len().div_ceil(chunk);
    let out = DisjointMut::new(data);
    for_each_index(n, |i| {
        // SAFETY: chunk i is `i*chunk..(i+1)*chunk`, and each index is run exactly once.
        f(i, unsafe { out.range_mut(i * chunk, chunk) })
    });
}

/// A new `n`-element vector built by [`for_each_chunk_mut`]: each task zeroes its own chunk just
/// before `f` writes it. A `vec![0.0; n]` up front is one serial `memset` over the whole buffer
/// (calloc on reused heap memory), a pass through memory that the writes then repeat; zeroing
/// chunk by chunk happens in parallel and in cache.
pub(crate) fn build_vec(n: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let out = DisjointMut::new(&mut v.spare_capacity_mut()[..n]);
    for_each_index(n.div_ceil(chunk), |i| {
        // SAFETY: chunk i is `i*chunk..(i+1)*chunk`, and each index is run exactly once.
        let c = unsafe { out.range_mut(i * chunk, chunk) };
        for x in c.iter_mut() {
            x.write(0.0);
        }
        // SAFETY: every element of `c` was just initialized.
        f(i, unsafe {
            &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32])
        });
    });
    // SAFETY: the chunks cover `0..n` and were all initialized (a panic in a task is re-raised
    // by `for_each_index` before this line, leaving the vector empty).
    unsafe { v.set_len(n) };
    v
}

/// A vector of `n` f32 that the items of a parallel loop initialize, each its own ranges, through
/// [`DisjointMut::zeroed_range`] on [`UninitVec::writer`]: a `vec![0.0; n]` up front would be
/// one serial `memset` over the whole output, a pass through memory that the items then repeat.
pub(crate) struct UninitVec {
    v: Vec<f32>,
    n: usize,
}

impl UninitVec {
    /// Room for `n` values, none initialized.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            v: Vec::with_capacity(n),
            n,
        }
    }

    /// The `n` slots, for items to initialize in disjoint ranges.
    pub(crate) fn writer(&mut self) -> DisjointMut<'_, std::mem::MaybeUninit<f32>> {
        let n = self.n;
        DisjointMut::new(&mut self.v.spare_capacity_mut()[..n])
    }

    /// The initialized vector.
    ///
    /// # Safety
    /// Every element `0..n` was written through [`Self::writer`] (e.g. the loop's ranges cover
    /// the vector; a panic in the loop is re-raised before this is reached).
    pub(crate) unsafe fn assume_init(mut self) -> Vec<f32> {
        // SAFETY: the caller guarantees that all `n <= capacity` elements are initialized.
        unsafe { self.v.set_len(self.n) };
        self.v
    }
}

impl DisjointMut<'_, std::mem::MaybeUninit<f32>> {
    /// Elements `start..start + len` (clamped to the slice), set to zero.
    ///
    /// # Safety
    /// As [`DisjointMut::range_mut`]: no other live reference may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn zeroed_range(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: the caller guarantees the range is not aliased.
        let r = unsafe { self.range_mut(start, len) };
        for x in r.iter_mut() {
            x.write(0.0);
        }
        // SAFETY: every element was just initialized; MaybeUninit<f32> has f32's layout.
        unsafe { &mut *(r as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
    }
}

thread_local! {
    /// True while this thread runs items of a `for_each_index` call.
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Sets `IN_LOOP` for the current thread and restores it on drop (also when unwinding).
struct InLoopFlag(bool);

impl InLoopFlag {
    fn set() -> Self {
        Self(IN_LOOP.with(|c| c.replace(true)))
    }
}

impl Drop for InLoopFlag {
    fn drop(&mut self) {
        IN_LOOP.with(|c| c.set(self.0));
    }
}

/// A mutable slice that parallel items write in disjoint ranges.
///
/// The borrow checker cannot see that items write disjoint parts of one output; this type states
/// it once instead of each kernel passing raw pointers around.
pub(crate) struct DisjointMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: the slice is only reached through `range_mut`, whose contract is that no two threads
// hold overlapping ranges; `T: Send` lets the elements be written from other threads.
unsafe impl<T: Send> Sync for DisjointMut<'_, T> {}

impl<'a, T> DisjointMut<'a, T> {
    /// Borrows `data` for the duration of a parallel loop.
    pub(crate) fn new(data: &'a mut [T]) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Elements `start..start + len` (clamped to the slice).
    ///
    /// # Safety
    /// No other live reference may overlap the range: parallel items take disjoint ranges.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, start: usize, len: usize) -> &mut [T] {
        let start = start.min(self.len);
        let end = start.saturating_add(len).min(self.len);
        // SAFETY: `start..end` lies inside the borrowed slice; the caller guarantees that the
        // range is not aliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_index_runs_exactly_once() {
        for n in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_each_index(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn nested_calls_run_inline_without_deadlock() {
        let total = AtomicUsize::new(0);
        for_each_index(4, |_| {
            for_each_index(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn disjoint_ranges_cover_the_slice() {
        let mut data = vec![0usize; 10];
        let out = DisjointMut::new(&mut data);
        for_each_index(4, |i| {
            // SAFETY: item i writes elements 3i..3i+3 only.
            for x in unsafe { out.range_mut(3 * i, 3) } {
                *x = i;
            }
        });
        assert_eq!(data, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn chunks_are_visited_once_with_their_index() {
        let mut data = vec![0usize; 11];
        for_each_chunk_mut(&mut data, 4, |i, c| c.iter_mut().for_each(|x| *x += i + 1));
        assert_eq!(data, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]);
        for_each_chunk_mut(&mut [] as &mut [u8], 4, |_, _| {
            panic!("no chunks in an empty slice")
        });
    }

    #[test]
    fn built_vectors_are_written_by_chunk() {
        for n in [0usize, 1, 7, 1000] {
            let v = build_vec(n, 3, |i, c| {
                c.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x += (3 * i + j) as f32)
            });
            assert_eq!(v, (0..n).map(|i| i as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn uninit_vectors_are_built_by_disjoint_zeroed_ranges() {
        for n in [0usize, 1, 7, 1000] {
            let mut u = UninitVec::new(n);
            let w = u.writer();
            for_each_index(n.div_ceil(3), |i| {
                // SAFETY: item i owns elements 3i..3i+3.
                let r = unsafe { w.zeroed_range(3 * i, 3) };
                assert!(r.iter().all(|&x| x == 0.0));
                r.iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x += (3 * i + j) as f32);
            });
            // SAFETY: the ranges 3i..3i+3 cover 0..n.
            let v = unsafe { u.assume_init() };
            assert_eq!(v, (0..n).map(|i| i as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn panics_reach_the_caller() {
        let r = std::panic::catch_unwind(|| for_each_index(8, |i| assert!(i != 5, "item five")));
        assert!(r.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        for_each_index(8, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
