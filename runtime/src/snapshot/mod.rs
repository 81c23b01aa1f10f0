//! The snapshot: an app's whole state between two calls, and its byte format.
//!
//! This module is the only place that knows the snapshot bytes, and the
//! bytes of the migration wire formats built from them (page chunks in
//! `delta.rs`, the stop-and-copy frame in `commit.rs`) and of the small
//! records kept beside them on disk (`record.rs`). Everything else
//! builds a [`Snapshot`] value (capture) or reads one back (restore).
//!
//! # File layout (format version 2)
//!
//! ```text
//! offset 0     header (64 bytes)
//!                magic "TERNSNAP"            8 bytes
//!                format version              u32 LE
//!                flags (reserved, 0)         u32 LE
//!                image offset                u64 LE  (= 4096)
//!                image length                u64 LE
//!                body offset                 u64 LE
//!                body length                 u64 LE
//!                checksum                    16 bytes: xxh3-128 of header[0..48] ++ body
//! 64..4096     zero padding
//! 4096         memory image: every stored run of pages, each starting at a
//!              4096-aligned offset (raw runs can be mapped copy-on-write)
//! body offset  body: postcard-encoded [`Body`]; it holds the xxh3-128 of the
//!              image bytes, so the checksum in the header covers the whole
//!              file
//! ```
//!
//! Format 1 had the same layout, with an xxh3-64 per stored page in the
//! body ([`MemoryState::page_hashes`]): decoding those made opening a file
//! cost ~2.4 µs per stored MiB, and computing them a pass over every page
//! at capture. Format 2 stores none (the list is empty, and must be), so
//! opening costs the same whatever the memory size; a hybrid move compares
//! pages with the checkpoint's bytes instead. Format 1 files still load,
//! their page hashes checked against the pages when the image is verified.
//!
//! The header is read and checked before anything else: a wrong magic, a
//! newer format version, a truncated file or a checksum mismatch is a typed
//! [`SnapshotError`], never a misread. Encoding is deterministic: the same
//! state gives the same bytes.

pub mod auth;
mod commit;
mod delta;
mod image;
mod image_hash;
pub mod lazy;
mod postcopy;
mod record;
mod stream;
mod validate;

pub use commit::{CommitFrame, MAX_COMMIT_CHUNKS};
pub use delta::{PageChunk, PageChunkRef};
pub use image::{capture_memory, MemoryCapture, PAGE_SIZE};
pub(crate) use image::{is_zero_page, ImageWriter};
pub use postcopy::{PageRequest, PostcopyFrame, RemotePages, MAX_REQUEST_BYTES, MAX_REQUEST_PAGES};
pub use record::{decode_record, encode_record};
pub use stream::{encode_chunk, encode_listed, encode_nonzero, EncodedSlice, PageSink, PageStream};
use validate::validate_body;

use image_hash::image_hash;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

/// sha256 of some bytes: how a snapshot names its module (the module's
/// original bytes), and the key of the engine's module cache.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The first eight bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"TERNSNAP";
/// The format version this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Where the memory image starts.
pub const IMAGE_OFFSET: u64 = 4096;
const HEADER_LEN: usize = 64;
/// A body larger than this is refused rather than allocated.
const MAX_BODY_LEN: u64 = 1 << 30;
/// The largest linear memory tern runs (and so the largest a snapshot may
/// describe): 4 GiB, all a 32-bit memory can address. The engine's limiter
/// refuses to grow a memory past it, so every memory tern captures fits.
pub const MAX_MEMORY_BYTES: u64 = 1 << 32;
/// Memories a snapshot may describe, at most: as many as the engine lets
/// an app have, so that a few bytes of body per memory cannot make a
/// reader lay out pages for thousands of them.
pub const MAX_MEMORIES: usize = crate::sandbox::MAX_MEMORIES;
/// The most elements a table may hold, over all of an app's tables (the
/// engine's limiter enforces the same bound), and so the largest table a
/// snapshot may describe.
pub const MAX_TABLE_ELEMENTS: u64 = 1 << 20;
/// How much an LZ4 block can expand: a match of length L costs at least
/// L / 255 bytes, so no block decodes to more than 255 times its size. A
/// compressed run declaring more pages than that is a lie, refused before
/// any buffer for it is allocated.
const LZ4_MAX_RATIO: u64 = 255;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a tern snapshot (bad magic bytes): was this file written by `tern run --snapshot-out` or `tern snapshot`?")]
    BadMagic,
    #[error("snapshot format version {found} is newer than this tern understands (up to {supported}): upgrade tern to read it")]
    NewerVersion { found: u32, supported: u32 },
    #[error("snapshot format version {found} is no longer supported (this tern reads versions {supported} and later): take a new snapshot with the tern that wrote it")]
    OlderVersion { found: u32, supported: u32 },
    #[error("snapshot is truncated: expected {expected} bytes, found {found}; the copy is incomplete, copy it again")]
    Truncated { expected: u64, found: u64 },
    #[error("snapshot is corrupt: {0}; do not resume from it")]
    Corrupt(String),
    #[error("snapshot checksum mismatch ({what}): the file was damaged after it was written; do not resume from it")]
    Checksum { what: &'static str },
    #[error("cannot read snapshot: {0}")]
    Io(#[from] std::io::Error),
}

impl SnapshotError {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        SnapshotError::Corrupt(msg.into())
    }
}

/// A value of a global, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Value {
    I32(i32),
    I64(i64),
    /// Bits, so that NaN payloads survive.
    F32(u32),
    F64(u64),
    V128(u128),
    /// A null reference (non-null references in globals are not migratable).
    NullRef,
}

/// One mutable global of the module, by its index in the module's global space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalState {
    pub index: u32,
    pub value: Value,
}

/// One table: its size and its elements as function indices (`None` = null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    pub index: u32,
    pub size: u32,
    /// Runs of consecutive elements: (first element, function indices).
    pub runs: Vec<(u32, Vec<Option<u32>>)>,
}

/// How a run's bytes are stored in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Raw page bytes, 4096-aligned in the file: can be mapped copy-on-write.
    Raw,
    /// An LZ4 block of the run's bytes.
    Lz4,
}

/// A run of consecutive stored pages of one memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// First 4 KiB page of the run, counted from the start of the memory.
    pub first_page: u64,
    /// Number of 4 KiB pages.
    pub pages: u64,
    pub encoding: Encoding,
    /// Offset of the run's bytes from the start of the image.
    pub image_offset: u64,
    /// Bytes the run takes in the image (before padding).
    pub stored_len: u64,
}

/// One linear memory: its size, its stored runs and a hash per stored page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryState {
    pub index: u32,
    /// Size of the memory in bytes (a multiple of the Wasm page size).
    pub byte_size: u64,
    pub runs: Vec<Run>,
    /// Format 1 only: the xxh3-64 of every stored page, in run order.
    /// Empty in format 2 (which stores no page hashes).
    pub page_hashes: Vec<u64>,
}

/// A directory the app was given, in the order it was given (fd order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub host: String,
    pub guest: String,
    pub read_only: bool,
}

/// The WASI context the app was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasiState {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    /// The latest monotonic clock value the guest has read (ns). After a
    /// restore the guest's clock continues from here, never backwards.
    pub monotonic_ns: u64,
    /// A fixed seed for the app's random source (reproducible runs); `None`
    /// means real entropy.
    pub random_seed: Option<u64>,
}

/// Limits the app runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsState {
    pub memory_bytes: Option<u64>,
    pub fuel_per_call: Option<u64>,
    pub timeout_ms_per_call: Option<u64>,
}

/// Platform metadata that travels with the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// sha256 of the module's original bytes (before the migratability rewrite).
    pub module_sha256: [u8; 32],
    /// Version of tern that wrote the snapshot.
    pub tern_version: String,
    /// App name, when it runs on a cluster.
    pub app: Option<String>,
    /// Generation number: bumped at every move; fences stale copies.
    pub generation: u64,
    /// Number of calls into the guest so far.
    pub calls: u64,
    /// Free-form platform fields (restart policy, requests served, ...).
    pub extra: Vec<(String, String)>,
}

/// Everything but the page bytes. Serialized with postcard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub meta: Meta,
    pub limits: LimitsState,
    pub wasi: WasiState,
    pub globals: Vec<GlobalState>,
    pub tables: Vec<TableState>,
    pub memories: Vec<MemoryState>,
    /// The module's original bytes, when the snapshot carries them.
    #[serde(with = "serde_bytes")]
    pub module: Option<Vec<u8>>,
    /// Files of the app's data directory: (relative path, bytes).
    pub files: Vec<(String, serde_bytes::ByteBuf)>,
    /// xxh3-128 of the image section as stored.
    pub image_hash: u128,
}

/// A snapshot's bytes in memory; the buffer goes back to
/// [`tern_util::pool`] when dropped, so the next capture writes into pages
/// already faulted in rather than fresh ones.
pub struct Recycled(Vec<u8>);

impl std::ops::Deref for Recycled {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        tern_util::pool::give(std::mem::take(&mut self.0));
    }
}

/// Where the image bytes of a snapshot live.
#[derive(Clone)]
pub enum Backing {
    /// In memory (just captured, or received over the network).
    Bytes(Arc<Recycled>),
    /// A file mapped read-only: its raw runs can be mapped copy-on-write.
    File(Arc<MappedFile>),
}

impl Backing {
    fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Bytes(b) => b,
            Backing::File(f) => f.as_slice(),
        }
    }
}

/// A snapshot: its body and the bytes of the whole file.
#[derive(Clone)]
pub struct Snapshot {
    pub body: Body,
    backing: Backing,
    image_len: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("meta", &self.body.meta)
            .field("bytes", &self.backing.as_slice().len())
            .finish_non_exhaustive()
    }
}

/// The parts of a snapshot before encoding: built by capture.
pub struct SnapshotParts {
    pub meta: Meta,
    pub limits: LimitsState,
    pub wasi: WasiState,
    pub globals: Vec<GlobalState>,
    pub tables: Vec<TableState>,
    /// Captured memories, with their image bytes.
    pub memories: Vec<MemoryCapture>,
    pub module: Option<Vec<u8>>,
    pub files: Vec<(String, Vec<u8>)>,
}

impl Snapshot {
    /// Lays out and encodes the parts into the file format.
    pub fn encode(parts: SnapshotParts) -> Snapshot {
        let image_len: usize = parts.memories.iter().map(|m| m.image.len()).sum();
        let mut images = ImageWriter::new(IMAGE_OFFSET as usize, true);
        images.out.reserve_exact(image_len + 4096);
        let mut parts = parts;
        let mut states = Vec::with_capacity(parts.memories.len());
        for cap in std::mem::take(&mut parts.memories) {
            let base = images.image_len();
            images.append(&cap.image);
            let mut state = cap.state;
            for run in &mut state.runs {
                run.image_offset += base;
            }
            states.push(state);
        }
        Self::encode_captured(parts, states, images)
    }

    /// A buffer for [`Snapshot::encode_captured`] to capture memories into;
    /// `tail`: bytes the body will need beyond the page hashes (an
    /// embedded module, say).
    pub(crate) fn image_writer(tail: usize) -> ImageWriter {
        let mut w = ImageWriter::new(IMAGE_OFFSET as usize, true);
        w.tail = tail;
        w.pooled = true;
        w
    }

    /// Encodes a snapshot whose memory images were captured straight into
    /// `images` (see [`Snapshot::image_writer`]); `states` describe them,
    /// and `parts.memories` is ignored. The image is neither copied nor read
    /// again: only the body is appended and the header written.
    pub(crate) fn encode_captured(
        parts: SnapshotParts,
        states: Vec<MemoryState>,
        images: ImageWriter,
    ) -> Snapshot {
        let image_len = images.image_len();
        let (mut out, image_hash) = images.finish();
        let body = Body {
            meta: parts.meta,
            limits: parts.limits,
            wasi: parts.wasi,
            globals: parts.globals,
            tables: parts.tables,
            memories: states,
            module: parts.module,
            files: parts
                .files
                .into_iter()
                .map(|(p, b)| (p, serde_bytes::ByteBuf::from(b)))
                .collect(),
            image_hash,
        };
        let body_offset = out.len() as u64;
        let body_bytes =
            postcard::to_stdvec(&body).expect("postcard encoding into a Vec cannot fail");
        out.extend_from_slice(&body_bytes);
        write_header(
            &mut out[..HEADER_LEN],
            image_len,
            body_offset,
            body_bytes.len() as u64,
            &body_bytes,
        );
        Snapshot {
            body,
            backing: Backing::Bytes(Arc::new(Recycled(out))),
            image_len,
        }
    }

    /// Reads a snapshot from bytes, checking header, size and checksums.
    /// `verify_image` also checks the image hash (a pass over every stored byte).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Snapshot, SnapshotError> {
        Self::decode(Backing::Bytes(Arc::new(Recycled(bytes))), true)
    }

    /// Opens a snapshot file. The file is mapped, not read: restoring from it
    /// can map its raw pages copy-on-write. With `verify_image`, every stored
    /// byte is hashed and checked first; without it only the header and body
    /// are (for checkpoints this node wrote or already verified).
    pub fn open(path: &Path, verify_image: bool) -> Result<Snapshot, SnapshotError> {
        let file = MappedFile::open(path)?;
        Self::decode(Backing::File(Arc::new(file)), verify_image)
    }

    fn decode(backing: Backing, verify_image: bool) -> Result<Snapshot, SnapshotError> {
        let bytes = backing.as_slice();
        let found = bytes.len() as u64;
        let Header {
            version,
            image_len,
            body_offset,
            end: expected,
            checksum,
        } = Header::read(bytes, found)?;
        let h = &bytes[..HEADER_LEN];
        let image_end = body_offset;
        // A file `tern snapshot -o` wrote ends with the cluster's tag
        // (`auth.rs`); the snapshot itself ends before it.
        let sealed = found - expected == auth::TRAILER_LEN as u64
            && auth::unseal(bytes).0.len() as u64 == expected;
        if found > expected && !sealed {
            return Err(SnapshotError::corrupt(format!(
                "{} unexpected bytes after the end of the snapshot",
                found - expected
            )));
        }
        let body_bytes = &bytes[body_offset as usize..expected as usize];
        let body = read_body(&h[..48], body_bytes, checksum, image_len, version)?;
        let image = &bytes[IMAGE_OFFSET as usize..image_end as usize];
        if verify_image && image_hash(image) != body.image_hash {
            return Err(SnapshotError::Checksum {
                what: "memory image",
            });
        }
        Ok(Snapshot {
            body,
            backing,
            image_len,
        })
    }

    /// The encoded bytes of the whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.as_slice()
    }

    /// Writes the snapshot to a file, atomically and durably, owner-only
    /// (it holds the app's memory and environment).
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        tern_util::write_atomic(path, self.as_bytes())
    }

    /// The stored bytes of the image section.
    pub fn image(&self) -> &[u8] {
        &self.as_bytes()[IMAGE_OFFSET as usize..(IMAGE_OFFSET + self.image_len) as usize]
    }

    /// The stored bytes of one run (raw or compressed).
    pub fn run_bytes(&self, run: &Run) -> &[u8] {
        &self.image()[run.image_offset as usize..(run.image_offset + run.stored_len) as usize]
    }

    /// The page bytes of a run, decompressed if needed. A compressed run's
    /// buffer is allocated fallibly: a run the machine cannot hold is an
    /// error, not an abort (its size was bounded by the decoder already).
    pub fn run_data(&self, run: &Run) -> Result<std::borrow::Cow<'_, [u8]>, SnapshotError> {
        let stored = self.run_bytes(run);
        match run.encoding {
            Encoding::Raw => Ok(std::borrow::Cow::Borrowed(stored)),
            Encoding::Lz4 => {
                lz4_pages(stored, run.pages, run.first_page).map(std::borrow::Cow::Owned)
            }
        }
    }

    /// The mapped file behind this snapshot, if it was opened from a file.
    pub fn mapped_file(&self) -> Option<&Arc<MappedFile>> {
        match &self.backing {
            Backing::File(f) => Some(f),
            Backing::Bytes(_) => None,
        }
    }

    /// Total number of stored 4 KiB pages over all memories.
    pub fn stored_pages(&self) -> u64 {
        self.body
            .memories
            .iter()
            .flat_map(|m| &m.runs)
            .map(|r| r.pages)
            .sum()
    }

    /// Checks the image hash and every page hash against the stored bytes.
    pub fn verify_image(&self) -> Result<(), SnapshotError> {
        if image_hash(self.image()) != self.body.image_hash {
            return Err(SnapshotError::Checksum {
                what: "memory image",
            });
        }
        // Format 1 also kept a hash per page (format 2 keeps none).
        for mem in self
            .body
            .memories
            .iter()
            .filter(|m| !m.page_hashes.is_empty())
        {
            let mut hashes = mem.page_hashes.iter();
            for run in &mem.runs {
                let data = self.run_data(run)?;
                for page in data.chunks(PAGE_SIZE) {
                    if hashes.next() != Some(&xxh3_64(page)) {
                        return Err(SnapshotError::Checksum {
                            what: "memory page",
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_header(h: &mut [u8], image_len: u64, body_offset: u64, body_len: u64, body: &[u8]) {
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&0u32.to_le_bytes());
    h[16..24].copy_from_slice(&IMAGE_OFFSET.to_le_bytes());
    h[24..32].copy_from_slice(&image_len.to_le_bytes());
    h[32..40].copy_from_slice(&body_offset.to_le_bytes());
    h[40..48].copy_from_slice(&body_len.to_le_bytes());
    let sum = header_checksum(&h[..48], body);
    h[48..64].copy_from_slice(&sum.to_le_bytes());
}

/// What a snapshot's 64-byte header says, checked (not the checksum: that
/// needs the body).
pub(crate) struct Header {
    pub version: u32,
    pub image_len: u64,
    /// Where the body starts (right after the image).
    pub body_offset: u64,
    /// Where the snapshot ends (after the body).
    pub end: u64,
    pub checksum: u128,
}

impl Header {
    /// Reads the header at the start of `bytes`, of a file `found` bytes long.
    pub(crate) fn read(bytes: &[u8], found: u64) -> Result<Header, SnapshotError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            // A file shorter than the magic that starts like one is truncated.
            if !bytes.is_empty() && bytes.len() < 8 && MAGIC.starts_with(bytes) {
                return Err(SnapshotError::Truncated {
                    expected: HEADER_LEN as u64,
                    found,
                });
            }
            return Err(SnapshotError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(SnapshotError::Truncated {
                expected: HEADER_LEN as u64,
                found,
            });
        }
        let h = &bytes[..HEADER_LEN];
        let version = u32::from_le_bytes(h[8..12].try_into().unwrap());
        if version > FORMAT_VERSION {
            return Err(SnapshotError::NewerVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version < OLDEST_FORMAT_VERSION {
            return Err(SnapshotError::OlderVersion {
                found: version,
                supported: OLDEST_FORMAT_VERSION,
            });
        }
        let flags = u32::from_le_bytes(h[12..16].try_into().unwrap());
        let image_offset = u64::from_le_bytes(h[16..24].try_into().unwrap());
        let image_len = u64::from_le_bytes(h[24..32].try_into().unwrap());
        let body_offset = u64::from_le_bytes(h[32..40].try_into().unwrap());
        let body_len = u64::from_le_bytes(h[40..48].try_into().unwrap());
        let checksum = u128::from_le_bytes(h[48..64].try_into().unwrap());
        if flags != 0 {
            return Err(SnapshotError::corrupt(format!(
                "unknown header flags {flags:#x}"
            )));
        }
        if image_offset != IMAGE_OFFSET {
            return Err(SnapshotError::corrupt(format!(
                "image offset {image_offset}, expected {IMAGE_OFFSET}"
            )));
        }
        if body_len > MAX_BODY_LEN {
            return Err(SnapshotError::corrupt(format!(
                "body length {body_len} is implausible"
            )));
        }
        let image_end = IMAGE_OFFSET
            .checked_add(image_len)
            .ok_or_else(|| SnapshotError::corrupt("image length overflows"))?;
        if body_offset != image_end {
            return Err(SnapshotError::corrupt(format!(
                "body at {body_offset}, expected right after the image at {image_end}"
            )));
        }
        let end = body_offset
            .checked_add(body_len)
            .ok_or_else(|| SnapshotError::corrupt("body length overflows"))?;
        if found < end {
            return Err(SnapshotError::Truncated {
                expected: end,
                found,
            });
        }
        Ok(Header {
            version,
            image_len,
            body_offset,
            end,
            checksum,
        })
    }
}

/// The body of a snapshot whose header said `checksum`, `image_len` and
/// `version`: checked against the checksum, decoded and validated (every
/// run inside the image, the embedded module the one named).
pub(crate) fn read_body(
    header48: &[u8],
    body_bytes: &[u8],
    checksum: u128,
    image_len: u64,
    version: u32,
) -> Result<Body, SnapshotError> {
    if header_checksum(header48, body_bytes) != checksum {
        return Err(SnapshotError::Checksum {
            what: "header and body",
        });
    }
    let body: Body = postcard::from_bytes(body_bytes)
        .map_err(|e| SnapshotError::corrupt(format!("body does not decode: {e}")))?;
    validate_body(&body, image_len, version)?;
    if let Some(module) = &body.module {
        if sha256(module) != body.meta.module_sha256 {
            return Err(SnapshotError::corrupt(
                "the embedded module does not match the module hash",
            ));
        }
    }
    Ok(body)
}

/// The `pages` pages an LZ4 run starting at `first_page` decodes to. The
/// buffer is allocated fallibly: a run the machine cannot hold is an error,
/// not an abort (its size was bounded by the decoder already).
pub(crate) fn lz4_pages(
    stored: &[u8],
    pages: u64,
    first_page: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let len = pages
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| SnapshotError::corrupt("compressed run is too large"))?;
    let mut out = zeroed_buffer(len).ok_or_else(|| {
        SnapshotError::corrupt(format!(
            "compressed run at page {first_page} needs {len} bytes, which cannot be allocated"
        ))
    })?;
    let n = lz4_flex::block::decompress_into(stored, &mut out).map_err(|e| {
        SnapshotError::corrupt(format!(
            "compressed run at page {first_page} does not decode: {e}"
        ))
    })?;
    if n != len {
        return Err(SnapshotError::corrupt(format!(
            "compressed run at page {first_page} has {n} bytes, expected {len}"
        )));
    }
    Ok(out)
}

fn header_checksum(header48: &[u8], body: &[u8]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(header48);
    hasher.update(body);
    hasher.digest128()
}

/// A zero-filled buffer of `len` bytes, or `None` if it cannot be
/// allocated. Large buffers come zeroed from the kernel, so pages a
/// decoder never writes are never touched.
fn zeroed_buffer(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a non-zero size; a non-null result is a zeroed
    // allocation of exactly `len` bytes with `u8`'s alignment, from the
    // global allocator, which is what `Vec<u8>` frees it with.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, len, len))
    }
}

/// A file mapped read-only into memory.
pub struct MappedFile {
    ptr: *mut u8,
    len: usize,
    file: std::fs::File,
}

// SAFETY: the mapping is read-only and lives as long as the value.
unsafe impl Send for MappedFile {}
unsafe impl Sync for MappedFile {}

impl MappedFile {
    pub fn open(path: &Path) -> std::io::Result<MappedFile> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(MappedFile {
                ptr: std::ptr::null_mut(),
                len: 0,
                file,
            });
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only private mapping of a file we hold open.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MappedFile {
            ptr: ptr.cast(),
            len,
            file,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the mapping is valid for `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn file(&self) -> &std::fs::File {
        &self.file
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: we mapped exactly this range.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests;
