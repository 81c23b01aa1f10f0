//! The control plane's metrics (`GET /metrics`; see `tern_api::metrics` for
//! the ways in): moves it asked for, scheduler decisions, the rebalancer's
//! moves, restarts, and how far the demand predictor's forecasts were from
//! what came, as they happen; at each scrape the cluster's nodes and apps
//! from the table. One set per process: a control plane that leads again
//! (etcd) goes on counting in the same series; a standby reports
//! `tern_control_leading 0` and no table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tern_api::metrics::{encode_family, encode_one, MoveMetrics};
use tern_api::types::MigrationReport;

use crate::state::{now_ms, Shared};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Forecasts remembered to score against the next sample (one per app;
/// past this many, the oldest are dropped with the rest).
const MAX_FORECASTS: usize = 100_000;

/// What the control plane counts.
pub struct Metrics {
    pub registry: Arc<Registry>,
    moves: MoveMetrics,
    decisions: Family<DecisionLabels, Counter>,
    rebalancer: Family<OutcomeLabels, Counter>,
    restarts: Family<OutcomeLabels, Counter>,
    restart_seconds: Histogram,
    predictor_error: Histogram,
    /// Per app: the interval a CPU forecast was made for, and its value.
    forecasts: Mutex<HashMap<String, (u64, f64)>>,
    leader: Arc<RwLock<Weak<Shared>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let moves =
            MoveMetrics::register(&mut registry, "tern", "moves the control plane asked for");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "tern_scheduler_decisions",
            "Placements the scheduler decided, by policy and outcome (placed, refused)",
            decisions.clone(),
        );
        let rebalancer = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tern_rebalancer_moves",
            "Moves the rebalancer planned, by outcome (ok, failed)",
            rebalancer.clone(),
        );
        let restarts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tern_restarts",
            "Apps restarted after their node went down, by outcome (ok, failed)",
            restarts.clone(),
        );
        let restart_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "tern_restart_seconds",
            "How long a restart of a lost app took, from its start to the app running on its new node (answered by the node)",
            restart_seconds.clone(),
        );
        let predictor_error = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "tern_predictor_abs_log_error",
            "How far each next-interval CPU forecast was from the usage that came, |ln(1+actual) - ln(1+forecast)|",
            predictor_error.clone(),
        );
        let leader = Arc::new(RwLock::new(Weak::new()));
        registry.register_collector(Box::new(TableCollector {
            leader: leader.clone(),
        }));
        registry.register_collector(Box::new(tern_api::metrics::ProcessCollector));
        Arc::new(Metrics {
            registry: Arc::new(registry),
            moves,
            decisions,
            rebalancer,
            restarts,
            restart_seconds,
            predictor_error,
            forecasts: Mutex::new(HashMap::new()),
            leader,
        })
    }

    /// The state the scrape-time figures come from (the one this process
    /// leads with now).
    pub fn attach(&self, sh: &Arc<Shared>) {
        *self.leader.write().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(sh);
    }

    /// A move this control plane asked for ended.
    pub fn moved(&self, mode: &str, outcome: Result<&MigrationReport, ()>) {
        self.moves.moved(mode, outcome);
    }

    /// The scheduler placed an app (or found no node for it).
    pub fn decided(&self, policy: &str, placed: bool) {
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_string(),
                outcome: if placed { "placed" } else { "refused" }.to_string(),
            })
            .inc();
    }

    /// A move the rebalancer planned ended.
    pub fn rebalanced(&self, ok: bool) {
        outcome(&self.rebalancer, ok);
    }

    /// A restart of a lost app ended.
    pub fn restarted(&self, ok: bool, took: std::time::Duration) {
        outcome(&self.restarts, ok);
        if ok {
            self.restart_seconds.observe(took.as_secs_f64());
        }
    }

    /// An app's CPU usage in `interval` came in: the forecast made for that
    /// interval (if any) is scored; `next` is the forecast for the one after.
    pub fn observed(&self, app: &str, interval: u64, cpu_milli: f64, next: Option<f64>) {
        let mut f = self.forecasts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, forecast)) = f.get(app).copied() {
            if at == interval {
                let e = (cpu_milli.max(0.0).ln_1p() - forecast.max(0.0).ln_1p()).abs();
                self.predictor_error.observe(e);
                f.remove(app);
            }
        }
        let Some(next) = next else {
            return;
        };
        if !f.contains_key(app) || f.get(app).is_some_and(|(at, _)| *at <= interval) {
            if f.len() >= MAX_FORECASTS && !f.contains_key(app) {
                f.clear();
            }
            f.insert(app.to_string(), (interval + 1, next));
        }
    }
}

fn outcome(family: &Family<OutcomeLabels, Counter>, ok: bool) {
    family
        .get_or_create(&OutcomeLabels {
            outcome: if ok { "ok" } else { "failed" }.to_string(),
        })
        .inc();
}

/// The cluster as the table says, read at each scrape.
#[derive(Debug)]
struct TableCollector {
    leader: Arc<RwLock<Weak<Shared>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Collector for TableCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sh = self
            .leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        let gauge = |v: u64| ConstGauge::new(v.min(i64::MAX as u64) as i64);
        encode_one(
            &mut enc,
            "tern_control_leading",
            "1 while this control plane leads (answers for the cluster)",
            gauge(u64::from(sh.is_some())),
        )?;
        let Some(sh) = sh else {
            return Ok(());
        };
        let now = now_ms();
        let (nodes, apps, apps_by_node, migrating) = {
            let st = sh.lock();
            let mut nodes: HashMap<&'static str, u64> = HashMap::new();
            for n in st.nodes.values() {
                *nodes.entry(sh.node_state(n, now)).or_default() += 1;
            }
            let mut apps: HashMap<String, u64> = HashMap::new();
            let mut by_node: HashMap<String, u64> = HashMap::new();
            for a in st.apps.values() {
                *apps.entry(a.state.clone()).or_default() += 1;
                if let Some(n) = &a.node {
                    *by_node.entry(n.clone()).or_default() += 1;
                }
            }
            (nodes, apps, by_node, st.in_flight.len() as u64)
        };
        encode_family(
            &mut enc,
            "tern_cluster_nodes",
            "Nodes by state (ready, draining, down)",
            ["ready", "draining", "down"].map(|s| {
                (
                    StateLabels {
                        state: s.to_string(),
                    },
                    gauge(nodes.get(s).copied().unwrap_or(0)),
                )
            }),
        )?;
        let mut apps: Vec<_> = apps.into_iter().collect();
        apps.sort();
        encode_family(
            &mut enc,
            "tern_cluster_apps",
            "Apps by state",
            apps.into_iter()
                .map(|(state, n)| (StateLabels { state }, gauge(n))),
        )?;
        let mut by_node: Vec<_> = by_node_series(apps_by_node);
        by_node.sort_by(|a, b| a.0.node.cmp(&b.0.node));
        encode_family(
            &mut enc,
            "tern_node_placed_apps",
            "Apps the table places on each node",
            by_node.into_iter().map(|(l, n)| (l, gauge(n))),
        )?;
        encode_one(
            &mut enc,
            "tern_migrations_in_flight",
            "Moves under way now",
            gauge(migrating),
        )?;
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

fn by_node_series(m: HashMap<String, u64>) -> Vec<(NodeLabels, u64)> {
    m.into_iter()
        .map(|(node, n)| (NodeLabels { node }, n))
        .collect()
}
