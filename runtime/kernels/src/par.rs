//! One layer's work split over the threads of the rayon pool the caller runs in: a worker
//! with `--threads N` runs its tiles inside a [`Pool`] of N threads, and the kernels
//! split each large layer into at most N parts. Called from outside a pool, everything runs
//! on the calling thread: the kernels never start threads of their own.
//!
//! Every split is along output elements (strips of output channels in the GEMM, rows of
//! tiles or strips of channels in Winograd, 8-channel blocks in the direct kernel, rows of
//! a GEMV, groups of output rows in the inverted-residual blocks), so each output element
//! is computed by the very same operations in the same order as on one thread: results are
//! bit-identical whatever the thread count (`tests/e2e.rs` asserts it).

use std::ops::Range;

/// Work below this many FLOPs per part is not split (a rayon hand-off costs a few
/// microseconds; a megaflop takes 20–50 µs on one core).
pub const MIN_PART_FLOPS: f64 = 1e6;

/// The threads a node's kernels split their layers over, created once (a worker's
/// `--threads`). Threads are named `adcnn-kernel-N`.
#[derive(Debug)]
pub struct Pool {
    inner: rayon::ThreadPool,
}

impl Pool {
    /// A pool of `threads` threads, or `None` for one thread (kernels then run on the
    /// caller's).
    pub fn new(threads: usize) -> Result<Option<Pool>, String> {
        if threads <= 1 {
            return Ok(None);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("adcnn-kernel-{i}"))
            .build()
            .map(|inner| Some(Pool { inner }))
            .map_err(|e| format!("cannot start {threads} kernel threads: {e}"))
    }

    /// Runs `f` (which calls the kernels) with the pool's threads to split layers over; the
    /// caller waits for it.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.inner.install(f)
    }

    pub fn threads(&self) -> usize {
        self.inner.current_num_threads()
    }
}

/// The threads one layer may use: those of the rayon pool the caller runs in, 1 outside one.
pub fn threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// `0..units` cut into at most [`threads`] contiguous ranges, each a multiple of `align`
/// units but the last, and each worth at least [`MIN_PART_FLOPS`] of the `flops` the whole
/// takes. One range (`0..units`) when the work is not worth splitting.
pub fn ranges(units: usize, align: usize, flops: f64) -> Vec<Range<usize>> {
    let align = align.max(1);
    let blocks = units.div_ceil(align);
    let by_work = (flops / MIN_PART_FLOPS).floor().max(1.0) as usize;
    let parts = threads().min(blocks).min(by_work).max(1);
    if parts == 1 {
        #[allow(
            clippy::single_range_in_vec_init,
            reason = "one range, the whole: the caller runs it alone"
        )]
        return vec![0..units];
    }
    let per = blocks.div_ceil(parts) * align;
    (0..units)
        .step_by(per)
        .map(|a| a..(a + per).min(units))
        .collect()
}

/// Runs `f(range, part)` for each range of `ranges` (contiguous, in order, from 0), where
/// `part` is `y`'s elements from `range.start · stride` to `range.end · stride` (the last
/// part: to the end of `y`), on the current pool's threads at once. On the caller's thread
/// alone when there is one range.
pub fn for_each<T: Send>(
    y: &mut [T],
    stride: usize,
    ranges: &[Range<usize>],
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    if let [only] = ranges {
        f(only.clone(), y);
        return;
    }
    let mut parts = Vec::with_capacity(ranges.len());
    let mut rest = y;
    for (i, r) in ranges.iter().enumerate() {
        let part;
        if i + 1 == ranges.len() {
            part = std::mem::take(&mut rest);
        } else {
            let len = ((r.end - r.start) * stride).min(rest.len());
            (part, rest) = rest.split_at_mut(len);
        }
        parts.push((r.clone(), part));
    }
    let f = &f;
    rayon::scope(|s| {
        let mut parts = parts.into_iter();
        // The caller takes the first part itself.
        let first = parts.next();
        for (r, part) in parts {
            s.spawn(move |_| f(r, part));
        }
        if let Some((r, part)) = first {
            f(r, part);
        }
    });
}

/// `f(part)` for each of `parts`, on the current pool's threads at once (on the caller's
/// alone when there is one), in order: for work that returns its output or writes through
/// something other than one slice cut in order (see `winograd.rs`, the blocks in
/// `kernel/run.rs`).
pub fn map<P: Sync, R: Send>(parts: &[P], f: impl Fn(&P) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = parts.iter().map(|_| None).collect();
    let each: Vec<_> = (0..parts.len()).map(|i| i..i + 1).collect();
    for_each(&mut out, 1, &each, |i, slot| {
        slot[0] = Some(f(&parts[i.start]))
    });
    out.into_iter().flatten().collect()
}

/// Runs `f` in `pool` when there is one (its layers split over the pool's threads), else
/// on the calling thread.
pub fn install<R: Send>(pool: Option<&Pool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.run(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_outside_a_pool() {
        assert_eq!(ranges(100, 6, 1e12), vec![0..100]);
    }

    #[test]
    fn ranges_are_aligned_cover_and_respect_the_work() {
        let pool = Pool::new(3).expect("pool").expect("three threads");
        pool.run(|| {
            assert_eq!(threads(), 3);
            let r = ranges(64, 6, 1e9);
            assert_eq!(r, vec![0..24, 24..48, 48..64]);
            // Two megaflops: two parts at most.
            assert_eq!(ranges(64, 6, 2e6).len(), 2);
            assert_eq!(ranges(64, 6, 5e5), vec![0..64]);
            // Fewer blocks than threads.
            assert_eq!(ranges(7, 6, 1e9), vec![0..6, 6..7]);
        });
    }

    #[test]
    fn for_each_hands_out_disjoint_parts() {
        let pool = Pool::new(3).expect("pool").expect("three threads");
        let mut y = vec![0usize; 10 * 4 - 2];
        let r = vec![0..4, 4..8, 8..10];
        pool.run(|| {
            for_each(&mut y, 4, &r, |range, part| {
                for (i, v) in part.iter_mut().enumerate() {
                    *v = range.start * 4 + i;
                }
            });
        });
        assert_eq!(y, (0..38).collect::<Vec<_>>());
    }

    #[test]
    fn map_keeps_the_parts_order() {
        let pool = Pool::new(3).expect("pool").expect("three threads");
        let parts: Vec<usize> = (0..7).collect();
        let squares = install(Some(&pool), || map(&parts, |p| p * p));
        assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36]);
        assert_eq!(map(&parts[..1], |p| p + 1), [1]);
        assert!(map(&parts[..0], |p| p + 1).is_empty());
    }
}
