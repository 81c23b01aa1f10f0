//! A stock of resident, zeroed memory for linear memories.
//!
//! A fresh linear memory costs a page fault per 4 KiB page on first touch
//! (~1.3 µs on the test machines: ~27 ms for 64 MiB), which is about as long
//! as moving the same bytes over loopback. So a migration's target, which
//! writes every page of the memory it receives, would spend as much time
//! faulting as receiving. The stock takes that cost off the critical path:
//! a background thread maps anonymous memory and faults it in
//! (`MADV_POPULATE_WRITE`) while the node is idle, up to a bound in bytes;
//! a memory created for a restore takes what it needs from the stock with
//! `mremap`, which moves the pages (page-table entries, not bytes) into the
//! memory's reservation, and the thread makes more.
//!
//! "While the node is idle" is the point: faulting tens of MiB in takes
//! tens of milliseconds of CPU and memory bandwidth, and a refill that
//! starts the moment a migration's target takes its pages competes with
//! that same migration for them (on two cores it made moves a fifth
//! slower). So while anyone holds a [`Busy`] guard (the node holds one for
//! every migration arriving or leaving) the stock is not refilled, for at
//! most [`MAX_DEFER`] at a stretch, so that a node always busy moving
//! still gets a piece of stock a second.
//!
//! What the stock holds was never given to anyone: every page comes fresh
//! from the kernel (zeroed by it) and is faulted in by the thread, and a
//! page taken from the stock belongs to that memory until the memory is
//! unmapped. Nothing is ever given back, so one app's bytes cannot reach
//! another app through the stock. The stock is process-wide (every
//! `Runtime` of the process shares it) and holds at most [`bound`] bytes;
//! the bound is 0 (no stock, no thread) until [`set_bound`] raises it.

use std::sync::{Condvar, Mutex, MutexGuard};

const PAGE: usize = 4096;

/// The stock is made in pieces of at most this many bytes (2 MiB-aligned
/// lengths, so that `mremap` can move whole page tables).
const PIECE: usize = 32 << 20;

/// Takes smaller than this are not worth a `mremap`: faulting a few pages
/// costs less than moving them.
pub const MIN_TAKE: usize = 1 << 20;

/// One piece of stock: an anonymous mapping, every page resident and zero.
struct Piece {
    base: usize,
    len: usize,
}

/// The longest a refill waits for the [`Busy`] guards to go.
pub const MAX_DEFER: std::time::Duration = std::time::Duration::from_secs(1);

struct Stock {
    bound: usize,
    /// [`Busy`] guards alive.
    busy: usize,
    /// Pieces ready to be taken (each a whole mapping of its own).
    ready: Vec<Piece>,
    /// Bytes in `ready`.
    ready_bytes: usize,
    /// Bytes the thread is faulting in now (counted against the bound).
    filling: usize,
    thread_started: bool,
}

static STOCK: Mutex<Stock> = Mutex::new(Stock {
    bound: 0,
    busy: 0,
    ready: Vec::new(),
    ready_bytes: 0,
    filling: 0,
    thread_started: false,
});
static WAKE: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Stock> {
    STOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the most bytes the stock may hold (rounded down to whole pages; 0
/// empties it and stops making more). Process-wide: the last call wins.
/// Memory above a lowered bound is unmapped at once.
pub fn set_bound(bytes: u64) {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX) / PAGE * PAGE;
    let mut s = lock();
    s.bound = bytes;
    while s.ready_bytes + s.filling > s.bound {
        let Some(p) = s.ready.pop() else { break };
        s.ready_bytes -= p.len;
        unmap(p.base, p.len);
    }
    if s.bound > 0 && !s.thread_started {
        let started = std::thread::Builder::new()
            .name("tern-resident".into())
            .spawn(fill_loop)
            .is_ok();
        s.thread_started = started;
    }
    WAKE.notify_all();
}

/// The most bytes the stock may hold.
pub fn bound() -> u64 {
    lock().bound as u64
}

/// Bytes resident in the stock now (ready to be taken) and being made.
pub fn held() -> (u64, u64) {
    let s = lock();
    (s.ready_bytes as u64, s.filling as u64)
}

/// Defers the stock's refill while alive (see the module docs): work
/// that the refill's page faults would slow down holds one.
#[must_use = "the refill is deferred only while the guard lives"]
pub struct Busy(());

/// A guard that defers the refill until it is dropped (or [`MAX_DEFER`]
/// passes).
pub fn busy() -> Busy {
    lock().busy += 1;
    Busy(())
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = lock();
        s.busy -= 1;
        if s.busy == 0 {
            WAKE.notify_all();
        }
    }
}

/// Waits until the stock is full (or `timeout` passes); whether it is.
pub fn wait_full(timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut s = lock();
    loop {
        if s.ready_bytes >= s.bound {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        s = WAKE
            .wait_timeout(s, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Moves up to `want` bytes of stock (whole pages) to `dst`, which must be
/// the start of a page-aligned range of at least `want` bytes that the
/// caller owns and may replace (an inaccessible part of its reservation).
/// Returns how many bytes were moved: `[dst, dst + n)` is then readable,
/// writable, resident and zero; the rest is untouched.
///
/// # Safety
/// `[dst, dst + want)` must be a mapping the caller owns, with nothing in
/// it that anyone still uses (it is replaced).
pub(crate) unsafe fn take_into(dst: *mut u8, want: usize) -> usize {
    let want = want / PAGE * PAGE;
    if want < MIN_TAKE || !(dst as usize).is_multiple_of(PAGE) {
        return 0;
    }
    let mut moved = 0;
    let mut s = lock();
    while moved < want {
        let Some(mut p) = s.ready.pop() else { break };
        let n = (want - moved).min(p.len);
        // The piece's tail goes; what is left of it stays in the stock.
        let src = p.base + p.len - n;
        // SAFETY: `src` is the tail of a stock mapping (owned here, never
        // handed out), `dst + moved` lies in the caller's range.
        let rc = unsafe {
            libc::mremap(
                src as *mut libc::c_void,
                n,
                n,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dst.add(moved).cast::<libc::c_void>(),
            )
        };
        if rc == libc::MAP_FAILED {
            // The piece is unchanged on failure: keep it and stop here
            // (the caller faults the rest as usual).
            s.ready.push(p);
            break;
        }
        s.ready_bytes -= n;
        moved += n;
        p.len -= n;
        if p.len > 0 {
            s.ready.push(p);
        }
    }
    if moved > 0 {
        WAKE.notify_all();
    }
    moved
}

fn unmap(base: usize, len: usize) {
    // SAFETY: a stock mapping, owned by the stock and handed to no one.
    unsafe { libc::munmap(base as *mut libc::c_void, len) };
}

/// A fresh private anonymous read-write mapping of `len` bytes, in 4 KiB
/// pages only (dirty tracking, copy-on-write and `UFFDIO_MOVE` work by
/// 4 KiB page; a huge page would be split first). Its address.
pub(crate) fn fresh_mapping(len: usize) -> std::io::Result<usize> {
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    Ok(base as usize)
}

/// A fresh anonymous mapping of `len` bytes with every page faulted in.
fn make_piece(len: usize) -> Option<Piece> {
    let base = fresh_mapping(len).ok()? as *mut libc::c_void;
    // SAFETY: advice on the fresh mapping just made, ours alone.
    let populated = unsafe { libc::madvise(base, len, libc::MADV_POPULATE_WRITE) } == 0;
    if !populated {
        // Older kernels: touch each page (a write of zero to zeroed memory).
        for off in (0..len).step_by(PAGE) {
            // SAFETY: inside our own read-write mapping.
            unsafe { std::ptr::write_volatile(base.cast::<u8>().add(off), 0) };
        }
    }
    Some(Piece {
        base: base as usize,
        len,
    })
}

/// The thread that keeps the stock full.
fn fill_loop() {
    let mut s = lock();
    // Since when a refill has waited for the `Busy` guards.
    let mut deferred_since = None;
    loop {
        let room = s.bound.saturating_sub(s.ready_bytes + s.filling);
        let len = room.min(PIECE) / PAGE * PAGE;
        if len == 0 {
            deferred_since = None;
            s = WAKE.wait(s).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        if s.busy > 0 {
            let since = *deferred_since.get_or_insert_with(std::time::Instant::now);
            let left = MAX_DEFER.saturating_sub(since.elapsed());
            if !left.is_zero() {
                s = WAKE
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
        }
        deferred_since = None;
        s.filling += len;
        drop(s);
        let piece = make_piece(len);
        s = lock();
        s.filling -= len;
        match piece {
            // The bound may have been lowered meanwhile.
            Some(p) if s.ready_bytes + s.filling + p.len <= s.bound => {
                s.ready_bytes += p.len;
                s.ready.push(p);
                WAKE.notify_all();
            }
            Some(p) => unmap(p.base, p.len),
            None => {
                // Out of memory for now: try again later, not in a loop.
                drop(s);
                std::thread::sleep(std::time::Duration::from_millis(500));
                s = lock();
            }
        }
    }
}
