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
//! copied again. Where the kernel cannot move (older kernels, a range over
//! two mappings, a page already present) the pages are copied from the
//! staging mapping as before.
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

    pub(crate) fn addr(&self) -> u64 {
        self.base as u64
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: our own read-write mapping of `len` bytes, borrowed
        // mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len) }
    }

    /// The staged bytes. Pages moved out of the mapping read as zero.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len) }
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
