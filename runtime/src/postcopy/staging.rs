//! Pushed pages, received without a page allocation on the way.
//!
//! A push carries a few MiB of pages the target lacks. Placed with
//! `UFFDIO_COPY`, each page is allocated (and charged, and mapped) by the
//! kernel as it is copied: on the test machines that costs as much as the
//! bytes' trip over loopback. Instead a push is received as a page slice
//! (`snapshot::PageStream`: checked and copied in one pass as its bytes
//! come) into a *staging* mapping whose pages are already resident — taken
//! from the node's stock (`crate::resident`) — and once the whole slice
//! checks out, its pages still missing in the memory are *moved* there with
//! `UFFDIO_MOVE` (Linux 6.8): page-table entries change hands, no byte is
//! copied again. A range over two mappings (at either end) is moved in
//! parts. Where the kernel cannot move (older kernels, a page already
//! present) the pages are copied from the staging mapping as before. The pager counts both
//! ([`Pager::pages_moved`](super::Pager::pages_moved),
//! [`Pager::pages_copied`](super::Pager::pages_copied)) and the move's
//! report carries them, so a fall-back to copying shows.
//!
//! Pages leave the staging mapping as they move, so its bytes are never
//! borrowed whole while they do: a placement reads them through
//! [`Packed`], a run at a time, only the pages still there.
//!
//! Nothing reaches the memory before the slice's sum is checked: a push cut
//! short or corrupt is dropped with its staging mapping, and its pages stay
//! missing (the source sends them again, or the target fetches them).

use crate::snapshot::{PageSink, PageStream, SnapshotError, PAGE_SIZE};

/// A private anonymous mapping holding a push's pages, packed (page `k` of
/// the push at `k` pages in); unmapped when dropped.
pub(crate) struct Staging {
    base: usize,
    len: usize,
}

impl Staging {
    /// Room for `pages` pages, resident from the stock as far as it goes
    /// (the rest fault in as they are written).
    fn new(pages: usize) -> Result<Staging, String> {
        let len = pages
            .checked_mul(PAGE_SIZE)
            .filter(|&l| l > 0)
            .ok_or_else(|| format!("a push of {pages} pages cannot be staged"))?;
        let base = crate::resident::fresh_mapping(len)
            .map_err(|e| format!("cannot map {len} bytes to receive pages: {e}"))?;
        // SAFETY: `[base, base + len)` is the mapping made above, which
        // holds nothing yet.
        unsafe { crate::resident::take_into(base as *mut u8, len) };
        Ok(Staging { base, len })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: our own read-write mapping of `len` bytes, borrowed
        // mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len) }
    }

    /// The staged bytes, as a view that borrows only the pages about to be
    /// copied: pages leave the mapping as they are moved out, so no slice
    /// may span the whole of it while they do.
    pub(crate) fn packed(&self) -> Packed<'_> {
        Packed {
            ptr: self.base as *const u8,
            len: self.len,
            _of: std::marker::PhantomData,
        }
    }
}

/// Packed page bytes a placement reads from: a plain slice, or a staging
/// mapping whose pages may be moved out (the kernel changes them under
/// it) while it is read. Bytes are borrowed a run at a time
/// ([`Packed::get`]), only for pages still there.
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a> {
    ptr: *const u8,
    len: usize,
    _of: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Packed<'a> {
    pub(crate) fn of(bytes: &'a [u8]) -> Packed<'a> {
        Packed {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
            _of: std::marker::PhantomData,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The bytes `[offset, offset + len)`.
    ///
    /// # Safety
    /// None of these bytes may have been moved out, nor be moved out while
    /// the slice lives.
    pub(crate) unsafe fn get(&self, offset: usize, len: usize) -> &'a [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (checked above) of memory borrowed for `'a`;
        // unchanged while the slice lives (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }
    }
}

// SAFETY: the mapping is owned by the `Staging` alone (no aliasing
// pointers are kept), so it may move between threads.
unsafe impl Send for Staging {}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// A push being received: feed it the body's bytes as they come, then
/// [`PushReceiver::finish`] and hand the result to
/// [`Pager::place_staged`](super::Pager::place_staged).
pub struct PushReceiver {
    stream: PageStream,
    staging: Option<Staging>,
}

/// A push whose sum checked out, staged and ready to be placed.
pub struct StagedPush {
    pub(crate) memory: u32,
    pub(crate) pages: Vec<u64>,
    pub(crate) staging: Staging,
}

impl StagedPush {
    /// How many pages it holds.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }
}

struct Sink<'a>(&'a mut Option<Staging>);

impl PageSink for Sink<'_> {
    fn prepare(&mut self, _memory: u32, _byte_size: u64, pages: usize) -> Result<(), String> {
        *self.0 = Some(Staging::new(pages)?);
        Ok(())
    }

    fn memory(&mut self, _memory: u32) -> &mut [u8] {
        match self.0 {
            Some(s) => s.bytes_mut(),
            None => &mut [],
        }
    }

    fn packed(&self) -> bool {
        true
    }
}

impl PushReceiver {
    /// A receiver that refuses a push of more than `limit` bytes.
    pub fn new(limit: u64) -> PushReceiver {
        PushReceiver {
            stream: PageStream::new(limit),
            staging: None,
        }
    }

    /// Takes the next bytes of the push.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.stream.feed(bytes, &mut Sink(&mut self.staging))
    }

    /// Checks that the whole push came and its sum matches.
    pub fn finish(self) -> Result<StagedPush, SnapshotError> {
        let (memory, pages) = self
            .stream
            .listed()
            .map(|(m, p)| (m, p.to_vec()))
            .unwrap_or_default();
        self.stream.finish()?;
        let staging = self
            .staging
            .ok_or_else(|| SnapshotError::corrupt("a push without pages"))?;
        Ok(StagedPush {
            memory,
            pages,
            staging,
        })
    }
}
