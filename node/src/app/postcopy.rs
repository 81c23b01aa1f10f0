//! Post-copy inside the actor: on the source, the freeze that captures the
//! state and the pages the target will fetch; on the target, the end of an
//! instance whose source was lost while its pages were still there.

use std::time::Instant;

use tern_api::types::AppState;
use tern_runtime::instance::Instance;
use tern_runtime::snapshot::{PostcopyFrame, RemotePages};

use super::actor::{Actor, SERVED_KEY};
use super::precopy::set_extra;
use crate::error::{NodeError, Result};

impl Actor {
    /// Pauses the app (new calls are held) and captures the switch-over
    /// frame: the state without pages, and which pages the target lacks.
    pub(super) fn postcopy_freeze(&mut self) -> Result<(Instant, Vec<u8>)> {
        let at = Instant::now();
        let served = self.served().to_string();
        if self.inst.is_none() {
            return Err(self.not_running());
        }
        self.frozen = true;
        let result = (|| {
            let inst = self.inst.as_mut().expect("checked");
            set_extra(inst, SERVED_KEY, served);
            inst.run_snapshot_hook(true)
                .map_err(|e| NodeError::internal(e.to_string()))?;
            let mut remote = inst
                .postcopy_remote()
                .map_err(|e| NodeError::internal(e.to_string()))?;
            // After pre-copy rounds the target holds every page but those
            // written since the last round: only those stay remote.
            if !self.trackers.is_empty() {
                let regions = inst
                    .memory_regions()
                    .map_err(|e| NodeError::internal(e.to_string()))?;
                for r in &mut remote {
                    let Some(region) = regions.iter().find(|g| g.index == r.memory) else {
                        continue;
                    };
                    let Some((_, tracker)) = self.trackers.iter_mut().find(|(i, _)| *i == r.memory)
                    else {
                        continue;
                    };
                    // A tracker that lost track: every page stays remote.
                    if let Ok(dirty) = tracker.collect(region.base, region.size) {
                        let end = r.byte_size / 4096;
                        let dirty = dirty.into_iter().filter(|&p| p < end).collect();
                        *r = RemotePages::from_pages(r.memory, r.byte_size, dirty);
                    }
                }
            }
            let state = inst
                .snapshot_state_only()
                .map_err(|e| NodeError::internal(e.to_string()))?;
            Ok(PostcopyFrame::encode(&remote, &state))
        })();
        if result.is_err() {
            self.frozen = false;
        }
        self.trackers.clear();
        result.map(|frame| (at, frame))
    }

    /// The post-copy of this app lost its source: the instance, whose
    /// memory is incomplete, is dropped (it ran nothing visible since:
    /// see `tern_runtime::postcopy`), and the app goes on from the
    /// checkpoint restored in its place, or is failed with `why`.
    pub(super) fn postcopy_lost(&mut self, why: String, replacement: Option<Box<Instance>>) {
        self.inst = None;
        self.shared
            .logs
            .line(&format!("ERROR tern: {}: {why}", self.spec.name));
        match replacement {
            Some(mut inst) => {
                inst.set_generation(self.spec.generation);
                self.adopt(*inst);
                self.set_state(AppState::Running, Some(why));
            }
            None => {
                *self
                    .shared
                    .interrupt
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                self.set_state(AppState::Failed, Some(why));
            }
        }
        self.refresh_status();
    }
}
