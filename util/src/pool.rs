//! Recycled byte buffers for large, short-lived bodies (the page slices a
//! migration sends and receives, the buffer a capture writes a snapshot
//! into).
//!
//! A fresh buffer of a few MiB costs a page fault per 4 KiB page on its
//! first write (~1.4 µs each on the test machines, more than the copy into
//! it), and glibc hands large freed buffers back to the kernel, so the next
//! one faults again. Buffers given back here keep their pages: the next
//! [`take`] of a size they fit reuses them, already faulted in.
//!
//! The pool is bounded: it keeps buffers of [`MIN_POOLED`] bytes or more,
//! at most [`POOL_BUDGET`] bytes of them in all (the largest kept buffers
//! are dropped first when a new one does not fit). A buffer is handed out
//! empty (`len() == 0`): its old bytes are never readable through it.

use std::sync::Mutex;

/// Buffers smaller than this are not kept (malloc reuses them well enough).
pub const MIN_POOLED: usize = 256 << 10;
/// The most bytes of idle buffers the pool keeps.
pub const POOL_BUDGET: usize = 320 << 20;

struct Pool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    bufs: Vec::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer with room for at least `min_capacity` bytes: the
/// smallest kept buffer that fits, or a new one.
pub fn take(min_capacity: usize) -> Vec<u8> {
    if min_capacity >= MIN_POOLED {
        let mut p = pool();
        let best = p
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= min_capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = p.bufs.swap_remove(i);
            p.bytes -= buf.capacity();
            return buf;
        }
    }
    Vec::with_capacity(min_capacity)
}

/// Gives a buffer back for a later [`take`] (emptied first); one too small
/// or beyond the budget is freed.
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if !(MIN_POOLED..=POOL_BUDGET).contains(&cap) {
        return;
    }
    buf.clear();
    let mut p = pool();
    // Make room by dropping the largest kept buffers first (a big one
    // blocks the most small ones); keep the new one if it still fits.
    while p.bytes + cap > POOL_BUDGET {
        let Some(i) = (0..p.bufs.len()).max_by_key(|&i| p.bufs[i].capacity()) else {
            break;
        };
        if p.bufs[i].capacity() < cap {
            // The kept ones are all smaller: keep them, free the new one.
            return;
        }
        let old = p.bufs.swap_remove(i);
        p.bytes -= old.capacity();
    }
    p.bytes += cap;
    p.bufs.push(buf);
}

/// Bytes of idle buffers the pool holds now.
pub fn idle_bytes() -> usize {
    pool().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_the_budget_holds() {
        let mut a = take(MIN_POOLED);
        a.extend_from_slice(&vec![7u8; MIN_POOLED]);
        let ptr = a.as_ptr();
        give(a);
        let b = take(MIN_POOLED);
        assert!(b.is_empty(), "a recycled buffer is handed out empty");
        assert_eq!(b.as_ptr(), ptr, "the kept buffer is reused");
        give(b);
        // Small buffers are not kept; the budget is never exceeded.
        give(Vec::with_capacity(16));
        for _ in 0..8 {
            give(Vec::with_capacity(POOL_BUDGET / 4));
        }
        assert!(idle_bytes() <= POOL_BUDGET);
        let big = take(POOL_BUDGET / 4);
        assert!(big.capacity() >= POOL_BUDGET / 4 && big.is_empty());
    }
}
