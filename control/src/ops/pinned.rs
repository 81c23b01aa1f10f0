//! Pinned checkpoints: the file a lazy restore reads by ranges.
//!
//! A restart from a checkpoint hands the node the checkpoint's digest and
//! length only; the node reads the bytes as its app touches them and in
//! the background (`GET /v1/checkpoints/NAME?digest=D&offset=O&len=L`).
//! Meanwhile a newer checkpoint may replace the app's latest, so the file
//! the node reads is pinned first: a hard link to the latest file, named by
//! its digest, which nothing writes again (checkpoints replace the latest
//! by rename, never in place). One pin per app: a newer pin, a checkpoint
//! of the app from its new node (which sends none before every page is
//! in), or the app's removal drops it.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::Result;
use crate::error::ApiError;
use crate::state::Shared;

/// The most bytes one range read answers.
pub const MAX_RANGE: u64 = 1 << 30;

fn pin_path(sh: &Shared, name: &str, digest: &str) -> PathBuf {
    sh.store
        .checkpoint_path(name)
        .with_file_name(format!("{name}.{digest}.pinned"))
}

fn valid_digest(d: &str) -> bool {
    d.len() == 32 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Pins the app's latest checkpoint: its digest (xxh3-128, hex) and length.
pub async fn pin(sh: &Arc<Shared>, name: &str) -> Result<(String, u64)> {
    let latest = sh.store.checkpoint_path(name);
    let sh2 = sh.clone();
    let name2 = name.to_string();
    tokio::task::spawn_blocking(move || {
        let pinning = latest.with_file_name(format!("{name2}.pinning"));
        let _ = std::fs::remove_file(&pinning);
        std::fs::hard_link(&latest, &pinning)?;
        let mut file = std::fs::File::open(&pinning)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let digest = format!("{:032x}", hasher.digest128());
        unpin_all(&sh2, &name2);
        std::fs::rename(&pinning, pin_path(&sh2, &name2, &digest))?;
        Ok::<_, std::io::Error>((digest, len))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot pin the checkpoint of {name}: {e}")))
}

/// Drops every pin of the app.
pub fn unpin_all(sh: &Shared, name: &str) {
    let dir = sh.store.checkpoint_path(name);
    let Some(dir) = dir.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{name}.");
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        let digest = f
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".pinned"));
        if digest.is_some_and(valid_digest) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Bytes `[offset, offset + len)` of the app's pinned checkpoint `digest`.
pub async fn read_range(
    sh: &Arc<Shared>,
    name: &str,
    digest: &str,
    offset: u64,
    len: u64,
) -> Result<Bytes> {
    if !valid_digest(digest) {
        return Err(ApiError::bad_request(
            "digest must be 32 lowercase hex digits",
        ));
    }
    if len > MAX_RANGE {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_RANGE} bytes at once"
        )));
    }
    let path = pin_path(sh, name, digest);
    let (name, digest) = (name.to_string(), digest.to_string());
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path).map_err(|_| {
            ApiError::not_found(format!(
                "no checkpoint {digest} of {name} is held for reading (a newer restart or checkpoint replaced it)"
            ))
        })?;
        let size = file
            .metadata()
            .map_err(|e| ApiError::internal(e.to_string()))?
            .len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ApiError::bad_request(format!(
                "bytes {offset}+{len} lie past the end of the checkpoint ({size} bytes)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| ApiError::internal(format!("cannot read the checkpoint: {e}")))?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}
