//! Pinned checkpoints: the file a lazy restore reads by ranges.
//!
//! A restart from a checkpoint hands the node the checkpoint's digest and
//! length only; the node reads the bytes as its app touches them and in
//! the background (`GET /v1/checkpoints/NAME?digest=D&offset=O&len=L`).
//! Meanwhile a newer checkpoint may replace the app's latest and remove its
//! file, so the file the node reads is pinned first: a hard link to the
//! file the app's record names (`NAME@DIGEST.snap`, never written again),
//! made in the app's checkpoint turn. One pin per app: a newer pin, a
//! checkpoint of the app from its new node (which sends none before every
//! page is in), or the app's removal drops it. An operator's restore of a
//! snapshot file goes the same way: the bytes it was sent are kept as the
//! app's pin ([`stage`]) and named to the node.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::Result;
use crate::error::ApiError;
use crate::state::{CheckpointRec, Shared};
use crate::store::valid_digest;

/// The most bytes one range read answers.
pub const MAX_RANGE: u64 = 1 << 30;

fn pin_path(sh: &Shared, name: &str, digest: &str) -> PathBuf {
    sh.store
        .checkpoints_dir()
        .join(crate::store::pin_file_name(name, digest))
}

/// Pins the app's latest checkpoint: its record, digest (xxh3-128, hex)
/// and length. The record is read and the file linked in the app's
/// checkpoint turn, so the pin is of the bytes the record names.
pub async fn pin(sh: &Arc<Shared>, name: &str) -> Result<(CheckpointRec, String, u64)> {
    pin_checked(sh, name, None).await
}

/// `POST /v1/checkpoints/NAME/pin?digest=D` from node `node`, which runs
/// or receives the app: pins its latest checkpoint if that is `digest`
/// and lets the node read it by ranges (a post-copy target whose source
/// was lost restarts the app from it lazily). Returns its length.
pub async fn pin_for(sh: &Arc<Shared>, name: &str, digest: &str, node: &str) -> Result<u64> {
    if !valid_digest(digest) {
        return Err(ApiError::bad_request(
            "digest must be 32 lowercase hex digits",
        ));
    }
    let (_, _, len) = pin_checked(sh, name, Some(digest)).await?;
    sh.lock()
        .restoring
        .insert(name.to_string(), node.to_string());
    Ok(len)
}

async fn pin_checked(
    sh: &Arc<Shared>,
    name: &str,
    expected: Option<&str>,
) -> Result<(CheckpointRec, String, u64)> {
    let turn = sh.checkpoint_turn(name);
    let _turn = turn.lock().await;
    let rec = sh
        .lock()
        .checkpoints
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("app {name} has no checkpoint")))?;
    if let Some(want) = expected {
        if rec.digest.as_deref() != Some(want) {
            return Err(ApiError::conflict(format!(
                "checkpoint {want} of {name} is not the latest this control plane holds (generation {}, {})",
                rec.generation,
                rec.digest.as_deref().unwrap_or("recorded without a digest")
            )));
        }
    }
    let latest = sh.store.checkpoint_path(name, rec.digest.as_deref());
    let (sh2, name2, recorded) = (sh.clone(), name.to_string(), rec.clone());
    let (digest, len) = tokio::task::spawn_blocking(move || {
        let pinning = sh2.store.checkpoints_dir().join(format!("{name2}.pinning"));
        let _ = std::fs::remove_file(&pinning);
        std::fs::hard_link(&latest, &pinning)?;
        let digest = match recorded.digest {
            // Named by its digest when written; the node checks the bytes
            // it reads against it.
            Some(d) => d,
            // A file from before digests were recorded: hashed now.
            None => digest_of(&pinning)?,
        };
        let len = std::fs::metadata(&pinning)?.len();
        if len != recorded.bytes {
            let _ = std::fs::remove_file(&pinning);
            return Err(std::io::Error::other(format!(
                "it holds {len} bytes where its record says {}",
                recorded.bytes
            )));
        }
        unpin_all(&sh2, &name2);
        std::fs::rename(&pinning, pin_path(&sh2, &name2, &digest))?;
        Ok::<_, std::io::Error>((digest, len))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot pin the checkpoint of {name}: {e}")))?;
    Ok((rec, digest, len))
}

/// Keeps `bytes` (a snapshot an operator sent to be restored as app
/// `name`) as the app's pinned file, for its node to read by ranges:
/// written whole, then renamed into place in the app's checkpoint turn,
/// replacing any older pin of the app. Returns its digest.
pub async fn stage(sh: &Arc<Shared>, name: &str, bytes: &Bytes) -> Result<String> {
    let turn = sh.checkpoint_turn(name);
    let _turn = turn.lock().await;
    let (sh2, name2, data) = (sh.clone(), name.to_string(), bytes.clone());
    tokio::task::spawn_blocking(move || {
        let digest = crate::store::checkpoint_digest(&data);
        let staging = sh2.store.checkpoints_dir().join(format!("{name2}.pinning"));
        // Read back by the node while it restores, and not needed after a
        // crash of this process (the restore fails with it): no fsync.
        std::fs::write(&staging, &data)?;
        unpin_all(&sh2, &name2);
        std::fs::rename(&staging, pin_path(&sh2, &name2, &digest))?;
        Ok::<_, std::io::Error>(digest)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("cannot keep the snapshot of {name}: {e}")))
}

fn digest_of(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// Drops every pin of the app.
pub fn unpin_all(sh: &Shared, name: &str) {
    remove_digest_files(sh, &format!("{name}."), ".pinned");
}

/// Removes every checkpoint file and pin of an app being removed.
pub fn remove_files(sh: &Shared, name: &str) {
    unpin_all(sh, name);
    let _ = std::fs::remove_file(sh.store.checkpoint_path(name, None));
    remove_digest_files(sh, &format!("{name}@"), ".snap");
}

/// Removes the files `PREFIX<digest>SUFFIX` of the checkpoints directory.
fn remove_digest_files(sh: &Shared, prefix: &str, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(sh.store.checkpoints_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        let digest = f
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix));
        if digest.is_some_and(valid_digest) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Opens the app's latest checkpoint file in its checkpoint turn (a newer
/// checkpoint may remove the file right after; what is open stays
/// readable): its record and the open file.
pub async fn open_latest(sh: &Arc<Shared>, name: &str) -> Result<(CheckpointRec, tokio::fs::File)> {
    let turn = sh.checkpoint_turn(name);
    let _turn = turn.lock().await;
    let rec = sh
        .lock()
        .checkpoints
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("app {name} has no checkpoint")))?;
    let file = tokio::fs::File::open(sh.store.checkpoint_path(name, rec.digest.as_deref()))
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the checkpoint of {name}: {e}")))?;
    Ok((rec, file))
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
