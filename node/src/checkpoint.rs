//! Checkpoints: a snapshot of each local app taken every
//! [`CHECKPOINT_INTERVAL`](crate::CHECKPOINT_INTERVAL), kept on this node's
//! disk and in memory (hybrid moves start from it) and sent to the control
//! plane (restarts elsewhere come from it).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tern_runtime::snapshot::Snapshot;

use crate::app::{AppHandle, Cmd};
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

    /// The checkpoint of `app` with this digest: held here, or fetched from `url`.
    pub(crate) async fn checkpoint_for(
        &self,
        app: &str,
        digest: &str,
        url: Option<&str>,
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
        let (_, bytes) = self
            .client
            .send(
                hyper::Method::GET,
                url,
                "application/octet-stream",
                Bytes::new(),
            )
            .await
            .map_err(|e| {
                NodeError::conflict(format!("cannot fetch the checkpoint of {app}: {e}"))
            })?;
        if checkpoint_digest(&bytes) != digest {
            return Err(NodeError::conflict(format!(
                "the checkpoint of {app} at {url} is not the one the source holds (it changed meanwhile)"
            )));
        }
        let n = bytes.len() as u64;
        tern_util::write_atomic(&path, &bytes)
            .map_err(|e| NodeError::internal(format!("cannot keep the checkpoint: {e}")))?;
        let s = Snapshot::open(&path, true)
            .map_err(|e| NodeError::conflict(format!("the fetched checkpoint is damaged: {e}")))?;
        Ok((Arc::new(s), n))
    }

    /// Takes a checkpoint of a local app now: kept on disk and in memory,
    /// and sent to the control plane (restarts elsewhere come from it).
    pub(crate) async fn checkpoint(&self, handle: &AppHandle) -> Result<(String, u64)> {
        let snap = handle.ask(Cmd::Snapshot).await??;
        let digest = checkpoint_digest(snap.as_bytes());
        let app = handle.name().to_string();
        let path = self.checkpoint_path(&app);
        snap.write_file(&path)
            .map_err(|e| NodeError::internal(format!("cannot write checkpoint: {e}")))?;
        let snap = Arc::new(snap);
        lock(&self.checkpoints).insert(app.clone(), (digest.clone(), snap.clone()));
        let generation = handle.spec().generation;
        // To the control plane that leads: the next one is tried when the
        // current one does not answer or stands by.
        for _ in 0..self.control_count() {
            let Some(control) = self.control() else {
                break;
            };
            let url = format!("{control}/v1/checkpoints/{app}?generation={generation}");
            match self
                .client
                .put_bytes(&url, snapshot_body(snap.clone()))
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    self.control_failed(&control, &e);
                    handle.logs().line(&format!(
                        "WARN tern: checkpoint not sent to the control plane at {control}: {e}"
                    ));
                    if self.control().as_deref() == Some(control.as_str()) {
                        break;
                    }
                }
            }
        }
        Ok((digest, snap.as_bytes().len() as u64))
    }
}
