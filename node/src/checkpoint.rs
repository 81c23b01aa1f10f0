//! Checkpoints: a snapshot of each local app taken every
//! [`CHECKPOINT_INTERVAL`](crate::CHECKPOINT_INTERVAL), kept on this node's
//! disk and in memory (hybrid moves start from it) and sent to the control
//! plane (restarts elsewhere come from it).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tern_runtime::snapshot::Snapshot;

use crate::app::{AppHandle, Cmd};
use tern_api::types::CheckpointStatus;

use crate::error::{NodeError, Result};
use crate::node::{lock, Node};

/// The digest that names a checkpoint: xxh3-128 of its bytes, in hex.
pub(crate) fn checkpoint_digest(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// A snapshot's encoded bytes as a request or response body, without
/// copying them (the body holds the snapshot and frees it once sent).
pub(crate) fn snapshot_body(snap: Arc<Snapshot>) -> Bytes {
    struct Owned(Arc<Snapshot>);
    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    Bytes::from_owner(Owned(snap))
}

impl Node {
    pub(crate) fn checkpoint_path(&self, app: &str) -> PathBuf {
        self.data_dir()
            .join("checkpoints")
            .join(format!("{app}.snap"))
    }

    pub(crate) fn latest_checkpoint(&self, app: &str) -> Option<(String, Arc<Snapshot>)> {
        lock(&self.checkpoints).get(app).cloned()
    }

    pub(crate) fn forget_checkpoint(&self, app: &str) {
        lock(&self.checkpoints).remove(app);
    }

    /// The checkpoint of `app` with this digest: held here, or fetched from
    /// `url` (the control plane's latest), or, when that one is another
    /// (the app was checkpointed since the move chose its base), from the
    /// source at `source_url`, which keeps it for the move.
    pub(crate) async fn checkpoint_for(
        &self,
        app: &str,
        digest: &str,
        url: Option<&str>,
        source_url: Option<&str>,
    ) -> Result<(Arc<Snapshot>, u64)> {
        if let Some((d, s)) = self.latest_checkpoint(app) {
            if d == digest {
                return Ok((s, 0));
            }
        }
        if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeError::bad_request(format!(
                "`{digest}` is not a checkpoint digest"
            )));
        }
        let path = self
            .data_dir()
            .join("checkpoints")
            .join(format!("{app}-{digest}.snap"));
        if let Ok(s) = Snapshot::open(&path, false) {
            return Ok((Arc::new(s), 0));
        }
        let url = url.ok_or_else(|| {
            NodeError::conflict(format!(
                "this node does not hold checkpoint {digest} of {app}"
            ))
        })?;
        let bytes = match self.fetch_checkpoint(app, digest, url).await {
            Ok(b) => b,
            Err(e) => match source_url.filter(|u| plain_url(u)) {
                Some(source) => self
                    .fetch_checkpoint(
                        app,
                        digest,
                        &format!("{source}/v1/checkpoints/{app}?digest={digest}"),
                    )
                    .await
                    .map_err(|e2| NodeError::conflict(format!("{e}; and from the source: {e2}")))?,
                None => return Err(NodeError::conflict(e)),
            },
        };
        let n = bytes.len() as u64;
        // Only the newest fetched copy of an app's checkpoint is ever asked
        // for again: older ones go (an instance restored from one keeps its
        // mapping), or a node receiving the same app again and again would
        // fill its disk with them.
        self.remove_checkpoint_files(app, false);
        tern_util::write_atomic(&path, &bytes)
            .map_err(|e| NodeError::internal(format!("cannot keep the checkpoint: {e}")))?;
        let s = Snapshot::open(&path, true)
            .map_err(|e| NodeError::conflict(format!("the fetched checkpoint is damaged: {e}")))?;
        Ok((Arc::new(s), n))
    }

    /// The checkpoint of `app` at `url`, if it is the one with `digest`.
    async fn fetch_checkpoint(
        &self,
        app: &str,
        digest: &str,
        url: &str,
    ) -> std::result::Result<Bytes, String> {
        let (_, bytes) = self
            .client
            .send(
                hyper::Method::GET,
                url,
                "application/octet-stream",
                Bytes::new(),
            )
            .await
            .map_err(|e| format!("cannot fetch the checkpoint of {app}: {e}"))?;
        if checkpoint_digest(&bytes) != digest {
            return Err(format!(
                "the checkpoint of {app} at {url} is not the one the source holds (it changed meanwhile)"
            ));
        }
        Ok(bytes)
    }

    /// Takes a checkpoint of a local app now: written to disk (off the
    /// async workers, durably), kept mapped from that file rather than in
    /// memory, and sent to the control plane (restarts elsewhere come from
    /// it). How it went is in the app's status and logs.
    pub(crate) async fn checkpoint(&self, handle: &AppHandle) -> Result<(String, u64)> {
        let app = handle.name().to_string();
        // The state's time: the app's actor takes the snapshot after every
        // call answered before now (not when the file is written and sent,
        // which may take a while: a call answered meanwhile is not in it).
        let now = tern_util::now_unix_ms();
        let outcome = self.take_checkpoint(handle).await;
        let previous = handle.status().checkpoint.unwrap_or_default();
        self.metrics.checkpointed(
            outcome.is_ok(),
            matches!(&outcome, Ok((_, _, sent)) if sent.is_ok()),
        );
        match &outcome {
            Ok((_, bytes, Ok(()))) => handle.set_checkpoint(CheckpointStatus {
                unix_ms: Some(now),
                bytes: *bytes,
                error: None,
            }),
            // Kept here but not by the control plane: a restart elsewhere
            // would start from the one before, which the status keeps
            // naming (and the next attempt comes sooner: `Node::install`).
            Ok((_, _, Err(e))) => handle.set_checkpoint(CheckpointStatus {
                error: Some(e.clone()),
                ..previous.clone()
            }),
            Err(e) => {
                handle
                    .logs()
                    .line(&format!("WARN tern: checkpoint of {app} failed: {e}"));
                tracing::warn!(app = %app, "checkpoint failed: {e}");
                handle.set_checkpoint(CheckpointStatus {
                    error: Some(e.to_string()),
                    ..previous
                });
            }
        }
        outcome.map(|(digest, bytes, _)| (digest, bytes))
    }

    /// The checkpoint itself: its digest, its size, and whether the control
    /// plane got it.
    async fn take_checkpoint(
        &self,
        handle: &AppHandle,
    ) -> Result<(String, u64, std::result::Result<(), String>)> {
        let snap = handle.ask(Cmd::Snapshot).await??;
        let app = handle.name().to_string();
        let path = self.checkpoint_path(&app);
        let (digest, mapped) = tokio::task::spawn_blocking(move || {
            let digest = checkpoint_digest(snap.as_bytes());
            snap.write_file(&path).map_err(|e| {
                NodeError::internal(format!("cannot write checkpoint {}: {e}", path.display()))
            })?;
            drop(snap);
            // Kept mapped from its file: the page cache holds it, not the
            // node's heap, however large the app.
            let mapped = Snapshot::open(&path, true).map_err(|e| {
                NodeError::internal(format!(
                    "cannot read back checkpoint {}: {e}",
                    path.display()
                ))
            })?;
            Ok::<_, NodeError>((digest, Arc::new(mapped)))
        })
        .await??;
        let bytes = mapped.as_bytes().len() as u64;
        lock(&self.checkpoints).insert(app.clone(), (digest.clone(), mapped.clone()));
        let generation = handle.spec().generation;
        // To the control plane that leads: the next one is tried when the
        // current one does not answer or stands by.
        let mut sent = Ok(());
        for _ in 0..self.control_count() {
            let Some(control) = self.control() else {
                break;
            };
            let url = format!("{control}/v1/checkpoints/{app}?generation={generation}");
            match self
                .client
                .put_bytes(&url, snapshot_body(mapped.clone()))
                .await
            {
                Ok(_) => {
                    sent = Ok(());
                    break;
                }
                Err(e) => {
                    self.control_failed(&control, &e);
                    handle.logs().line(&format!(
                        "WARN tern: checkpoint not sent to the control plane at {control}: {e}"
                    ));
                    sent = Err(format!("not sent to the control plane: {e}"));
                    if self.control().as_deref() == Some(control.as_str()) {
                        break;
                    }
                }
            }
        }
        Ok((digest, bytes, sent))
    }

    /// Forgets every checkpoint of a removed app, in memory and on disk.
    pub(crate) fn remove_checkpoints(&self, app: &str) {
        self.forget_checkpoint(app);
        self.remove_checkpoint_files(app, true);
    }

    /// Removes the copies of `app`'s checkpoints fetched from elsewhere
    /// (`APP-DIGEST.snap`), and with `own` its own (`APP.snap`) too.
    fn remove_checkpoint_files(&self, app: &str, own_too: bool) {
        let dir = self.data_dir().join("checkpoints");
        let own = format!("{app}.snap");
        let fetched = format!("{app}-");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let fetched_copy = name
                    .strip_prefix(&fetched)
                    .and_then(|rest| rest.strip_suffix(".snap"))
                    .is_some_and(|digest| {
                        digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit())
                    });
                if (own_too && name == own) || fetched_copy {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Whether `url` is a node's plain base URL (scheme, host and port): what
/// a source may name as where to fetch from, nothing a query could hide in.
pub(crate) fn plain_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|p| {
        url.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
    })
}
