//! The commit frame: what a migration's stop-and-copy sends in one message,
//! the last dirty pages and the app's state without pages.
//!
//! ```text
//! magic "TERNCOMT" | version u32 | chunk count u32
//! | per chunk: length u64, then a page chunk (see `delta.rs`)
//! | the state: a whole snapshot (its own header and checksums)
//! ```
//! Each part carries its own checksum; the frame is decoded and every part
//! checked before any of it is used.

use super::{PageChunk, Snapshot, SnapshotError};

const COMMIT_MAGIC: &[u8; 8] = b"TERNCOMT";
const COMMIT_VERSION: u32 = 1;
/// More chunks than memories a module may have is not a frame tern wrote.
pub const MAX_COMMIT_CHUNKS: usize = 1024;

/// The stop-and-copy message of a live migration.
#[derive(Debug)]
pub struct CommitFrame {
    /// The pages written since the last round, one chunk per memory.
    pub chunks: Vec<PageChunk>,
    /// The state without pages (globals, tables, WASI context, metadata).
    pub state: Snapshot,
}

impl CommitFrame {
    /// Encodes the frame (deterministic: the same parts give the same bytes).
    pub fn encode(chunks: &[PageChunk], state: &Snapshot) -> Vec<u8> {
        let len = 16
            + chunks
                .iter()
                .map(|c| 8 + c.wire_len() as usize)
                .sum::<usize>()
            + state.as_bytes().len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(COMMIT_MAGIC);
        out.extend_from_slice(&COMMIT_VERSION.to_le_bytes());
        out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for c in chunks {
            let b = c.encode();
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(&b);
            tern_util::pool::give(b);
        }
        out.extend_from_slice(state.as_bytes());
        out
    }

    /// Reads a frame, checking every part (sizes, each chunk's checksum,
    /// the state snapshot's header and checksum) before returning any.
    pub fn decode(bytes: &[u8]) -> Result<CommitFrame, SnapshotError> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], SnapshotError> {
            let end = at.checked_add(n).filter(|&e| e <= bytes.len()).ok_or(
                SnapshotError::Truncated {
                    expected: at as u64 + n as u64,
                    found: bytes.len() as u64,
                },
            )?;
            let s = &bytes[at..end];
            at = end;
            Ok(s)
        };
        if take(8)? != COMMIT_MAGIC {
            return Err(SnapshotError::corrupt("not a stop-and-copy frame"));
        }
        let version = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        if version != COMMIT_VERSION {
            return Err(SnapshotError::corrupt(format!(
                "stop-and-copy frame version {version}, expected {COMMIT_VERSION}: are both nodes the same tern version?"
            )));
        }
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        if n > MAX_COMMIT_CHUNKS {
            return Err(SnapshotError::corrupt(format!(
                "stop-and-copy frame names {n} page chunks (at most {MAX_COMMIT_CHUNKS})"
            )));
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let len = usize::try_from(len)
                .map_err(|_| SnapshotError::corrupt("page chunk length does not fit"))?;
            chunks.push(PageChunk::decode(take(len)?)?);
        }
        let state = Snapshot::from_bytes(bytes[at..].to_vec())?;
        Ok(CommitFrame { chunks, state })
    }
}
