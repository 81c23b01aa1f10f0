//! Small records tern keeps on disk beside its snapshots (the compiled-
//! module cache's module info):
//!
//! ```text
//! magic "TERNRECD" | version u32 | postcard body | xxh3-64 of everything before it
//! ```
//! A record that does not check out is refused, never misread; the cache
//! then compiles the module again.

use serde::de::DeserializeOwned;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use super::SnapshotError;

const RECORD_MAGIC: &[u8; 8] = b"TERNRECD";
const RECORD_VERSION: u32 = 1;

/// Encodes a record.
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
    out.extend_from_slice(&postcard::to_stdvec(value).expect("records serialize"));
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Checks and decodes a record.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    if bytes.len() < 8 + 4 + 8 {
        return Err(SnapshotError::Truncated {
            expected: 20,
            found: bytes.len() as u64,
        });
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if xxh3_64(body).to_le_bytes() != sum {
        return Err(SnapshotError::Checksum { what: "record" });
    }
    if &body[..8] != RECORD_MAGIC {
        return Err(SnapshotError::corrupt("not a tern record"));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != RECORD_VERSION {
        return Err(SnapshotError::corrupt(format!(
            "record version {version}, expected {RECORD_VERSION}"
        )));
    }
    postcard::from_bytes(&body[12..]).map_err(|e| SnapshotError::corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let value = (7u32, "module".to_string(), vec![1u64, 2, 3]);
        let bytes = encode_record(&value);
        assert_eq!(
            decode_record::<(u32, String, Vec<u64>)>(&bytes).unwrap(),
            value
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                decode_record::<(u32, String, Vec<u64>)>(&bad).is_err(),
                "flip at {i}"
            );
        }
        assert!(decode_record::<(u32, String, Vec<u64>)>(&bytes[..bytes.len() - 1]).is_err());
    }
}
