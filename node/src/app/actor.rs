//! The actor's loop: one thread per app that owns its instance and runs
//! the commands it is sent one at a time: lifecycle (start, restarts after
//! a failure, delayed start, ticks), calls, snapshots, and holding calls
//! while the app is frozen for a move.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::types::{AppState, InvokeRequest, InvokeResponse, StartApp};
use tern_runtime::dirty::DirtyTracker;
use tern_runtime::engine::{LoadedModule, Runtime};
use tern_runtime::error::Error;
use tern_runtime::instance::{AppConfig, Instance, SnapshotOptions};
use tern_runtime::sdk::{self, Response};
use tern_runtime::snapshot::LimitsState;
use tern_runtime::values::to_json;
use tern_runtime::wasi::Stdio;
use tern_util::now_unix_ms;

use super::precopy::{set_checkpoint_meta, set_extra};
use super::queue::RETRY_AFTER_SECS;
use super::{app_dir, Cmd, Shared, SlicePages};
use crate::error::{ErrorKind, NodeError, Result};
use crate::TICK_INTERVAL;

pub(super) struct Actor {
    pub(super) shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    module: Arc<LoadedModule>,
    pub(super) spec: StartApp,
    data_dir: PathBuf,
    pub(super) inst: Option<Instance>,
    pub(super) frozen: bool,
    held: Vec<Cmd>,
    pub(super) trackers: Vec<(u32, Box<dyn DirtyTracker>)>,
    /// See [`Cmd::Throttle`].
    pub(super) throttle: u32,
    next_tick: Instant,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Requests served so far are kept in the snapshot's metadata.
pub(super) const SERVED_KEY: &str = "requests_served";
/// So is when the app's latest checkpoint was taken (Unix ms), so that the
/// node it moves to goes on checkpointing it on time: an app that moves
/// more often than the checkpoint interval is still checkpointed that often.
pub(super) const CHECKPOINT_KEY: &str = "checkpoint_unix_ms";
/// The longest pause a throttled app takes after one call.
const MAX_THROTTLE_PAUSE: Duration = Duration::from_millis(50);

impl Actor {
    /// Starts the actor's thread; with `instance`, the app goes on from
    /// that restored state.
    pub(super) fn start(
        shared: Arc<Shared>,
        runtime: Arc<Runtime>,
        module: Arc<LoadedModule>,
        spec: StartApp,
        data_dir: PathBuf,
        instance: Option<Instance>,
        rx: Receiver<Cmd>,
    ) -> Result<()> {
        let name = spec.name.clone();
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
            .name(format!("app-{name}"))
            .spawn(move || actor.run(rx))
            .map(|_| ())
            .map_err(|e| NodeError::internal(format!("cannot start a thread for app {name}: {e}")))
    }

    pub(super) fn set_state(&self, state: AppState, error: Option<String>) {
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }

    pub(super) fn state(&self) -> AppState {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state
    }

    pub(super) fn refresh_status(&mut self) {
        let mem = self.inst.as_mut().map(|i| i.memory_bytes()).unwrap_or(0);
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.memory_bytes = mem;
        s.generation = self.spec.generation;
        s.cpu_ms = self.shared.busy_ns.load(Ordering::Relaxed) / 1_000_000;
    }

    pub(super) fn served(&self) -> u64 {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests_served
    }

    /// When the app's latest checkpoint was taken, as far as this copy knows.
    pub(super) fn checkpoint_unix_ms(&self) -> Option<u64> {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint
            .as_ref()
            .and_then(|c| c.unix_ms)
    }

    fn count_served(&self) {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests_served += 1;
    }

    /// Takes an instance restored elsewhere (restore, migration target).
    pub(super) fn adopt(&mut self, mut inst: Instance) {
        let meta = |inst: &mut Instance, key: &str| -> Option<u64> {
            inst.extra_meta_mut()
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.parse().ok())
        };
        let served = meta(&mut inst, SERVED_KEY);
        let checkpoint = meta(&mut inst, CHECKPOINT_KEY);
        {
            let mut status = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = served {
                status.requests_served = n;
            }
            if status.checkpoint.is_none() {
                status.checkpoint = checkpoint.map(|t| tern_api::types::CheckpointStatus {
                    unix_ms: Some(t),
                    ..Default::default()
                });
            }
        }
        self.set_instance(inst);
        self.set_state(AppState::Running, None);
        self.refresh_status();
    }

    /// The app's instance from now on; its interrupt handle is what stops
    /// a call of it from another thread.
    fn set_instance(&mut self, inst: Instance) {
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(inst.interrupt_handle());
        self.inst = Some(inst);
    }

    /// After a call: an instance whose call was cut off by an interrupt is
    /// torn and is dropped at once (its memory goes back); the app is
    /// stopped, and a start begins it afresh.
    fn drop_if_torn(&mut self) {
        if !self.inst.as_ref().is_some_and(|i| i.is_torn()) {
            return;
        }
        self.inst = None;
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        let msg = "a call was interrupted (the app was stopped or removed while it ran); \
                   its state since then is lost: a start begins it afresh";
        self.shared
            .logs
            .line(&format!("WARN tern: {}: {msg}", self.spec.name));
        self.set_state(AppState::Stopped, Some(msg.to_string()));
    }

    fn config(&self) -> Result<AppConfig> {
        let dir = app_dir(&self.data_dir, &self.spec.name)?;
        Ok(AppConfig {
            args: std::iter::once(self.spec.name.clone())
                .chain(self.spec.args.iter().cloned())
                .collect(),
            env: self.spec.env.clone(),
            carry_dir: Some(PathBuf::from(&dir.host)),
            preopens: vec![dir],
            limits: LimitsState {
                memory_bytes: self.spec.memory_limit,
                fuel_per_call: self.spec.fuel,
                timeout_ms_per_call: self.spec.timeout_ms,
            },
            stdio: Stdio::Capture(self.shared.logs.clone()),
            app: Some(self.spec.name.clone()),
            generation: self.spec.generation,
            random_seed: None,
            interrupt: None,
        })
    }

    /// A fresh start, or a restart from the latest checkpoint.
    fn start_now(&mut self) {
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => {
                self.failed_to_start(e.to_string());
                self.refresh_status();
                return;
            }
        };
        let started = Instance::start(&self.runtime, &self.module, config).and_then(|mut inst| {
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
                self.set_instance(inst);
                self.failures = 0;
                self.set_state(AppState::Running, None);
            }
            Err(Error::Exit(0)) => {
                self.set_state(AppState::Exited, None);
                self.after_failure(false);
            }
            Err(e) => self.failed_to_start(e.to_string()),
        }
        self.refresh_status();
    }

    fn failed_to_start(&mut self, msg: String) {
        self.shared.logs.line(&format!(
            "ERROR tern: {} failed to start: {msg}",
            self.spec.name
        ));
        self.set_state(AppState::Failed, Some(msg));
        self.after_failure(true);
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
                Ok(Cmd::Shutdown) => {
                    self.stop_paging();
                    break;
                }
                Ok(Cmd::Release(reply)) => {
                    // Close the door first: once the sender is swapped no
                    // call can reach this queue, so the drain below takes
                    // every call that did. Later ones come back to their
                    // callers unrun and follow the app to its new node. The
                    // frozen instance goes with the calls: the move frees
                    // it (or, post-copy, serves its pages) once the calls
                    // run on the target, so that freeing tens of MiB does
                    // not compete with the app's first calls there.
                    self.close();
                    let mut held = std::mem::take(&mut self.held);
                    held.extend(rx.try_iter());
                    *self
                        .shared
                        .interrupt
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = None;
                    let _ = reply.send((held, self.inst.take()));
                    break;
                }
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop_paging();
                    break;
                }
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

    pub(super) fn timed<T>(&mut self, f: impl FnOnce(&mut Instance) -> T) -> Option<T> {
        let inst = self.inst.as_mut()?;
        let t0 = Instant::now();
        self.shared
            .call_started_ms
            .store(now_unix_ms().max(1), Ordering::Relaxed);
        let out = f(inst);
        self.shared.call_started_ms.store(0, Ordering::Relaxed);
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

    pub(super) fn not_running(&self) -> NodeError {
        let s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        match s.state {
            AppState::Pending => NodeError::conflict(format!(
                "app {} has not started yet (it starts at {:?} Unix ms)",
                self.spec.name, s.start_at_unix_ms
            )),
            AppState::Stopped => NodeError::conflict(format!(
                "app {} is stopped: start it with `tern start {}`",
                self.spec.name, self.spec.name
            )),
            _ => NodeError::conflict(format!(
                "app {} is not running ({}){}",
                self.spec.name,
                s.state,
                s.last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        if self.frozen || self.holding() {
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
        // A call whose caller went away (its connection closed while the
        // call waited) is not run: nobody would see its answer.
        match &cmd {
            Cmd::Invoke(_, reply) if reply.is_closed() => return,
            Cmd::Http(_, reply) if reply.is_closed() => return,
            _ => {}
        }
        // Nor a call whose node lost its lease while the call waited: the
        // control plane may be starting the app elsewhere, and what this
        // copy would acknowledge now could be lost, or answered twice.
        let cmd = match cmd {
            Cmd::Invoke(req, reply) => match reply.lapsed() {
                Some(why) => return reply.send(Err(NodeError::busy(why))),
                None => Cmd::Invoke(req, reply),
            },
            Cmd::Http(req, reply) => match reply.lapsed() {
                Some(why) => {
                    let mut r = Response::text(503, format!("{why}\n"));
                    r.headers
                        .push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
                    return reply.send(r);
                }
                None => Cmd::Http(req, reply),
            },
            other => other,
        };
        let started = Instant::now();
        let call = matches!(cmd, Cmd::Invoke(..) | Cmd::Http(..));
        self.run_command(cmd);
        self.drop_if_torn();
        if call && self.throttle > 0 {
            std::thread::sleep((started.elapsed() * self.throttle).min(MAX_THROTTLE_PAUSE));
        }
    }

    /// Whether calls are held (`AppHandle::hold_calls`).
    fn holding(&self) -> bool {
        self.shared
            .hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Runs the calls held while the app was frozen or its calls held
    /// (they go back to being held if it still is).
    fn run_held(&mut self) {
        for c in std::mem::take(&mut self.held) {
            self.handle(c);
        }
    }

    fn run_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Invoke(req, reply) => {
                let t0 = Instant::now();
                let result = self.invoke(req);
                self.shared.calls.observe(t0.elapsed(), result.is_err());
                reply.send(result);
            }
            Cmd::Http(req, reply) => {
                let t0 = Instant::now();
                let state = self.state();
                let serving = state == AppState::Running || state == AppState::Migrating;
                let resp = match self
                    .timed(|i| serving.then(|| sdk::handle(i, &req)))
                    .flatten()
                {
                    Some(r) => {
                        self.count_served();
                        // Which copy answered: a client (`tern soak`) checks
                        // that no generation is ever served by two nodes.
                        r.with_header(crate::GENERATION_HEADER, self.spec.generation.to_string())
                    }
                    None => {
                        let e = self.not_running();
                        Response::text(e.status(), e.message)
                    }
                };
                self.refresh_status();
                self.shared.calls.observe(t0.elapsed(), resp.status >= 500);
                reply.send(resp);
            }
            Cmd::Snapshot(reply) => {
                let served = self.served().to_string();
                let checkpoint = self.checkpoint_unix_ms();
                let result = match self.inst.as_mut() {
                    None => Err(self.not_running()),
                    Some(inst) if inst.pager().is_some_and(|p| !p.is_finished()) => {
                        Err(NodeError::conflict(format!(
                            "app {} is still receiving its memory after a post-copy move: snapshot it in a moment",
                            self.spec.name
                        )))
                    }
                    Some(inst) => {
                        set_extra(inst, SERVED_KEY, served);
                        set_checkpoint_meta(inst, checkpoint);
                        inst.snapshot(SnapshotOptions {
                            embed_module: true,
                            compress: false,
                            hooks: true,
                        })
                        .map_err(|e| NodeError::internal(e.to_string()))
                    }
                };
                let _ = reply.send(result);
            }
            Cmd::Stop(reply) => {
                // The instance is kept (stopped apps keep their state),
                // unless a call of it was cut off to stop it.
                self.drop_if_torn();
                self.set_state(AppState::Stopped, None);
                let _ = reply.send(Ok(()));
            }
            Cmd::Start(reply) => {
                // An interrupt that found no call to cut ends with the stop.
                if let Some(i) = self.inst.as_ref() {
                    i.interrupt_handle().reset();
                }
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
                let r = self.dirty_pages();
                let _ = reply.send(r);
            }
            Cmd::PrecopySlice {
                memory,
                pages,
                reply,
            } => {
                let r = match (self.inst.as_mut(), pages) {
                    (Some(inst), SlicePages::NonZero { first, end }) => inst
                        .encode_nonzero_pages(memory, first, end)
                        .map_err(|e| NodeError::internal(e.to_string())),
                    (Some(inst), SlicePages::Listed(pages)) => inst
                        .encode_listed_pages(memory, &pages)
                        .map_err(|e| NodeError::internal(e.to_string())),
                    (None, _) => Err(self.not_running()),
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
                self.run_held();
                let _ = reply.send(());
            }
            Cmd::PostcopyFreeze(reply) => {
                self.throttle = 0;
                let r = self.postcopy_freeze();
                let _ = reply.send(r);
            }
            Cmd::PostcopyLost { why, replacement } => {
                self.postcopy_lost(why, replacement);
                *self.shared.hold.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.run_held();
            }
            Cmd::Unhold => self.run_held(),
            Cmd::ServePages(memory, body, reply) => {
                let r = match self.inst.as_mut() {
                    Some(inst) if self.frozen => inst
                        .serve_page_request(memory, &body)
                        .map_err(|e| NodeError::bad_request(format!("page request refused: {e}"))),
                    _ => Err(NodeError::conflict(
                        "the app is not frozen for a post-copy here",
                    )),
                };
                let _ = reply.send(r);
            }
            Cmd::Release(_) | Cmd::Shutdown => {
                unreachable!("handled by the loop")
            }
        }
    }

    /// The app stops here with pages still coming (a lazy restore's pull,
    /// say): whatever brings them stops too, quietly.
    fn stop_paging(&self) {
        let pager = self
            .shared
            .pager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = pager.filter(|p| !p.is_finished()) {
            p.fail("the app was stopped on this node");
        }
    }

    fn invoke(&mut self, req: InvokeRequest) -> Result<InvokeResponse> {
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
                let kind = match e {
                    Error::NoSuchExport(..) | Error::BadArguments { .. } => ErrorKind::BadRequest,
                    _ => ErrorKind::Internal,
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
                Err(NodeError::new(kind, e.to_string()))
            }
        }
    }
}
