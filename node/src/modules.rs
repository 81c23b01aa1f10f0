//! The node's module store: modules by sha256, loaded in the engine,
//! kept on disk, or fetched from the control plane. A file on disk is
//! written atomically and checked against its hash whenever it is read: a
//! torn or damaged one is removed and fetched again, never used.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tern_runtime::engine::LoadedModule;

use crate::error::{NodeError, Result};
use crate::node::Node;

impl Node {
    pub(crate) fn module_path(&self, sha_hex: &str) -> PathBuf {
        self.data_dir()
            .join("modules")
            .join(format!("{sha_hex}.wasm"))
    }

    /// Whether the node holds the module (loaded, or on disk and intact).
    pub(crate) fn has_module(&self, sha: &[u8; 32]) -> bool {
        self.runtime.loaded(sha).is_some() || self.read_module_file(sha).is_some()
    }

    /// The module's bytes from disk, if the file is there and hashes right
    /// (a damaged file is removed so that the module is fetched again).
    fn read_module_file(&self, sha: &[u8; 32]) -> Option<Vec<u8>> {
        let path = self.module_path(&hex::encode(sha));
        let bytes = std::fs::read(&path).ok()?;
        if tern_runtime::sha256(&bytes) == *sha {
            return Some(bytes);
        }
        tracing::warn!(path = %path.display(), "a stored module does not match its hash: removed, it will be fetched again");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Loads a module in the engine (compiling it off the async workers).
    pub(crate) async fn load_module(&self, bytes: Vec<u8>) -> Result<Arc<LoadedModule>> {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.load(bytes))
            .await?
            .map_err(|e| NodeError::bad_request(e.to_string()))
    }

    /// Keeps a module's bytes on disk (the engine holds it loaded).
    pub(crate) fn keep_module(&self, module: &LoadedModule) -> Result<()> {
        tern_util::write_atomic(
            &self.module_path(&module.hash_hex()),
            module.original.as_slice(),
        )
        .map_err(|e| NodeError::internal(format!("cannot store module: {e}")))
    }

    /// Takes a module uploaded for this node: it must hash to `sha` and
    /// validate; then it is loaded and kept.
    pub(crate) async fn put_module(&self, sha: [u8; 32], body: Bytes) -> Result<()> {
        if tern_runtime::sha256(&body) != sha {
            return Err(NodeError::bad_request(
                "module bytes do not hash to the sha256 in the path",
            ));
        }
        let module = self.load_module(body.to_vec()).await?;
        self.keep_module(&module)
    }

    /// A module by sha256: loaded, on disk, or fetched from the control plane.
    pub(crate) async fn module(&self, sha: &[u8; 32]) -> Result<Arc<LoadedModule>> {
        if let Some(m) = self.runtime.loaded(sha) {
            return Ok(m);
        }
        let hex = hex::encode(sha);
        let path = self.module_path(&hex);
        let bytes = match self.read_module_file(sha) {
            Some(b) => b,
            None => {
                let control = self.control().ok_or_else(|| {
                    NodeError::conflict(format!(
                        "module {hex} is not on this node: upload it first"
                    ))
                })?;
                let b = self
                    .client
                    .send(
                        hyper::Method::GET,
                        &format!("{control}/v1/modules/{hex}"),
                        "application/octet-stream",
                        Bytes::new(),
                    )
                    .await
                    .map_err(|e| {
                        self.control_failed(&control, &e);
                        NodeError::conflict(format!(
                            "module {hex} is not on this node and the control plane cannot give it: {e}"
                        ))
                    })?
                    .1
                    .to_vec();
                if tern_runtime::sha256(&b) != *sha {
                    return Err(NodeError::conflict(format!(
                        "the control plane's copy of module {hex} does not match its hash"
                    )));
                }
                let _ = tern_util::write_atomic(&path, &b);
                b
            }
        };
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.load(bytes))
            .await?
            .map_err(|e| NodeError::conflict(e.to_string()))
    }
}
