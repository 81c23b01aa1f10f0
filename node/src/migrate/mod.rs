//! The migration protocol between two nodes.
//!
//! Source (`source.rs`, [`migrate_out`]), for hot and hybrid:
//! 1. make sure the target has the module (by sha256);
//! 2. open a session on the target (`POST /v1/migrations`); for hybrid the
//!    target first restores the checkpoint it holds (or fetches it);
//! 3. start dirty-page tracking and send the first copy while the app
//!    serves: the state without pages, then every non-zero page in 4 MiB
//!    slices read between the app's calls (hot), or the pages that differ
//!    from the checkpoint (hybrid);
//! 4. rounds: send the pages written since the last round, until few are
//!    left or the rounds stop converging;
//! 5. stop-and-copy: the app's actor holds new calls, runs the snapshot hook,
//!    and the last dirty pages and the state go to the target, which
//!    verifies them, puts them in place, resumes the app and acknowledges;
//! 6. handover: routing flips to the target, the held calls are replayed
//!    there in order, and only then does the source drop its copy.
//!
//! Post-copy (`postcopy/`) switches first and sends the pages after: the
//! app resumes on the target at once and its pages are fetched on first
//! touch while the source pushes them all; hot may end that way too
//! (`--postcopy-after-rounds`).
//!
//! Cold freezes first and then sends the same way, with the app frozen all
//! along: the state, the pages in slices, the commit; then it hands over.
//! (`/cold`, one whole snapshot in one request, is still accepted.)
//! Any failure before the acknowledgement and the source resumes the app
//! itself, held calls first: nothing is lost or run twice, and generation
//! numbers fence any stale copy.
//!
//! The target's side is `target.rs` (a session per arriving move; the new
//! generation is admitted when it opens, before any of the app's state or
//! files land); the replay of held calls after the handover is `replay.rs`.
//! The bytes on the wire (page chunks, the stop-and-copy frame) are the
//! snapshot module's (`tern_runtime::snapshot`).

pub(crate) mod postcopy;
pub(crate) mod replay;
pub(crate) mod source;
pub(crate) mod target;

use std::path::PathBuf;
use std::sync::Arc;

use tern_api::types::StartApp;
use tern_runtime::instance::{Instance, RestoreOptions};
use tern_runtime::snapshot::{LimitsState, Snapshot};
use tern_runtime::wasi::{LogBuffer, Stdio};

pub(crate) use source::migrate_out;
pub use target::releases_pending;
pub(crate) use target::{
    delete_session, incoming, open_session, reap_sessions, receive_base, receive_final,
    receive_pages, TargetSession, SESSION_IDLE_TTL,
};

use crate::app::app_dir;
use crate::error::{NodeError, Result};
use crate::node::Node;

/// Runs the app's restore hook off the async workers, on an instance whose
/// pages may still be arriving (a post-copy target, a lazy restore: the
/// pager's fetcher runs already, as the hook may touch pages).
pub(crate) async fn run_restore_hook(mut inst: Instance) -> Result<Instance> {
    tokio::task::spawn_blocking(move || {
        inst.run_restore_hook()
            .map_err(|e| NodeError::internal(format!("the app's restore hook failed: {e}")))?;
        Ok::<_, NodeError>(inst)
    })
    .await?
}

/// How an app restores on this node: its logs here, its directory here, the
/// limits of its spec (never those a snapshot carries).
pub(crate) fn restore_options(
    node: &Node,
    spec: &StartApp,
    snap: &Snapshot,
    logs: &Arc<LogBuffer>,
    hooks: bool,
    copy_on_write: bool,
) -> Result<RestoreOptions> {
    let mut wasi = snap.body.wasi.clone();
    let dir = app_dir(node.data_dir(), &spec.name)?;
    let carry_dir = Some(PathBuf::from(&dir.host));
    wasi.preopens = vec![dir];
    Ok(RestoreOptions {
        carry_dir,
        copy_on_write,
        hooks,
        wasi_override: Some(wasi),
        // The spec's limits, never the snapshot's: a snapshot is data.
        limits_override: Some(LimitsState {
            memory_bytes: spec.memory_limit,
            fuel_per_call: spec.fuel,
            timeout_ms_per_call: spec.timeout_ms,
        }),
        stdio: Stdio::Capture(logs.clone()),
        interrupt: None,
        resident_memory: false,
    })
}
