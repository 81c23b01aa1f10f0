//! The source side of a migration, inside the app's actor: dirty-page
//! tracking, the first copy, the rounds of written pages, and the freeze
//! that ends them. Each runs as one command between two of the app's calls.

use std::sync::Arc;
use std::time::Instant;

use tern_api::types::AppState;
use tern_runtime::dirty::start_tracking;
use tern_runtime::instance::Instance;
use tern_runtime::snapshot::{PageChunk, Snapshot, PAGE_SIZE};

use super::actor::{Actor, CHECKPOINT_KEY, SERVED_KEY};
use super::{FinalCapture, FreezeResult, PrecopyFirst};
use crate::error::{NodeError, Result};

/// The last dirty pages of a hot move go in its commit frame when there
/// are at most this many (4 MiB, one slice); more go in pipelined slices
/// before it, which take less of the pause than one large frame read,
/// encoded, sent, decoded and applied a step at a time.
const FINAL_INLINE_PAGES: usize = 1024;

impl Actor {
    pub(super) fn precopy_start(&mut self, base: Option<Arc<Snapshot>>) -> Result<PrecopyFirst> {
        let served = self.served().to_string();
        let checkpoint = self.checkpoint_unix_ms();
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| NodeError::conflict(format!("app {} is not running", self.spec.name)))?;
        set_extra(inst, SERVED_KEY, served);
        set_checkpoint_meta(inst, checkpoint);
        // Track first, then copy: whatever is written after this point is
        // in the next round's dirty set.
        self.trackers = inst
            .memory_regions()
            .map_err(|e| NodeError::internal(e.to_string()))?
            .into_iter()
            .map(|r| (r.index, start_tracking(r.base, r.reserved, r.size)))
            .collect();
        let kinds: Vec<String> = self
            .trackers
            .iter()
            .map(|(_, t)| format!("{:?}", t.kind()).to_lowercase())
            .collect();
        *self
            .shared
            .tracking
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            kinds.first().cloned().unwrap_or_else(|| "none".into());
        let first = match base {
            None => PrecopyFirst::Sliced {
                state: Box::new(
                    inst.snapshot_state_only()
                        .map_err(|e| NodeError::internal(e.to_string()))?,
                ),
                memories: inst
                    .memory_regions()
                    .map_err(|e| NodeError::internal(e.to_string()))?
                    .into_iter()
                    .map(|r| (r.index, (r.size / PAGE_SIZE) as u64))
                    .collect(),
            },
            Some(cp) => PrecopyFirst::Delta(
                inst.pages_differing_from(&cp)
                    .map_err(|e| NodeError::internal(e.to_string()))?,
            ),
        };
        self.set_state(AppState::Migrating, None);
        Ok(first)
    }

    /// The pages written since the last collect (or the start), per
    /// memory, ascending; tracking starts over.
    pub(super) fn dirty_pages(&mut self) -> Result<super::DirtyPages> {
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| NodeError::conflict("app is not running".to_string()))?;
        let regions = inst
            .memory_regions()
            .map_err(|e| NodeError::internal(e.to_string()))?;
        let mut dirty = Vec::new();
        for (index, tracker) in &mut self.trackers {
            let r = regions
                .iter()
                .find(|r| r.index == *index)
                .ok_or_else(|| NodeError::internal("memory vanished".to_string()))?;
            let pages = match tracker.collect(r.base, r.size) {
                Ok(p) => p,
                // A tracker that lost track: every page is dirty.
                Err(_) => (0..(r.size / PAGE_SIZE) as u64).collect(),
            };
            dirty.push((*index, pages));
        }
        Ok(dirty)
    }

    /// The pages written since the last collect (the last round, with the
    /// app paused): read, when there are at most [`FINAL_INLINE_PAGES`]
    /// (they go in the commit frame), else left for slices.
    fn collect_dirty(&mut self) -> Result<(Vec<PageChunk>, super::DirtyPages)> {
        let dirty = self.dirty_pages()?;
        let count: usize = dirty.iter().map(|(_, pages)| pages.len()).sum();
        if count > FINAL_INLINE_PAGES {
            return Ok((Vec::new(), dirty));
        }
        let inst = self.inst.as_mut().expect("dirty_pages checked");
        let chunks = dirty
            .iter()
            .map(|(index, pages)| {
                inst.read_pages(*index, pages)
                    .map_err(|e| NodeError::internal(e.to_string()))
            })
            .collect::<Result<_>>()?;
        Ok((chunks, Vec::new()))
    }

    pub(super) fn freeze(&mut self, cold: bool) -> Result<(Instant, FreezeResult)> {
        let at = Instant::now();
        let served = self.served().to_string();
        let checkpoint = self.checkpoint_unix_ms();
        if self.inst.is_none() {
            return Err(self.not_running());
        }
        self.frozen = true;
        let result = (|| {
            let inst = self.inst.as_mut().expect("checked");
            set_extra(inst, SERVED_KEY, served);
            set_checkpoint_meta(inst, checkpoint);
            if cold {
                inst.run_snapshot_hook(true)
                    .map_err(|e| NodeError::internal(e.to_string()))?;
                let state = inst
                    .snapshot_state_only()
                    .map_err(|e| NodeError::internal(e.to_string()))?;
                let memories = inst
                    .memory_regions()
                    .map_err(|e| NodeError::internal(e.to_string()))?
                    .into_iter()
                    .map(|r| (r.index, (r.size / PAGE_SIZE) as u64))
                    .collect();
                return Ok(FreezeResult::Cold {
                    state: Box::new(state),
                    memories,
                });
            }
            inst.run_snapshot_hook(true)
                .map_err(|e| NodeError::internal(e.to_string()))?;
            let (chunks, rest) = self.collect_dirty()?;
            let inst = self.inst.as_mut().expect("checked");
            let state = inst
                .snapshot_state_only()
                .map_err(|e| NodeError::internal(e.to_string()))?;
            Ok(FreezeResult::Final(Box::new(FinalCapture {
                chunks,
                rest,
                state,
            })))
        })();
        if result.is_err() {
            self.frozen = false;
        }
        result.map(|r| (at, r))
    }
}

/// Sets one of the platform's metadata entries kept in the app's snapshots.
/// Carries when the app's latest checkpoint was taken in its snapshot.
pub(super) fn set_checkpoint_meta(inst: &mut Instance, unix_ms: Option<u64>) {
    if let Some(t) = unix_ms {
        set_extra(inst, CHECKPOINT_KEY, t.to_string());
    }
}

pub(super) fn set_extra(inst: &mut Instance, key: &str, value: String) {
    let extra = inst.extra_meta_mut();
    extra.retain(|(k, _)| k != key);
    extra.push((key.to_string(), value));
}
