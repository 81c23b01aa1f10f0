//! The app actor: one thread that owns an app's instance and runs its
//! commands one at a time.
//!
//! - `mod.rs` — the [`AppHandle`] other tasks hold, the commands ([`Cmd`])
//!   they send, and the app's directory;
//! - `actor.rs` — the actor's loop: lifecycle (start, restarts, ticks),
//!   calls, snapshots, holding calls while frozen;
//! - `precopy.rs` — the source side of a migration inside the actor: dirty
//!   tracking, the first copy, rounds, the freeze;
//! - `postcopy.rs` — post-copy inside the actor: the freeze that captures
//!   the state and the list of pages the target will fetch, and the end of
//!   an instance whose post-copy lost its source.

mod actor;
mod postcopy;
mod precopy;
mod queue;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_api::types::{AppState, AppStatus, InvokeRequest, InvokeResponse, StartApp};
use tern_runtime::engine::{LoadedModule, Runtime};
use tern_runtime::instance::Instance;
use tern_runtime::sdk::{Request, Response};
use tern_runtime::snapshot::{PageChunk, Preopen, Snapshot};
use tern_runtime::wasi::LogBuffer;
use tokio::sync::oneshot;

use crate::error::{NodeError, Result};
use crate::lease::Lease;
use queue::Queue;
pub(crate) use queue::Reply;
pub(crate) use queue::RETRY_AFTER_SECS;

/// The pages and state a stop-and-copy sends.
pub(crate) struct FinalCapture {
    /// The last dirty pages, read (when they are few).
    pub chunks: Vec<PageChunk>,
    /// The last dirty pages when they are many: not read yet, they go in
    /// slices before the commit, as a round's do (the app stays paused).
    pub rest: DirtyPages,
    pub state: Snapshot,
}

/// What an app's actor is asked to do.
pub(crate) enum Cmd {
    /// A call of an export; its reply holds the call's place in the queue.
    Invoke(InvokeRequest, Reply<Result<InvokeResponse>>),
    /// A request for the app's handler.
    Http(Request, Reply<Response>),
    Snapshot(oneshot::Sender<Result<Snapshot>>),
    Stop(oneshot::Sender<Result<()>>),
    Start(oneshot::Sender<Result<()>>),
    /// Start tracking written pages and begin the first copy: the state
    /// without pages (hot; the pages follow in slices), or the pages that
    /// differ from a checkpoint (hybrid).
    PrecopyStart(Option<Arc<Snapshot>>, oneshot::Sender<Result<PrecopyFirst>>),
    /// Which pages were written since the last round (or the start), per
    /// memory; tracking starts over. The pages follow in slices.
    PrecopyRound(oneshot::Sender<Result<DirtyPages>>),
    /// One slice of the first copy or of a round: `pages` of one memory,
    /// read now. Between two slices the app goes on serving; what it
    /// writes meanwhile is dirty.
    PrecopySlice {
        memory: u32,
        pages: SlicePages,
        /// The slice's pages, encoded.
        reply: oneshot::Sender<Result<tern_runtime::snapshot::EncodedSlice>>,
    },
    /// Pause: hold new calls, run the snapshot hook, capture the last pages
    /// and the state (or, for cold, a whole snapshot).
    Freeze {
        cold: bool,
        /// With the instant the app stopped serving (the actor took the
        /// command: a call in progress finishes first, as it would anyway).
        reply: oneshot::Sender<Result<(Instant, FreezeResult)>>,
    },
    /// Slow the app down while pre-copy cannot keep up with its writes:
    /// after each call, pause this many times the call's duration (0: off;
    /// freezing or unfreezing turns it off).
    Throttle(u32),
    /// The move failed: go on serving here, held calls first.
    Unfreeze(oneshot::Sender<()>),
    /// The move succeeded: hand over the held calls and the frozen
    /// instance (freed once the calls run elsewhere; post-copy: its pages
    /// are still to be sent), and end.
    Release(oneshot::Sender<(Vec<Cmd>, Option<Instance>)>),
    /// Post-copy: pause like [`Cmd::Freeze`] and capture the state without
    /// pages and the pages the target will lack, encoded as the switch-over
    /// frame; with the instant the app stopped serving.
    PostcopyFreeze(oneshot::Sender<Result<(Instant, Vec<u8>)>>),
    /// Post-copy, between the switch and [`Cmd::Release`]: the
    /// target (already running the app) asks for pages of memory `.0`
    /// (the request's body `.1`); the frozen instance answers them.
    ServePages(u32, bytes::Bytes, oneshot::Sender<Result<Vec<u8>>>),
    /// Post-copy lost its source: the instance (with an incomplete memory)
    /// ends; the app goes on from `replacement` (restored from its last
    /// checkpoint) if there is one, else it is failed. `why` is its status.
    PostcopyLost {
        why: String,
        replacement: Option<Box<Instance>>,
    },
    /// Calls held while [`AppHandle::hold_calls`] was on run now.
    Unhold,
    Shutdown,
}

/// The first copy of a pre-copy.
/// The pages written since the last round: (memory, ascending page
/// indices) for every tracked memory.
pub(crate) type DirtyPages = Vec<(u32, Vec<u64>)>;

/// Which pages of a memory a pre-copy slice carries.
#[derive(Debug, Clone)]
pub(crate) enum SlicePages {
    /// The non-zero pages of `[first, end)` (the first copy: the target's
    /// memory starts zeroed).
    NonZero { first: u64, end: u64 },
    /// These pages (ascending), zero or not: some of a round's.
    Listed(Vec<u64>),
}

pub(crate) enum PrecopyFirst {
    /// Hot: the state without pages, and each memory's page count at the
    /// start; the pages follow in slices (`Cmd::PrecopySlice`).
    Sliced {
        state: Box<Snapshot>,
        memories: Vec<(u32, u64)>,
    },
    /// Hybrid: the pages that differ from the checkpoint.
    Delta(Vec<PageChunk>),
}

pub(crate) enum FreezeResult {
    Final(Box<FinalCapture>),
    /// Cold: the state without pages and each memory's page count; the
    /// pages follow in slices read from the frozen app.
    Cold {
        state: Box<Snapshot>,
        memories: Vec<(u32, u64)>,
    },
}

pub(super) struct Shared {
    pub(super) name: String,
    pub(super) spec: Mutex<StartApp>,
    pub(super) module_sha: [u8; 32],
    pub(super) tracking: Mutex<String>,
    pub(super) tx: Mutex<Sender<Cmd>>,
    pub(super) status: Mutex<AppStatus>,
    pub(super) logs: Arc<LogBuffer>,
    pub(super) busy_ns: AtomicU64,
    pub(super) cpu_sample: Mutex<(Instant, u64)>,
    /// Calls queued or held for the actor (bounded).
    pub(super) queue: Arc<Queue>,
    /// When the call in progress started (Unix ms; 0: no call running).
    pub(super) call_started_ms: AtomicU64,
    /// Stops the running call of the app's instance from another thread.
    pub(super) interrupt: Mutex<Option<tern_runtime::InterruptHandle>>,
    /// Its calls here, for `GET /metrics`.
    pub(super) calls: crate::metrics::CallMetrics,
    /// Calls are held, not run, while this says why (a post-copy target
    /// whose source is in doubt: what the app acknowledged then could be
    /// lost).
    pub(super) hold: Mutex<Option<String>>,
    /// The pager bringing the app's pages in, while some are missing (a
    /// post-copy target, a lazy restore).
    pub(super) pager: Mutex<Option<Arc<tern_runtime::postcopy::Pager>>>,
}

/// A handle on a running app's actor.
#[derive(Clone)]
pub struct AppHandle {
    shared: Arc<Shared>,
}

impl AppHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether two handles are the same actor.
    pub(crate) fn same(&self, other: &AppHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// How the app was started (its generation is the current one).
    pub fn spec(&self) -> StartApp {
        self.shared
            .spec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn module_sha(&self) -> [u8; 32] {
        self.shared.module_sha
    }

    /// The dirty-page tracker the last pre-copy used (`uffd` or `hash`).
    pub fn tracking_kind(&self) -> String {
        self.shared
            .tracking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn status(&self) -> AppStatus {
        let mut s = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.queued = self.shared.queue.calls();
        s.in_call_ms = match self.shared.call_started_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(tern_util::now_unix_ms().saturating_sub(t)),
        };
        s.holding = self
            .shared
            .hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.pages_pending = self.pages_pending();
        s
    }

    /// Pages of the app not here yet (`None`: every one is).
    pub(crate) fn pages_pending(&self) -> Option<u64> {
        let mut g = self.shared.pager.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(p) if !p.is_finished() => Some(p.remaining()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }

    /// The pager bringing the app's pages in (see [`Self::pages_pending`]).
    pub(crate) fn set_pager(&self, pager: Arc<tern_runtime::postcopy::Pager>) {
        *self.shared.pager.lock().unwrap_or_else(|e| e.into_inner()) = Some(pager);
    }

    /// Records how the latest checkpoint went, for the app's status.
    pub(crate) fn set_checkpoint(&self, c: tern_api::types::CheckpointStatus) {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint = Some(c);
    }

    /// Calls queued or held for the app now.
    pub fn queued(&self) -> u64 {
        self.shared.queue.calls()
    }

    pub fn logs(&self) -> &Arc<LogBuffer> {
        &self.shared.logs
    }

    /// CPU time the app's calls used on this node.
    pub(crate) fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.busy_ns.load(Ordering::Relaxed))
    }

    /// Its calls on this node.
    pub(crate) fn call_metrics(&self) -> &crate::metrics::CallMetrics {
        &self.shared.calls
    }

    /// CPU in thousandths of a core since the last time this was asked.
    pub fn cpu_milli_recent(&self) -> u64 {
        let busy = self.shared.busy_ns.load(Ordering::Relaxed);
        let mut s = self
            .shared
            .cpu_sample
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let elapsed = s.0.elapsed().as_nanos().max(1) as u64;
        let used = busy.saturating_sub(s.1);
        *s = (Instant::now(), busy);
        used.saturating_mul(1000) / elapsed
    }

    /// Queues a command for the actor; gives it back, untouched, when the
    /// actor has ended (the app was deleted, or handed over to another node:
    /// the caller then looks up where it went).
    fn try_send(&self, cmd: Cmd) -> Result<(), Box<Cmd>> {
        self.shared
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(cmd)
            .map_err(|e| Box::new(e.0))
    }

    /// Holds the app's calls from now on (the one running finishes), for
    /// `why`, until [`AppHandle::unhold_calls`], or until
    /// [`Cmd::PostcopyLost`] gives the app another instance, which runs
    /// them.
    pub(crate) fn hold_calls(&self, why: &str) {
        let mut h = self.shared.hold.lock().unwrap_or_else(|e| e.into_inner());
        if h.is_none() {
            self.shared
                .logs
                .line(&format!("WARN tern: calls held: {why}"));
            *h = Some(why.to_string());
        }
    }

    /// Runs the calls held since [`AppHandle::hold_calls`].
    pub(crate) fn unhold_calls(&self) {
        let was = self
            .shared
            .hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if was.is_some() {
            self.shared.logs.line("INFO tern: held calls run");
            let _ = self.send(Cmd::Unhold);
        }
    }

    pub(crate) fn send(&self, cmd: Cmd) -> Result<()> {
        self.try_send(cmd).map_err(|_| {
            NodeError::unavailable(format!("app {} is shutting down", self.shared.name))
        })
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| {
            NodeError::unavailable(format!("app {} stopped before answering", self.shared.name))
        })
    }

    /// Runs an HTTP request here, or gives it back unrun when the actor has
    /// ended (a request that races a handover is then forwarded, not lost).
    pub(crate) async fn request_here(
        &self,
        req: Request,
        lease: Arc<Lease>,
    ) -> Result<Response, Request> {
        let Some(ticket) = self.shared.queue.admit(req.body.len() as u64) else {
            let mut busy = Response::text(
                503,
                format!(
                    "app {} has too many requests waiting: try again in a moment\n",
                    self.shared.name
                ),
            );
            busy.headers
                .push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
            return Ok(busy);
        };
        let (tx, rx) = oneshot::channel();
        match self.try_send(Cmd::Http(req, Reply::new(tx, ticket, lease))) {
            Ok(()) => Ok(rx.await.unwrap_or_else(|_| {
                Response::text(
                    503,
                    format!("app {} stopped before answering", self.shared.name),
                )
            })),
            Err(cmd) => match *cmd {
                Cmd::Http(req, _) => Err(req),
                _ => unreachable!("try_send gives back what it was given"),
            },
        }
    }

    /// Like [`AppHandle::invoke`], giving the call back unrun when the
    /// actor has ended.
    pub(crate) async fn invoke_here(
        &self,
        req: InvokeRequest,
        lease: Arc<Lease>,
    ) -> Result<Result<InvokeResponse>, InvokeRequest> {
        let bytes = req.args.iter().map(|a| a.len() as u64).sum::<u64>() + req.export.len() as u64;
        let Some(ticket) = self.shared.queue.admit(bytes) else {
            return Ok(Err(NodeError::busy(format!(
                "app {} has too many calls waiting: try again in a moment",
                self.shared.name
            ))));
        };
        let (tx, rx) = oneshot::channel();
        match self.try_send(Cmd::Invoke(req, Reply::new(tx, ticket, lease))) {
            Ok(()) => Ok(rx.await.unwrap_or_else(|_| {
                Err(NodeError::unavailable(format!(
                    "app {} stopped before answering",
                    self.shared.name
                )))
            })),
            Err(cmd) => match *cmd {
                Cmd::Invoke(req, _) => Err(req),
                _ => unreachable!("try_send gives back what it was given"),
            },
        }
    }

    /// Ends the actor: the call running now is cut off (within a few
    /// milliseconds, however long the guest meant to run), then the thread
    /// ends and the instance's memory goes back.
    pub fn shutdown(&self) {
        self.interrupt_any_call();
        let _ = self.send(Cmd::Shutdown);
    }

    /// Cuts off the call running now, if there is one (the instance is
    /// then torn: the actor drops it). Between calls it does nothing.
    pub(crate) fn interrupt_call(&self) {
        if self.shared.call_started_ms.load(Ordering::Relaxed) != 0 {
            self.interrupt_any_call();
        }
    }

    fn interrupt_any_call(&self) {
        if let Some(h) = self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            h.interrupt();
        }
    }

    /// Starts an app's actor on a thread of its own. The app starts now, or
    /// at `start_at`; with `instance`, it goes on from that restored state.
    pub(crate) fn spawn(
        runtime: Arc<Runtime>,
        module: Arc<LoadedModule>,
        spec: StartApp,
        data_dir: std::path::PathBuf,
        instance: Option<(Instance, Arc<LogBuffer>)>,
    ) -> Result<AppHandle> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (instance, logs) = match instance {
            Some((i, l)) => (Some(i), l),
            None => (None, LogBuffer::new()),
        };
        let status = AppStatus {
            name: spec.name.clone(),
            module_sha256: module.hash_hex(),
            state: if instance.is_some() {
                AppState::Running
            } else {
                AppState::Pending
            },
            generation: spec.generation,
            memory_bytes: 0,
            requests_served: 0,
            cpu_ms: 0,
            restart: spec.restart.clone(),
            last_error: None,
            start_at_unix_ms: spec.start_at_unix_ms,
            limits: spec.limits(),
            checkpoint: None,
            queued: 0,
            in_call_ms: None,
            holding: None,
            pages_pending: None,
        };
        let shared = Arc::new(Shared {
            name: spec.name.clone(),
            spec: Mutex::new(spec.clone()),
            module_sha: module.sha256,
            tracking: Mutex::new("none".into()),
            tx: Mutex::new(tx),
            status: Mutex::new(status),
            logs,
            busy_ns: AtomicU64::new(0),
            cpu_sample: Mutex::new((Instant::now(), 0)),
            queue: Arc::new(Queue::default()),
            call_started_ms: AtomicU64::new(0),
            hold: Mutex::new(None),
            pager: Mutex::new(None),
            calls: Default::default(),
            interrupt: Mutex::new(None),
        });
        let handle = AppHandle {
            shared: shared.clone(),
        };
        actor::Actor::start(shared, runtime, module, spec, data_dir, instance, rx)?;
        Ok(handle)
    }
}

/// The app's own directory on this node, given to it as `/data`: always a
/// direct child of the node's `apps/` directory (the name is checked, and
/// a symbolic link or anything but a directory there is refused), created
/// owner-only when missing.
pub(crate) fn app_dir(data_dir: &Path, app: &str) -> Result<Preopen> {
    tern_api::names::check_app_name(app)?;
    let apps = data_dir.join("apps");
    let dir = apps.join(app);
    if dir.parent() != Some(apps.as_path()) {
        return Err(NodeError::bad_request(format!(
            "app {app} would not live in {}",
            apps.display()
        )));
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(NodeError::internal(format!(
                "{} is not a directory: remove it so app {app} can have its own",
                dir.display()
            )))
        }
        Err(_) => tern_util::create_private_dir(&dir)
            .map_err(|e| NodeError::internal(format!("cannot create {}: {e}", dir.display())))?,
    }
    Ok(Preopen {
        host: dir.to_string_lossy().into_owned(),
        guest: "/data".into(),
        read_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_runtime::engine::RuntimeConfig;

    /// A call that reaches an app's handle after the app was handed over
    /// comes back to its caller unrun (to follow the app), never as an
    /// error answered on the app's behalf.
    #[tokio::test]
    async fn calls_after_a_handover_come_back_unrun() {
        let runtime = Runtime::new(RuntimeConfig { cache_dir: None }).unwrap();
        let module = runtime
            .load(
                wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "f")))"#)
                    .unwrap(),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = StartApp {
            name: "a".into(),
            generation: 1,
            ..StartApp::default()
        };
        let handle =
            AppHandle::spawn(runtime, module, spec, dir.path().to_path_buf(), None).unwrap();
        let (held, inst) = handle.ask(Cmd::Release).await.expect("the actor answers");
        assert!(held.is_empty());
        assert!(inst.is_some(), "the instance goes with the calls");

        let req = Request {
            method: "POST".into(),
            path: "/x".into(),
            query: String::new(),
            headers: vec![],
            body: b"payload".to_vec(),
        };
        let free = Arc::new(Lease::new(false));
        let back = handle
            .request_here(req, free.clone())
            .await
            .expect_err("given back");
        assert_eq!(
            (back.path.as_str(), &back.body[..]),
            ("/x", &b"payload"[..])
        );
        let inv = InvokeRequest {
            export: "f".into(),
            args: vec![],
        };
        let back = handle
            .invoke_here(inv.clone(), free)
            .await
            .expect_err("given back");
        assert_eq!(back, inv);
        // Anything else is refused at once.
        let Err(e) = handle.ask(Cmd::Snapshot).await else {
            panic!("a snapshot of a handed-over app")
        };
        assert_eq!(e.status(), 503, "{e:?}");
    }
}
