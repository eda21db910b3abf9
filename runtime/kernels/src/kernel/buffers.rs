//! Intermediate tensors of a tile, recycled per thread.

use adcnn_core::ops::Pad2;
use ndarray::{Array3, ShapeError, s};

// Intermediate tensors of a tile are recycled per thread: large allocations come from mmap in
// glibc, and a fresh one per layer cost page faults on every run (MobileNetV2: ~40 % of its
// time on one core).
thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many buffers wait for reuse per thread.
const POOL: usize = 16;

// A recycled buffer keeps its full length: a tensor made from it by [`tensor`] shows only
// its first values, so the buffer comes back at full length and its next use needs no
// zeroing (a shorter length would have to be zero-filled again when it grows).

/// A vector whose first `len` floats are zero (it may be longer), reusing a recycled
/// buffer when one is large enough.
pub(super) fn zeroed(len: usize) -> Vec<f32> {
    let mut v = overwritten(len);
    v[..len].fill(0.0);
    v
}

/// A vector of at least `len` floats for a kernel that writes the first `len`: a recycled
/// buffer keeps its old values, saving a memset pass over the output.
pub(super) fn overwritten(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0.0; len],
    }
}

/// `v[..c·h·w]` as a `[c, h, w]` tensor that owns all of `v` (the rest stays hidden), so
/// [`recycle`] gets the buffer back at full length.
pub(super) fn tensor(
    v: Vec<f32>,
    (c, h, w): (usize, usize, usize),
) -> Result<Array3<f32>, ShapeError> {
    let full = v.len();
    Array3::from_shape_vec((1, 1, full), v)?
        .slice_move(s![.., .., ..c * h * w])
        .into_shape_with_order((c, h, w))
}

/// The smallest recycled buffer of at least `len` floats' capacity, preferring one that
/// already holds `len` values (so [`overwritten`] has no growth to zero).
pub(super) fn take(len: usize) -> Option<Vec<f32>> {
    BUFFERS.with_borrow_mut(|pool| {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| (v.len() < len, v.capacity()))
            .map(|(i, _)| i)?;
        Some(pool.swap_remove(best))
    })
}

pub(super) fn recycle(t: Array3<f32>) {
    recycle_vec(t.into_raw_vec_and_offset().0);
}

pub(super) fn recycle_vec(v: Vec<f32>) {
    BUFFERS.with_borrow_mut(|pool| {
        if pool.len() < POOL {
            pool.push(v);
        } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.capacity())
            && smallest.capacity() < v.capacity()
        {
            *smallest = v;
        }
    });
}

/// `x` (`[c, h, w]`) inside a border of `value`: `[c, h + top + bottom, w + left + right]`.
pub(super) fn padded(x: &[f32], c: usize, h: usize, w: usize, pad: Pad2, value: f32) -> Vec<f32> {
    let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    // May be longer than `c·ph·pw` (a recycled buffer); the pool reads only that much.
    let mut out = overwritten(c * ph * pw);
    out[..c * ph * pw].fill(value);
    if w > 0 {
        for (r, src) in x.chunks_exact(w).take(c * h).enumerate() {
            let (ch, y) = (r / h, r % h);
            let at = (ch * ph + y + pad.top) * pw + pad.left;
            out[at..at + w].copy_from_slice(src);
        }
    }
    out
}
