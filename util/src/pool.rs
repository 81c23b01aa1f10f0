//! Recycled byte buffers for large, short-lived bodies (the page slices a
//! migration sends, the buffer a capture writes a snapshot into).
//!
//! A fresh buffer of a few MiB costs a page fault per 4 KiB page on its
//! first write (~1.4 µs each on the test machines, more than the copy into
//! it), and glibc hands large freed buffers back to the kernel, so the next
//! one faults again. Buffers given back here keep their pages: the next
//! [`take`] of a size they fit reuses them, already faulted in.
//!
//! The pool is bounded: it keeps buffers of [`MIN_POOLED`] bytes or more,
//! at most [`POOL_BUDGET`] bytes of them in all. When a new one does not
//! fit, the buffers given back longest ago are dropped first: what was used
//! last is what is used next (a node's periodic checkpoint of one app, the
//! chunks of a migration in progress), and a large buffer is kept too, so
//! that a pool filled with small ones never turns every large request into
//! page faults. Of two buffers of about one size only the larger is kept:
//! it serves every request the other would (a capture asks for a little
//! more than the snapshot it writes, so a snapshot's exact-size bytes,
//! received or decoded, must not push out the buffer it was written in). A buffer is handed out
//! empty (`len() == 0`): its old bytes are never readable through it.

use std::sync::Mutex;

/// Buffers smaller than this are not kept (malloc reuses them well enough).
pub const MIN_POOLED: usize = 256 << 10;
/// Two buffers whose capacities differ by at most 1/`NEAR_SIZE` of the
/// larger are "about one size" (see [`give`]).
const NEAR_SIZE: usize = 8;
/// The most bytes of idle buffers the pool keeps.
pub const POOL_BUDGET: usize = 320 << 20;

struct Pool {
    /// In the order they were given back, the oldest first.
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
            let buf = p.bufs.remove(i);
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
    while p.bytes + cap > POOL_BUDGET {
        // A kept buffer of about this size: keep the larger of the two.
        let near = (0..p.bufs.len()).find(|&i| {
            let c = p.bufs[i].capacity();
            c.abs_diff(cap) <= c.max(cap) / NEAR_SIZE
        });
        let victim = match near {
            Some(i) if p.bufs[i].capacity() >= cap => return,
            Some(i) => i,
            // Otherwise the one given back longest ago.
            None => 0,
        };
        let old = p.bufs.remove(victim);
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

    /// The pool is one per process: its tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Empties the pool.
    fn drain() {
        let mut p = pool();
        p.bufs.clear();
        p.bytes = 0;
    }

    /// Of two buffers of about one size the larger stays, whichever came
    /// first.
    #[test]
    fn of_two_buffers_of_about_one_size_the_larger_stays() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let exact = 200 << 20;
        let roomy = exact + (1 << 20);
        for order in [[roomy, exact], [exact, roomy]] {
            drain();
            for cap in order {
                give(Vec::with_capacity(cap));
            }
            assert_eq!(idle_bytes(), roomy, "order {order:?}");
            let b = take(exact + (512 << 10));
            assert!(
                b.capacity() >= roomy,
                "order {order:?}: the roomy buffer was dropped"
            );
        }
        drain();
    }

    /// A pool full of small buffers still keeps a large one given back:
    /// the oldest make room, whatever their size.
    #[test]
    fn the_oldest_buffers_make_room_for_a_new_one() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        drain();
        let small = 16 << 20;
        for _ in 0..POOL_BUDGET / small {
            give(Vec::with_capacity(small));
        }
        assert_eq!(idle_bytes(), POOL_BUDGET);
        let large = 256 << 20;
        give(Vec::with_capacity(large));
        assert_eq!(idle_bytes(), large + (POOL_BUDGET - large) / small * small);
        let b = take(large);
        assert_eq!(
            idle_bytes(),
            (POOL_BUDGET - large) / small * small,
            "the large buffer comes from the pool"
        );
        // And a large kept buffer gives way in turn when a newer one
        // needs the room.
        give(b);
        give(Vec::with_capacity(100 << 20));
        assert_eq!(idle_bytes(), 100 << 20);
        drain();
    }

    #[test]
    fn buffers_come_back_empty_and_the_budget_holds() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        drain();
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
