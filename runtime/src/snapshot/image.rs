//! Capturing a linear memory into page runs: zero pages skipped, a hash per
//! stored page, runs 4096-aligned so that raw ones can be mapped copy-on-write.

use super::{Encoding, MemoryState, Run};
use xxhash_rust::xxh3::xxh3_64;

/// The granularity of memory capture, dirty tracking and copy-on-write restore.
pub const PAGE_SIZE: usize = 4096;

/// Zero gaps up to this many pages between two non-zero pages are stored
/// inside one run, so that a fragmented heap does not become thousands of
/// tiny runs (and thousands of mappings on a copy-on-write restore).
const MAX_GAP_PAGES: u64 = 4;

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
    pre.iter().all(|&b| b == 0) && post.iter().all(|&b| b == 0) && mid.iter().fold(0u128, |a, &x| a | x) == 0
}

/// Captures one memory. `resident`, when given, has one byte per page (bit 0
/// set = the page was ever touched, as `mincore` reports for anonymous
/// memory); pages not resident are zero and are not even read.
pub fn capture_memory(index: u32, mem: &[u8], resident: Option<&[u8]>, compress: bool) -> MemoryCapture {
    assert!(mem.len() % PAGE_SIZE == 0, "memory size must be a multiple of 4 KiB");
    let n_pages = (mem.len() / PAGE_SIZE) as u64;
    // 1. Find the runs of pages to store.
    let mut spans: Vec<(u64, u64)> = Vec::new(); // (first, end)
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
    // 2. Copy them into the image, hashing each page.
    let stored: u64 = spans.iter().map(|(a, b)| b - a).sum();
    let mut image = Vec::with_capacity(stored as usize * PAGE_SIZE);
    let mut page_hashes = Vec::with_capacity(stored as usize);
    let mut runs = Vec::with_capacity(spans.len());
    for (first, end) in spans {
        let bytes = &mem[first as usize * PAGE_SIZE..end as usize * PAGE_SIZE];
        page_hashes.extend(bytes.chunks_exact(PAGE_SIZE).map(xxh3_64));
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
        // Keep every run 4096-aligned in the image.
        let pad = (PAGE_SIZE - image.len() % PAGE_SIZE) % PAGE_SIZE;
        image.resize(image.len() + pad, 0);
        runs.push(Run { first_page: first, pages: end - first, encoding, image_offset, stored_len });
    }
    MemoryCapture { state: MemoryState { index, byte_size: mem.len() as u64, runs, page_hashes }, image }
}
