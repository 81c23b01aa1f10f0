//! Generation fencing: every copy of an app carries a generation, and a
//! node refuses a copy older than the newest it has seen, so an app never
//! runs in two places at once. What a node has seen is kept on its disk
//! (written durably before it counts) and survives a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{NodeError, Result};
use crate::node::{lock, Node};

fn path(dir: &Path) -> PathBuf {
    dir.join("generations.json")
}

/// The generations a node saw before it restarted.
pub(crate) fn load(dir: &Path) -> HashMap<String, u64> {
    std::fs::read(path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn persist(dir: &Path, g: &HashMap<String, u64>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(g).map_err(std::io::Error::other)?;
    tern_util::write_atomic(&path(dir), &bytes)
}

fn stale(app: &str, generation: u64, seen: u64) -> NodeError {
    NodeError::conflict(format!(
        "app {app} generation {generation} is older than generation {seen} this node has seen: refusing a stale copy"
    ))
}

impl Node {
    /// Records a generation; refuses one older than the newest seen, and
    /// one that cannot be written to disk (a fence a crash can undo is none).
    pub(crate) fn admit_generation(&self, app: &str, generation: u64) -> Result<()> {
        let mut g = lock(&self.generations);
        let seen = g.get(app).copied().unwrap_or(0);
        if generation < seen {
            return Err(stale(app, generation, seen));
        }
        if seen == generation {
            return Ok(());
        }
        let mut next = g.clone();
        next.insert(app.to_string(), generation);
        persist(self.data_dir(), &next).map_err(|e| {
            NodeError::internal(format!(
                "cannot record generation {generation} of app {app} on this node's disk: {e}"
            ))
        })?;
        *g = next;
        Ok(())
    }

    /// Whether a generation would be admitted (without recording it).
    pub(crate) fn check_generation(&self, app: &str, generation: u64) -> Result<()> {
        let seen = lock(&self.generations).get(app).copied().unwrap_or(0);
        if generation < seen {
            return Err(stale(app, generation, seen));
        }
        Ok(())
    }
}
