//! Linear memories owned by tern.
//!
//! The engine creates every linear memory through [`TernMemoryCreator`], so
//! tern knows where each memory lives and how it is mapped. That gives:
//! - **copy-on-write restore**: the raw runs of a snapshot file are mapped
//!   `MAP_PRIVATE|MAP_FIXED` over the fresh reservation, so a restore costs a
//!   few `mmap` calls whatever the memory size, and pages are read from the
//!   page cache (and copied) only when the guest touches them. Runs of fewer
//!   than [`MIN_MAPPED_RUN_PAGES`] pages are copied instead (a mapping costs
//!   more than copying a page or two), and so is every run beyond a
//!   process-wide budget of mappings: each mapping is a VMA, and a process
//!   gets at most `vm.max_map_count` of them (65530 by default), so a sparse
//!   memory must not be able to make a restore fail with `ENOMEM`;
//! - **residency**: an anonymous memory's untouched pages are known to be
//!   zero (`mincore`), so a capture does not even read them.
//!
//! A memory is one reservation (`PROT_NONE`) of its maximum reachable size
//! plus the guard region wasmtime asks for; the accessible prefix is made
//! readable and writable as the memory grows.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

use crate::snapshot::{Encoding, MappedFile, PAGE_SIZE};

/// A raw run of a snapshot file to map at a page offset of a memory.
#[derive(Clone)]
pub(crate) struct ImageMapping {
    pub file: Arc<MappedFile>,
    /// Runs: (first page in memory, pages, offset in the file).
    pub runs: Vec<(u64, u64, u64)>,
}

thread_local! {
    /// Images for the memories the next instantiation on this thread creates,
    /// in memory index order. Set by restore, consumed by the creator.
    static PENDING: RefCell<Vec<Option<ImageMapping>>> = const { RefCell::new(Vec::new()) };
    /// The account the memories of the next instantiation on this thread
    /// report their sizes to (one per store: see [`MemoryAccount`]).
    static PENDING_ACCOUNT: RefCell<Option<MemoryAccount>> = const { RefCell::new(None) };
    /// Bytes of resident memory (from [`crate::resident`]) to give the
    /// memories the next instantiation on this thread creates, in memory
    /// index order: the sizes a restore will grow them to.
    static PENDING_RESIDENT: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The bytes of linear memory one store's memories hold, all together: each
/// [`TernMemory`] adds what it is given and takes it back when dropped, so
/// the store's limiter can bound the app's total, not each memory.
#[derive(Clone, Default, Debug)]
pub(crate) struct MemoryAccount(Arc<AtomicU64>);

impl MemoryAccount {
    /// Bytes held now.
    pub(crate) fn bytes(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n as u64, Ordering::AcqRel);
    }
}

/// Makes the memories the next instantiation on this thread creates report
/// to `account` (until [`clear_pending_images`]).
pub(crate) fn set_pending_account(account: MemoryAccount) {
    PENDING_ACCOUNT.with(|p| *p.borrow_mut() = Some(account));
}

fn pending_account() -> Option<MemoryAccount> {
    PENDING_ACCOUNT.with(|p| p.borrow().clone())
}

/// Arms the next instantiation on this thread with images for its memories.
pub(crate) fn set_pending_images(images: Vec<Option<ImageMapping>>) {
    PENDING.with(|p| *p.borrow_mut() = images.into_iter().rev().collect());
}

/// Makes the memories the next instantiation on this thread creates take
/// `sizes[i]` bytes (memory `i`) from the resident stock, as far as it has
/// them (until [`clear_pending_images`]).
pub(crate) fn set_pending_resident(sizes: Vec<usize>) {
    PENDING_RESIDENT.with(|p| *p.borrow_mut() = sizes.into_iter().rev().collect());
}

fn take_pending_resident() -> usize {
    PENDING_RESIDENT.with(|p| p.borrow_mut().pop().unwrap_or(0))
}

/// Disarms (after an instantiation, whatever happened): no images, no
/// account, no resident memory.
pub(crate) fn clear_pending_images() {
    PENDING.with(|p| p.borrow_mut().clear());
    PENDING_RESIDENT.with(|p| p.borrow_mut().clear());
    PENDING_ACCOUNT.with(|p| p.borrow_mut().take());
}

fn take_pending_image() -> Option<ImageMapping> {
    PENDING.with(|p| p.borrow_mut().pop().flatten())
}

/// Builds the raw-run mapping list for a snapshot memory, if every run is raw
/// and the snapshot is backed by a file.
pub(crate) fn image_mapping(
    snap: &crate::snapshot::Snapshot,
    mem: &crate::snapshot::MemoryState,
) -> Option<ImageMapping> {
    let file = snap.mapped_file()?.clone();
    let mut runs = Vec::with_capacity(mem.runs.len());
    for r in &mem.runs {
        if r.encoding != Encoding::Raw {
            return None;
        }
        runs.push((
            r.first_page,
            r.pages,
            crate::snapshot::IMAGE_OFFSET + r.image_offset,
        ));
    }
    Some(ImageMapping { file, runs })
}

/// Runs shorter than this many pages are copied rather than mapped. On the
/// 2-core test machines an `mmap` of a run into the reservation cost ~5 µs
/// (~9 µs once the process has tens of thousands of VMAs), and copying a
/// 4 KiB page from the page cache into fresh memory 2.5–5 µs; a mapped page
/// the guest later writes pays a copy-on-write fault on top (~3 µs), and
/// every mapping is one more VMA.
pub(crate) const MIN_MAPPED_RUN_PAGES: u64 = 3;

/// Mappings of snapshot runs still available to this process: a quarter of
/// `vm.max_map_count` (each mapped run can split the reservation into up to
/// two more VMAs, which leaves half the limit to everything else).
fn mapping_budget() -> &'static std::sync::atomic::AtomicUsize {
    static BUDGET: std::sync::OnceLock<std::sync::atomic::AtomicUsize> = std::sync::OnceLock::new();
    BUDGET.get_or_init(|| {
        let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65530);
        std::sync::atomic::AtomicUsize::new(max / 4)
    })
}

/// Takes up to `want` mappings from the budget; returns how many were granted.
fn take_mappings(want: usize) -> usize {
    use std::sync::atomic::Ordering;
    let budget = mapping_budget();
    let mut left = budget.load(Ordering::Relaxed);
    loop {
        let granted = want.min(left);
        match budget.compare_exchange_weak(
            left,
            left - granted,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return granted,
            Err(now) => left = now,
        }
    }
}

fn give_back_mappings(n: usize) {
    if n > 0 {
        mapping_budget().fetch_add(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Creates [`TernMemory`]s for the engine.
pub struct TernMemoryCreator;

// SAFETY: memories are zero-filled (anonymous) or hold a snapshot image that
// the restore then completes; the reservation covers `reserved + guard`, and
// the base never moves.
unsafe impl MemoryCreator for TernMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let image = take_pending_image();
        let resident = take_pending_resident();
        TernMemory::new(
            minimum,
            maximum,
            reserved_size_in_bytes,
            guard_size_in_bytes,
            image,
        )
        .and_then(|mut m| {
            if resident > 0 && !m.has_image {
                m.take_resident(resident)?;
            }
            Ok(m)
        })
        .map(|m| Box::new(m) as Box<dyn LinearMemory>)
    }
}

/// One linear memory in a reservation of its own.
pub struct TernMemory {
    base: *mut u8,
    /// Bytes reserved for the memory itself (without the guard).
    reserved: usize,
    /// Whole mapping length (reserved + guard).
    mapping_len: usize,
    size: usize,
    maximum: Option<usize>,
    /// Whether any page comes from a file image (then residency says nothing).
    has_image: bool,
    /// Keeps the snapshot file mapped while its pages may still be read.
    image: Option<Arc<MappedFile>>,
    /// Runs of the image to copy rather than map: (offset in memory, length,
    /// offset in the file). Each is copied as it becomes accessible, and
    /// dropped once wholly copied.
    copies: Vec<(usize, usize, usize)>,
    /// Mappings taken from the process-wide budget (given back on drop).
    mapped_runs: usize,
    /// Where this memory's size counts towards its store's total.
    account: Option<MemoryAccount>,
    /// Growth below this offset takes resident pages from the stock.
    resident_up_to: usize,
}

// SAFETY: the memory is used by one store at a time; the raw pointer is only
// the base of a mapping this value owns.
unsafe impl Send for TernMemory {}
unsafe impl Sync for TernMemory {}

const DEFAULT_RESERVATION: usize = 4 << 30;

/// Every live tern memory by base address: its reserved length. Lets dirty
/// tracking cover the whole reservation, not only the current size.
static RESERVATIONS: std::sync::Mutex<std::collections::BTreeMap<usize, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The reserved length of the tern memory based at `base`, if it is one.
pub(crate) fn reservation_of(base: *const u8) -> Option<usize> {
    RESERVATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(base as usize))
        .copied()
}

impl TernMemory {
    fn new(
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
        image: Option<ImageMapping>,
    ) -> Result<TernMemory, String> {
        let page = PAGE_SIZE;
        let reserved =
            reserved.unwrap_or_else(|| maximum.unwrap_or(DEFAULT_RESERVATION).max(minimum));
        let reserved = reserved.div_ceil(page) * page;
        let mapping_len = reserved
            .checked_add(guard)
            .ok_or("memory reservation overflows")?;
        // SAFETY: a fresh anonymous reservation; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!(
                "cannot reserve {mapping_len} bytes for a linear memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut mem = TernMemory {
            base: base.cast(),
            reserved,
            mapping_len,
            size: 0,
            maximum,
            has_image: false,
            image: None,
            copies: Vec::new(),
            mapped_runs: 0,
            account: pending_account(),
            resident_up_to: 0,
        };
        if let Some(image) = image {
            use std::os::fd::AsRawFd;
            let fd = image.file.file().as_raw_fd();
            let file_len = image.file.as_slice().len();
            for (first, pages, file_off) in &image.runs {
                let fits = (*first as usize)
                    .checked_mul(page)
                    .zip((*pages as usize).checked_mul(page))
                    .is_some_and(|(off, len)| {
                        off.checked_add(len).is_some_and(|end| end <= reserved)
                            && (*file_off as usize)
                                .checked_add(len)
                                .is_some_and(|end| end <= file_len)
                    });
                if !fits {
                    return Err("snapshot image does not fit the memory reservation".into());
                }
            }
            // Map the largest runs of at least MIN_MAPPED_RUN_PAGES pages, as
            // many as the budget grants; copy the others.
            let mut by_size: Vec<usize> = (0..image.runs.len())
                .filter(|&i| image.runs[i].1 >= MIN_MAPPED_RUN_PAGES)
                .collect();
            by_size.sort_by_key(|&i| std::cmp::Reverse(image.runs[i].1));
            let granted = take_mappings(by_size.len());
            mem.mapped_runs = granted;
            let mut mapped = vec![false; image.runs.len()];
            for &i in &by_size[..granted] {
                mapped[i] = true;
            }
            for (i, (first, pages, file_off)) in image.runs.iter().enumerate() {
                let off = *first as usize * page;
                let len = *pages as usize * page;
                if !mapped[i] {
                    mem.copies.push((off, len, *file_off as usize));
                    continue;
                }
                // SAFETY: the range lies inside our reservation; MAP_FIXED
                // replaces our own PROT_NONE pages only.
                let p = unsafe {
                    libc::mmap(
                        mem.base.add(off).cast(),
                        len,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_FIXED,
                        fd,
                        *file_off as libc::off_t,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(format!(
                        "cannot map snapshot image: {}",
                        std::io::Error::last_os_error()
                    ));
                }
            }
            mem.has_image = true;
            mem.image = Some(image.file);
        }
        mem.set_accessible(minimum).map_err(|e| e.to_string())?;
        RESERVATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mem.base as usize, mem.reserved);
        Ok(mem)
    }

    /// Lets the memory take its pages from the resident stock
    /// ([`crate::resident`]) up to `want` bytes from its start, as it grows
    /// (the part already accessible too): those pages are then resident and
    /// zero before anyone touches them. Only for a fresh anonymous memory,
    /// whose accessible part is still untouched.
    fn take_resident(&mut self, want: usize) -> Result<(), String> {
        self.resident_up_to = want.min(self.byte_capacity());
        let accessible = self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if accessible > 0 {
            // SAFETY: the accessible part of our reservation holds nothing
            // yet (no image was mapped, and nothing wrote to it).
            unsafe { self.move_in_resident(0, accessible) };
        }
        Ok(())
    }

    /// Replaces what it can of `[start, end)` (page-aligned, in the
    /// reservation, below `resident_up_to`) with readable, writable,
    /// resident zero pages from the stock; returns where the replaced part
    /// ends (`start` if nothing was).
    ///
    /// # Safety
    /// Nothing in `[start, end)` may be in use: it is replaced.
    unsafe fn move_in_resident(&mut self, start: usize, end: usize) -> usize {
        let end = end.min(self.resident_up_to);
        if end <= start {
            return start;
        }
        // SAFETY: inside our reservation; the caller vouches it is unused.
        // (If the stock is short, the rest faults in as usual.)
        let got = unsafe { crate::resident::take_into(self.base.add(start), end - start) };
        start + got
    }

    fn set_accessible(&mut self, new_size: usize) -> std::io::Result<()> {
        if new_size > self.size {
            let accessible = self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let end = new_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            // Pages from the stock arrive readable and writable; what they
            // do not cover is opened up.
            // SAFETY: past the accessible size nothing is in use.
            let start = unsafe { self.move_in_resident(accessible, end) };
            // SAFETY: inside our reservation (checked by the caller).
            let rc = unsafe {
                libc::mprotect(
                    self.base.add(start).cast(),
                    end - start,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            self.copy_runs(self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE, end);
            if let Some(account) = &self.account {
                account.add(new_size - self.size);
            }
        }
        self.size = new_size;
        Ok(())
    }

    /// Copies the parts of the runs kept for copying that lie in the newly
    /// accessible range [lo, hi) (the parts below `lo` were copied before).
    fn copy_runs(&mut self, lo: usize, hi: usize) {
        let (Some(file), false) = (&self.image, self.copies.is_empty()) else {
            return;
        };
        let bytes = file.as_slice();
        let base = self.base;
        self.copies.retain(|&(off, len, file_off)| {
            let (a, b) = (off.max(lo), (off + len).min(hi));
            if a < b {
                let src = &bytes[file_off + (a - off)..file_off + (b - off)];
                // SAFETY: [a, b) lies inside the accessible (read-write) part
                // of our reservation, and `src` in the read-only file mapping:
                // they cannot overlap.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(a), src.len()) };
            }
            off + len > hi
        });
    }
}

/// A dropped memory's pages are freed this many bytes at a time.
const RELEASE_PIECE: usize = 8 << 20;

impl Drop for TernMemory {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            account.sub(self.size);
        }
        RESERVATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.base as usize));
        // The pages go first, a piece at a time: `MADV_DONTNEED` frees them
        // under the process's memory-map lock taken for reading, while a
        // `munmap` of resident pages holds it for writing as long as it
        // takes to free them (milliseconds for tens of MiB), and every
        // page fault of every other app of the node would wait for it.
        // The `munmap` then only drops an empty mapping.
        for at in (0..self.size).step_by(RELEASE_PIECE) {
            let len = RELEASE_PIECE.min(self.size - at);
            // SAFETY: we own this whole mapping; its pages are no longer
            // used by anyone (the memory is being dropped).
            unsafe { libc::madvise(self.base.add(at).cast(), len, libc::MADV_DONTNEED) };
        }
        // SAFETY: we own this whole mapping.
        unsafe { libc::munmap(self.base.cast(), self.mapping_len) };
        give_back_mappings(self.mapped_runs);
    }
}

// SAFETY: `as_ptr` is stable for the memory's life, `byte_size` bytes from it
// are readable and writable, and the guard after the reservation stays
// unmapped (PROT_NONE).
unsafe impl LinearMemory for TernMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.maximum.map_or(self.reserved, |m| m.min(self.reserved))
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.byte_capacity() {
            wasmtime::bail!(
                "memory cannot grow to {new_size} bytes (reserved {})",
                self.byte_capacity()
            );
        }
        self.set_accessible(new_size).map_err(wasmtime::Error::from)
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base
    }
}

/// Residency of `len` bytes at `base`: one byte per 4 KiB page, bit 0 set if
/// the page was ever touched. `None` if the kernel will not say.
///
/// Only meaningful for anonymous memory: a page never touched is zero.
pub(crate) fn residency(base: *const u8, len: usize) -> Option<Vec<u8>> {
    if len == 0 || !(base as usize).is_multiple_of(PAGE_SIZE) {
        return None;
    }
    let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: the range is mapped (it is the accessible part of a memory).
    let rc = unsafe { libc::mincore(base as *mut _, len, vec.as_mut_ptr()) };
    (rc == 0).then_some(vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, so that no other test of this module holds the mapping
    /// budget while it is emptied on purpose.
    #[test]
    fn image_runs_are_mapped_or_copied_with_the_same_contents() {
        const P: usize = PAGE_SIZE;
        // A "snapshot file": a 4 KiB header page, then 24 pages of image.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes: Vec<u8> = (0..25 * P)
            .map(|i| ((i / P) as u8).wrapping_mul(7) ^ (i % 251) as u8 | 1)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = Arc::new(MappedFile::open(&path).unwrap());
        // (first page in memory, pages, file offset): single pages, 2-page
        // runs (one straddling the initial size of 16 pages), longer runs.
        let runs: Vec<(u64, u64, u64)> = vec![
            (0, 1, P as u64),
            (3, 2, 2 * P as u64),
            (6, 8, 4 * P as u64),
            (15, 2, 12 * P as u64),
            (20, 3, 14 * P as u64),
            (30, 1, 17 * P as u64),
            (40, 6, 18 * P as u64),
        ];
        let expect = |mem: &TernMemory| {
            // SAFETY: the whole accessible size is readable.
            let data = unsafe { std::slice::from_raw_parts(mem.base, mem.size) };
            let mut want = vec![0u8; mem.size];
            for &(first, pages, off) in &runs {
                let (a, len) = (first as usize * P, pages as usize * P);
                let end = (a + len).min(mem.size);
                if a < end {
                    want[a..end].copy_from_slice(&bytes[off as usize..off as usize + (end - a)]);
                }
            }
            assert!(data == &want[..], "memory differs from the image");
        };
        let long_runs = runs.iter().filter(|r| r.1 >= MIN_MAPPED_RUN_PAGES).count();
        for starve in [false, true] {
            // With the budget emptied, every run is copied.
            let held = if starve { take_mappings(usize::MAX) } else { 0 };
            let image = ImageMapping {
                file: file.clone(),
                runs: runs.clone(),
            };
            let mut mem = TernMemory::new(16 * P, None, Some(1 << 20), 0, Some(image)).unwrap();
            assert_eq!(mem.mapped_runs, if starve { 0 } else { long_runs });
            expect(&mem);
            mem.grow_to(32 * P).unwrap();
            expect(&mem);
            mem.grow_to(64 * P).unwrap();
            expect(&mem);
            assert!(
                mem.copies.is_empty(),
                "every copied run is done once accessible"
            );
            drop(mem);
            give_back_mappings(held);
        }
    }

    /// Protections of the page at `addr`, as /proc/self/maps says ("rw-p").
    fn protection_at(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let (range, rest) = line.split_once(' ').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            if (a..b).contains(&addr) {
                return rest[..4].to_string();
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    /// The resident stock (the only test that sets its bound): it never
    /// holds more than its bound; a memory given its pages reads zero,
    /// even where an earlier memory that had stock pages wrote; what lies
    /// past the memory's size stays inaccessible until it grows; the
    /// pages are resident before the memory is touched; and a `Busy` guard
    /// defers the refill.
    #[test]
    fn resident_stock_is_bounded_zeroed_and_private() {
        use crate::resident;
        const MIB: usize = 1 << 20;
        let budget = 24 * MIB as u64;
        resident::set_bound(budget);
        assert!(resident::wait_full(std::time::Duration::from_secs(30)));
        let (ready, filling) = resident::held();
        assert_eq!((ready, filling), (budget, 0));
        let mut bases = Vec::new();
        for round in 0..4u8 {
            assert!(resident::wait_full(std::time::Duration::from_secs(30)));
            set_pending_resident(vec![16 * MIB]);
            let resident = take_pending_resident();
            clear_pending_images();
            let mut mem = TernMemory::new(4 * MIB, None, Some(64 * MIB), 0, None).unwrap();
            mem.take_resident(resident).unwrap();
            let resident_pages = |mem: &TernMemory| {
                let r = residency(mem.base, 20 * MIB).unwrap();
                r.iter().filter(|&&b| b & 1 == 1).count() * PAGE_SIZE
            };
            // The accessible 4 MiB are resident before any touch; past
            // them, nothing is, and nothing is accessible.
            assert_eq!(resident_pages(&mem), 4 * MIB, "round {round}");
            assert_eq!(protection_at(mem.base as usize), "rw-p");
            assert_eq!(protection_at(mem.base as usize + 4 * MIB - 1), "rw-p");
            assert_eq!(protection_at(mem.base as usize + 4 * MIB), "---p");
            // Growing takes resident pages up to the 16 MiB asked for.
            mem.grow_to(16 * MIB).unwrap();
            assert_eq!(resident_pages(&mem), 16 * MIB, "round {round}");
            assert_eq!(protection_at(mem.base as usize + 16 * MIB - 1), "rw-p");
            assert_eq!(protection_at(mem.base as usize + 16 * MIB), "---p");
            let (ready, filling) = resident::held();
            assert!(ready + filling <= budget, "the stock exceeds its bound");
            // SAFETY: 16 MiB are accessible now.
            let data = unsafe { std::slice::from_raw_parts_mut(mem.base, 16 * MIB) };
            assert!(data.iter().all(|&b| b == 0), "round {round}: not zero");
            // Write what the next round's memory must not see.
            data.fill(0xa5 ^ round);
            bases.push(mem.base as usize);
            drop(mem);
        }
        // Lowering the bound gives memory back at once; 0 empties it.
        resident::set_bound(8 * MIB as u64);
        let (ready, _) = resident::held();
        assert!(ready <= 8 * MIB as u64);
        assert!(resident::wait_full(std::time::Duration::from_secs(30)));
        let (ready, filling) = resident::held();
        assert!(ready + filling <= 8 * MIB as u64, "{ready} + {filling}");
        // While a `Busy` guard lives, what a memory took is not made
        // again (the refill would compete with the work that holds it);
        // once it goes, it is. A guard that stays defers it for at most
        // `MAX_DEFER`.
        let busy = resident::busy();
        let mut mem = TernMemory::new(4 * MIB, None, Some(8 * MIB), 0, None).unwrap();
        mem.take_resident(4 * MIB).unwrap();
        assert_eq!(resident::held(), (4 * MIB as u64, 0));
        std::thread::sleep(resident::MAX_DEFER / 5);
        assert_eq!(resident::held(), (4 * MIB as u64, 0), "refilled while busy");
        drop(busy);
        assert!(resident::wait_full(std::time::Duration::from_secs(30)));
        let _busy = resident::busy();
        let mut again = TernMemory::new(4 * MIB, None, Some(8 * MIB), 0, None).unwrap();
        again.take_resident(4 * MIB).unwrap();
        assert!(resident::held().0 < 8 * MIB as u64);
        assert!(resident::wait_full(std::time::Duration::from_secs(30)));
        drop((mem, again));
        resident::set_bound(0);
        assert_eq!(resident::held().0, 0);
        // With an empty stock a memory is made as before.
        let mut mem = TernMemory::new(MIB, None, Some(8 * MIB), 0, None).unwrap();
        mem.take_resident(4 * MIB).unwrap();
        assert_eq!(protection_at(mem.base as usize + MIB), "---p");
        mem.grow_to(4 * MIB).unwrap();
        // SAFETY: 4 MiB are accessible.
        let data = unsafe { std::slice::from_raw_parts(mem.base, 4 * MIB) };
        assert!(data.iter().all(|&b| b == 0));
    }
}
