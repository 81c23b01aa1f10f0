//! The node's metrics (`GET /metrics`; see `tern_api::metrics` for the ways
//! in): moves out of this node and checkpoints as they happen, and at each
//! scrape the node's and each local app's figures, read from the apps
//! themselves (an app that leaves takes its series with it). Every series
//! carries `node="NAME"`.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tern_api::metrics::{encode_family, encode_one, MoveMetrics};
use tern_api::types::MigrationReport;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppStateLabels {
    app: String,
    state: String,
}

/// What the node counts as things happen.
pub(crate) struct Metrics {
    pub(crate) registry: Arc<Registry>,
    moves: MoveMetrics,
    checkpoints: Family<OutcomeLabels, Counter>,
    node: Arc<OnceLock<Weak<Node>>>,
}

impl Metrics {
    pub(crate) fn new(node_name: &str) -> Metrics {
        let mut registry = Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node_name.to_string()),
            )]
            .into_iter(),
        );
        let moves = MoveMetrics::register(&mut registry, "tern_node", "moves out of this node");
        let checkpoints = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tern_node_checkpoints",
            "Checkpoints taken, by outcome (ok; not_sent: kept here but not on the control plane; failed)",
            checkpoints.clone(),
        );
        let node = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(NodeCollector { node: node.clone() }));
        registry.register_collector(Box::new(tern_api::metrics::ProcessCollector));
        Metrics {
            registry: Arc::new(registry),
            moves,
            checkpoints,
            node,
        }
    }

    /// The node the scrape-time figures are read from.
    pub(crate) fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    /// A move out of this node ended.
    pub(crate) fn moved(&self, mode: &str, outcome: Result<&MigrationReport, ()>) {
        self.moves.moved(mode, outcome);
    }

    /// A checkpoint was taken (`sent`: the control plane has it too), or failed.
    pub(crate) fn checkpointed(&self, taken: bool, sent: bool) {
        let outcome = match (taken, sent) {
            (true, true) => "ok",
            (true, false) => "not_sent",
            (false, _) => "failed",
        };
        self.checkpoints
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// One app's calls on this node (ingress and invokes).
#[derive(Debug, Default, Clone)]
pub(crate) struct CallMetrics {
    calls: Counter,
    errors: Counter,
    latency: Arc<OnceLock<Histogram>>,
}

impl CallMetrics {
    /// A call ran for `took`; `failed`: it answered an error (a trap, a
    /// bad argument, a 5xx from the app).
    pub(crate) fn observe(&self, took: Duration, failed: bool) {
        self.calls.inc();
        if failed {
            self.errors.inc();
        }
        self.latency
            .get_or_init(tern_api::metrics::duration_histogram)
            .observe(took.as_secs_f64());
    }
}

/// The figures read at each scrape.
#[derive(Debug)]
struct NodeCollector {
    node: Arc<OnceLock<Weak<Node>>>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let apps = node.local_apps();
        let statuses: Vec<_> = apps.iter().map(|h| h.status()).collect();
        let now = tern_util::now_unix_ms();
        let gauge = |v: u64| ConstGauge::new(v.min(i64::MAX as u64) as i64);
        let one = |name: &str, help: &str, v: u64, enc: &mut DescriptorEncoder| {
            encode_one(enc, name, help, gauge(v))
        };
        one(
            "tern_node_apps",
            "Apps running (or paused) on this node",
            apps.len() as u64,
            &mut enc,
        )?;
        one(
            "tern_node_memory_used_bytes",
            "Linear memory of the apps on this node",
            statuses.iter().map(|s| s.memory_bytes).sum(),
            &mut enc,
        )?;
        one(
            "tern_node_memory_capacity_bytes",
            "Memory this node offers to apps",
            node.capacity.memory_bytes,
            &mut enc,
        )?;
        one(
            "tern_node_cpu_capacity_millicores",
            "CPU this node offers to apps, in thousandths of a core",
            node.capacity.cpu_milli,
            &mut enc,
        )?;
        one(
            "tern_node_lease_valid",
            "1 while the node may serve its apps (its control plane lease holds)",
            u64::from(node.lease.check().is_ok()),
            &mut enc,
        )?;
        one(
            "tern_node_migrations_incoming",
            "Moves arriving at this node now",
            node.incoming_sessions() as u64,
            &mut enc,
        )?;
        let per_app = |f: &dyn Fn(&tern_api::types::AppStatus) -> Option<u64>| {
            statuses
                .iter()
                .filter_map(|s| {
                    f(s).map(|v| {
                        (
                            AppLabels {
                                app: s.name.clone(),
                            },
                            gauge(v),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        encode_family(
            &mut enc,
            "tern_app_memory_bytes",
            "An app's linear memory",
            per_app(&|s| Some(s.memory_bytes)),
        )?;
        encode_family(
            &mut enc,
            "tern_app_generation",
            "The generation of an app's copy on this node (it grows with every move and restart)",
            per_app(&|s| Some(s.generation)),
        )?;
        encode_family(
            &mut enc,
            "tern_app_queued_calls",
            "Calls waiting for an app (queued, or held during a move's pause)",
            per_app(&|s| Some(s.queued)),
        )?;
        encode_family(
            &mut enc,
            "tern_app_checkpoint_age_seconds",
            "Seconds since an app's latest good checkpoint",
            per_app(&|s| {
                let t = s.checkpoint.as_ref()?.unix_ms?;
                Some(now.saturating_sub(t) / 1000)
            }),
        )?;
        encode_family(
            &mut enc,
            "tern_app_checkpoint_failing",
            "1 when an app's last checkpoint attempt failed (a restart would start from an older state)",
            per_app(&|s| Some(u64::from(s.checkpoint.as_ref().is_some_and(|c| c.error.is_some())))),
        )?;
        encode_family(
            &mut enc,
            "tern_app_state",
            "1 for an app's state on this node",
            statuses.iter().map(|s| {
                (
                    AppStateLabels {
                        app: s.name.clone(),
                        state: s.state.to_string(),
                    },
                    gauge(1),
                )
            }),
        )?;
        let counters = |f: &dyn Fn(&crate::AppHandle) -> f64| {
            apps.iter()
                .map(|h| {
                    (
                        AppLabels {
                            app: h.name().to_string(),
                        },
                        ConstCounter::new(f(h)),
                    )
                })
                .collect::<Vec<_>>()
        };
        encode_family(
            &mut enc,
            "tern_app_cpu_seconds",
            "CPU time an app's calls used on this node",
            counters(&|h| h.busy().as_secs_f64()),
        )?;
        encode_family(
            &mut enc,
            "tern_app_calls",
            "Calls an app answered on this node (ingress and invokes)",
            counters(&|h| h.call_metrics().calls.get() as f64),
        )?;
        encode_family(
            &mut enc,
            "tern_app_call_errors",
            "Calls that ended in an error (a trap, bad arguments, a 5xx answer)",
            counters(&|h| h.call_metrics().errors.get() as f64),
        )?;
        encode_family(
            &mut enc,
            "tern_app_call_duration_seconds",
            "How long an app's calls ran",
            apps.iter().filter_map(|h| {
                let m = h.call_metrics().latency.get()?.clone();
                Some((
                    AppLabels {
                        app: h.name().to_string(),
                    },
                    m,
                ))
            }),
        )?;
        Ok(())
    }
}
