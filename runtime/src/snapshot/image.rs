//! Capturing a linear memory into page runs: zero pages skipped, runs
//! 4096-aligned so that raw ones can be mapped copy-on-write.
//!
//! The capture is on the critical path (the app is paused), so the raw path
//! reads every stored page once: each run is copied into the image and fed
//! to the image's hash in the same pass (`image_hash.rs`: from the same
//! registers where the CPU has AVX2; chunk by chunk, while in cache,
//! elsewhere). Format 1 also kept an xxh3-64 per page; format 2 does not
//! (see `mod.rs`). A large image buffer asks the kernel
//! for huge pages, since filling fresh memory costs more in page faults
//! (~1.4 µs per 4 KiB page) than in copying. (Splitting the copy over two
//! threads was measured too: no gain on 2 shared cores once faults are
//! cheap; nor did hashing on the second core while the first copied.)

use std::mem::MaybeUninit;

use super::image_hash::{image_hash, ImageHash};
use super::{Encoding, MemoryState, Run};

/// The granularity of memory capture, dirty tracking and copy-on-write restore.
pub const PAGE_SIZE: usize = 4096;

/// Zero gaps up to this many pages between two non-zero pages are stored
/// inside one run, so that a fragmented heap does not become thousands of
/// tiny runs (and thousands of mappings on a copy-on-write restore).
const MAX_GAP_PAGES: u64 = 4;

/// Images at least this large are written with non-temporal stores: they
/// would not stay in cache (L2 is 1 MiB a core here), and a store that
/// does not first read the line it writes saves a third of the traffic.
const STREAM_MIN_BYTES: usize = 8 << 20;

/// Image buffers at least this large are backed by huge pages if the kernel
/// allows it (`MADV_HUGEPAGE`): ~3× fewer page-fault cycles per byte.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// A memory captured into image bytes (offsets relative to `image`).
pub struct MemoryCapture {
    pub state: MemoryState,
    pub image: Vec<u8>,
}

#[inline]
pub(crate) fn is_zero_page(page: &[u8]) -> bool {
    // Most non-zero pages differ from zero early: check a short prefix first.
    if page[..64].iter().any(|&b| b != 0) {
        return false;
    }
    // SAFETY: u128 has no invalid bit patterns.
    let (pre, mid, post) = unsafe { page.align_to::<u128>() };
    pre.iter().all(|&b| b == 0)
        && post.iter().all(|&b| b == 0)
        && mid.iter().fold(0u128, |a, &x| a | x) == 0
}

/// Finds the runs of pages to store: (first page, end page).
fn find_spans(mem: &[u8], resident: Option<&[u8]>) -> Vec<(u64, u64)> {
    let n_pages = (mem.len() / PAGE_SIZE) as u64;
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for p in 0..n_pages {
        if let Some(r) = resident {
            if r.get(p as usize).is_some_and(|&b| b & 1 == 0) {
                continue;
            }
        }
        let page = &mem[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE];
        if is_zero_page(page) {
            continue;
        }
        match spans.last_mut() {
            Some((_, end)) if p - *end <= MAX_GAP_PAGES => *end = p + 1,
            _ => spans.push((p, p + 1)),
        }
    }
    spans
}

/// Captures one memory. `resident`, when given, has one byte per page (bit 0
/// set = the page was ever touched, as `mincore` reports for anonymous
/// memory); pages not resident are zero and are not even read.
pub fn capture_memory(
    index: u32,
    mem: &[u8],
    resident: Option<&[u8]>,
    compress: bool,
) -> MemoryCapture {
    let mut w = ImageWriter::new(0, false);
    let state = w.capture(index, mem, resident, compress);
    MemoryCapture {
        state,
        image: w.out,
    }
}

/// Memory images written straight into the buffer a snapshot is encoded
/// in: `lead` bytes of room for what precedes the image (the header), then
/// each memory's image back to back, with the whole image's xxh3-128
/// computed as the bytes are written (while they are in cache), so that
/// encoding the snapshot neither copies nor reads the image again.
pub(crate) struct ImageWriter {
    pub(crate) out: Vec<u8>,
    lead: usize,
    hasher: Option<ImageHash>,
    /// Bytes that will follow the image (the body), reserved up front so
    /// that appending them never moves the image.
    pub(crate) tail: usize,
    /// Grow into a buffer from [`tern_util::pool`] (a snapshot's buffer,
    /// which goes back there when the snapshot drops).
    pub(crate) pooled: bool,
}

impl ImageWriter {
    /// `hash`: keep the image's running xxh3-128.
    pub(crate) fn new(lead: usize, hash: bool) -> ImageWriter {
        ImageWriter {
            out: vec![0; lead],
            lead,
            hasher: hash.then(ImageHash::new),
            tail: 0,
            pooled: false,
        }
    }

    /// The image's length so far.
    pub(crate) fn image_len(&self) -> u64 {
        (self.out.len() - self.lead) as u64
    }

    /// The buffer and the xxh3-128 of the image in it.
    pub(crate) fn finish(self) -> (Vec<u8>, u128) {
        let hash = self
            .hasher
            .and_then(|h| h.digest())
            .unwrap_or_else(|| image_hash(&self.out[self.lead..]));
        (self.out, hash)
    }

    /// Appends `bytes` (an image made elsewhere) and hashes them.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
    }

    /// Captures one memory (see [`capture_memory`]) into the image. The
    /// runs' offsets are relative to the image's start.
    pub(crate) fn capture(
        &mut self,
        index: u32,
        mem: &[u8],
        resident: Option<&[u8]>,
        compress: bool,
    ) -> MemoryState {
        assert!(
            mem.len().is_multiple_of(PAGE_SIZE),
            "memory size must be a multiple of 4 KiB"
        );
        let base = self.image_len();
        let spans = find_spans(mem, resident);
        let mut runs = if compress {
            let (image, runs) = store_compressed(mem, &spans);
            self.append(&image);
            runs
        } else {
            self.store_raw(mem, &spans)
        };
        for r in &mut runs {
            r.image_offset += base;
        }
        MemoryState {
            index,
            byte_size: mem.len() as u64,
            runs,
            page_hashes: Vec::new(),
        }
    }

    /// Raw runs only: the runs' pages back to back (a raw run is a whole
    /// number of pages, so every run stays 4096-aligned with no padding).
    fn store_raw(&mut self, mem: &[u8], spans: &[(u64, u64)]) -> Vec<Run> {
        let stored: usize = spans.iter().map(|(a, b)| (b - a) as usize).sum();
        let total = stored * PAGE_SIZE;
        let mut runs = Vec::with_capacity(spans.len());
        let mut offset = 0u64;
        for &(first, end) in spans {
            let len = (end - first) * PAGE_SIZE as u64;
            runs.push(Run {
                first_page: first,
                pages: end - first,
                encoding: Encoding::Raw,
                image_offset: offset,
                stored_len: len,
            });
            offset += len;
        }
        // Room for the body (a few bytes per run, and what `tail` says).
        let want = total + spans.len() * 32 + self.tail + (64 << 10);
        let fresh = self.out.capacity() - self.out.len() < want;
        if fresh && self.pooled {
            // A recycled buffer whose pages are already faulted in, when
            // the pool holds one large enough; the bytes so far move over.
            let mut bigger = tern_util::pool::take(self.out.len() + want);
            bigger.extend_from_slice(&self.out);
            tern_util::pool::give(std::mem::replace(&mut self.out, bigger));
        } else if fresh {
            self.out.reserve_exact(want);
        }
        if fresh && total >= HUGE_PAGE_MIN_BYTES {
            // SAFETY: the spare capacity is at least `total` bytes.
            advise_huge_pages(unsafe { self.out.as_mut_ptr().add(self.out.len()) }, total);
        }
        let at = self.out.len();
        copy_pages(
            mem,
            spans,
            &mut self.out.spare_capacity_mut()[..total],
            self.hasher.as_mut(),
            total >= STREAM_MIN_BYTES,
        );
        // SAFETY: `copy_pages` wrote every one of the `total` bytes: the
        // spans hold exactly `stored` pages and it copied each of them.
        unsafe { self.out.set_len(at + total) };
        runs
    }
}

/// Copies the spans' pages back to back into `dst`. With `image_hash`,
/// also feeds the copied bytes to it, in order, in the same pass.
/// `stream`: write past the cache (see [`STREAM_MIN_BYTES`]).
fn copy_pages(
    mem: &[u8],
    spans: &[(u64, u64)],
    dst: &mut [MaybeUninit<u8>],
    mut image_hash: Option<&mut ImageHash>,
    stream: bool,
) {
    let mut k = 0usize; // bytes written so far
    for &(first, end) in spans {
        let src = &mem[first as usize * PAGE_SIZE..end as usize * PAGE_SIZE];
        let out = &mut dst[k..k + src.len()];
        match image_hash.as_deref_mut() {
            Some(h) => h.copy(src, out, stream),
            // SAFETY: `out` and `src` are the same length (the slicing
            // above checked it) and cannot overlap: `out` is spare capacity
            // of a buffer the caller owns.
            None => unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    out.as_mut_ptr().cast::<u8>(),
                    src.len(),
                )
            },
        }
        k += src.len();
    }
    if let Some(h) = image_hash {
        h.fence();
    }
    assert_eq!(k, dst.len(), "every byte of the image is written");
}

/// Stores each run LZ4-compressed where that saves a quarter, raw otherwise
/// (padded so that every run starts 4096-aligned).
fn store_compressed(mem: &[u8], spans: &[(u64, u64)]) -> (Vec<u8>, Vec<Run>) {
    let stored: u64 = spans.iter().map(|(a, b)| b - a).sum();
    let mut image = Vec::with_capacity(stored as usize * PAGE_SIZE);
    let mut runs = Vec::with_capacity(spans.len());
    for &(first, end) in spans {
        let bytes = &mem[first as usize * PAGE_SIZE..end as usize * PAGE_SIZE];
        let image_offset = image.len() as u64;
        let packed = lz4_flex::block::compress(bytes);
        let (encoding, stored_len) = if packed.len() * 4 < bytes.len() * 3 {
            image.extend_from_slice(&packed);
            (Encoding::Lz4, packed.len() as u64)
        } else {
            image.extend_from_slice(bytes);
            (Encoding::Raw, bytes.len() as u64)
        };
        // Keep every run 4096-aligned in the image.
        let pad = (PAGE_SIZE - image.len() % PAGE_SIZE) % PAGE_SIZE;
        image.resize(image.len() + pad, 0);
        runs.push(Run {
            first_page: first,
            pages: end - first,
            encoding,
            image_offset,
            stored_len,
        });
    }
    (image, runs)
}

/// Asks for huge pages over the 2 MiB-aligned part of a buffer about to be
/// filled. Only a hint: it changes how the pages are backed, never what they
/// hold, and it is skipped where unsupported.
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if start < end {
            // SAFETY: [start, end) lies inside the buffer's own allocation;
            // MADV_HUGEPAGE does not change the contents or validity of
            // memory, only how it is backed. A failure is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capture as first written (one run at a time): the fast path
    /// must produce exactly the same image and runs (and, in format 2, no
    /// page hashes).
    fn reference(mem: &[u8], resident: Option<&[u8]>, compress: bool) -> (Vec<u8>, Vec<Run>) {
        let spans = find_spans(mem, resident);
        let mut image = Vec::new();
        let mut runs = Vec::new();
        for (first, end) in spans {
            let bytes = &mem[first as usize * PAGE_SIZE..end as usize * PAGE_SIZE];
            let image_offset = image.len() as u64;
            let (encoding, stored_len) = if compress {
                let packed = lz4_flex::block::compress(bytes);
                if packed.len() * 4 < bytes.len() * 3 {
                    image.extend_from_slice(&packed);
                    (Encoding::Lz4, packed.len() as u64)
                } else {
                    image.extend_from_slice(bytes);
                    (Encoding::Raw, bytes.len() as u64)
                }
            } else {
                image.extend_from_slice(bytes);
                (Encoding::Raw, bytes.len() as u64)
            };
            let pad = (PAGE_SIZE - image.len() % PAGE_SIZE) % PAGE_SIZE;
            image.resize(image.len() + pad, 0);
            runs.push(Run {
                first_page: first,
                pages: end - first,
                encoding,
                image_offset,
                stored_len,
            });
        }
        (image, runs)
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// A memory with a mix of random, compressible, sparse and zero pages.
    fn memory(pages: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut mem = vec![0u8; pages * PAGE_SIZE];
        for p in 0..pages {
            let kind = xorshift(&mut x) % 8;
            let page = &mut mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            match kind {
                0..=2 => {} // zero
                3 => page[(xorshift(&mut x) % PAGE_SIZE as u64) as usize] = 1,
                4 => page.fill(0x5a),
                _ => page
                    .chunks_exact_mut(8)
                    .for_each(|w| w.copy_from_slice(&xorshift(&mut x).to_le_bytes())),
            }
        }
        // A long dense stretch too, so runs of many chunks are exercised.
        for p in pages / 3..pages / 2 {
            mem[p * PAGE_SIZE + 17] = p as u8 | 1;
        }
        mem
    }

    fn check(mem: &[u8], resident: Option<&[u8]>) {
        for compress in [false, true] {
            let cap = capture_memory(0, mem, resident, compress);
            let (image, runs) = reference(mem, resident, compress);
            assert_eq!(cap.state.runs, runs, "compress {compress}");
            assert!(cap.state.page_hashes.is_empty(), "compress {compress}");
            assert!(cap.image == image, "compress {compress}: images differ");
        }
    }

    #[test]
    fn fast_capture_matches_the_reference() {
        for (pages, seed) in [(1, 1), (16, 2), (17, 3), (300, 4), (1000, 5)] {
            check(&memory(pages, seed), None);
        }
        check(&vec![0u8; 64 * PAGE_SIZE], None);
    }

    /// The writer's image hash (copied and hashed in one pass, past the
    /// cache above `STREAM_MIN_BYTES`) is the xxh3-128 of the image it wrote.
    #[test]
    fn image_hash_is_the_xxh3_128_of_the_image() {
        let small = memory(300, 6);
        let large = memory(STREAM_MIN_BYTES / PAGE_SIZE * 2 + 5, 7);
        for mems in [vec![&small], vec![&large], vec![&small, &large, &small]] {
            for compress in [false, true] {
                let mut w = ImageWriter::new(4096, true);
                let mut want_image = Vec::new();
                for mem in &mems {
                    w.capture(0, mem, None, compress);
                    want_image.extend(reference(mem, None, compress).0);
                }
                let (out, hash) = w.finish();
                assert!(
                    out[4096..] == want_image[..],
                    "compress {compress}: images differ"
                );
                assert_eq!(
                    hash,
                    xxhash_rust::xxh3::xxh3_128(&want_image),
                    "compress {compress}"
                );
            }
        }
    }

    #[test]
    fn large_capture_matches_the_reference() {
        // Above HUGE_PAGE_MIN_BYTES of stored pages, with odd run boundaries.
        let pages = (HUGE_PAGE_MIN_BYTES / PAGE_SIZE) * 3 + 7;
        let mem = memory(pages, 99);
        check(&mem, None);
        // With residency: every fourth page counts as never touched.
        let resident: Vec<u8> = (0..pages).map(|p| u8::from(p % 4 != 0)).collect();
        let mut masked = mem.clone();
        for p in (0..pages).step_by(4) {
            masked[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].fill(0);
        }
        let cap = capture_memory(0, &masked, Some(&resident), false);
        let (image, runs) = reference(&masked, None, false);
        assert_eq!(cap.state.runs, runs);
        assert!(cap.state.page_hashes.is_empty());
        assert!(cap.image == image);
    }
}
