//! Page slices as a live migration sends them (its first copy and its
//! rounds): checked as they arrive and written straight into the receiving
//! memory, with no buffer in between.
//!
//! ```text
//! head: magic "TERNPAGE" | version u32 = 2 | memory index u32
//!       | memory byte size u64 | page count u32
//!       | page indices (u64 each, ascending) | xxh3-64 of the head before it
//! data: page bytes (4096 each) | xxh3-128 of the page bytes
//! ```
//!
//! The head is checked whole before any page is written (a wrong memory, a
//! size past the limit, unsorted or out-of-range indices are refused with
//! nothing written). The pages are then copied into the memory as they
//! arrive and hashed in the same pass (the sender copies and hashes them in
//! one pass too), so a slice costs the receiver one copy, as reading the
//! bytes off a socket into a buffer would. The receiver must not use the
//! memory until [`PageStream::finish`] says the whole slice checked out: a
//! slice that fails (a bad sum, a body cut short) has written some of its
//! pages, and the copy it was written into is discarded.
//!
//! The stop-and-copy keeps its own frame ([`super::CommitFrame`], made of
//! version-1 [`super::PageChunk`]s): it is small and is checked whole.

use std::mem::MaybeUninit;

use xxhash_rust::xxh3::xxh3_64;

use super::delta::{pages_head, read_page_indices, read_pages_head, PAGES_HEAD as FIXED};
use super::image_hash::ImageHash;
use super::{SnapshotError, PAGE_SIZE};

const VERSION: u32 = 2;
/// What errors call the format.
const WHAT: &str = "page slice";
/// The head's own sum after its indices.
const HEAD_SUM: usize = 8;
/// The data's xxh3-128 after the pages.
const DATA_SUM: usize = 16;
/// xxh3's block: the fused copy-and-hash takes pieces of whole blocks.
const BLOCK: usize = 1024;

/// An encoded slice: its bytes are `buf[start..]` (the head is written in
/// front of the pages once their count is known). `buf` comes from
/// [`tern_util::pool`]; give it back there once sent.
#[derive(Debug)]
pub struct EncodedSlice {
    pub buf: Vec<u8>,
    pub start: usize,
    /// How many pages it carries.
    pub pages: u64,
}

impl EncodedSlice {
    /// The slice's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Encodes the pages `pages` yields (index, bytes; ascending, at most
/// `max_pages` of them) of memory `memory`, `byte_size` bytes: each page is
/// copied into the slice and hashed in one pass.
fn encode<'a>(
    memory: u32,
    byte_size: u64,
    max_pages: usize,
    pages: impl Iterator<Item = (u64, &'a [u8])>,
) -> EncodedSlice {
    // Room for the longest head in front of the pages; the head is
    // written right-aligned against them once their count is known.
    let reserve = FIXED + max_pages * 8 + HEAD_SUM;
    let mut buf = tern_util::pool::take(reserve + max_pages * PAGE_SIZE + DATA_SUM);
    buf.resize(reserve, 0);
    let mut indices: Vec<u64> = Vec::with_capacity(max_pages);
    let mut hash = ImageHash::new();
    for (p, page) in pages {
        assert!(indices.len() < max_pages, "more pages than reserved");
        let at = buf.len();
        let dst: &mut [MaybeUninit<u8>] = &mut buf.spare_capacity_mut()[..PAGE_SIZE];
        hash.copy(page, dst, false);
        // SAFETY: `copy` wrote all PAGE_SIZE bytes after `at`, within the
        // capacity reserved above.
        unsafe { buf.set_len(at + PAGE_SIZE) };
        indices.push(p);
    }
    let data_sum = hash
        .digest()
        .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(&buf[reserve..]));
    buf.extend_from_slice(&data_sum.to_le_bytes());
    let head_len = FIXED + indices.len() * 8 + HEAD_SUM;
    let start = reserve - head_len;
    let head = &mut buf[start..reserve];
    head[..FIXED].copy_from_slice(&pages_head(VERSION, memory, byte_size, indices.len()));
    for (k, p) in indices.iter().enumerate() {
        head[FIXED + 8 * k..FIXED + 8 * k + 8].copy_from_slice(&p.to_le_bytes());
    }
    let sum = xxh3_64(&head[..head_len - HEAD_SUM]);
    head[head_len - HEAD_SUM..].copy_from_slice(&sum.to_le_bytes());
    EncodedSlice {
        buf,
        start,
        pages: indices.len() as u64,
    }
}

/// The pages of `[first, end)` of a whole memory `mem` that are not all
/// zero (a range past its end is cut short). Each page is checked for zero
/// and, if not, copied while it is still in cache.
pub fn encode_nonzero(memory: u32, mem: &[u8], first: u64, end: u64) -> EncodedSlice {
    let end = end.min((mem.len() / PAGE_SIZE) as u64);
    let first = first.min(end);
    let pages = (first..end).filter_map(|p| {
        let page = &mem[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE];
        (!super::is_zero_page(page)).then_some((p, page))
    });
    encode(memory, mem.len() as u64, (end - first) as usize, pages)
}

/// The pages `pages` lists (ascending) of a whole memory `mem`, zero or
/// not: a round's dirty pages, copied straight from the memory. Pages past
/// its end, and any out of order or listed twice, are left out.
pub fn encode_listed(memory: u32, mem: &[u8], pages: &[u64]) -> EncodedSlice {
    let end = (mem.len() / PAGE_SIZE) as u64;
    let mut last = None;
    let pages = pages.iter().copied().filter_map(move |p| {
        if p >= end || last.is_some_and(|l| p <= l) {
            return None;
        }
        last = Some(p);
        Some((
            p,
            &mem[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE],
        ))
    });
    encode(
        memory,
        mem.len() as u64,
        pages.size_hint().1.unwrap_or(0),
        pages,
    )
}

/// The pages of a decoded chunk (a round's dirty pages) as a slice.
pub fn encode_chunk(chunk: &super::PageChunk) -> EncodedSlice {
    let pages = chunk
        .pages
        .iter()
        .copied()
        .zip(chunk.data.chunks_exact(PAGE_SIZE));
    encode(chunk.memory, chunk.byte_size, chunk.pages.len(), pages)
}

/// Where a slice's pages go: the receiving instance's memories, or a
/// buffer that holds them packed, one after the other.
pub trait PageSink {
    /// Makes memory `memory` at least `byte_size` bytes long (or room for
    /// the slice's `pages` pages, when packed), or says why it cannot be.
    fn prepare(&mut self, memory: u32, byte_size: u64, pages: usize) -> Result<(), String>;
    /// The memory's bytes (the buffer's, when packed).
    fn memory(&mut self, memory: u32) -> &mut [u8];
    /// Whether the slice's `k`-th page goes at `k` pages into
    /// [`PageSink::memory`] rather than at its own index.
    fn packed(&self) -> bool {
        false
    }
}

/// A checked head.
#[derive(Debug)]
struct Head {
    memory: u32,
    byte_size: u64,
    pages: Vec<u64>,
}

/// A slice being received: feed it the body's bytes as they come
/// ([`PageStream::feed`]), then [`PageStream::finish`].
pub struct PageStream {
    /// The head's bytes until it is whole.
    head_bytes: Vec<u8>,
    head: Option<Head>,
    /// Page bytes written so far.
    written: usize,
    /// A piece of an xxh3 block split across two pieces of the body.
    carry: Vec<u8>,
    hash: ImageHash,
    /// The data's sum, as it arrives.
    sum: Vec<u8>,
    /// The most bytes a slice may hold.
    limit: u64,
}

impl PageStream {
    /// A stream that refuses a slice of more than `limit` bytes.
    pub fn new(limit: u64) -> PageStream {
        PageStream {
            head_bytes: Vec::new(),
            head: None,
            written: 0,
            carry: Vec::with_capacity(BLOCK),
            hash: ImageHash::new(),
            sum: Vec::with_capacity(DATA_SUM),
            limit,
        }
    }

    /// How many pages the slice carries, once its head is in.
    pub fn pages(&self) -> Option<u64> {
        self.head.as_ref().map(|h| h.pages.len() as u64)
    }

    /// The slice's memory and page indices, once its head is in.
    pub fn listed(&self) -> Option<(u32, &[u64])> {
        self.head.as_ref().map(|h| (h.memory, &h.pages[..]))
    }

    /// Takes the next bytes of the slice, writing the pages they complete
    /// into `sink`'s memory.
    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut dyn PageSink) -> Result<(), SnapshotError> {
        if self.head.is_none() {
            let taken = self.take_head(bytes)?;
            bytes = &bytes[taken..];
            let Some(head) = &self.head else {
                return Ok(());
            };
            sink.prepare(head.memory, head.byte_size, head.pages.len())
                .map_err(SnapshotError::corrupt)?;
        }
        let head = self.head.as_ref().expect("the head is in");
        let data_len = head.pages.len() * PAGE_SIZE;
        let received = self.written + self.carry.len();
        if !bytes.is_empty() && received < data_len {
            let n = bytes.len().min(data_len - received);
            let (mut piece, rest) = bytes.split_at(n);
            bytes = rest;
            let packed = sink.packed();
            let mem = sink.memory(head.memory);
            let mut to = Writer {
                packed,
                pages: &head.pages,
                mem,
                written: &mut self.written,
                hash: &mut self.hash,
            };
            // Finish a block begun by the last piece.
            if !self.carry.is_empty() {
                let k = piece.len().min(BLOCK - self.carry.len());
                self.carry.extend_from_slice(&piece[..k]);
                piece = &piece[k..];
                if self.carry.len() == BLOCK {
                    to.write(&self.carry)?;
                    self.carry.clear();
                }
            }
            // Whole blocks straight from the piece, then keep the rest.
            let whole = piece.len() / BLOCK * BLOCK;
            to.write(&piece[..whole])?;
            self.carry.extend_from_slice(&piece[whole..]);
        }
        if bytes.len() > DATA_SUM - self.sum.len() {
            return Err(SnapshotError::corrupt("page slice has trailing bytes"));
        }
        self.sum.extend_from_slice(bytes);
        Ok(())
    }

    /// Reads the head from the front of `bytes`; how many bytes it took.
    fn take_head(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        let mut taken = 0;
        if self.head_bytes.len() < FIXED {
            taken = (FIXED - self.head_bytes.len()).min(bytes.len());
            self.head_bytes.extend_from_slice(&bytes[..taken]);
            if self.head_bytes.len() < FIXED {
                return Ok(taken);
            }
        }
        // Checked again for each piece of the indices: a few dozen bytes.
        let fixed = read_pages_head(&self.head_bytes, VERSION, WHAT)?;
        let count = fixed.count as u64;
        let total = FIXED as u64 + count * (8 + PAGE_SIZE as u64) + (HEAD_SUM + DATA_SUM) as u64;
        if count > fixed.byte_size / PAGE_SIZE as u64 || total > self.limit {
            return Err(SnapshotError::corrupt(format!(
                "page slice claims {count} pages, more than its memory or a slice can hold"
            )));
        }
        let want = FIXED + fixed.count * 8 + HEAD_SUM;
        let k = (want - self.head_bytes.len()).min(bytes.len() - taken);
        self.head_bytes.extend_from_slice(&bytes[taken..taken + k]);
        taken += k;
        if self.head_bytes.len() < want {
            return Ok(taken);
        }
        let h = &self.head_bytes;
        let end = h.len() - HEAD_SUM;
        if xxh3_64(&h[..end]) != u64::from_le_bytes(h[end..].try_into().unwrap()) {
            return Err(SnapshotError::Checksum {
                what: "page slice head",
            });
        }
        self.head = Some(Head {
            memory: fixed.memory,
            byte_size: fixed.byte_size,
            pages: read_page_indices(&h[FIXED..end], fixed.byte_size, WHAT)?,
        });
        Ok(taken)
    }

    /// Checks that the whole slice came and its pages' sum matches; only
    /// then may the memory it was written into be used. The pages written.
    pub fn finish(mut self) -> Result<u64, SnapshotError> {
        let Some(head) = &self.head else {
            return Err(SnapshotError::Truncated {
                expected: FIXED as u64,
                found: self.head_bytes.len() as u64,
            });
        };
        let data_len = head.pages.len() * PAGE_SIZE;
        if self.written < data_len || self.sum.len() < DATA_SUM {
            return Err(SnapshotError::Truncated {
                expected: (data_len + DATA_SUM) as u64,
                found: (self.written + self.carry.len() + self.sum.len()) as u64,
            });
        }
        self.hash.fence();
        let got = self.hash.digest().ok_or_else(|| {
            SnapshotError::corrupt("page slice was hashed in pieces that were not whole blocks")
        })?;
        if got != u128::from_le_bytes(self.sum[..].try_into().unwrap()) {
            return Err(SnapshotError::Checksum { what: "page slice" });
        }
        Ok(head.pages.len() as u64)
    }
}

/// Writes whole blocks of a slice's page bytes into the memory, hashing
/// them in the same pass.
struct Writer<'a> {
    /// Page `k` goes `k` pages in, not at its index (see `PageSink`).
    packed: bool,
    pages: &'a [u64],
    mem: &'a mut [u8],
    /// Page bytes written so far (always whole blocks).
    written: &'a mut usize,
    hash: &'a mut ImageHash,
}

impl Writer<'_> {
    /// Blocks never straddle pages: a page is four of them.
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), SnapshotError> {
        while !bytes.is_empty() {
            let k = *self.written / PAGE_SIZE;
            let offset = *self.written % PAGE_SIZE;
            let n = bytes.len().min(PAGE_SIZE - offset);
            let at = if self.packed {
                k
            } else {
                self.pages[k] as usize
            } * PAGE_SIZE
                + offset;
            let dst = self
                .mem
                .get_mut(at..at + n)
                .ok_or_else(|| SnapshotError::corrupt("page slice writes past its memory's end"))?;
            // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have one layout, and
            // only initialized bytes are written through the view.
            let dst: &mut [MaybeUninit<u8>] =
                unsafe { &mut *(dst as *mut [u8] as *mut [MaybeUninit<u8>]) };
            self.hash.copy(&bytes[..n], dst, false);
            *self.written += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
