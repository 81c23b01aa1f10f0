//! Dirty-page tracking for iterative pre-copy migration.
//!
//! A hot migration sends a guest's linear memory while the app keeps running,
//! then repeatedly sends only the 4 KiB pages written since the previous round.
//! A [`DirtyTracker`] answers "which pages changed since the last round?":
//!
//! - [`UffdTracker`]: userfaultfd write-protection in *async* mode plus the
//!   `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux >= 6.7). The kernel
//!   write-protects every accessible page (and pages made accessible later,
//!   when a collect first sees them); a guest's first write to a
//!   protected page is resolved by the kernel itself (no handler thread, no
//!   signal: about a microsecond) and leaves the page marked written. A
//!   `collect` asks the kernel for the written pages and re-protects exactly
//!   those in one ioctl, so a round costs O(written pages), not O(memory).
//! - [`HashTracker`]: the portable fallback. It keeps an xxh3-64 hash of every
//!   page and reports the pages whose hash changed: O(memory) per round
//!   (55-100 ms per GiB measured here in a release build), but it needs
//!   nothing from the kernel.
//!
//! [`start_tracking`] picks the best one available: uffd where it works, else
//! hashing (set `TERN_DIRTY_TRACKER=hash` to force hashing).
//!
//! # What is reported
//! | event since the last collect (or start)                 | `Uffd`  | `Hash`              |
//! |---------------------------------------------------------|---------|---------------------|
//! | page written, by the guest or by a syscall (`read(2)`)  | yes     | if its bytes differ |
//! | page written twice                                      | once    | once                |
//! | page written with the bytes it already held             | **yes** | no                  |
//! | page only read, or never touched                        | no      | no                  |
//! | page discarded (`MADV_DONTNEED`)                        | yes     | if it was non-zero  |
//! | page made accessible by growth (`mprotect`), written    | yes     | if non-zero         |
//! | page made accessible by growth, not written             | no      | no                  |
//!
//! So the uffd tracker reports a superset of the changed pages (the extra ones
//! are same-value writes and discarded zero pages, harmless to resend); the
//! hash tracker reports exactly the changed pages. Pages added by growth are reported only
//! if written: a page that became accessible and was not written is zero, so
//! the receiver must grow its copy to the sender's `size` with zero pages (as
//! `memory.grow` does) before applying a round.
//!
//! # Calling rules
//! - `collect` runs on the thread that runs the guest, between two guest calls
//!   (a safe point): nothing may write to the memory while it runs.
//! - The memory must stay mapped, at the same base, for as long as the tracker
//!   lives; drop the tracker before unmapping the memory.
//! - Only `mprotect` (growth) and `madvise(MADV_DONTNEED)` may change the
//!   tracked reservation while a tracker is armed. A discarded page (zeroed
//!   without a write) loses its write-protection, so the uffd tracker reports
//!   it (and the hash tracker does if it was not zero already). Replacing part
//!   of the reservation (`mmap(MAP_FIXED)`) or `mremap` is not supported: the
//!   new range is not registered, and the next uffd `collect` fails.
//! - An `Err` from `collect` leaves the tracker's state unknown (some pages may
//!   already have been re-protected): the caller must treat every page as
//!   dirty (send a full copy) and start a new tracker.
//! - Memories restored copy-on-write from a snapshot (file-backed
//!   `MAP_PRIVATE|MAP_FIXED` runs inside the reservation) are supported by the
//!   uffd tracker: async write-protection accepts any memory type, and a write
//!   to a file-backed private page (which copies it) is reported like any
//!   other. If the kernel refuses a range, `UffdTracker::start` fails and
//!   [`start_tracking`] falls back to hashing.
//!
//! The functions taking a base pointer trust it: `base` must be the start of
//! a live mapping whose first `size` bytes are readable (the hash tracker reads
//! them) and which stays mapped while the tracker is used.
//!
//! # Files
//! This file holds the [`DirtyTracker`] interface and [`start_tracking`];
//! `hash.rs` the hashing tracker; `uffd.rs` the userfaultfd tracker, and
//! `sys.rs` the raw kernel bindings (constants, structs, ioctls) it uses;
//! `tests.rs` the scenarios every tracker must pass.

mod hash;
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
pub(crate) mod sys;
mod uffd;

pub use hash::HashTracker;
pub use uffd::UffdTracker;

#[cfg(test)]
mod tests;

use std::io;

/// Tracking granularity: one page.
pub const PAGE: usize = 4096;

/// Environment variable that forces [`start_tracking`] to hash (`hash`).
pub const FORCE_TRACKER_ENV: &str = "TERN_DIRTY_TRACKER";

/// Which pages changed since the last `collect` (or since `start`).
pub trait DirtyTracker: Send {
    /// Sorted page indices (from the memory base) written since the last
    /// collect (or since start), each once; re-arms tracking.
    ///
    /// `size` is the memory's current accessible size in bytes; pages at or
    /// beyond it are ignored. Pages added by growth since the last collect are
    /// reported only if written (uffd) or non-zero (hash); see the module
    /// docs. On `Err`, treat every page as dirty and start a new tracker.
    fn collect(&mut self, base: *const u8, size: usize) -> io::Result<Vec<u64>>;
    /// Which mechanism this tracker uses.
    fn kind(&self) -> TrackerKind;
}

/// The mechanism behind a [`DirtyTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackerKind {
    /// userfaultfd async write-protect + `PAGEMAP_SCAN`.
    Uffd,
    /// xxh3-64 of every page.
    Hash,
}

/// The best tracker available: [`UffdTracker`] where the kernel supports it
/// for this memory, else [`HashTracker`] (silently; [`DirtyTracker::kind`]
/// says which). `TERN_DIRTY_TRACKER=hash` forces hashing.
pub fn start_tracking(base: *mut u8, reserved: usize, size: usize) -> Box<dyn DirtyTracker> {
    let force_hash = std::env::var_os(FORCE_TRACKER_ENV).is_some_and(|v| v == "hash");
    start_tracking_with(base, reserved, size, force_hash)
}

fn start_tracking_with(
    base: *mut u8,
    reserved: usize,
    size: usize,
    force_hash: bool,
) -> Box<dyn DirtyTracker> {
    if !force_hash {
        if let Ok(t) = UffdTracker::start(base, reserved, size) {
            return Box::new(t);
        }
    }
    Box::new(HashTracker::start(base, size))
}
