//! The post-copy messages: the switch-over frame (the app's state without
//! pages, and which pages of each memory stay on the source for now), and
//! the page request a target's fault handler sends back to the source. The
//! pages themselves travel as page chunks (`delta.rs`), pushed by the
//! source or answering a request.
//!
//! ```text
//! switch-over frame:
//! magic "TERNPCST" | version u32 | memory count u32
//! | per memory: index u32, byte size u64, run count u32,
//! |             runs (first page u64, pages u64), ascending, disjoint
//! | xxh3-64 of everything before it
//! | the state: a whole snapshot (its own header and checksums)
//!
//! page request:
//! magic "TERNPREQ" | version u32 | memory index u32 | page count u32
//! | page indices (u64 each), strictly ascending | xxh3-64 of everything before it
//! ```
//! Both are checked whole before any part is used: counts are capped before
//! anything is allocated, every run and page lies inside its memory.

use xxhash_rust::xxh3::xxh3_64;

use super::{Snapshot, SnapshotError, MAX_COMMIT_CHUNKS, MAX_MEMORY_BYTES, PAGE_SIZE};

const FRAME_MAGIC: &[u8; 8] = b"TERNPCST";
const FRAME_VERSION: u32 = 1;
const REQUEST_MAGIC: &[u8; 8] = b"TERNPREQ";
const REQUEST_VERSION: u32 = 1;
/// The most pages one request asks for (4 MiB): a fault handler asks for
/// the faulting page and a few neighbours, never more.
pub const MAX_REQUEST_PAGES: usize = 1024;
/// The most bytes a page request may be (one for [`MAX_REQUEST_PAGES`]
/// pages): a reader refuses a larger body before buffering it.
pub const MAX_REQUEST_BYTES: usize = 20 + MAX_REQUEST_PAGES * 8 + 8;

/// The pages of one memory the target does not hold yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemotePages {
    pub memory: u32,
    /// The memory's size at the switch.
    pub byte_size: u64,
    /// Runs of pages: (first page, pages), ascending and disjoint.
    pub runs: Vec<(u64, u64)>,
}

impl RemotePages {
    /// How many pages the runs hold.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }

    /// Runs from a list of pages (any order, repeats allowed).
    pub fn from_pages(memory: u32, byte_size: u64, mut pages: Vec<u64>) -> RemotePages {
        pages.sort_unstable();
        pages.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in pages {
            match runs.last_mut() {
                Some((first, n)) if *first + *n == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        }
        RemotePages {
            memory,
            byte_size,
            runs,
        }
    }

    /// Runs from a per-page predicate over `[0, pages)`.
    pub fn from_fn(
        memory: u32,
        byte_size: u64,
        pages: u64,
        mut remote: impl FnMut(u64) -> bool,
    ) -> RemotePages {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for p in 0..pages {
            if remote(p) {
                match runs.last_mut() {
                    Some((first, n)) if *first + *n == p => *n += 1,
                    _ => runs.push((p, 1)),
                }
            }
        }
        RemotePages {
            memory,
            byte_size,
            runs,
        }
    }
}

/// The switch-over message of a post-copy move.
#[derive(Debug)]
pub struct PostcopyFrame {
    pub remote: Vec<RemotePages>,
    /// The state without pages (globals, tables, WASI context, sizes).
    pub state: Snapshot,
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], SnapshotError> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or(SnapshotError::Truncated {
            expected: *at as u64 + n as u64,
            found: bytes.len() as u64,
        })?;
    let s = &bytes[*at..end];
    *at = end;
    Ok(s)
}

fn u32_at(bytes: &[u8], at: &mut usize) -> Result<u32, SnapshotError> {
    Ok(u32::from_le_bytes(
        take(bytes, at, 4)?.try_into().expect("4 bytes"),
    ))
}

fn u64_at(bytes: &[u8], at: &mut usize) -> Result<u64, SnapshotError> {
    Ok(u64::from_le_bytes(
        take(bytes, at, 8)?.try_into().expect("8 bytes"),
    ))
}

impl PostcopyFrame {
    /// Encodes the frame (deterministic).
    pub fn encode(remote: &[RemotePages], state: &Snapshot) -> Vec<u8> {
        let runs: usize = remote.iter().map(|r| r.runs.len()).sum();
        let mut out = Vec::with_capacity(16 + remote.len() * 16 + runs * 16 + 8);
        out.extend_from_slice(FRAME_MAGIC);
        out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
        out.extend_from_slice(&(remote.len() as u32).to_le_bytes());
        for r in remote {
            out.extend_from_slice(&r.memory.to_le_bytes());
            out.extend_from_slice(&r.byte_size.to_le_bytes());
            out.extend_from_slice(&(r.runs.len() as u32).to_le_bytes());
            for (first, n) in &r.runs {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(state.as_bytes());
        out
    }

    /// Reads a frame, checking every part before returning any.
    pub fn decode(bytes: &[u8]) -> Result<PostcopyFrame, SnapshotError> {
        let mut at = 0usize;
        if take(bytes, &mut at, 8)? != FRAME_MAGIC {
            return Err(SnapshotError::corrupt("not a post-copy switch-over frame"));
        }
        let version = u32_at(bytes, &mut at)?;
        if version != FRAME_VERSION {
            return Err(SnapshotError::corrupt(format!(
                "post-copy frame version {version}, expected {FRAME_VERSION}: are both nodes the same tern version?"
            )));
        }
        let n = u32_at(bytes, &mut at)? as usize;
        if n > MAX_COMMIT_CHUNKS {
            return Err(SnapshotError::corrupt(format!(
                "post-copy frame names {n} memories (at most {MAX_COMMIT_CHUNKS})"
            )));
        }
        let mut remote = Vec::with_capacity(n);
        for _ in 0..n {
            let memory = u32_at(bytes, &mut at)?;
            let byte_size = u64_at(bytes, &mut at)?;
            if byte_size > MAX_MEMORY_BYTES || !byte_size.is_multiple_of(PAGE_SIZE as u64) {
                return Err(SnapshotError::corrupt(format!(
                    "post-copy frame: memory {memory} of {byte_size} bytes is not a whole number of pages a memory can hold"
                )));
            }
            let count = u32_at(bytes, &mut at)? as usize;
            // Each run takes 16 bytes: a count the rest cannot hold is refused
            // before anything is allocated.
            if count.saturating_mul(16) > bytes.len().saturating_sub(at) {
                return Err(SnapshotError::Truncated {
                    expected: at as u64 + count as u64 * 16,
                    found: bytes.len() as u64,
                });
            }
            let max_page = byte_size / PAGE_SIZE as u64;
            let mut runs = Vec::with_capacity(count);
            let mut next = 0u64;
            for _ in 0..count {
                let first = u64_at(bytes, &mut at)?;
                let pages = u64_at(bytes, &mut at)?;
                let end = first.checked_add(pages);
                if pages == 0 || first < next || end.is_none_or(|e| e > max_page) {
                    return Err(SnapshotError::corrupt(format!(
                        "post-copy frame: runs of memory {memory} are empty, unsorted, overlapping or outside it"
                    )));
                }
                next = end.expect("checked");
                runs.push((first, pages));
            }
            if remote.iter().any(|r: &RemotePages| r.memory == memory) {
                return Err(SnapshotError::corrupt(format!(
                    "post-copy frame names memory {memory} twice"
                )));
            }
            remote.push(RemotePages {
                memory,
                byte_size,
                runs,
            });
        }
        let covered = at;
        let sum = u64_at(bytes, &mut at)?;
        if xxh3_64(&bytes[..covered]) != sum {
            return Err(SnapshotError::Checksum {
                what: "post-copy frame",
            });
        }
        let state = Snapshot::from_bytes(bytes[at..].to_vec())?;
        for r in &remote {
            let Some(m) = state.body.memories.iter().find(|m| m.index == r.memory) else {
                return Err(SnapshotError::corrupt(format!(
                    "post-copy frame: memory {} is not in the state",
                    r.memory
                )));
            };
            if m.byte_size != r.byte_size {
                return Err(SnapshotError::corrupt(format!(
                    "post-copy frame: memory {} is {} bytes in the state but {} in the page list",
                    r.memory, m.byte_size, r.byte_size
                )));
            }
        }
        Ok(PostcopyFrame { remote, state })
    }
}

/// A target's request for pages it lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub memory: u32,
    /// Strictly ascending, at most [`MAX_REQUEST_PAGES`].
    pub pages: Vec<u64>,
}

impl PageRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.pages.len() * 8 + 8);
        out.extend_from_slice(REQUEST_MAGIC);
        out.extend_from_slice(&REQUEST_VERSION.to_le_bytes());
        out.extend_from_slice(&self.memory.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads a request. `memory_pages` bounds the page indices (the
    /// memory's size in pages, as the reader knows it).
    pub fn decode(bytes: &[u8], memory_pages: u64) -> Result<PageRequest, SnapshotError> {
        let mut at = 0usize;
        if take(bytes, &mut at, 8)? != REQUEST_MAGIC {
            return Err(SnapshotError::corrupt("not a page request"));
        }
        let version = u32_at(bytes, &mut at)?;
        if version != REQUEST_VERSION {
            return Err(SnapshotError::corrupt(format!(
                "page request version {version}, expected {REQUEST_VERSION}"
            )));
        }
        let memory = u32_at(bytes, &mut at)?;
        let count = u32_at(bytes, &mut at)? as usize;
        if count > MAX_REQUEST_PAGES {
            return Err(SnapshotError::corrupt(format!(
                "page request for {count} pages (at most {MAX_REQUEST_PAGES})"
            )));
        }
        let expected = 20 + count * 8 + 8;
        if bytes.len() != expected {
            return Err(if bytes.len() < expected {
                SnapshotError::Truncated {
                    expected: expected as u64,
                    found: bytes.len() as u64,
                }
            } else {
                SnapshotError::corrupt("page request has trailing bytes")
            });
        }
        let body_end = bytes.len() - 8;
        let sum = u64::from_le_bytes(bytes[body_end..].try_into().expect("8 bytes"));
        if xxh3_64(&bytes[..body_end]) != sum {
            return Err(SnapshotError::Checksum {
                what: "page request",
            });
        }
        let pages: Vec<u64> = bytes[20..body_end]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if pages.windows(2).any(|w| w[0] >= w[1])
            || pages.last().is_some_and(|&p| p >= memory_pages)
        {
            return Err(SnapshotError::corrupt(
                "page request indices are unsorted or outside the memory",
            ));
        }
        Ok(PageRequest { memory, pages })
    }
}
