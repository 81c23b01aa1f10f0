//! tern's control plane: the node registry, the app table, modules and
//! checkpoints in a store (embedded redb, or etcd shared by several control
//! planes of which one leads), placement and rebalancing through the (pure)
//! scheduler, and the proxy that sends each client command to the node that
//! runs the app.
//!
//! [`run`] serves the control API listed in `tern_api` on an already-bound
//! listener until a shutdown future resolves, so tests and `tern up` can run
//! it next to nodes in one process.
//!
//! # Modules
//! - `store`: the records (redb tables, or etcd keys written under a
//!   leadership lease) and the files beside them (`modules/`, `checkpoints/`).
//! - `mirror`: a standby's copies of the leader's checkpoint files, so
//!   that they outlive the leader.
//! - `replicated`: several control planes on one etcd: the election, the
//!   standby's answers, taking over and stepping down.
//! - `state`: the records (nodes, apps, checkpoints), the in-memory state
//!   that mirrors the store, and the cluster view handed to the scheduler.
//! - `http`: routing and the handlers of the control API.
//! - `ops`: operations that change where an app runs (deploy, migrate,
//!   restore, restart, stop, start, remove) and talk to nodes.
//! - `heartbeat`: what a node's report changes (app status, usage history,
//!   stale copies to fence).
//! - `dashboard`: the web page at `/` (compiled in) and the one document
//!   it polls, `GET /v1/dashboard`.
//! - `tick`: the scheduler loop (down nodes, restart policies, predictor,
//!   rebalancer).
//! - `plan`: the `learned` policy on the live cluster (forecasts with their
//!   spread, the predictive planner, capacity advice).
//!
//! # Invariants
//! - Generations only grow: every generation handed to a node is recorded
//!   (durably) before the node sees it, also after an app is removed, so a
//!   copy a node reports at a lower generation is always a stale one.
//! - At most one operation that moves or replaces an app (deploy, migrate,
//!   restore, restart, rm) runs per app at a time (the app is *busy*).
//! - The in-memory lock is never held across an `.await`.
//! - With etcd, only the leader acts (serves the API, runs the scheduler
//!   loop) and every write it makes is conditional on its leadership: a
//!   control plane that lost it writes nothing more.

mod auth;
mod credentials;
mod dashboard;
mod error;
mod heartbeat;
mod http;
pub mod metrics;
mod mirror;
mod ops;
pub mod pki;
mod plan;
mod replicated;
mod state;
mod store;
mod tick;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_scheduler::{CostWeights, LatencyTable, Policy, PredictorConfig, RebalanceConfig};

pub use error::ApiError;
pub use pki::ClusterTls;
pub use store::{EtcdTls, EtcdUrl};

/// Where the control plane keeps its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `DATA_DIR/control.redb`: one control plane.
    #[default]
    Redb,
    /// etcd, shared by the control planes of one cluster; one leads.
    Etcd(EtcdUrl),
}

impl std::str::FromStr for StoreConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreConfig, String> {
        match s {
            "redb" => Ok(StoreConfig::Redb),
            s if s.starts_with("etcd://") || s.starts_with("etcd+https://") => {
                Ok(StoreConfig::Etcd(s.parse()?))
            }
            s => Err(format!(
                "unknown store `{s}`: use redb (the default), etcd://HOST:PORT[/PREFIX] \
                 or etcd+https://HOST:PORT[/PREFIX]"
            )),
        }
    }
}

/// The cluster token of an etcd store: `given` if it is the one etcd holds
/// (or etcd holds none yet), else etcd's, else `fallback`'s. Also checks
/// that the keys there are in this tern's layout.
pub fn etcd_token(
    url: &EtcdUrl,
    given: Option<&str>,
    fallback: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    store::prepare_etcd(url, given, fallback)
}

/// How a control plane runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Where `control.redb`, `modules/` and `checkpoints/` live.
    pub data_dir: PathBuf,
    /// Where the records live (default: redb in `data_dir`).
    pub store: StoreConfig,
    /// With etcd: how long the leadership outlives its last renewal (a
    /// standby takes over at most this long after the leader vanished).
    pub lease_ttl: Duration,
    /// The cluster token every API call (and every node) must present.
    pub token: String,
    /// Placement policy of apps that do not name one.
    pub policy: Policy,
    /// Cost-model weights (placement, rebalancing, restarts).
    pub weights: CostWeights,
    /// Latency between user locations and nodes (the `cost` policy).
    pub latency: LatencyTable,
    /// A node without a heartbeat for this long is `down`.
    pub heartbeat_timeout: Duration,
    /// How often the rebalancer runs.
    pub rebalance_interval: Duration,
    /// Rebalancer tunables: `max_moves` and `max_move_seconds` per
    /// interval, `cooldown` in **seconds**, `check_requests` (the rules of
    /// both rebalancers), `target_utilization` (the reactive one's). Its
    /// weights and latency table are replaced by `weights` and `latency`
    /// above.
    pub rebalance: RebalanceConfig,
    /// The `learned` policy's rebalancer (`plan_predictive`): what an
    /// overloaded node weighs against unserved CPU, as a share of its CPU
    /// capacity (the simulator's `overload_weight`).
    pub overload_weight: f64,
    /// The capacity advice asks for more nodes when the apps' expected CPU
    /// plus this many standard deviations exceeds the schedulable CPU.
    pub capacity_z: f64,
    /// Demand predictor tunables.
    pub predictor: PredictorConfig,
    /// One usage sample per app and period feeds the predictor (the
    /// predictor's "minute"; its time-of-day features assume 60 s).
    pub sample_period: Duration,
    /// How often the predictor's models are refitted.
    pub refit_interval: Duration,
    /// Migration reports kept (`GET /v1/migrations`).
    pub max_migrations: usize,
    /// Largest module, snapshot or checkpoint body accepted.
    pub max_blob_bytes: usize,
    /// The URL nodes use to reach this control plane (hybrid migrations
    /// fetch checkpoints there). Default: the listener's address, with an
    /// unspecified IP replaced by 127.0.0.1.
    pub advertise_url: Option<String>,
    /// Requests of an app that does not declare them (CPU; memory defaults
    /// to the app's memory limit, else this).
    pub default_requests: tern_api::types::Resources,
    /// Limits of an app that does not set them (`tern control
    /// --default-memory/--default-timeout`): no deployed app runs unbounded.
    pub default_limits: tern_api::types::AppLimits,
    /// The cluster's CA and this control plane's certificate: it serves
    /// HTTPS and talks to nodes with mutual TLS. `None`: plain HTTP, only
    /// when the operator asked for it (`--insecure-plain-http`).
    pub tls: Option<ClusterTls>,
    /// Bounds of the listener (connections, timeouts).
    pub max_connections: usize,
    /// A listener that serves `GET /metrics` alone, over plain HTTP and
    /// without credentials (`--metrics-listen`); `None`: metrics only on
    /// the API listener, for operator and dashboard tokens.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
}

impl ControlConfig {
    /// Defaults for everything but where the state lives and the token.
    pub fn new(data_dir: impl Into<PathBuf>, token: impl Into<String>) -> ControlConfig {
        let rebalance = RebalanceConfig {
            cooldown: 300,
            ..RebalanceConfig::default()
        };
        ControlConfig {
            data_dir: data_dir.into(),
            store: StoreConfig::Redb,
            lease_ttl: Duration::from_secs(5),
            token: token.into(),
            policy: Policy::Requests,
            weights: CostWeights::default(),
            latency: LatencyTable::default(),
            heartbeat_timeout: Duration::from_secs(10),
            rebalance_interval: Duration::from_secs(30),
            rebalance,
            overload_weight: 0.1,
            capacity_z: 1.0,
            predictor: PredictorConfig::default(),
            sample_period: Duration::from_secs(60),
            refit_interval: Duration::from_secs(600),
            max_migrations: 200,
            max_blob_bytes: tern_api::MAX_BLOB_BODY,
            advertise_url: None,
            default_requests: tern_api::types::Resources {
                cpu_milli: 100,
                memory_bytes: 64 << 20,
            },
            default_limits: tern_api::types::AppLimits::DEFAULT,
            tls: None,
            max_connections: tern_api::server::DEFAULT_MAX_CONNECTIONS,
            metrics_listener: None,
        }
    }

    /// How the listener serves (TLS unless plain HTTP was asked for).
    pub fn serve_options(&self) -> anyhow::Result<tern_api::server::ServeOptions> {
        let mut opts = match &self.tls {
            Some(t) => tern_api::server::ServeOptions::tls(t.tls.server_config()?),
            None => tern_api::server::ServeOptions::plain(),
        };
        opts.max_connections = self.max_connections;
        Ok(opts)
    }
}

/// Starts a control plane in this process on a bound listener; it serves
/// until stopped (a failure to start shows in [`Served::ended`]).
/// `tern up`, `tern demo` and the tests start their control planes this way.
///
/// [`Served::ended`]: tern_api::local::Served::ended
pub fn spawn(bound: tern_api::local::Bound, config: ControlConfig) -> tern_api::local::Served {
    tern_api::local::Served::spawn(bound, move |listener, shutdown| {
        run(listener, config, shutdown)
    })
}

/// Serves the control API on `listener` until `shutdown` resolves, with
/// the scheduler loop running beside it. The state is loaded from (and kept
/// in) `config.data_dir`; the store is closed before this returns, so
/// another control plane may open the same directory right after. With an
/// etcd store, the control plane leads or stands by (see `replicated`), and
/// resigns before this returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.token.is_empty() {
        anyhow::bail!(
            "the control plane needs a cluster token (an empty one would let anybody in)"
        );
    }
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    let advertise = match &config.advertise_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let ip = if addr.ip().is_unspecified() {
                std::net::IpAddr::from([127, 0, 0, 1])
            } else {
                addr.ip()
            };
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port()))
        }
    };
    let metrics = metrics::Metrics::new();
    let _scrapes = serve_metrics(&config, &metrics)?;
    if let StoreConfig::Etcd(url) = config.store.clone() {
        return replicated::run(listener, config, url, advertise, metrics, shutdown).await;
    }
    let store = store::Store::open(&config.data_dir)?;
    let loaded = store.load()?;
    let opts = config.serve_options()?;
    let shared = Arc::new(state::Shared::new(
        config,
        store,
        loaded,
        advertise,
        metrics.clone(),
    )?);
    metrics.attach(&shared);
    tracing::info!(%addr, "control plane listening");

    let ticker = tokio::spawn(tick::run(shared.clone()));
    let handler: tern_api::server::Handler = {
        let shared = shared.clone();
        Arc::new(move |req| {
            let shared = shared.clone();
            Box::pin(async move { http::handle(shared, req).await })
        })
    };
    tern_api::server::serve(listener, opts, handler, shutdown).await;

    // The loop may be in the middle of a migration: the nodes finish it on
    // their own, and the next control plane learns the outcome from their
    // heartbeats (the new generation was recorded before the move started).
    ticker.abort();
    let _ = ticker.await;
    shared.store.close();
    Ok(())
}

/// Serves the metrics listener, if the configuration has one, until the
/// returned guard is dropped.
fn serve_metrics(
    config: &ControlConfig,
    metrics: &metrics::Metrics,
) -> anyhow::Result<Option<AbortOnDrop>> {
    let Some(l) = &config.metrics_listener else {
        return Ok(None);
    };
    Ok(Some(AbortOnDrop(tokio::spawn(
        tern_api::metrics::serve_listener(
            l.try_clone()?,
            metrics.registry.clone(),
            std::future::pending(),
        ),
    ))))
}

/// A task that ends when this is dropped.
pub(crate) struct AbortOnDrop<T = std::io::Result<()>>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The token in `DATA_DIR/token`, created (32 random hex digits, mode
/// 0600) if the file does not exist yet.
pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the token file {}", path.display()))
        }
    }
    let token = generate_token()?;
    write_token(&path, &token)?;
    Ok(token)
}

/// 32 hex digits from the system's random source.
pub fn generate_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom to make a token")?;
    Ok(hex::encode(bytes))
}

/// Writes a token file readable by its owner only.
pub fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        tern_util::create_private_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    tern_util::write_atomic(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
