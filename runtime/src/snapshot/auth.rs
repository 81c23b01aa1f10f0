//! Snapshot files that leave the cluster (`tern snapshot -o`) carry the
//! cluster's authentication tag, so that `tern restore` can tell a file
//! this cluster made, unchanged, from anything else.
//!
//! Layout: the snapshot's bytes as they are, then a trailer of
//! [`TRAILER_LEN`] bytes: the magic `TERNTAG1`, the 32-byte tag
//! (HMAC-SHA256 of the snapshot's bytes under the cluster's key, computed
//! by the control plane, which keeps the key), and the length of the
//! snapshot's bytes as a little-endian u64. A file without the trailer is
//! a plain snapshot; the tag is checked by the control plane, not here.

/// The trailer's magic.
pub const TAG_MAGIC: &[u8; 8] = b"TERNTAG1";
/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 8 + 32 + 8;

/// Appends the tag to a snapshot's bytes.
pub fn seal(snapshot: &[u8], tag: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot.len() + TRAILER_LEN);
    out.extend_from_slice(snapshot);
    out.extend_from_slice(TAG_MAGIC);
    out.extend_from_slice(tag);
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    out
}

/// Splits a file into the snapshot's bytes and its tag, if it carries one
/// (a trailer whose length field matches the bytes before it).
pub fn unseal(file: &[u8]) -> (&[u8], Option<[u8; 32]>) {
    let Some(body_len) = file.len().checked_sub(TRAILER_LEN) else {
        return (file, None);
    };
    let trailer = &file[body_len..];
    let len = u64::from_le_bytes(trailer[40..48].try_into().expect("8 bytes"));
    if &trailer[..8] != TAG_MAGIC || len != body_len as u64 {
        return (file, None);
    }
    let tag: [u8; 32] = trailer[8..40].try_into().expect("32 bytes");
    (&file[..body_len], Some(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_unseal() {
        let tag = [7u8; 32];
        let sealed = seal(b"snapshot", &tag);
        assert_eq!(unseal(&sealed), (&b"snapshot"[..], Some(tag)));
        assert_eq!(unseal(b"snapshot"), (&b"snapshot"[..], None));
        // A damaged length: no tag (and the whole file is the snapshot,
        // whose own checks then refuse it).
        let mut bad = sealed.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(unseal(&bad).1, None);
    }
}
