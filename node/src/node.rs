//! The node's shared state: its apps (here or moved away), the routes it
//! learned to apps elsewhere, migration sessions arriving, and the control
//! planes it reports to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_api::client::{Client, ClientError};
use tern_api::types::{Heartbeat, NodeInfo, Resources};
use tern_runtime::engine::{Runtime, RuntimeConfig};
use tern_runtime::snapshot::Snapshot;

use crate::app::AppHandle;
use crate::error::{NodeError, Result};
use crate::migrate::TargetSession;
use crate::{fence, NodeConfig, CHECKPOINT_INTERVAL};

/// How soon a checkpoint that failed is tried again.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(2);

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
    pub(crate) sessions: Mutex<HashMap<String, Arc<TargetSession>>>,
    /// Routes to apps elsewhere, learned from the control plane.
    pub(crate) routes: Mutex<crate::forward::Routes>,
    pub(crate) capacity: Resources,
    pub(crate) session_counter: AtomicU64,
    /// The control planes (`NodeConfig::control_url`, split) and which of
    /// them the node talks to now.
    controls: Vec<String>,
    control_at: AtomicUsize,
    /// The latest checkpoint of each local app: (digest, snapshot).
    pub(crate) checkpoints: Mutex<HashMap<String, (String, Arc<Snapshot>)>>,
    /// The checkpoint a hybrid move leaving here starts from, by app: kept
    /// for the move's length (its target may fetch it after a newer one
    /// was taken).
    pub(crate) moving_checkpoints: Mutex<HashMap<String, (String, Arc<Snapshot>)>>,
    /// Who may call what (`auth.rs`).
    pub(crate) auth: crate::auth::Auth,
    /// Post-copy moves under way, in and out.
    pub(crate) postcopy: crate::migrate::postcopy::Registry,
    /// Whether the node may serve its apps now (`lease.rs`).
    pub(crate) lease: Arc<crate::lease::Lease>,
    /// Clients for migration peers, each accepting only the certificate of
    /// the node it is for (bounded: cleared past [`MAX_PEERS`]).
    peers: Mutex<HashMap<String, Client>>,
    /// What `GET /metrics` answers (`metrics.rs`).
    pub(crate) metrics: crate::metrics::Metrics,
}

/// Peer clients kept at most (one per node this node moved apps to).
const MAX_PEERS: usize = 256;

/// Locks a mutex, going on with its data if a holder panicked (every
/// critical section here leaves the data consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// Opens a node's state in its data directory (created if missing).
    pub(crate) fn open(config: NodeConfig, url: String) -> anyhow::Result<Arc<Node>> {
        let controls: Vec<String> = config
            .control_url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        // Without TLS the cluster token is the node's only credential (and
        // an empty one would let anybody in); with TLS its certificate is,
        // and a token is only one more credential it accepts.
        if config.tls.is_none() && config.token.trim().is_empty() {
            anyhow::bail!(
                "a node without TLS needs the cluster token (an empty one would let anybody in): give --token or TERN_TOKEN"
            );
        }
        // Owner-only: checkpoints hold apps' memory and environment.
        for dir in [
            config.data_dir.clone(),
            config.data_dir.join("modules"),
            config.data_dir.join("checkpoints"),
            config.data_dir.join("apps"),
        ] {
            tern_util::create_private_dir(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let has_control = !controls.is_empty();
        tern_runtime::resident::set_bound(config.resident_stock_bytes);
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(config.data_dir.join("cache")),
        })?;
        let generations = fence::load(&config.data_dir);
        let capacity = config.capacity.unwrap_or_else(machine_capacity);
        // Over TLS the node proves who it is with its certificate and never
        // sends the operator's token; over plain HTTP the token is all it has.
        let client = match &config.tls {
            Some(tls) => Client::with_tls(None, tls)?,
            None => Client::new(Some(config.token.clone())),
        };
        let metrics = crate::metrics::Metrics::new(&config.name);
        let node = Arc::new(Node {
            metrics,
            url,
            client,
            config,
            runtime,
            apps: Mutex::new(HashMap::new()),
            generations: Mutex::new(generations),
            sessions: Mutex::new(HashMap::new()),
            routes: Mutex::new(crate::forward::Routes::default()),
            capacity,
            session_counter: AtomicU64::new(0),
            controls,
            control_at: AtomicUsize::new(0),
            checkpoints: Mutex::new(HashMap::new()),
            moving_checkpoints: Mutex::new(HashMap::new()),
            postcopy: Default::default(),
            auth: crate::auth::Auth::default(),
            lease: Arc::new(crate::lease::Lease::new(has_control)),
            peers: Mutex::new(HashMap::new()),
        });
        node.metrics.attach(&node);
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A client for talking to node `name` as a move's peer. Over TLS it
    /// accepts only a certificate of the cluster that names that node: the
    /// app's state goes to the node the control plane chose, not to any
    /// holder of a cluster certificate at that address.
    pub(crate) fn peer(&self, name: &str) -> Result<Client, crate::error::NodeError> {
        let Some(tls) = &self.config.tls else {
            return Ok(self.client.clone());
        };
        let mut peers = lock(&self.peers);
        if let Some(c) = peers.get(name) {
            return Ok(c.clone());
        }
        let role = tern_api::tls::Role::Node(name.to_string());
        let c = Client::with_tls_for(None, tls, &role).map_err(|e| {
            crate::error::NodeError::internal(format!("a client for node {name}: {e:#}"))
        })?;
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        peers.insert(name.to_string(), c.clone());
        Ok(c)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn data_dir(&self) -> &PathBuf {
        &self.config.data_dir
    }

    /// The control plane the node talks to now (`None`: standalone).
    pub(crate) fn control(&self) -> Option<String> {
        let i = self.control_at.load(Ordering::Relaxed);
        self.controls.get(i % self.controls.len().max(1)).cloned()
    }

    /// How many control planes the node knows of.
    pub(crate) fn control_count(&self) -> usize {
        self.controls.len()
    }

    /// `url` did not answer as the leading control plane: the next call
    /// goes to the next one (when several are configured).
    pub(crate) fn control_failed(&self, url: &str, e: &ClientError) {
        if self.controls.len() < 2 || self.control().as_deref() != Some(url) {
            return;
        }
        // A standby answers 503; a stopped one does not answer at all.
        if matches!(e.status(), None | Some(503)) {
            self.control_at.fetch_add(1, Ordering::Relaxed);
            tracing::info!(from = url, to = ?self.control(), "trying another control plane");
        }
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

    /// The app's actor, if the app runs here.
    pub(crate) fn local(&self, app: &str) -> Option<AppHandle> {
        match lock(&self.apps).get(app) {
            Some(Slot::Local(h)) => Some(h.clone()),
            _ => None,
        }
    }

    /// The app's actor, or an error naming this node.
    pub(crate) fn local_or_404(&self, app: &str) -> Result<AppHandle> {
        self.local(app).ok_or_else(|| {
            NodeError::not_found(format!("no app named {app} on node {}", self.name()))
        })
    }

    /// Where the app went, if it moved away from here.
    pub(crate) fn moved_to(&self, app: &str) -> Option<String> {
        match lock(&self.apps).get(app) {
            Some(Slot::Moved { url }) => Some(url.clone()),
            _ => None,
        }
    }

    pub(crate) fn slot(&self, app: &str) -> Option<Slot> {
        lock(&self.apps).get(app).cloned()
    }

    /// Records that the app now runs at `url` (after a handover).
    pub(crate) fn mark_moved(&self, app: &str, url: &str) {
        lock(&self.apps).insert(
            app.to_string(),
            Slot::Moved {
                url: url.to_string(),
            },
        );
    }

    /// Takes the app out of the node's table (its actor is the caller's).
    pub(crate) fn remove_slot(&self, app: &str) -> Option<Slot> {
        lock(&self.apps).remove(app)
    }

    /// Empties the app table, handing back every local actor.
    pub(crate) fn take_all_local(&self) -> Vec<AppHandle> {
        lock(&self.apps)
            .drain()
            .filter_map(|(_, s)| match s {
                Slot::Local(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// The apps running here now.
    pub(crate) fn local_apps(&self) -> Vec<AppHandle> {
        self.local_handles()
    }

    /// Moves arriving here now.
    pub(crate) fn incoming_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    fn local_handles(&self) -> Vec<AppHandle> {
        lock(&self.apps)
            .values()
            .filter_map(|s| match s {
                Slot::Local(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// Makes an app local (replacing any older copy) and checkpoints it periodically.
    pub(crate) fn install(self: &Arc<Self>, handle: AppHandle) {
        let old = lock(&self.apps).insert(handle.name().to_string(), Slot::Local(handle.clone()));
        if let Some(Slot::Local(old)) = old {
            old.shutdown();
        }
        let node = self.clone();
        let installed = tern_util::now_unix_ms();
        // The last attempt here (a failed one leaves the checkpoint's time
        // as it was): at most one an interval, or one every
        // `CHECKPOINT_RETRY` while they fail.
        let mut attempted: Option<u64> = None;
        tokio::spawn(async move {
            loop {
                // Due an interval after the app's latest checkpoint, which
                // may have been taken on the node it came from; looked at
                // again at least every second, as a move's state arrives.
                let status = handle.status().checkpoint;
                let failed = status.as_ref().is_some_and(|c| c.error.is_some());
                let last = status
                    .and_then(|c| c.unix_ms)
                    .max(attempted)
                    .unwrap_or(installed);
                let now = tern_util::now_unix_ms();
                let mut due = checkpoint_due_in(last, now);
                // The last attempt failed (not sent, or not written): the
                // app's restart point is older than it should be; try again
                // soon rather than an interval later.
                if failed {
                    // (An attempt through the API counts from when it is seen.)
                    let at = *attempted.get_or_insert(now);
                    due = due.min(
                        (Duration::from_millis(at) + CHECKPOINT_RETRY)
                            .saturating_sub(Duration::from_millis(now)),
                    );
                }
                tokio::time::sleep(due.min(Duration::from_secs(1))).await;
                match node.local(handle.name()) {
                    Some(h) if h.same(&handle) => {}
                    _ => break,
                }
                // Not while pages are still arriving: the capture would
                // wait for every one, and the copy they come from (the
                // control plane's) must stay the latest until they are in.
                if due <= Duration::from_secs(1) && handle.pages_pending().is_none() {
                    attempted = Some(tern_util::now_unix_ms());
                    let _ = node.checkpoint(&handle).await;
                }
            }
        });
    }

    pub(crate) fn heartbeat(&self) -> Heartbeat {
        let handles = self.local_handles();
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
            migrations_in: crate::migrate::incoming(self),
        }
    }
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

/// How long until an app whose latest checkpoint was taken at `last` (Unix
/// ms) is due for the next one, at `now`.
pub(crate) fn checkpoint_due_in(last: u64, now: u64) -> Duration {
    (Duration::from_millis(last) + CHECKPOINT_INTERVAL).saturating_sub(Duration::from_millis(now))
}
