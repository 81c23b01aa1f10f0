//! The app actor: one thread that owns an app's instance and runs its
//! commands one at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_api::types::{AppState, AppStatus, InvokeRequest, InvokeResponse, StartApp};
use tokio::sync::oneshot;

use tern_runtime::dirty::{start_tracking, DirtyTracker};
use tern_runtime::engine::{LoadedModule, Runtime};
use tern_runtime::error::Error;
use tern_runtime::instance::{AppConfig, Instance, SnapshotOptions};
use tern_runtime::sdk::{self, Request, Response};
use tern_runtime::snapshot::{LimitsState, PageChunk, Preopen, Snapshot};
use tern_runtime::values::to_json;
use tern_runtime::wasi::{LogBuffer, Stdio};

use super::TICK_INTERVAL;

/// An error for an API answer: HTTP status and message.
pub(crate) type ApiErr = (u16, String);

/// The pages and state a stop-and-copy sends.
pub(crate) struct FinalCapture {
    pub chunks: Vec<PageChunk>,
    pub state: Snapshot,
}

/// What an app's actor is asked to do.
pub(crate) enum Cmd {
    Invoke(
        InvokeRequest,
        oneshot::Sender<Result<InvokeResponse, ApiErr>>,
    ),
    Http(Request, oneshot::Sender<Response>),
    Snapshot(oneshot::Sender<Result<Snapshot, ApiErr>>),
    Stop(oneshot::Sender<Result<(), ApiErr>>),
    Start(oneshot::Sender<Result<(), ApiErr>>),
    /// Start tracking written pages and begin the first copy: the state
    /// without pages (hot; the pages follow in slices), or the pages that
    /// differ from a checkpoint (hybrid).
    PrecopyStart(
        Option<Arc<Snapshot>>,
        oneshot::Sender<Result<PrecopyFirst, ApiErr>>,
    ),
    /// The pages written since the last round.
    PrecopyRound(oneshot::Sender<Result<Vec<PageChunk>, ApiErr>>),
    /// One slice of the first copy (hot, without a checkpoint): the
    /// non-zero pages of `[first, end)` of one memory. Between two slices
    /// the app goes on serving; what it writes meanwhile is dirty.
    PrecopySlice {
        memory: u32,
        first: u64,
        end: u64,
        /// The slice encoded as a page chunk, and its page count.
        reply: oneshot::Sender<Result<(Vec<u8>, u64), ApiErr>>,
    },
    /// Pause: hold new calls, run the snapshot hook, capture the last pages
    /// and the state (or, for cold, a whole snapshot).
    Freeze {
        cold: bool,
        /// With the instant the app stopped serving (the actor took the
        /// command: a call in progress finishes first, as it would anyway).
        reply: oneshot::Sender<Result<(Instant, FreezeResult), ApiErr>>,
    },
    /// Slow the app down while pre-copy cannot keep up with its writes:
    /// after each call, pause this many times the call's duration (0: off;
    /// freezing or unfreezing turns it off).
    Throttle(u32),
    /// The move failed: go on serving here, held calls first.
    Unfreeze(oneshot::Sender<()>),
    /// The move succeeded: hand over the held calls and end.
    Release(oneshot::Sender<Vec<Cmd>>),
    Shutdown,
}

/// The first copy of a pre-copy.
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

struct Shared {
    name: String,
    spec: Mutex<StartApp>,
    module_sha: [u8; 32],
    tracking: Mutex<String>,
    tx: Mutex<Sender<Cmd>>,
    status: Mutex<AppStatus>,
    logs: Arc<LogBuffer>,
    busy_ns: AtomicU64,
    cpu_sample: Mutex<(Instant, u64)>,
}

/// A handle on a running app's actor.
#[derive(Clone)]
pub struct AppHandle {
    shared: Arc<Shared>,
}

use tern_util::now_unix_ms;

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
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn logs(&self) -> &Arc<LogBuffer> {
        &self.shared.logs
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

    pub(crate) fn send(&self, cmd: Cmd) -> Result<(), ApiErr> {
        self.try_send(cmd)
            .map_err(|_| (503, format!("app {} is shutting down", self.shared.name)))
    }

    pub(crate) async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
    ) -> Result<T, ApiErr> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| {
            (
                503,
                format!("app {} stopped before answering", self.shared.name),
            )
        })
    }

    /// Runs an HTTP request here, or gives it back unrun when the actor has
    /// ended (a request that races a handover is then forwarded, not lost).
    pub(crate) async fn request_here(&self, req: Request) -> Result<Response, Request> {
        let (tx, rx) = oneshot::channel();
        match self.try_send(Cmd::Http(req, tx)) {
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
    ) -> Result<Result<InvokeResponse, ApiErr>, InvokeRequest> {
        let (tx, rx) = oneshot::channel();
        match self.try_send(Cmd::Invoke(req, tx)) {
            Ok(()) => Ok(rx.await.unwrap_or_else(|_| {
                Err((
                    503,
                    format!("app {} stopped before answering", self.shared.name),
                ))
            })),
            Err(cmd) => match *cmd {
                Cmd::Invoke(req, _) => Err(req),
                _ => unreachable!("try_send gives back what it was given"),
            },
        }
    }

    pub fn shutdown(&self) {
        let _ = self.send(Cmd::Shutdown);
    }

    /// Starts an app's actor. The app starts now, or at `start_at`.
    pub(crate) fn spawn(
        runtime: Arc<Runtime>,
        module: Arc<LoadedModule>,
        spec: StartApp,
        data_dir: std::path::PathBuf,
        instance: Option<(Instance, Arc<LogBuffer>)>,
    ) -> AppHandle {
        let (tx, rx) = channel();
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
        });
        let handle = AppHandle {
            shared: shared.clone(),
        };
        let mut actor = Actor {
            shared,
            runtime,
            module,
            spec,
            data_dir,
            inst: None,
            frozen: false,
            held: Vec::new(),
            trackers: Vec::new(),
            throttle: 0,
            next_tick: Instant::now() + TICK_INTERVAL,
            failures: 0,
            retry_at: None,
        };
        if let Some(mut inst) = instance {
            inst.set_generation(actor.spec.generation);
            actor.adopt(inst);
        }
        std::thread::Builder::new()
            .name(format!("app-{}", actor.spec.name))
            .spawn(move || actor.run(rx))
            .expect("cannot start an app thread");
        handle
    }
}

struct Actor {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    module: Arc<LoadedModule>,
    spec: StartApp,
    data_dir: std::path::PathBuf,
    inst: Option<Instance>,
    frozen: bool,
    held: Vec<Cmd>,
    trackers: Vec<(u32, Box<dyn DirtyTracker>)>,
    /// See [`Cmd::Throttle`].
    throttle: u32,
    next_tick: Instant,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Requests served so far are kept in the snapshot's metadata.
const SERVED_KEY: &str = "requests_served";
/// The longest pause a throttled app takes after one call.
const MAX_THROTTLE_PAUSE: Duration = Duration::from_millis(50);

impl Actor {
    fn set_state(&self, state: AppState, error: Option<String>) {
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }

    fn state(&self) -> AppState {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state
    }

    fn refresh_status(&mut self) {
        let mem = self.inst.as_mut().map(|i| i.memory_bytes()).unwrap_or(0);
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.memory_bytes = mem;
        s.generation = self.spec.generation;
        s.cpu_ms = self.shared.busy_ns.load(Ordering::Relaxed) / 1_000_000;
    }

    fn served(&self) -> u64 {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests_served
    }

    fn count_served(&self) {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests_served += 1;
    }

    /// Takes an instance restored elsewhere (restore, migration target).
    fn adopt(&mut self, mut inst: Instance) {
        if let Some(n) = inst
            .extra_meta_mut()
            .iter()
            .find(|(k, _)| k == SERVED_KEY)
            .and_then(|(_, v)| v.parse().ok())
        {
            self.shared
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .requests_served = n;
        }
        self.inst = Some(inst);
        self.set_state(AppState::Running, None);
        self.refresh_status();
    }

    fn config(&self) -> AppConfig {
        AppConfig {
            args: std::iter::once(self.spec.name.clone())
                .chain(self.spec.args.iter().cloned())
                .collect(),
            env: self.spec.env.clone(),
            preopens: vec![app_dir(&self.data_dir, &self.spec.name)],
            limits: LimitsState {
                memory_bytes: self.spec.memory_limit,
                fuel_per_call: self.spec.fuel,
                timeout_ms_per_call: self.spec.timeout_ms,
            },
            stdio: Stdio::Capture(self.shared.logs.clone()),
            app: Some(self.spec.name.clone()),
            generation: self.spec.generation,
            random_seed: None,
            carry_dir: Some(std::path::PathBuf::from(
                app_dir(&self.data_dir, &self.spec.name).host,
            )),
        }
    }

    /// A fresh start, or a restart from the latest checkpoint.
    fn start_now(&mut self) {
        let started =
            Instance::start(&self.runtime, &self.module, self.config()).and_then(|mut inst| {
                if sdk::check_app(&mut inst)? {
                    sdk::init(&mut inst)?;
                }
                Ok(inst)
            });
        match started {
            Ok(inst) => {
                self.shared.logs.line(&format!(
                    "INFO tern: {} started (generation {})",
                    self.spec.name, self.spec.generation
                ));
                self.inst = Some(inst);
                self.failures = 0;
                self.set_state(AppState::Running, None);
            }
            Err(Error::Exit(0)) => {
                self.set_state(AppState::Exited, None);
                self.after_failure(false);
            }
            Err(e) => {
                let msg = e.to_string();
                self.shared.logs.line(&format!(
                    "ERROR tern: {} failed to start: {msg}",
                    self.spec.name
                ));
                self.set_state(AppState::Failed, Some(msg));
                self.after_failure(true);
            }
        }
        self.refresh_status();
    }

    /// Decides on a restart after the app failed or exited.
    fn after_failure(&mut self, failed: bool) {
        let restart = match self.spec.restart.as_str() {
            "always" => true,
            "on-failure" => failed,
            _ => false,
        };
        self.inst = None;
        if restart && self.failures < 5 {
            self.failures += 1;
            let backoff = Duration::from_millis(200 * (1 << self.failures.min(5)));
            self.retry_at = Some(Instant::now() + backoff);
        }
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let pending_until = self.spec.start_at_unix_ms.filter(|&t| t > now_unix_ms());
        if self.inst.is_none() && pending_until.is_none() {
            self.start_now();
        }
        loop {
            let now = Instant::now();
            let mut wait = self.next_tick.saturating_duration_since(now);
            if let Some(t) = self.retry_at {
                wait = wait.min(t.saturating_duration_since(now));
            }
            if let Some(at) = self
                .spec
                .start_at_unix_ms
                .filter(|_| self.inst.is_none() && self.retry_at.is_none())
            {
                let ms = at.saturating_sub(now_unix_ms());
                if ms == 0 && self.state() == AppState::Pending {
                    self.start_now();
                    continue;
                }
                wait = wait.min(Duration::from_millis(ms));
            }
            match rx.recv_timeout(wait) {
                Ok(Cmd::Shutdown) => break,
                Ok(Cmd::Release(reply)) => {
                    // Close the door first: once the sender is swapped no
                    // call can reach this queue, so the drain below takes
                    // every call that did. Later ones come back to their
                    // callers unrun and follow the app to its new node.
                    self.close();
                    let mut held = std::mem::take(&mut self.held);
                    held.extend(rx.try_iter());
                    let _ = reply.send(held);
                    break;
                }
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.retry_at.is_some_and(|t| Instant::now() >= t) {
                self.retry_at = None;
                self.start_now();
            }
            if Instant::now() >= self.next_tick {
                self.next_tick = Instant::now() + TICK_INTERVAL;
                if !self.frozen {
                    self.tick();
                }
            }
        }
        self.close();
        self.trackers.clear();
    }

    /// Replaces the handles' sender with one whose receiver is gone, so
    /// sending to this actor fails at once from now on.
    fn close(&self) {
        let (dead, _) = channel();
        *self.shared.tx.lock().unwrap_or_else(|e| e.into_inner()) = dead;
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut Instance) -> T) -> Option<T> {
        let inst = self.inst.as_mut()?;
        let t0 = Instant::now();
        let out = f(inst);
        self.shared
            .busy_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Some(out)
    }

    fn tick(&mut self) {
        let now = now_unix_ms() as i64;
        if let Some(Err(e)) = self.timed(|i| sdk::tick(i, now)) {
            self.shared
                .logs
                .line(&format!("WARN tern: tick failed: {e}"));
        }
        self.refresh_status();
    }

    fn not_running(&self) -> ApiErr {
        let s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        match s.state {
            AppState::Pending => (
                409,
                format!(
                    "app {} has not started yet (it starts at {:?} Unix ms)",
                    self.spec.name, s.start_at_unix_ms
                ),
            ),
            AppState::Stopped => (
                409,
                format!(
                    "app {} is stopped: start it with `tern start {}`",
                    self.spec.name, self.spec.name
                ),
            ),
            _ => (
                409,
                format!(
                    "app {} is not running ({}){}",
                    self.spec.name,
                    s.state,
                    s.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            ),
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        if self.frozen {
            match cmd {
                Cmd::Invoke(..)
                | Cmd::Http(..)
                | Cmd::Snapshot(..)
                | Cmd::Stop(..)
                | Cmd::Start(..) => {
                    self.held.push(cmd);
                    return;
                }
                _ => {}
            }
        }
        let started = Instant::now();
        let call = matches!(cmd, Cmd::Invoke(..) | Cmd::Http(..));
        self.run_command(cmd);
        if call && self.throttle > 0 {
            std::thread::sleep((started.elapsed() * self.throttle).min(MAX_THROTTLE_PAUSE));
        }
    }

    fn run_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Invoke(req, reply) => {
                let result = self.invoke(req);
                let _ = reply.send(result);
            }
            Cmd::Http(req, reply) => {
                let state = self.state();
                let serving = state == AppState::Running || state == AppState::Migrating;
                let resp = match self
                    .timed(|i| serving.then(|| sdk::handle(i, &req)))
                    .flatten()
                {
                    Some(r) => {
                        self.count_served();
                        r
                    }
                    None => {
                        let (s, m) = self.not_running();
                        Response::text(s, m)
                    }
                };
                self.refresh_status();
                let _ = reply.send(resp);
            }
            Cmd::Snapshot(reply) => {
                let served = self.served().to_string();
                let result = match self.inst.as_mut() {
                    None => Err(self.not_running()),
                    Some(inst) => {
                        set_extra(inst, SERVED_KEY, served);
                        inst.snapshot(SnapshotOptions {
                            embed_module: true,
                            compress: false,
                            hooks: true,
                        })
                        .map_err(|e| (500, e.to_string()))
                    }
                };
                let _ = reply.send(result);
            }
            Cmd::Stop(reply) => {
                // The instance is kept (stopped apps keep their state).
                self.set_state(AppState::Stopped, None);
                let _ = reply.send(Ok(()));
            }
            Cmd::Start(reply) => {
                let state = self.state();
                match (state, self.inst.is_some()) {
                    (AppState::Stopped, true) => self.set_state(AppState::Running, None),
                    (AppState::Running, true) => {}
                    _ => self.start_now(),
                }
                let _ = reply.send(Ok(()));
            }
            Cmd::PrecopyStart(base, reply) => {
                let r = self.precopy_start(base);
                let _ = reply.send(r);
            }
            Cmd::PrecopyRound(reply) => {
                let r = self.collect_dirty();
                let _ = reply.send(r);
            }
            Cmd::PrecopySlice {
                memory,
                first,
                end,
                reply,
            } => {
                let r = match self.inst.as_mut() {
                    Some(inst) => inst
                        .encode_nonzero_pages(memory, first, end)
                        .map_err(|e| (500, e.to_string())),
                    None => Err(self.not_running()),
                };
                let _ = reply.send(r);
            }
            Cmd::Throttle(factor) => self.throttle = factor,
            Cmd::Freeze { cold, reply } => {
                self.throttle = 0;
                let r = self.freeze(cold);
                let _ = reply.send(r);
            }
            Cmd::Unfreeze(reply) => {
                self.throttle = 0;
                self.frozen = false;
                self.trackers.clear();
                self.set_state(AppState::Running, None);
                let held = std::mem::take(&mut self.held);
                for c in held {
                    self.handle(c);
                }
                let _ = reply.send(());
            }
            Cmd::Release(_) | Cmd::Shutdown => unreachable!("handled by the loop"),
        }
    }

    fn invoke(&mut self, req: InvokeRequest) -> Result<InvokeResponse, ApiErr> {
        let state = self.state();
        if state != AppState::Running && state != AppState::Migrating {
            return Err(self.not_running());
        }
        let Some(result) = self.timed(|inst| {
            let (params, _) = inst.func_type(&req.export)?;
            let vals = tern_runtime::values::parse_args(&req.export, &params, &req.args)?;
            let results = inst.call(&req.export, &vals)?;
            Ok::<_, Error>((vals, results))
        }) else {
            return Err(self.not_running());
        };
        self.refresh_status();
        match result {
            Ok((vals, results)) => {
                self.count_served();
                Ok(InvokeResponse {
                    export: req.export,
                    args: vals
                        .iter()
                        .map(|v| serde_json::to_value(to_json(v)).unwrap_or_default())
                        .collect(),
                    results: results
                        .iter()
                        .map(|v| serde_json::to_value(to_json(v)).unwrap_or_default())
                        .collect(),
                    node: String::new(),
                })
            }
            Err(e) => {
                let status = match e {
                    Error::NoSuchExport(..) | Error::BadArguments { .. } => 400,
                    _ => 500,
                };
                if let Error::Exit(code) = e {
                    self.set_state(
                        if code == 0 {
                            AppState::Exited
                        } else {
                            AppState::Failed
                        },
                        Some(e.to_string()),
                    );
                    self.after_failure(code != 0);
                }
                Err((status, e.to_string()))
            }
        }
    }

    fn precopy_start(&mut self, base: Option<Arc<Snapshot>>) -> Result<PrecopyFirst, ApiErr> {
        let served = self.served().to_string();
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| (409, format!("app {} is not running", self.spec.name)))?;
        set_extra(inst, SERVED_KEY, served);
        // Track first, then copy: whatever is written after this point is
        // in the next round's dirty set.
        self.trackers = inst
            .memory_regions()
            .map_err(|e| (500, e.to_string()))?
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
                        .map_err(|e| (500, e.to_string()))?,
                ),
                memories: inst
                    .memory_regions()
                    .map_err(|e| (500, e.to_string()))?
                    .into_iter()
                    .map(|r| (r.index, (r.size / tern_runtime::snapshot::PAGE_SIZE) as u64))
                    .collect(),
            },
            Some(cp) => PrecopyFirst::Delta(
                inst.pages_differing_from(&cp)
                    .map_err(|e| (500, e.to_string()))?,
            ),
        };
        self.set_state(AppState::Migrating, None);
        Ok(first)
    }

    fn collect_dirty(&mut self) -> Result<Vec<PageChunk>, ApiErr> {
        let inst = self
            .inst
            .as_mut()
            .ok_or_else(|| (409, "app is not running".to_string()))?;
        let regions = inst.memory_regions().map_err(|e| (500, e.to_string()))?;
        let mut chunks = Vec::new();
        for (index, tracker) in &mut self.trackers {
            let r = regions
                .iter()
                .find(|r| r.index == *index)
                .ok_or_else(|| (500, "memory vanished".to_string()))?;
            let pages = match tracker.collect(r.base, r.size) {
                Ok(p) => p,
                // A tracker that lost track: every page is dirty.
                Err(_) => (0..(r.size / tern_runtime::snapshot::PAGE_SIZE) as u64).collect(),
            };
            chunks.push(
                inst.read_pages(*index, &pages)
                    .map_err(|e| (500, e.to_string()))?,
            );
        }
        Ok(chunks)
    }

    fn freeze(&mut self, cold: bool) -> Result<(Instant, FreezeResult), ApiErr> {
        let at = Instant::now();
        let served = self.served().to_string();
        if self.inst.is_none() {
            return Err(self.not_running());
        }
        self.frozen = true;
        let result = (|| {
            let inst = self.inst.as_mut().expect("checked");
            set_extra(inst, SERVED_KEY, served);
            if cold {
                inst.run_snapshot_hook(true)
                    .map_err(|e| (500, e.to_string()))?;
                let state = inst
                    .snapshot_state_only()
                    .map_err(|e| (500, e.to_string()))?;
                let memories = inst
                    .memory_regions()
                    .map_err(|e| (500, e.to_string()))?
                    .into_iter()
                    .map(|r| (r.index, (r.size / tern_runtime::snapshot::PAGE_SIZE) as u64))
                    .collect();
                return Ok(FreezeResult::Cold {
                    state: Box::new(state),
                    memories,
                });
            }
            inst.run_snapshot_hook(true)
                .map_err(|e| (500, e.to_string()))?;
            let chunks = self.collect_dirty()?;
            let inst = self.inst.as_mut().expect("checked");
            let state = inst
                .snapshot_state_only()
                .map_err(|e| (500, e.to_string()))?;
            Ok(FreezeResult::Final(Box::new(FinalCapture {
                chunks,
                state,
            })))
        })();
        if result.is_err() {
            self.frozen = false;
        }
        result.map(|r| (at, r))
    }
}

/// The app's own directory on this node, given to it as `/data`.
pub(crate) fn app_dir(data_dir: &std::path::Path, app: &str) -> Preopen {
    let dir = data_dir.join("apps").join(app);
    let _ = std::fs::create_dir_all(&dir);
    Preopen {
        host: dir.to_string_lossy().into_owned(),
        guest: "/data".into(),
        read_only: false,
    }
}

fn set_extra(inst: &mut Instance, key: &str, value: String) {
    let extra = inst.extra_meta_mut();
    extra.retain(|(k, _)| k != key);
    extra.push((key.to_string(), value));
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
        let handle = AppHandle::spawn(runtime, module, spec, dir.path().to_path_buf(), None);
        let held = handle.ask(Cmd::Release).await.expect("the actor answers");
        assert!(held.is_empty());

        let req = Request {
            method: "POST".into(),
            path: "/x".into(),
            query: String::new(),
            headers: vec![],
            body: b"payload".to_vec(),
        };
        let back = handle.request_here(req).await.expect_err("given back");
        assert_eq!(
            (back.path.as_str(), &back.body[..]),
            ("/x", &b"payload"[..])
        );
        let inv = InvokeRequest {
            export: "f".into(),
            args: vec![],
        };
        let back = handle
            .invoke_here(inv.clone())
            .await
            .expect_err("given back");
        assert_eq!(back, inv);
        // Anything else is refused at once.
        let Err(e) = handle.ask(Cmd::Snapshot).await else {
            panic!("a snapshot of a handed-over app")
        };
        assert_eq!(e.0, 503, "{e:?}");
    }
}
