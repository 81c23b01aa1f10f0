//! Standby control planes keep copies of the leader's checkpoint files.
//!
//! The records live in etcd, shared; a checkpoint's bytes live in the data
//! directory of the control plane that received them. Were only the
//! leader to hold them, a leader lost together with an app's node (one
//! machine running both, say) would take the app's state with it: the new
//! leader would find the record but not its file, and restart the app
//! afresh. So while it stands by, a control plane reads the checkpoint
//! records every [`PASS_EVERY`] and fetches from the leader each file it
//! lacks (`GET /v1/checkpoints/NAME`, with the cluster token), keeping it
//! under the name its digest gives (`checkpoints/NAME@DIGEST.snap`) once
//! its bytes hash to that digest; files no record names any more go. When
//! it leads, it loads the records it holds the files of (`store::Store::load`):
//! at most a pass behind the leader it replaced, and it asks the nodes of
//! the apps it lacks checkpoints of for fresh ones, as before.
//!
//! Bounded: one file at a time, no larger than the largest checkpoint the
//! control plane accepts, each fetch with a timeout; a pass ends when the
//! standby is asked to lead (the caller drops it).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tern_api::client::Client;
use tern_api::tls::Role;

use crate::state::CheckpointRec;
use crate::store::{checkpoint_digest, checkpoint_file_name, valid_digest, write_atomic, EtcdUrl};
use crate::ControlConfig;

/// How often a standby looks for checkpoints it lacks.
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// The longest one file's fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Mirrors the leader's checkpoint files until dropped.
pub async fn run(cfg: ControlConfig, url: EtcdUrl, leader: String) {
    // Over TLS the token goes only to a server whose certificate names the
    // control plane (never to a node's, whatever the leader key says).
    let client = match &cfg.tls {
        Some(t) => Client::with_tls_for(Some(cfg.token.clone()), &t.tls, &Role::Control),
        None => Ok(Client::new(Some(cfg.token.clone()))),
    };
    let client = match client {
        Ok(c) => c.with_timeout(FETCH_TIMEOUT),
        Err(e) => {
            tracing::warn!("checkpoints are not mirrored from the leader: {e:#}");
            return;
        }
    };
    // Owner-only, as the leader's: checkpoints hold apps' memory.
    let dir = cfg.data_dir.join("checkpoints");
    if let Err(e) = tern_util::create_private_dir(&dir) {
        tracing::warn!(
            "checkpoints are not mirrored from the leader: {}: {e}",
            dir.display()
        );
        return;
    }
    let mut warned = false;
    loop {
        match pass(&cfg, &client, &url, &leader, &dir).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(files = n, %leader, "checkpoints mirrored from the leader"),
            Err(e) if !warned => {
                tracing::warn!(%leader, "cannot mirror checkpoints from the leader: {e:#}");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(PASS_EVERY).await;
    }
}

/// One pass: every file the records name and this directory lacks, then
/// the files they no longer name. Returns how many files came.
async fn pass(
    cfg: &ControlConfig,
    client: &Client,
    url: &EtcdUrl,
    leader: &str,
    dir: &Path,
) -> anyhow::Result<usize> {
    let u = url.clone();
    let read_at = std::time::SystemTime::now();
    let records =
        tokio::task::spawn_blocking(move || crate::store::checkpoint_records(&u)).await??;
    let mut fetched = 0;
    for (app, rec) in &records {
        let Some(digest) = rec.digest.as_deref().filter(|d| valid_digest(d)) else {
            continue;
        };
        if tern_api::names::check_app_name(app).is_err() || rec.bytes > cfg.max_blob_bytes as u64 {
            continue;
        }
        let path = dir.join(checkpoint_file_name(app, Some(digest)));
        if path.exists() {
            continue;
        }
        let (_, bytes) = client
            .send(
                hyper::Method::GET,
                &format!("{leader}/v1/checkpoints/{app}"),
                "application/octet-stream",
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("fetching the checkpoint of {app}: {e}"))?;
        // The leader may hold a newer one by now: the next pass takes it.
        let (digest, len) = (digest.to_string(), rec.bytes);
        let kept = tokio::task::spawn_blocking(move || {
            if bytes.len() as u64 != len || checkpoint_digest(&bytes) != digest {
                return Ok(false);
            }
            write_atomic(&path, &bytes).map(|()| true)
        })
        .await??;
        fetched += usize::from(kept);
    }
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || drop_unnamed(&dir, &records, read_at)).await?;
    Ok(fetched)
}

/// Removes `NAME@DIGEST.snap` files whose app's record names another
/// digest, or which no record names — among those older than the records
/// (`read_at`): a file written since may be named by a newer record, this
/// control plane's own if it leads by now (this may still run when it
/// does: a blocking task outlives the pass dropped at the takeover).
fn drop_unnamed(
    dir: &Path,
    records: &HashMap<String, CheckpointRec>,
    read_at: std::time::SystemTime,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(f) = file.to_str() else { continue };
        let Some((app, digest)) = f
            .strip_suffix(".snap")
            .and_then(|stem| stem.rsplit_once('@'))
        else {
            continue;
        };
        if !valid_digest(digest) {
            continue;
        }
        let named = records
            .get(app)
            .is_some_and(|r| r.digest.as_deref() == Some(digest));
        let older = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < read_at);
        if !named && older {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
