//! Linear memories owned by tern.
//!
//! The engine creates every linear memory through [`TernMemoryCreator`], so
//! tern knows where each memory lives and how it is mapped. That gives:
//! - **copy-on-write restore**: the raw runs of a snapshot file are mapped
//!   `MAP_PRIVATE|MAP_FIXED` over the fresh reservation, so a restore costs a
//!   few `mmap` calls whatever the memory size, and pages are read from the
//!   page cache (and copied) only when the guest touches them;
//! - **residency**: an anonymous memory's untouched pages are known to be
//!   zero (`mincore`), so a capture does not even read them.
//!
//! A memory is one reservation (`PROT_NONE`) of its maximum reachable size
//! plus the guard region wasmtime asks for; the accessible prefix is made
//! readable and writable as the memory grows.

use std::cell::RefCell;
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
}

/// Arms the next instantiation on this thread with images for its memories.
pub(crate) fn set_pending_images(images: Vec<Option<ImageMapping>>) {
    PENDING.with(|p| *p.borrow_mut() = images.into_iter().rev().collect());
}

/// Disarms (after an instantiation, whatever happened).
pub(crate) fn clear_pending_images() {
    PENDING.with(|p| p.borrow_mut().clear());
}

fn take_pending_image() -> Option<ImageMapping> {
    PENDING.with(|p| p.borrow_mut().pop().flatten())
}

/// Builds the raw-run mapping list for a snapshot memory, if every run is raw
/// and the snapshot is backed by a file.
pub(crate) fn image_mapping(snap: &crate::snapshot::Snapshot, mem: &crate::snapshot::MemoryState) -> Option<ImageMapping> {
    let file = snap.mapped_file()?.clone();
    let mut runs = Vec::with_capacity(mem.runs.len());
    for r in &mem.runs {
        if r.encoding != Encoding::Raw {
            return None;
        }
        runs.push((r.first_page, r.pages, crate::snapshot::IMAGE_OFFSET + r.image_offset));
    }
    Some(ImageMapping { file, runs })
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
        TernMemory::new(minimum, maximum, reserved_size_in_bytes, guard_size_in_bytes, image)
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
    _image: Option<Arc<MappedFile>>,
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
    RESERVATIONS.lock().unwrap_or_else(|e| e.into_inner()).get(&(base as usize)).copied()
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
        let reserved = reserved.unwrap_or_else(|| maximum.unwrap_or(DEFAULT_RESERVATION).max(minimum));
        let reserved = reserved.div_ceil(page) * page;
        let mapping_len = reserved.checked_add(guard).ok_or("memory reservation overflows")?;
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
            return Err(format!("cannot reserve {mapping_len} bytes for a linear memory: {}", std::io::Error::last_os_error()));
        }
        let mut mem = TernMemory {
            base: base.cast(),
            reserved,
            mapping_len,
            size: 0,
            maximum,
            has_image: false,
            _image: None,
        };
        if let Some(image) = image {
            use std::os::fd::AsRawFd;
            let fd = image.file.file().as_raw_fd();
            for (first, pages, file_off) in &image.runs {
                let off = *first as usize * page;
                let len = *pages as usize * page;
                if off.checked_add(len).is_none_or(|end| end > reserved) {
                    return Err("snapshot image does not fit the memory reservation".into());
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
                    return Err(format!("cannot map snapshot image: {}", std::io::Error::last_os_error()));
                }
            }
            mem.has_image = true;
            mem._image = Some(image.file);
        }
        mem.set_accessible(minimum).map_err(|e| e.to_string())?;
        RESERVATIONS.lock().unwrap_or_else(|e| e.into_inner()).insert(mem.base as usize, mem.reserved);
        Ok(mem)
    }

    fn set_accessible(&mut self, new_size: usize) -> std::io::Result<()> {
        if new_size > self.size {
            let start = self.size / PAGE_SIZE * PAGE_SIZE;
            let end = new_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            // SAFETY: inside our reservation (checked by the caller).
            let rc = unsafe { libc::mprotect(self.base.add(start).cast(), end - start, libc::PROT_READ | libc::PROT_WRITE) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        self.size = new_size;
        Ok(())
    }
}

impl Drop for TernMemory {
    fn drop(&mut self) {
        RESERVATIONS.lock().unwrap_or_else(|e| e.into_inner()).remove(&(self.base as usize));
        // SAFETY: we own this whole mapping.
        unsafe { libc::munmap(self.base.cast(), self.mapping_len) };
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
            wasmtime::bail!("memory cannot grow to {new_size} bytes (reserved {})", self.byte_capacity());
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
    if len == 0 || (base as usize) % PAGE_SIZE != 0 {
        return None;
    }
    let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: the range is mapped (it is the accessible part of a memory).
    let rc = unsafe { libc::mincore(base as *mut _, len, vec.as_mut_ptr()) };
    (rc == 0).then_some(vec)
}
