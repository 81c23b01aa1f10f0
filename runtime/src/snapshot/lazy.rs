//! Lazy restore: a snapshot file held elsewhere (the control plane's copy
//! of a checkpoint), read by byte ranges. Its head (the 4 KiB before the
//! image) and its body (the state, and where every run of pages lies) come
//! first and are checked like a whole file's; the app is restored from the
//! state with its stored pages missing, and each [`Segment`] of the image
//! is fetched when a page of it is first touched or when the background
//! pull reaches it (see the post-copy [`Pager`](crate::postcopy::Pager)).
//!
//! A segment is up to [`SEGMENT_PAGES`] pages of a raw run (any page of a
//! raw run can be read on its own) or a whole compressed run. The file's
//! bytes are checked as they come in order ([`FileDigest`]): the pull ends
//! by comparing the whole file's xxh3-128 with the digest the file was
//! named by, and the image's with the one the body holds.

use std::borrow::Cow;

use xxhash_rust::xxh3::Xxh3;

use super::{
    lz4_pages, read_body, Body, Encoding, Header, MemoryCapture, RemotePages, Snapshot,
    SnapshotError, SnapshotParts, HEADER_LEN, IMAGE_OFFSET, PAGE_SIZE,
};

/// Pages of a raw run fetched together when one of them is touched: 256
/// KiB, a few round trips' worth of bytes on a fast link.
pub const SEGMENT_PAGES: u64 = 64;

/// The bytes to fetch first: the header and its padding, up to the image.
pub const HEAD_LEN: u64 = IMAGE_OFFSET;

/// Where a snapshot's body lies, from its first [`HEAD_LEN`] bytes and its
/// length: `(offset, length)`.
pub fn body_range(head: &[u8], file_len: u64) -> Result<(u64, u64), SnapshotError> {
    let h = Header::read(head, file_len)?;
    if h.end != file_len {
        return Err(SnapshotError::corrupt(format!(
            "the snapshot ends at {} but the file is {file_len} bytes",
            h.end
        )));
    }
    Ok((h.body_offset, h.end - h.body_offset))
}

/// Whether a snapshot can be restored lazily, from its first
/// [`HEAD_LEN`] bytes and its length: format 1 keeps a hash per page and
/// is checked whole, so it is read whole.
pub fn pageable(head: &[u8], file_len: u64) -> Result<bool, SnapshotError> {
    Ok(Header::read(head, file_len)?.version >= 2)
}

/// Some pages of one memory as stored in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub memory: u32,
    pub first_page: u64,
    pub pages: u64,
    /// Where its bytes start in the file, and how many there are.
    pub offset: u64,
    pub len: u64,
    compressed: bool,
}

/// A snapshot file known by its head and body, its pages still elsewhere.
pub struct LazySnapshot {
    /// The app's state with every memory at its size and no page stored:
    /// what to restore before paging.
    pub state: Snapshot,
    /// The stored pages, per memory: what the pager fetches.
    pub remote: Vec<RemotePages>,
    /// Every segment, in file order.
    pub segments: Vec<Segment>,
    image_hash: u128,
    /// Where the image ends (the body starts).
    image_end: u64,
    file_len: u64,
}

impl LazySnapshot {
    /// Checks the head and body of a `file_len`-byte snapshot file (as a
    /// whole file's are checked) and lays out its segments. Format 1 files
    /// (page hashes in the body) are refused: restore them whole.
    pub fn new(head: &[u8], body_bytes: &[u8], file_len: u64) -> Result<Self, SnapshotError> {
        let h = Header::read(head, file_len)?;
        if h.version < 2 {
            return Err(SnapshotError::corrupt(
                "a format 1 snapshot is restored whole, not lazily",
            ));
        }
        if body_bytes.len() as u64 != h.end - h.body_offset || h.end != file_len {
            return Err(SnapshotError::corrupt(
                "the body is not where the header says",
            ));
        }
        let body = read_body(&head[..48], body_bytes, h.checksum, h.image_len, h.version)?;
        let mut segments = Vec::new();
        let mut remote = Vec::new();
        for m in &body.memories {
            let mut pages = Vec::new();
            for run in &m.runs {
                let offset = IMAGE_OFFSET + run.image_offset;
                pages.extend(run.first_page..run.first_page + run.pages);
                match run.encoding {
                    Encoding::Lz4 => segments.push(Segment {
                        memory: m.index,
                        first_page: run.first_page,
                        pages: run.pages,
                        offset,
                        len: run.stored_len,
                        compressed: true,
                    }),
                    Encoding::Raw => {
                        let mut k = 0;
                        while k < run.pages {
                            let n = SEGMENT_PAGES.min(run.pages - k);
                            segments.push(Segment {
                                memory: m.index,
                                first_page: run.first_page + k,
                                pages: n,
                                offset: offset + k * PAGE_SIZE as u64,
                                len: n * PAGE_SIZE as u64,
                                compressed: false,
                            });
                            k += n;
                        }
                    }
                }
            }
            remote.push(RemotePages::from_pages(m.index, m.byte_size, pages));
        }
        segments.sort_by_key(|s| s.offset);
        let image_hash = body.image_hash;
        Ok(LazySnapshot {
            state: state_only(body),
            remote,
            segments,
            image_hash,
            image_end: h.body_offset,
            file_len,
        })
    }

    /// The segment holding `page` of `memory`, if that page is stored.
    pub fn segment_of(&self, memory: u32, page: u64) -> Option<&Segment> {
        // Segments of one memory never overlap: the first that ends past
        // the page, among that memory's, is the one if it starts before it.
        self.segments
            .iter()
            .find(|s| s.memory == memory && page >= s.first_page && page < s.first_page + s.pages)
    }

    /// The image's byte range in the file (every segment lies in it).
    pub fn image_range(&self) -> (u64, u64) {
        (IMAGE_OFFSET, self.image_end)
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Whether `hash` (of every image byte, in order) is the body's.
    pub fn image_matches(&self, hash: u128) -> bool {
        hash == self.image_hash
    }
}

impl Segment {
    /// The segment's pages from its stored bytes (decompressed if needed).
    pub fn pages_from<'a>(&self, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SnapshotError> {
        if stored.len() as u64 != self.len {
            return Err(SnapshotError::corrupt(format!(
                "segment at {} is {} bytes, expected {}",
                self.offset,
                stored.len(),
                self.len
            )));
        }
        if !self.compressed {
            return Ok(Cow::Borrowed(stored));
        }
        lz4_pages(stored, self.pages, self.first_page).map(Cow::Owned)
    }
}

/// The xxh3-128 of a file fed in order, and of its image part on the side.
pub struct FileDigest {
    file: Xxh3,
    image: Xxh3,
    at: u64,
    image_end: u64,
}

impl FileDigest {
    pub fn new(lazy: &LazySnapshot) -> FileDigest {
        FileDigest {
            file: Xxh3::new(),
            image: Xxh3::new(),
            at: 0,
            image_end: lazy.image_range().1,
        }
    }

    /// Feeds the file's next bytes (from where the last ended).
    pub fn update(&mut self, bytes: &[u8]) {
        self.file.update(bytes);
        let (start, end) = (self.at, self.at + bytes.len() as u64);
        let (a, b) = (start.max(IMAGE_OFFSET), end.min(self.image_end));
        if a < b {
            self.image
                .update(&bytes[(a - start) as usize..(b - start) as usize]);
        }
        self.at = end;
    }

    /// How many bytes were fed.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// The file's digest (hex, as checkpoints are named) and the image's.
    pub fn finish(&self) -> (String, u128) {
        (
            format!("{:032x}", self.file.digest128()),
            self.image.digest128(),
        )
    }
}

/// The state of a body with no page stored: every memory at its size.
fn state_only(body: Body) -> Snapshot {
    let Body {
        meta,
        limits,
        wasi,
        globals,
        tables,
        memories,
        module,
        files,
        ..
    } = body;
    let memories = memories
        .into_iter()
        .map(|mut m| {
            m.runs.clear();
            m.page_hashes.clear();
            MemoryCapture {
                state: m,
                image: Vec::new(),
            }
        })
        .collect();
    Snapshot::encode(SnapshotParts {
        meta,
        limits,
        wasi,
        globals,
        tables,
        memories,
        module,
        files: files.into_iter().map(|(p, b)| (p, b.into_vec())).collect(),
    })
}

const _: () = assert!(HEADER_LEN as u64 <= HEAD_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{capture_memory, sha256, Meta};

    /// A snapshot file of a 320-page memory, one page in seven zero, and
    /// that memory.
    fn snapshot(compress: bool) -> (Vec<u8>, Vec<u8>) {
        let pages = 320;
        let mut mem = vec![0u8; pages * PAGE_SIZE];
        for p in (0..pages).filter(|p| p % 7 != 3) {
            mem[p * PAGE_SIZE + (p * 13) % PAGE_SIZE] = (p % 251 + 1) as u8;
        }
        let parts = SnapshotParts {
            meta: Meta {
                module_sha256: sha256(b"m"),
                ..Default::default()
            },
            limits: Default::default(),
            wasi: Default::default(),
            globals: vec![],
            tables: vec![],
            memories: vec![capture_memory(0, &mem, None, compress)],
            module: Some(b"m".to_vec()),
            files: vec![],
        };
        (Snapshot::encode(parts).as_bytes().to_vec(), mem)
    }

    fn open(file: &[u8]) -> Result<LazySnapshot, SnapshotError> {
        let len = file.len() as u64;
        let head = &file[..HEAD_LEN as usize];
        let (at, n) = body_range(head, len)?;
        LazySnapshot::new(head, &file[at as usize..(at + n) as usize], len)
    }

    fn digest_of(lazy: &LazySnapshot, file: &[u8]) -> (String, u128) {
        let mut d = FileDigest::new(lazy);
        for piece in file.chunks(1000) {
            d.update(piece);
        }
        d.finish()
    }

    #[test]
    fn every_stored_page_comes_back_from_its_segment_and_the_file_checks() {
        for compress in [false, true] {
            let (file, mem) = snapshot(compress);
            let lazy = open(&file).unwrap();
            let m = &lazy.state.body.memories[0];
            assert_eq!((m.byte_size, m.runs.len()), (mem.len() as u64, 0));
            let mut rebuilt = vec![0u8; mem.len()];
            for s in &lazy.segments {
                assert!(s.compressed || s.pages <= SEGMENT_PAGES, "{s:?}");
                let stored = &file[s.offset as usize..(s.offset + s.len) as usize];
                let pages = s.pages_from(stored).unwrap();
                rebuilt[s.first_page as usize * PAGE_SIZE..][..pages.len()].copy_from_slice(&pages);
                assert_eq!(lazy.segment_of(0, s.first_page + s.pages - 1), Some(s));
            }
            assert_eq!(rebuilt, mem, "compress: {compress}");
            let remote: u64 = lazy.remote.iter().map(RemotePages::pages).sum();
            assert_eq!(remote, lazy.segments.iter().map(|s| s.pages).sum::<u64>());
            assert_eq!(lazy.segment_of(0, 320), None, "past the memory");
            assert_eq!(lazy.segment_of(1, 0), None, "no such memory");
            let (digest, image) = digest_of(&lazy, &file);
            let whole = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&file));
            assert_eq!(digest, whole);
            assert!(lazy.image_matches(image));
        }
    }

    #[test]
    fn a_damaged_head_or_body_or_image_or_a_wrong_length_is_caught() {
        let (file, _) = snapshot(false);
        let len = file.len() as u64;
        let (at, _) = body_range(&file[..HEAD_LEN as usize], len).unwrap();
        let damaged = |i: usize| {
            let mut f = file.clone();
            f[i] ^= 1;
            f
        };
        assert!(matches!(
            open(&damaged(at as usize + 3)),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(open(&damaged(40)).is_err(), "the body's length");
        assert!(open(&damaged(0)).is_err(), "the magic");
        assert!(body_range(&file[..HEAD_LEN as usize], len + 1).is_err());
        assert!(body_range(&file[..HEAD_LEN as usize], len - 1).is_err());
        // A damaged page passes the head and body, and is caught by the
        // digests once the pull has read every byte.
        let bad = damaged(IMAGE_OFFSET as usize + 10);
        let lazy = open(&bad).unwrap();
        let (digest, image) = digest_of(&lazy, &bad);
        assert!(!lazy.image_matches(image));
        assert_ne!(
            digest,
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&file))
        );
        // A segment of the wrong length is refused.
        let s = &lazy.segments[0];
        assert!(s.pages_from(&bad[..s.len as usize - 1]).is_err());
    }
}
