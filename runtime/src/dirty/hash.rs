//! The hashing tracker: an xxh3-64 hash of every page, compared with the
//! previous round's. Portable (it needs nothing from the kernel) and exact
//! (it reports only pages whose bytes changed), at O(memory) per round.

use std::io;

use super::{DirtyTracker, TrackerKind, PAGE};

fn pages_in(size: usize) -> usize {
    size.div_ceil(PAGE)
}

/// Portable fallback: xxh3-64 of every page, compared with the previous
/// round's hashes. Reports exactly the pages whose content changed.
#[derive(Debug, Clone)]
pub struct HashTracker {
    hashes: Vec<u64>,
    /// Accessible size at the last collect: a partial last page was hashed
    /// over its accessible bytes only.
    size: usize,
    zero_page_hash: u64,
}

impl HashTracker {
    /// Hashes the first `size` bytes at `base` (which must be readable).
    pub fn start(base: *const u8, size: usize) -> HashTracker {
        let zero_page_hash = xxhash_rust::xxh3::xxh3_64(&[0u8; PAGE]);
        let (hashes, size) = if base.is_null() {
            (Vec::new(), 0)
        } else {
            (
                (0..pages_in(size))
                    .map(|i| xxhash_rust::xxh3::xxh3_64(page_bytes(base, size, i)))
                    .collect(),
                size,
            )
        };
        HashTracker {
            hashes,
            size,
            zero_page_hash,
        }
    }

    /// The hash of every page as of the last collect (or start).
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    fn zero_hash(&self, len: usize) -> u64 {
        if len == PAGE {
            self.zero_page_hash
        } else {
            xxhash_rust::xxh3::xxh3_64(&vec![0u8; len])
        }
    }
}

/// Page `i` of the `size` accessible bytes at `base` (shorter if it is a
/// partial last page).
fn page_bytes<'a>(base: *const u8, size: usize, i: usize) -> &'a [u8] {
    let off = i * PAGE;
    let len = PAGE.min(size - off);
    // SAFETY: the caller guarantees (module docs) that `base` points to `size`
    // readable bytes that no one writes while a collect runs; off + len <= size.
    unsafe { std::slice::from_raw_parts(base.add(off), len) }
}

impl DirtyTracker for HashTracker {
    fn collect(&mut self, base: *const u8, size: usize) -> io::Result<Vec<u64>> {
        if base.is_null() && size > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hash dirty tracker: collect on a null memory base",
            ));
        }
        let n = pages_in(size);
        let mut dirty = Vec::new();
        self.hashes.truncate(n);
        for i in 0..n {
            let bytes = page_bytes(base, size, i);
            let h = xxhash_rust::xxh3::xxh3_64(bytes);
            let changed = match self.hashes.get_mut(i) {
                Some(old) => {
                    // A partial last page hashed over fewer bytes than now:
                    // report it rather than guess.
                    let old_len = PAGE.min(self.size - i * PAGE);
                    let changed = old_len != bytes.len() || *old != h;
                    *old = h;
                    changed
                }
                None => {
                    // A page added by growth: it was zero before it became
                    // accessible.
                    self.hashes.push(h);
                    h != self.zero_hash(bytes.len())
                }
            };
            if changed {
                dirty.push(i as u64);
            }
        }
        self.size = size;
        Ok(dirty)
    }

    fn kind(&self) -> TrackerKind {
        TrackerKind::Hash
    }
}
