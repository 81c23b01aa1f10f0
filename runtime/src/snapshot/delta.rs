//! Page chunks: the pages a live migration sends round by round.
//!
//! ```text
//! magic "TERNPAGE" | version u32 | memory index u32 | memory byte size u64
//! | page count u32 | page indices (u64 each) | page bytes (4096 each)
//! | xxh3-64 of everything before it
//! ```
//! A chunk is checked whole before any page of it is used.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::{SnapshotError, PAGE_SIZE};

const CHUNK_MAGIC: &[u8; 8] = b"TERNPAGE";
const CHUNK_VERSION: u32 = 1;
const CHUNK_HEADER: usize = PAGES_HEAD;

/// The fixed head both page formats (chunks here, slices in `stream.rs`)
/// start with: magic "TERNPAGE", version, memory index, memory byte size,
/// page count.
pub(super) const PAGES_HEAD: usize = 8 + 4 + 4 + 8 + 4;

/// The fixed head of a page format's `version`.
pub(super) fn pages_head(
    version: u32,
    memory: u32,
    byte_size: u64,
    count: usize,
) -> [u8; PAGES_HEAD] {
    let mut h = [0u8; PAGES_HEAD];
    h[..8].copy_from_slice(CHUNK_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&memory.to_le_bytes());
    h[16..24].copy_from_slice(&byte_size.to_le_bytes());
    h[24..28].copy_from_slice(&(count as u32).to_le_bytes());
    h
}

/// A fixed head read back: memory index, memory byte size, page count.
pub(super) struct PagesHead {
    pub memory: u32,
    pub byte_size: u64,
    pub count: usize,
}

/// Reads the fixed head at the start of `h` (at least [`PAGES_HEAD`]
/// bytes) and checks its magic, its version and the memory's size; `what`
/// names the format in errors.
pub(super) fn read_pages_head(
    h: &[u8],
    version: u32,
    what: &str,
) -> Result<PagesHead, SnapshotError> {
    if &h[..8] != CHUNK_MAGIC {
        return Err(SnapshotError::corrupt(format!("not a {what}")));
    }
    let got = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if got != version {
        return Err(SnapshotError::corrupt(format!(
            "{what} version {got}, expected {version}"
        )));
    }
    let byte_size = u64::from_le_bytes(h[16..24].try_into().unwrap());
    if byte_size > super::MAX_MEMORY_BYTES {
        return Err(SnapshotError::corrupt(format!(
            "{what} names a memory of {byte_size} bytes, more than a memory can hold"
        )));
    }
    Ok(PagesHead {
        memory: u32::from_le_bytes(h[12..16].try_into().unwrap()),
        byte_size,
        count: u32::from_le_bytes(h[24..28].try_into().unwrap()) as usize,
    })
}

/// The page indices in `bytes` (8 each), checked ascending and inside a
/// memory of `byte_size` bytes.
pub(super) fn read_page_indices(
    bytes: &[u8],
    byte_size: u64,
    what: &str,
) -> Result<Vec<u64>, SnapshotError> {
    let pages: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let max_page = byte_size / PAGE_SIZE as u64;
    if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|&p| p >= max_page) {
        return Err(SnapshotError::corrupt(format!(
            "{what} indices are unsorted or outside the memory"
        )));
    }
    Ok(pages)
}

/// Pages of one memory, as a migration sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageChunk {
    pub memory: u32,
    /// The memory's size when the pages were read (the receiver grows to it).
    pub byte_size: u64,
    /// Page indices (4 KiB pages from the memory's start), ascending.
    pub pages: Vec<u64>,
    /// The pages' bytes, `pages.len() * 4096`.
    pub data: Vec<u8>,
}

impl PageChunk {
    /// The chunk's bytes, in a buffer from [`tern_util::pool`] (give it
    /// back there once sent).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = tern_util::pool::take(self.wire_len() as usize);
        out.extend_from_slice(&pages_head(
            CHUNK_VERSION,
            self.memory,
            self.byte_size,
            self.pages.len(),
        ));
        for p in &self.pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Encodes the pages `pages` (ascending) of a whole memory `mem`
    /// straight from it: the same bytes as building a chunk and encoding
    /// it, with one copy of the pages instead of two. The buffer comes
    /// from [`tern_util::pool`] (give it back there once sent).
    pub fn encode_from(memory: u32, mem: &[u8], pages: &[u64]) -> Vec<u8> {
        let mut out = tern_util::pool::take(CHUNK_HEADER + pages.len() * (8 + PAGE_SIZE) + 8);
        out.extend_from_slice(&pages_head(
            CHUNK_VERSION,
            memory,
            mem.len() as u64,
            pages.len(),
        ));
        for p in pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        // The sum is taken as the bytes are written, page by page while
        // each is still in cache, rather than in a second pass over a
        // buffer larger than the cache (the same xxh3-64 as `encode`'s).
        let mut sum = Xxh3::new();
        sum.update(&out);
        for &p in pages {
            let page = &mem[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE];
            out.extend_from_slice(page);
            sum.update(page);
        }
        out.extend_from_slice(&sum.digest().to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<PageChunk, SnapshotError> {
        let r = PageChunkRef::decode(bytes)?;
        Ok(PageChunk {
            memory: r.memory,
            byte_size: r.byte_size,
            pages: r.pages,
            data: r.data.to_vec(),
        })
    }
}

/// A decoded chunk whose page bytes stay in the buffer it came in (the
/// receiver copies them once, into the memory).
#[derive(Debug)]
pub struct PageChunkRef<'a> {
    pub memory: u32,
    pub byte_size: u64,
    pub pages: Vec<u64>,
    pub data: &'a [u8],
}

impl<'a> PageChunkRef<'a> {
    /// Checks and decodes a chunk (see [`PageChunk::encode`]).
    pub fn decode(bytes: &'a [u8]) -> Result<PageChunkRef<'a>, SnapshotError> {
        if bytes.len() < CHUNK_HEADER + 8 {
            return Err(SnapshotError::Truncated {
                expected: (CHUNK_HEADER + 8) as u64,
                found: bytes.len() as u64,
            });
        }
        let PagesHead {
            memory,
            byte_size,
            count,
        } = read_pages_head(bytes, CHUNK_VERSION, "page chunk")?;
        let expected = CHUNK_HEADER as u64 + count as u64 * (8 + PAGE_SIZE as u64) + 8;
        if bytes.len() as u64 != expected {
            return Err(if (bytes.len() as u64) < expected {
                SnapshotError::Truncated {
                    expected,
                    found: bytes.len() as u64,
                }
            } else {
                SnapshotError::corrupt("page chunk has trailing bytes")
            });
        }
        let body_end = bytes.len() - 8;
        let sum = u64::from_le_bytes(bytes[body_end..].try_into().unwrap());
        if xxh3_64(&bytes[..body_end]) != sum {
            return Err(SnapshotError::Checksum { what: "page chunk" });
        }
        let idx_end = CHUNK_HEADER + count * 8;
        let pages = read_page_indices(&bytes[CHUNK_HEADER..idx_end], byte_size, "page chunk")?;
        Ok(PageChunkRef {
            memory,
            byte_size,
            pages,
            data: &bytes[idx_end..body_end],
        })
    }
}

impl PageChunk {
    /// Bytes this chunk takes on the wire.
    pub fn wire_len(&self) -> u64 {
        (CHUNK_HEADER + self.pages.len() * (8 + PAGE_SIZE) + 8) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let chunk = PageChunk {
            memory: 0,
            byte_size: 16 * 4096,
            pages: vec![1, 5, 9],
            data: (0..3 * 4096).map(|i| i as u8).collect(),
        };
        let bytes = chunk.encode();
        assert_eq!(bytes.len() as u64, chunk.wire_len());
        assert_eq!(PageChunk::decode(&bytes).unwrap(), chunk);
        for pos in [0, 9, 13, 20, 30, 100, 5000, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x40;
            assert!(PageChunk::decode(&bad).is_err(), "flip at {pos} not caught");
        }
        assert!(matches!(
            PageChunk::decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Truncated { .. })
        ));
    }

    #[test]
    fn encoding_straight_from_memory_gives_the_same_bytes() {
        let mem: Vec<u8> = (0..16 * 4096).map(|i| (i * 7 % 251) as u8).collect();
        let pages = [0u64, 3, 4, 15];
        let chunk = PageChunk {
            memory: 2,
            byte_size: mem.len() as u64,
            pages: pages.to_vec(),
            data: pages
                .iter()
                .flat_map(|&p| mem[p as usize * 4096..(p as usize + 1) * 4096].to_vec())
                .collect(),
        };
        let direct = PageChunk::encode_from(2, &mem, &pages);
        assert_eq!(direct, chunk.encode());
        let r = PageChunkRef::decode(&direct).unwrap();
        assert_eq!(
            (r.memory, r.byte_size, r.pages.as_slice(), r.data),
            (2, chunk.byte_size, &pages[..], &chunk.data[..])
        );
        assert_eq!(
            PageChunk::encode_from(0, &mem, &[]),
            PageChunk {
                memory: 0,
                byte_size: mem.len() as u64,
                pages: vec![],
                data: vec![]
            }
            .encode()
        );
    }
}
