//! The records the control plane keeps, the in-memory state that mirrors
//! the store, and the cluster view the scheduler decides on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_api::client::Client;
use tern_api::types::{self as api, AppView, MigrationReport, NodeInfo, NodeView};
use tern_scheduler::{
    AppSpec, Cluster, DemandPredictor, NodeState, PlacementContext, Resources, RestartPolicy,
};

use crate::store::{Loaded, Store};
use crate::ControlConfig;

/// A registered node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRec {
    pub info: NodeInfo,
    pub registered_unix_ms: u64,
    pub last_heartbeat_unix_ms: Option<u64>,
    pub usage: api::Resources,
    /// Set by an operator: no new apps, the rebalancer moves its apps away.
    pub draining: bool,
}

/// An app as the control plane knows it: what was asked, where it runs,
/// and what its node last said about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppRec {
    pub name: String,
    pub module_sha256: String,
    pub node: Option<String>,
    pub generation: u64,
    /// A node's `AppState` (`running`, `pending`...), or the control plane's
    /// own `deploying`, `restoring`, `lost` (its node no longer has it).
    pub state: String,
    pub memory_limit: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub restart: String,
    pub requests: api::Resources,
    /// Labels a node must carry to run the app (`--label K=V`).
    pub labels: BTreeMap<String, String>,
    pub policy: Option<String>,
    pub user_location: Option<String>,
    pub start_at_unix_ms: Option<u64>,
    pub created_unix_ms: u64,
    /// When the app last got a node or generation.
    pub placed_unix_ms: u64,
    pub memory_bytes: u64,
    pub requests_served: u64,
    pub cpu_ms: u64,
    pub last_error: Option<String>,
    pub last_moved_unix_ms: Option<u64>,
    /// Stopped by `tern stop`: the restart policy leaves it alone.
    pub operator_stopped: bool,
    /// Failed restarts in a row (back-off).
    pub restarts: u32,
    /// The app's latest checkpoint as its node reported it.
    pub checkpoint: Option<api::CheckpointStatus>,
}

/// The latest checkpoint of an app. Its bytes are the file its digest
/// names, `checkpoints/NAME@DIGEST.snap` ([`crate::store::Store::checkpoint_path`]),
/// so a record can only ever be read with the very bytes it was written
/// for: a control plane that finds the record but not that file (another
/// control plane received the checkpoint) knows it lacks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointRec {
    pub generation: u64,
    pub bytes: u64,
    pub unix_ms: u64,
    /// xxh3-128 of the file, 32 lowercase hex digits. Records written
    /// before digests were kept have none; their file is `NAME.snap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The bytes are a snapshot the cluster did not tag, restored by an
    /// operator (`tern restore --accept-foreign`): whatever restores the
    /// app from them gives it none of the environment or arguments they
    /// carry, as the restore itself did. The app's first checkpoint of its
    /// own replaces them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub foreign: bool,
}

/// Everything the handlers share.
pub struct Shared {
    pub cfg: ControlConfig,
    pub store: Store,
    /// Calls to nodes (2 min per call).
    pub client: Client,
    /// Migrations and restores (10 min per call).
    pub long_client: Client,
    /// Fire-and-forget calls (fencing), 10 s.
    pub short_client: Client,
    /// App ingress, passed through as is.
    /// For requests passed through to apps: no token, any status back.
    pub raw: Client,
    /// This control plane's URL as nodes see it.
    pub advertise_url: String,
    pub started_unix_ms: u64,
    state: Mutex<State>,
    /// Tokens, node certificates, revocations (`credentials.rs`).
    creds: Mutex<crate::credentials::Credentials>,
    /// What `GET /metrics` answers (`metrics.rs`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Per app, the turn to change or pin its checkpoint file: a file and
    /// its record change together, one writer at a time.
    checkpoint_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per node, when its latest heartbeat arrived (unix ms), noted before
    /// the heartbeat waits for the table: a node is not called down because
    /// the table was busy (a slow store write) when it reported.
    heard: Mutex<HashMap<String, u64>>,
}

/// The in-memory state: the store's tables plus what only lives in memory.
#[derive(Default)]
pub struct State {
    pub nodes: BTreeMap<String, NodeRec>,
    pub apps: BTreeMap<String, AppRec>,
    pub modules: HashMap<String, u64>,
    pub checkpoints: HashMap<String, CheckpointRec>,
    /// Highest generation handed out per app name (kept after `rm`).
    pub generations: HashMap<String, u64>,
    pub migrations: VecDeque<(u64, MigrationReport)>,
    /// Apps an operation holds (deploy, migrate, restore, restart, rm).
    pub busy: HashSet<String>,
    pub predictor: DemandPredictor,
    /// Last CPU counter per app: (node, generation, cpu_ms, unix ms).
    pub cpu_prev: HashMap<String, (String, u64, u64, u64)>,
    /// Last observed usage per app.
    pub usage: HashMap<String, Resources>,
    /// Per node, when this control plane last stored its record from a
    /// heartbeat (unix ms): see `heartbeat::NODE_RECORD_EVERY`.
    pub node_stored: HashMap<String, u64>,
    /// No restart attempt before this time (unix ms), per app.
    pub restart_not_before: HashMap<String, u64>,
    /// Migrations under way, by app (cleared with the app's busy mark).
    pub in_flight: BTreeMap<String, InFlight>,
    /// Per app, the node restarting it from its checkpoint (it reads the
    /// pinned file by ranges: `ops::pinned`).
    pub restoring: HashMap<String, String>,
    /// Per app, the last [`DEMAND_POINTS`] sample periods: CPU observed
    /// against CPU predicted for the period (memory only; the dashboard).
    pub demand: HashMap<String, VecDeque<DemandPoint>>,
    /// The capacity the forecast asks for, as of the last rebalance.
    pub capacity: Option<crate::plan::Capacity>,
    /// What the `learned` policy's last plan expected of each node's CPU
    /// for the next period (mean, variance, millicores).
    pub node_expect: BTreeMap<String, (f64, f64)>,
    /// Its node-level errors since, standardized (`plan::node_errors`),
    /// the last [`tern_scheduler::ERROR_SHAPE_PERIODS`] periods' worth.
    pub node_errors: VecDeque<f64>,
}

/// Demand points kept per app for the dashboard.
pub const DEMAND_POINTS: usize = 120;

/// A migration that has started and not finished.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InFlight {
    pub app: String,
    pub from: String,
    pub to: String,
    pub mode: String,
    pub generation: u64,
    pub started_unix_ms: u64,
    /// `operator`, or why the rebalancer moves it.
    pub reason: String,
}

/// One sample period of an app: what it used and what was predicted for
/// that period before it began.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DemandPoint {
    /// The sample period's index (unix ms / sample period).
    pub index: u64,
    /// When its first sample arrived.
    pub unix_ms: u64,
    /// CPU used, thousandths of a core (the period's latest sample).
    pub actual_cpu: u64,
    /// The predictor's median for the period; `None` before any history.
    pub predicted_cpu: Option<f64>,
    /// Its upper quantile.
    pub upper_cpu: Option<f64>,
    /// Whether the prediction came from a fitted model (else: last value).
    pub model: bool,
}

impl State {
    /// Records an app's CPU sample for the dashboard's demand plot. Call
    /// before the sample reaches the predictor, so that the first sample of
    /// a period is compared with what was predicted before it.
    pub fn record_demand(&mut self, app: &str, index: u64, now: u64, cpu: u64) {
        let points = self.demand.entry(app.to_string()).or_default();
        if let Some(p) = points.back_mut() {
            if p.index == index {
                p.actual_cpu = cpu;
                return;
            }
            if p.index > index {
                return;
            }
        }
        let forecast = self.predictor.cpu.forecast(app);
        points.push_back(DemandPoint {
            index,
            unix_ms: now,
            actual_cpu: cpu,
            predicted_cpu: forecast.map(|f| f.median),
            upper_cpu: forecast.map(|f| f.upper),
            model: self.predictor.cpu.has_model(app),
        });
        while points.len() > DEMAND_POINTS {
            points.pop_front();
        }
    }
}

impl Shared {
    pub fn new(
        cfg: ControlConfig,
        store: Store,
        loaded: Loaded,
        advertise_url: String,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Shared> {
        // Over TLS the control plane proves who it is to nodes with its
        // certificate and never sends them a token.
        let client = match &cfg.tls {
            Some(t) => Client::with_tls(None, &t.tls)?,
            None => Client::new(Some(cfg.token.clone())),
        };
        let mut creds: crate::credentials::Credentials = match &loaded.credentials {
            Some(b) => serde_json::from_slice(b).map_err(|e| {
                anyhow::anyhow!("the store's credentials record is unreadable: {e}")
            })?,
            None => Default::default(),
        };
        if creds.ensure_snapshot_key() {
            store.put_credentials(&serde_json::to_vec(&creds)?)?;
        }
        let mut st = State {
            predictor: DemandPredictor::new(cfg.predictor.clone()),
            modules: loaded.modules,
            checkpoints: loaded.checkpoints,
            generations: loaded.generations,
            migrations: loaded.migrations.into_iter().collect(),
            ..State::default()
        };
        let mut heard = HashMap::new();
        for n in loaded.nodes {
            heard.insert(n.info.name.clone(), 0);
            st.nodes.insert(n.info.name.clone(), n);
        }
        for a in loaded.apps {
            let g = st.generations.entry(a.name.clone()).or_insert(0);
            *g = (*g).max(a.generation);
            st.apps.insert(a.name.clone(), a);
        }
        for (app, samples) in &loaded.history {
            for &(idx, cpu, mem) in samples {
                st.predictor.observe(app, idx, Resources::new(cpu, mem));
            }
        }
        if !loaded.history.is_empty() {
            st.predictor.fit();
        }
        Ok(Shared {
            store,
            creds: Mutex::new(creds),
            long_client: client.clone().with_timeout(Duration::from_secs(600)),
            short_client: client.clone().with_timeout(Duration::from_secs(10)),
            raw: client
                .clone()
                .with_timeout(Duration::from_secs(120))
                .without_token(),
            client,
            advertise_url,
            started_unix_ms: now_ms(),
            state: Mutex::new(st),
            cfg,
            metrics,
            checkpoint_turns: Mutex::default(),
            heard: Mutex::new(heard),
        })
    }

    /// The app's checkpoint turn (see `checkpoint_turns`); lock it across
    /// a change of the app's checkpoint file and record.
    pub fn checkpoint_turn(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .checkpoint_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        turns.entry(app.to_string()).or_default().clone()
    }

    /// Forgets the app's checkpoint turn (the app is removed).
    pub fn drop_checkpoint_turn(&self, app: &str) {
        self.checkpoint_turns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
    }

    /// The credentials, read.
    pub fn creds(&self) -> MutexGuard<'_, crate::credentials::Credentials> {
        self.creds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the credentials and stores them (durably) before the change
    /// counts; when `f` says nothing changed (`Ok((r, false))`), nothing is
    /// written.
    pub fn update_creds<R>(
        &self,
        f: impl FnOnce(&mut crate::credentials::Credentials) -> Result<(R, bool), String>,
    ) -> Result<R, crate::error::ApiError> {
        let mut guard = self.creds();
        let mut next = guard.clone();
        let (r, changed) = f(&mut next).map_err(crate::error::ApiError::bad_request)?;
        if changed {
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| crate::error::ApiError::internal(e.to_string()))?;
            self.store.put_credentials(&bytes)?;
            *guard = next;
        }
        Ok(r)
    }

    /// The state, even after a handler panicked while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unix ms of the node's last sign of life as far as this process can
    /// tell: a node is not `down` merely because the control plane itself
    /// was restarted.
    pub fn last_seen(&self, n: &NodeRec) -> u64 {
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n.info.name)
            .copied();
        n.last_heartbeat_unix_ms
            .unwrap_or(0)
            .max(heard.unwrap_or(0))
            .max(n.registered_unix_ms)
            .max(self.started_unix_ms)
    }

    /// A heartbeat of `node` arrived at `at` (unix ms): called before the
    /// heartbeat waits for the table. Only registered nodes are noted
    /// ([`Shared::note_node`]), so a name never seen adds nothing.
    pub fn heard(&self, node: &str, at: u64) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = heard.get_mut(node) {
            *t = (*t).max(at);
        }
    }

    /// Makes room for a registered node's heartbeats in [`Shared::heard`].
    pub fn note_node(&self, node: &str) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default();
    }

    pub fn is_down(&self, n: &NodeRec, now: u64) -> bool {
        now.saturating_sub(self.last_seen(n)) > self.cfg.heartbeat_timeout.as_millis() as u64
    }

    /// `ready`, `draining` or `down`.
    pub fn node_state(&self, n: &NodeRec, now: u64) -> &'static str {
        if self.is_down(n, now) {
            "down"
        } else if n.draining {
            "draining"
        } else {
            "ready"
        }
    }

    pub fn node_view(&self, st: &State, n: &NodeRec, now: u64) -> NodeView {
        let apps = st
            .apps
            .values()
            .filter(|a| a.node.as_deref() == Some(n.info.name.as_str()))
            .map(|a| a.name.clone())
            .collect();
        NodeView {
            name: n.info.name.clone(),
            url: n.info.url.clone(),
            labels: n.info.labels.clone(),
            capacity: n.info.capacity,
            usage: n.usage,
            apps,
            state: self.node_state(n, now).to_string(),
            last_heartbeat_ms_ago: n.last_heartbeat_unix_ms.map(|t| now.saturating_sub(t)),
            arch: n.info.arch.clone(),
        }
    }

    pub fn app_view(&self, st: &State, a: &AppRec, now: u64) -> AppView {
        let node_down = a
            .node
            .as_ref()
            .and_then(|n| st.nodes.get(n))
            .is_some_and(|n| self.is_down(n, now));
        let state = if node_down && !st.busy.contains(&a.name) {
            "lost".to_string()
        } else {
            a.state.clone()
        };
        AppView {
            name: a.name.clone(),
            node: a.node.clone(),
            state,
            generation: a.generation,
            memory_bytes: a.memory_bytes,
            requests_served: a.requests_served,
            module_sha256: a.module_sha256.clone(),
            restart: a.restart.clone(),
            last_error: a.last_error.clone(),
            limits: api::AppLimits {
                memory_bytes: a.memory_limit,
                timeout_ms: a.timeout_ms,
                fuel: a.fuel,
            },
            checkpoint: a.checkpoint.clone(),
        }
    }

    /// Nodes in a stable, natural order (`node-2` before `node-10`).
    pub fn sorted_nodes<'a>(&self, st: &'a State) -> Vec<&'a NodeRec> {
        let mut v: Vec<&NodeRec> = st.nodes.values().collect();
        v.sort_by_key(|n| natural_key(&n.info.name));
        v
    }

    /// The cluster as the scheduler sees it: every node (down ones not
    /// ready), every app bound to its node, predicted demand where known.
    pub fn cluster_view(&self, st: &State, now: u64) -> Cluster {
        let nodes = self
            .sorted_nodes(st)
            .into_iter()
            .map(|n| {
                let mut s = NodeState::new(n.info.name.clone(), res(n.info.capacity));
                s.usage = res(n.usage);
                s.labels = n.info.labels.clone();
                s.ready = !self.is_down(n, now);
                s.draining = n.draining;
                s.price = n
                    .info
                    .labels
                    .get("price")
                    .and_then(|p| p.parse::<f64>().ok())
                    .filter(|p| *p >= 0.0)
                    .unwrap_or(1.0);
                s
            })
            .collect();
        let mut cluster = Cluster::new(nodes);
        for a in st.apps.values() {
            let Some(node) = &a.node else { continue };
            if cluster.node(node).is_none() || cluster.bind(spec_of(a), node).is_err() {
                continue;
            }
            if let Some(f) = st.predictor.predict(&a.name) {
                let _ = cluster.set_expected(&a.name, f.plan);
            }
        }
        cluster
    }

    /// What a placement of `app` may use besides the cluster.
    pub fn placement_ctx(&self, st: &State, app: &str) -> PlacementContext {
        PlacementContext {
            weights: self.cfg.weights.clone(),
            latency: self.cfg.latency.clone(),
            predicted_demand: st.predictor.predict(app).map(|f| f.plan),
            ..PlacementContext::default()
        }
    }
}

/// The scheduler's declaration of an app.
pub fn spec_of(a: &AppRec) -> AppSpec {
    let mut s = AppSpec::new(a.name.clone(), res(a.requests));
    s.limits = a.memory_limit.map(|m| Resources::new(0, m));
    s.labels = a.labels.clone();
    s.node_selector = a.labels.clone();
    s.user_location = a.user_location.clone();
    s.restart = a.restart.parse::<RestartPolicy>().unwrap_or_default();
    s
}

pub fn res(r: api::Resources) -> Resources {
    Resources::new(r.cpu_milli, r.memory_bytes)
}

/// `node-10` sorts after `node-2`.
pub fn natural_key(s: &str) -> (String, u64, String) {
    let digits_at = s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = s.split_at(digits_at);
    (head.to_string(), tail.parse().unwrap_or(0), s.to_string())
}

pub use tern_util::now_unix_ms as now_ms;

/// Clears an app's busy mark when dropped (also when the operation fails
/// half-way or its future is dropped).
pub struct BusyGuard {
    shared: Arc<Shared>,
    name: String,
}

impl BusyGuard {
    /// Marks `name` busy; the caller holds the lock and checked it was not.
    pub fn take(shared: &Arc<Shared>, st: &mut State, name: &str) -> BusyGuard {
        st.busy.insert(name.to_string());
        BusyGuard {
            shared: shared.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.busy.remove(&self.name);
        st.in_flight.remove(&self.name);
    }
}

pub use tern_api::names::is_valid_sha256 as valid_sha256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["node-10", "node-2", "node-1", "edge"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["edge", "node-1", "node-2", "node-10"]);
    }
}
