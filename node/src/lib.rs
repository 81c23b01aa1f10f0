//! tern's node agent (`tern node`): runs apps on the engine
//! (`tern-runtime`), serves the node API and app ingress over HTTP (hyper on
//! tokio), and moves apps to and from other nodes.
//!
//! # How guest calls meet the async runtime
//! Each app has an actor: one OS thread that owns the app's `Instance` and
//! takes commands (invoke, request, snapshot, migration steps) from a
//! channel, one at a time. HTTP handlers are async tasks that send a command
//! and await its reply. So a call into a guest never blocks the tokio
//! workers, one app's long call never delays another app, each app has
//! exactly one call in flight (the safe-point rule holds by construction),
//! and pausing an app for a migration is just the actor holding the commands
//! that arrive. Guest code runs with the synchronous wasmtime API and is
//! bounded by epoch deadlines and fuel, not by async yields: a thread per app
//! is cheap at the scale of a node (hundreds of apps), and it keeps the
//! capture code free of async state.
//!
//! - `app.rs` — the actor: lifecycle, calls, ticks, checkpoints, and the
//!   source side of a migration (dirty tracking, freeze, release);
//! - `http.rs` — routing of the node API and of app ingress;
//! - `migrate.rs` — the migration protocol, source driver and target sessions.

mod app;
mod http;
mod migrate;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_api::client::Client;
use tern_api::types::{Heartbeat, NodeInfo, Resources};

use tern_runtime::engine::{LoadedModule, Runtime, RuntimeConfig};
use tern_runtime::snapshot::Snapshot;

pub use app::AppHandle;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The control plane to register with and report to (`None`:
    /// standalone). Several, comma-separated, when control planes share an
    /// etcd store: the node reports to whichever answers as the leader.
    pub control_url: Option<String>,
    /// The cluster token: required on every API call, sent on every call out.
    pub token: String,
    pub labels: BTreeMap<String, String>,
    /// Where modules, checkpoints and apps' files are kept.
    pub data_dir: PathBuf,
    /// What the node offers; `None`: the machine's cores and memory.
    pub capacity: Option<Resources>,
    /// The URL the control plane and other nodes reach this node at.
    /// `None`: the listener's address (an unspecified IP becomes 127.0.0.1).
    pub advertise_url: Option<String>,
}

impl NodeConfig {
    pub fn new(
        name: impl Into<String>,
        token: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            control_url: None,
            token: token.into(),
            labels: BTreeMap::new(),
            data_dir: data_dir.into(),
            capacity: None,
            advertise_url: None,
        }
    }
}

/// How often a node reports to the control plane.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often SDK apps get `tern_tick`.
pub const TICK_INTERVAL: Duration = Duration::from_millis(1000);
/// How often a running app is checkpointed (for restarts and hybrid moves).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// Where an app the node knows of is.
#[derive(Clone)]
pub(crate) enum Slot {
    Local(AppHandle),
    /// Moved away; requests for it are forwarded there.
    Moved {
        url: String,
    },
}

/// The node's shared state.
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) url: String,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) client: Client,
    pub(crate) apps: Mutex<HashMap<String, Slot>>,
    /// Highest generation seen per app: an older one is refused (fencing).
    pub(crate) generations: Mutex<HashMap<String, u64>>,
    pub(crate) sessions: Mutex<HashMap<String, Arc<migrate::TargetSession>>>,
    /// Ingress routes learned from the control plane: app → node URL.
    pub(crate) routes: Mutex<HashMap<String, String>>,
    pub(crate) capacity: Resources,
    pub(crate) session_counter: std::sync::atomic::AtomicU64,
    /// The control planes (`NodeConfig::control_url`, split) and which of
    /// them the node talks to now.
    controls: Vec<String>,
    control_at: std::sync::atomic::AtomicUsize,
    /// The latest checkpoint of each local app: (digest, snapshot).
    pub(crate) checkpoints: Mutex<HashMap<String, (String, Arc<Snapshot>)>>,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The control plane the node talks to now (`None`: standalone).
    pub(crate) fn control(&self) -> Option<String> {
        let i = self.control_at.load(std::sync::atomic::Ordering::Relaxed);
        self.controls.get(i % self.controls.len().max(1)).cloned()
    }

    /// `url` did not answer as the leading control plane: the next call
    /// goes to the next one (when several are configured).
    pub(crate) fn control_failed(&self, url: &str, e: &tern_api::client::ClientError) {
        if self.controls.len() < 2 || self.control().as_deref() != Some(url) {
            return;
        }
        // A standby answers 503; a stopped one does not answer at all.
        if matches!(e.status(), None | Some(503)) {
            self.control_at
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(from = url, to = ?self.control(), "trying another control plane");
        }
    }

    pub(crate) fn module_path(&self, sha: &str) -> PathBuf {
        self.config
            .data_dir
            .join("modules")
            .join(format!("{sha}.wasm"))
    }

    pub(crate) fn checkpoint_path(&self, app: &str) -> PathBuf {
        self.config
            .data_dir
            .join("checkpoints")
            .join(format!("{app}.snap"))
    }

    pub(crate) fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.config.name.clone(),
            url: self.url.clone(),
            labels: self.config.labels.clone(),
            capacity: self.capacity,
            arch: std::env::consts::ARCH.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Records a generation; refuses one older than the newest seen.
    pub(crate) fn admit_generation(&self, app: &str, generation: u64) -> Result<(), String> {
        let mut g = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let seen = g.get(app).copied().unwrap_or(0);
        if generation < seen {
            return Err(format!(
                "app {app} generation {generation} is older than generation {seen} this node has seen: refusing a stale copy"
            ));
        }
        if seen == generation {
            return Ok(());
        }
        let mut next = g.clone();
        next.insert(app.to_string(), generation);
        // Durable before it counts: a fence that a crash can undo is none.
        persist_generations(&self.config.data_dir, &next).map_err(|e| {
            format!("cannot record generation {generation} of app {app} on this node's disk: {e}")
        })?;
        *g = next;
        Ok(())
    }

    /// Whether a generation would be admitted (without recording it).
    pub(crate) fn check_generation(&self, app: &str, generation: u64) -> Result<(), String> {
        let seen = self
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .copied()
            .unwrap_or(0);
        if generation < seen {
            return Err(format!(
                "app {app} generation {generation} is older than generation {seen} this node has seen: refusing a stale copy"
            ));
        }
        Ok(())
    }

    /// A module by sha256: loaded, on disk, or fetched from the control plane.
    pub(crate) async fn module(&self, sha: &[u8; 32]) -> Result<Arc<LoadedModule>, String> {
        if let Some(m) = self.runtime.loaded(sha) {
            return Ok(m);
        }
        let hex = hex::encode(sha);
        let path = self.module_path(&hex);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                let control = self
                    .control()
                    .ok_or_else(|| format!("module {hex} is not on this node: upload it first"))?;
                let b = self
                    .client
                    .send(hyper::Method::GET, &format!("{control}/v1/modules/{hex}"), "application/octet-stream", bytes::Bytes::new())
                    .await
                    .map_err(|e| {
                        self.control_failed(&control, &e);
                        format!("module {hex} is not on this node and the control plane cannot give it: {e}")
                    })?
                    .1
                    .to_vec();
                if tern_runtime::sha256(&b) != *sha {
                    return Err(format!(
                        "the control plane's copy of module {hex} does not match its hash"
                    ));
                }
                let _ = std::fs::write(&path, &b);
                b
            }
        };
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.load(bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    pub(crate) fn latest_checkpoint(&self, app: &str) -> Option<(String, Arc<Snapshot>)> {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .cloned()
    }

    pub(crate) fn forget_checkpoint(&self, app: &str) {
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }

    /// The checkpoint of `app` with this digest: held here, or fetched from `url`.
    pub(crate) async fn checkpoint_for(
        &self,
        app: &str,
        digest: &str,
        url: Option<&str>,
    ) -> Result<(Arc<Snapshot>, u64), (u16, String)> {
        if let Some((d, s)) = self.latest_checkpoint(app) {
            if d == digest {
                return Ok((s, 0));
            }
        }
        let path = self
            .config
            .data_dir
            .join("checkpoints")
            .join(format!("{app}-{digest}.snap"));
        if let Ok(s) = Snapshot::open(&path, false) {
            return Ok((Arc::new(s), 0));
        }
        let url = url.ok_or((
            409,
            format!("this node does not hold checkpoint {digest} of {app}"),
        ))?;
        let (_, bytes) = self
            .client
            .send(
                hyper::Method::GET,
                url,
                "application/octet-stream",
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| (409, format!("cannot fetch the checkpoint of {app}: {e}")))?;
        if checkpoint_digest(&bytes) != digest {
            return Err((409, format!("the checkpoint of {app} at {url} is not the one the source holds (it changed meanwhile)")));
        }
        let n = bytes.len() as u64;
        tern_util::write_atomic(&path, &bytes)
            .map_err(|e| (500, format!("cannot keep the checkpoint: {e}")))?;
        let s = Snapshot::open(&path, true)
            .map_err(|e| (409, format!("the fetched checkpoint is damaged: {e}")))?;
        Ok((Arc::new(s), n))
    }

    /// Makes an app local (replacing any older copy) and checkpoints it periodically.
    pub(crate) fn install(self: &Arc<Self>, handle: AppHandle) {
        let old = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.name().to_string(), Slot::Local(handle.clone()));
        if let Some(Slot::Local(old)) = old {
            old.shutdown();
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECKPOINT_INTERVAL).await;
                match node.local(handle.name()) {
                    Some(h) if h.same(&handle) => {}
                    _ => break,
                }
                let _ = node.checkpoint(&handle).await;
            }
        });
    }

    /// Takes a checkpoint of a local app now: kept on disk and in memory,
    /// and sent to the control plane (restarts elsewhere come from it).
    pub(crate) async fn checkpoint(
        &self,
        handle: &AppHandle,
    ) -> Result<(String, u64), (u16, String)> {
        let snap = handle.ask(app::Cmd::Snapshot).await??;
        let digest = checkpoint_digest(snap.as_bytes());
        let app = handle.name().to_string();
        let path = self.checkpoint_path(&app);
        snap.write_file(&path)
            .map_err(|e| (500, format!("cannot write checkpoint: {e}")))?;
        let snap = Arc::new(snap);
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(app.clone(), (digest.clone(), snap.clone()));
        let generation = handle.spec().generation;
        // To the control plane that leads: the next one is tried when the
        // current one does not answer or stands by.
        for _ in 0..self.controls.len() {
            let Some(control) = self.control() else {
                break;
            };
            let url = format!("{control}/v1/checkpoints/{app}?generation={generation}");
            match self
                .client
                .put_bytes(&url, bytes::Bytes::from(snap.as_bytes().to_vec()))
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

    pub(crate) fn local(&self, app: &str) -> Option<AppHandle> {
        match self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(app) {
            Some(Slot::Local(h)) => Some(h.clone()),
            _ => None,
        }
    }

    pub(crate) fn heartbeat(&self) -> Heartbeat {
        let handles: Vec<AppHandle> = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|s| match s {
                Slot::Local(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        let apps: Vec<_> = handles.iter().map(|h| h.status()).collect();
        let memory: u64 = apps.iter().map(|a| a.memory_bytes).sum();
        let cpu: u64 = handles.iter().map(|h| h.cpu_milli_recent()).sum();
        Heartbeat {
            name: self.config.name.clone(),
            usage: Resources {
                cpu_milli: cpu,
                memory_bytes: memory,
            },
            apps,
        }
    }
}

fn generations_path(dir: &std::path::Path) -> PathBuf {
    dir.join("generations.json")
}

fn persist_generations(dir: &std::path::Path, g: &HashMap<String, u64>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(g).map_err(std::io::Error::other)?;
    tern_util::write_atomic(&generations_path(dir), &bytes)
}

fn machine_capacity() -> Resources {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30);
    Resources {
        cpu_milli: cores * 1000,
        memory_bytes: mem,
    }
}

/// Runs a node on an already-bound listener until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = start(&listener, config)?;
    serve(node, listener, shutdown).await
}

/// Prepares a node (directories, runtime) for a listener.
pub fn start(listener: &tokio::net::TcpListener, config: NodeConfig) -> anyhow::Result<Arc<Node>> {
    let controls = config
        .control_url
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    for sub in ["modules", "checkpoints", "apps"] {
        std::fs::create_dir_all(config.data_dir.join(sub)).map_err(|e| {
            anyhow::anyhow!("cannot create {}: {e}", config.data_dir.join(sub).display())
        })?;
    }
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.data_dir.join("cache")),
    })?;
    let addr = listener.local_addr()?;
    let generations: HashMap<String, u64> = std::fs::read(generations_path(&config.data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let capacity = config.capacity.unwrap_or_else(machine_capacity);
    let url = match &config.advertise_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    Ok(Arc::new(Node {
        url,
        client: Client::new(Some(config.token.clone())),
        config,
        runtime,
        apps: Mutex::new(HashMap::new()),
        generations: Mutex::new(generations),
        sessions: Mutex::new(HashMap::new()),
        routes: Mutex::new(HashMap::new()),
        capacity,
        session_counter: std::sync::atomic::AtomicU64::new(0),
        controls,
        control_at: std::sync::atomic::AtomicUsize::new(0),
        checkpoints: Mutex::new(HashMap::new()),
    }))
}

/// Serves a prepared node, registers and reports to the control plane.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let reporter = tokio::spawn(report_loop(node.clone()));
    let handler_node = node.clone();
    let handler: tern_api::server::Handler = Arc::new(move |req| {
        let n = handler_node.clone();
        Box::pin(async move { http::route(n, req).await })
    });
    tern_api::server::serve(listener, handler, shutdown).await;
    reporter.abort();
    // Stop every app's actor; their last checkpoints stay on disk.
    let handles: Vec<AppHandle> = node
        .apps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .filter_map(|(_, s)| match s {
            Slot::Local(h) => Some(h),
            _ => None,
        })
        .collect();
    for h in handles {
        h.shutdown();
    }
    Ok(())
}

/// Registers with the control plane, then sends heartbeats; re-registers
/// when the control plane forgets the node (it restarted).
async fn report_loop(node: Arc<Node>) {
    if node.control().is_none() {
        return;
    }
    let mut registered = false;
    loop {
        let Some(control) = node.control() else {
            return;
        };
        if !registered {
            match node
                .client
                .post_json::<_, serde_json::Value>(&format!("{control}/v1/nodes"), &node.info())
                .await
            {
                Ok(_) => registered = true,
                Err(e) => node.control_failed(&control, &e),
            }
        }
        if registered {
            let hb = node.heartbeat();
            let url = format!("{control}/v1/nodes/{}/heartbeat", node.config.name);
            if let Err(e) = node
                .client
                .post_json::<_, serde_json::Value>(&url, &hb)
                .await
            {
                if e.status() == Some(404) {
                    registered = false;
                }
                node.control_failed(&control, &e);
            }
        }
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
    }
}

/// The digest that names a checkpoint: xxh3-128 of its bytes, in hex.
pub(crate) fn checkpoint_digest(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}
