//! The target's sessions: a migration arriving on this node, from the
//! opening (fencing, the module, a checkpoint for hybrid) through the first
//! copy and the rounds to the commit that resumes the app here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use tern_api::types::{
    IncomingMigration, MigrationAck, MigrationOpen, MigrationOpened, Mode, StartApp,
};
use tern_runtime::engine::LoadedModule;
use tern_runtime::instance::Instance;
use tern_runtime::snapshot::{CommitFrame, PageStream, Snapshot};
use tern_runtime::wasi::LogBuffer;

use super::restore_options;
use crate::app::AppHandle;
use crate::error::{NodeError, Result};
use crate::node::{lock, Node};

/// A session with no step for this long is dropped with everything it
/// holds (its source died or gave up: nothing else would ever free it).
pub(crate) const SESSION_IDLE_TTL: Duration = Duration::from_secs(60);
/// Migrations arriving at once, at most: each may hold a whole app's memory.
pub(crate) const MAX_SESSIONS: usize = 8;

/// A migration arriving on this node.
pub(crate) struct TargetSession {
    pub app: String,
    pub from: String,
    pub mode: Mode,
    pub logs: Arc<LogBuffer>,
    pub spec: StartApp,
    pub module: Arc<LoadedModule>,
    pub inst: Mutex<Option<Instance>>,
    /// Post-copy: the checkpoint to restart from if the source is lost
    /// (digest, and where to fetch it).
    pub checkpoint: Option<(String, Option<String>)>,
    opened: Instant,
    last_step: Mutex<Instant>,
    /// The node's stock of resident memory is not refilled while the
    /// session lives: the refill's page faults would slow this move down.
    _busy: tern_runtime::resident::Busy,
}

impl TargetSession {
    fn touch(&self) {
        *lock(&self.last_step) = Instant::now();
    }

    fn idle(&self) -> Duration {
        lock(&self.last_step).elapsed()
    }
}

/// Drops the sessions idle for longer than `ttl`; how many it dropped.
pub(crate) fn reap_sessions(node: &Node, ttl: Duration) -> usize {
    let expired: Vec<(String, Arc<TargetSession>)> = {
        let mut sessions = lock(&node.sessions);
        let ids: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| s.idle() > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| sessions.remove(&id).map(|s| (id, s)))
            .collect()
    };
    for (id, s) in &expired {
        tracing::warn!(session = %id, app = %s.app, from = %s.from, "migration session expired: its source went quiet; dropped what it held");
    }
    let n = expired.len();
    // The half-built instances are freed off the async workers.
    release(expired);
    n
}

/// The sessions open on this node, for its status.
pub(crate) fn incoming(node: &Node) -> Vec<IncomingMigration> {
    let mut v: Vec<IncomingMigration> = lock(&node.sessions)
        .iter()
        .map(|(id, s)| IncomingMigration {
            id: id.clone(),
            app: s.app.clone(),
            from: s.from.clone(),
            mode: s.mode,
            generation: s.spec.generation,
            age_ms: s.opened.elapsed().as_millis() as u64,
            idle_ms: s.idle().as_millis() as u64,
        })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Opens a target session: checks the name, fencing and the module, admits
/// the new generation (durably, before any of the app's state or files land
/// here), and for hybrid restores the checkpoint first.
pub(crate) async fn open_session(node: Arc<Node>, open: MigrationOpen) -> Result<MigrationOpened> {
    tern_api::names::check_app_name(&open.app)?;
    if open.spec.name != open.app {
        return Err(NodeError::bad_request(format!(
            "the migration of {} carries the spec of {}",
            open.app, open.spec.name
        )));
    }
    node.check_generation(&open.app, open.spec.generation)?;
    let open = MigrationOpen {
        spec: open
            .spec
            .clone()
            .with_default_limits(node.config.default_limits),
        ..open
    };
    if let Some(h) = node.local(&open.app) {
        if h.spec().generation >= open.spec.generation {
            return Err(NodeError::conflict(format!(
                "app {} already runs here at generation {}",
                open.app,
                h.spec().generation
            )));
        }
    }
    let sha = tern_api::names::parse_sha256(&open.spec.module_sha256)
        .ok_or_else(|| NodeError::bad_request("bad module sha256"))?;
    reap_sessions(&node, node.config.session_ttl);
    {
        let sessions = lock(&node.sessions);
        if sessions.len() >= MAX_SESSIONS {
            return Err(NodeError::busy(format!(
                "{} migrations are arriving on this node already: try again when one is done",
                sessions.len()
            )));
        }
    }
    let busy = tern_runtime::resident::busy();
    let module = node.module(&sha).await?;
    node.admit_generation(&open.app, open.spec.generation)?;
    let mut fetched = 0;
    let mut inst = None;
    let logs = LogBuffer::new();
    if open.mode == Mode::Hybrid {
        let digest = open.checkpoint_digest.clone().ok_or_else(|| {
            NodeError::bad_request("hybrid migration without a checkpoint digest")
        })?;
        let (snap, n) = node
            .checkpoint_for(
                &open.app,
                &digest,
                open.checkpoint_url.as_deref(),
                open.source_url.as_deref(),
            )
            .await?;
        fetched = n;
        let rt = node.runtime.clone();
        let m = module.clone();
        let opts = restore_options(&node, &open.spec, &snap, &logs, false, true)?;
        let restored =
            tokio::task::spawn_blocking(move || Instance::restore(&rt, &snap, Some(m), opts))
                .await?
                .map_err(|e| NodeError::internal(format!("cannot restore the checkpoint: {e}")))?;
        inst = Some(restored);
    }
    // Hot moves may end in post-copy too (`--postcopy-after-rounds`).
    let may_postcopy = matches!(open.mode, Mode::Postcopy | Mode::Hot);
    let postcopy_unavailable = may_postcopy
        .then(|| super::postcopy::unavailable(&node))
        .flatten();
    let checkpoint = may_postcopy
        .then(|| {
            open.checkpoint_digest
                .clone()
                .map(|d| (d, open.checkpoint_url.clone()))
        })
        .flatten();
    let id = format!(
        "{}-{}",
        open.app,
        node.session_counter.fetch_add(1, Ordering::Relaxed)
    );
    let now = Instant::now();
    let session = Arc::new(TargetSession {
        app: open.app,
        from: open.from,
        mode: open.mode,
        logs,
        spec: open.spec,
        module,
        inst: Mutex::new(inst),
        checkpoint,
        opened: now,
        last_step: Mutex::new(now),
        _busy: busy,
    });
    let replaced: Vec<Arc<TargetSession>> = {
        let mut sessions = lock(&node.sessions);
        // An older session of the same app was abandoned by its source.
        let stale: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| s.app == session.app)
            .map(|(id, _)| id.clone())
            .collect();
        let old = stale.iter().filter_map(|id| sessions.remove(id)).collect();
        sessions.insert(id.clone(), session);
        old
    };
    release(replaced);
    Ok(MigrationOpened {
        id,
        checkpoint_bytes_fetched: fetched,
        postcopy_unavailable,
    })
}

pub(crate) fn session(node: &Node, id: &str) -> Result<Arc<TargetSession>> {
    let s = lock(&node.sessions).get(id).cloned().ok_or_else(|| {
        NodeError::not_found(format!(
            "no migration session {id} (it ended, or expired after {} ms without a step)",
            node.config.session_ttl.as_millis()
        ))
    })?;
    s.touch();
    Ok(s)
}

/// Ends a session whose move failed (the source resumed the app).
pub(crate) fn delete_session(node: &Node, id: &str) {
    let s = lock(&node.sessions).remove(id);
    release(s);
}

/// The first copy (hot): the state, restored with zeroed memories.
pub(crate) async fn receive_base(node: Arc<Node>, id: String, body: Bytes) -> Result<()> {
    let s = session(&node, &id)?;
    let rt = node.runtime.clone();
    let snap = tokio::task::spawn_blocking(move || {
        // `Vec::from` takes the body's buffer over when it can (no copy).
        let snap = Snapshot::from_bytes(Vec::from(body))
            .map_err(|e| NodeError::bad_request(format!("first copy rejected: {e}")))?;
        let mut opts = restore_options(&node, &s.spec, &snap, &s.logs, false, false)?;
        // Every page of the memory will arrive: have it resident already.
        opts.resident_memory = true;
        let inst = Instance::restore(&rt, &snap, Some(s.module.clone()), opts)
            .map_err(|e| NodeError::bad_request(format!("first copy does not restore: {e}")))?;
        *lock(&s.inst) = Some(inst);
        Ok::<_, NodeError>(snap)
    })
    .await??;
    release(snap);
    Ok(())
}

/// A slice of the first copy, or a round of pages, written into the
/// arriving copy's memory as its bytes come (`PageStream`). A slice that
/// fails its checks or is cut short has written some of its pages: the
/// copy is discarded, and the move can only fail.
pub(crate) async fn receive_pages(node: Arc<Node>, id: String, mut body: Incoming) -> Result<()> {
    use http_body_util::BodyExt as _;
    let s = session(&node, &id)?;
    let mut stream = PageStream::new(tern_api::MAX_BLOB_BODY as u64);
    let outcome = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| NodeError::bad_request(format!("cannot read the pages: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut g = lock(&s.inst);
            let inst = g.as_mut().ok_or_else(|| {
                NodeError::conflict(
                    "no copy to write pages into (none arrived yet, or an earlier slice was rejected)",
                )
            })?;
            inst.receive_slice(&mut stream, &data)
                .map_err(|e| NodeError::bad_request(format!("page slice rejected: {e}")))?;
        }
        stream
            .finish()
            .map_err(|e| NodeError::bad_request(format!("page slice rejected: {e}")))
    }
    .await;
    if outcome.is_err() {
        if let Some(spoilt) = lock(&s.inst).take() {
            release(spoilt);
        }
    }
    outcome.map(|_| ())
}

/// Stop-and-copy (hot, hybrid) or the whole snapshot (cold): every part is
/// decoded and checked, then put in place; the app resumes here, and the
/// answer acknowledges.
pub(crate) async fn receive_final(
    node: Arc<Node>,
    id: String,
    body: Bytes,
    cold: bool,
) -> Result<MigrationAck> {
    let s = session(&node, &id)?;
    // Admitted when the session opened; refused if a newer copy came since.
    node.check_generation(&s.app, s.spec.generation)?;
    let t0 = Instant::now();
    let rt = node.runtime.clone();
    let s2 = s.clone();
    let node2 = node.clone();
    let (inst, spent) = tokio::task::spawn_blocking(move || {
        if cold {
            let snap = Snapshot::from_bytes(Vec::from(body))
                .map_err(|e| NodeError::bad_request(format!("snapshot rejected: {e}")))?;
            let mut opts = restore_options(&node2, &s2.spec, &snap, &s2.logs, true, false)?;
            opts.resident_memory = true;
            let inst = Instance::restore(&rt, &snap, Some(s2.module.clone()), opts)
                .map_err(|e| NodeError::bad_request(format!("snapshot does not restore: {e}")))?;
            return Ok((inst, Some(snap)));
        }
        let frame = CommitFrame::decode(&body)
            .map_err(|e| NodeError::bad_request(format!("stop-and-copy rejected: {e}")))?;
        let mut inst = lock(&s2.inst)
            .take()
            .ok_or_else(|| NodeError::conflict("commit before the first copy"))?;
        for c in &frame.chunks {
            inst.apply_chunk(c)
                .map_err(|e| NodeError::bad_request(e.to_string()))?;
        }
        inst.apply_state(&frame.state)
            .map_err(|e| NodeError::bad_request(e.to_string()))?;
        inst.run_restore_hook()
            .map_err(|e| NodeError::internal(format!("the app's restore hook failed: {e}")))?;
        Ok::<_, NodeError>((inst, None))
    })
    .await??;
    delete_session(&node, &id);
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        s.module.clone(),
        s.spec.clone(),
        node.data_dir().clone(),
        Some((inst, s.logs.clone())),
    )?;
    node.install(handle);
    if let Some(snap) = spent {
        release(snap);
    }
    Ok(MigrationAck {
        generation: s.spec.generation,
        resume_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// Frees a large value (a snapshot of tens of MiB: unmapping it takes
/// milliseconds) off the path that waits for the answer.
pub(crate) fn release<T: Send + 'static>(value: T) {
    RELEASING.fetch_add(1, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || {
        drop(value);
        RELEASING.fetch_sub(1, Ordering::Release);
    });
}

/// Values [`release`] is still freeing, in this process.
static RELEASING: AtomicUsize = AtomicUsize::new(0);

/// How many large values (instances and snapshots that moves left behind)
/// are still being freed in the background in this process: a benchmark
/// waits for none before it times the next thing, so that no measurement
/// pays for another's cleanup.
pub fn releases_pending() -> usize {
    RELEASING.load(Ordering::Acquire)
}
