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
//! # Layout
//! - `node.rs` — the node's shared state ([`Node`]): its apps, routes to
//!   apps elsewhere, the control planes it reports to;
//! - `app/` — the actor: lifecycle and calls (`actor.rs`), and the source
//!   side of a migration inside the actor (`precopy.rs`);
//! - `ops.rs` — what the API does: start, restore, remove, invoke, stop...;
//! - `migrate/` — the migration protocol: the source's driver
//!   (`source.rs`), the target's sessions (`target.rs`), the replay of calls
//!   held across a handover (`replay.rs`);
//! - `forward.rs` — reaching an app on another node (routes, forwarding);
//! - `fence.rs` — generation fencing, persisted;
//! - `modules.rs` — the node's module store;
//! - `checkpoint.rs` — periodic checkpoints, kept and sent to the control plane;
//! - `report.rs` — registration and heartbeats;
//! - `lease.rs` — the node serves its apps only while the control plane
//!   has recently heard from it;
//! - `http.rs`, `ingress.rs` — the HTTP edge: parse, call an operation, map
//!   its [`NodeError`] to a status;
//! - `error.rs` — [`NodeError`].

mod app;
mod auth;
mod checkpoint;
mod error;
mod fence;
mod forward;
mod http;
mod ingress;
pub mod join;
mod lazy;
mod lease;
mod metrics;
mod migrate;
mod modules;
mod node;
mod ops;
mod report;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_api::types::Resources;

pub use app::AppHandle;
pub use error::{ErrorKind, NodeError};
pub use migrate::releases_pending;
pub use node::Node;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The control plane to register with and report to (`None`:
    /// standalone). Several, comma-separated, when control planes share an
    /// etcd store: the node reports to whichever answers as the leader.
    pub control_url: Option<String>,
    /// The operator's token, accepted on every API call (empty: none is).
    /// Over plain HTTP it is also what the node presents to the control
    /// plane and to other nodes; over TLS the node presents its certificate
    /// and never sends the token.
    pub token: String,
    /// The cluster's CA and this node's certificate: the node serves
    /// HTTPS and talks to its peers with mutual TLS. `None`: plain HTTP,
    /// only when the operator asked for it (`--insecure-plain-http`).
    pub tls: Option<tern_api::tls::Tls>,
    pub labels: BTreeMap<String, String>,
    /// Where modules, checkpoints and apps' files are kept.
    pub data_dir: PathBuf,
    /// What the node offers; `None`: the machine's cores and memory.
    pub capacity: Option<Resources>,
    /// The URL the control plane and other nodes reach this node at.
    /// `None`: the listener's address (an unspecified IP becomes 127.0.0.1).
    pub advertise_url: Option<String>,
    /// A migration arriving here with no step for this long is dropped
    /// with everything it holds (default 60 s).
    pub session_ttl: Duration,
    /// Limits of an app that sets none (default: 1 GiB, 30 s per call).
    pub default_limits: tern_api::types::AppLimits,
    /// Whether post-copy moves may arrive here (default: where the kernel
    /// allows userfaultfd). Off, a post-copy move to this node goes hot.
    pub postcopy: bool,
    /// How long a post-copy source waits after the switch before it pushes
    /// pages (default 0: at once); until then the target's demand fetches
    /// have the link to themselves. Tests use it to catch a move midway.
    pub postcopy_push_after: Duration,
    /// How long a lazy restore waits before it pulls the pages its app has
    /// not touched (tests hold it back to see the app run without them).
    pub lazy_pull_after: Duration,
    /// A listener that serves `GET /metrics` alone, over plain HTTP and
    /// without credentials (`--metrics-listen`); `None`: metrics only on
    /// the API listener, for the operator's credentials.
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
    /// Bytes of resident, zeroed memory kept ready for the memories of
    /// apps that move here (`tern_runtime::resident`), so that receiving an
    /// app's pages does not pay a page fault per 4 KiB. Made in the
    /// background; 0: none. Process-wide: with several nodes in one process
    /// the last one started sets it. Default [`DEFAULT_RESIDENT_STOCK`].
    pub resident_stock_bytes: u64,
}

/// The default of [`NodeConfig::resident_stock_bytes`]: enough for one
/// 256 MiB app to arrive without page faults, memory the node holds
/// whether or not an app arrives.
pub const DEFAULT_RESIDENT_STOCK: u64 = 256 << 20;

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
            session_ttl: migrate::SESSION_IDLE_TTL,
            default_limits: tern_api::types::AppLimits::DEFAULT,
            postcopy: true,
            postcopy_push_after: Duration::ZERO,
            lazy_pull_after: Duration::ZERO,
            resident_stock_bytes: DEFAULT_RESIDENT_STOCK,
            tls: None,
            metrics_listener: None,
        }
    }
}

/// How often a node reports to the control plane.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often SDK apps get `tern_tick`.
pub const TICK_INTERVAL: Duration = Duration::from_millis(1000);
/// The header on every answer an app gives through ingress naming the
/// generation of the copy that answered; [`NODE_HEADER`] names its node.
/// Forwarding nodes pass both back, so a client sees which copy served
/// each call (`tern soak` checks that no generation answers from two nodes).
pub const GENERATION_HEADER: &str = "x-tern-generation";
/// See [`GENERATION_HEADER`].
pub const NODE_HEADER: &str = "x-tern-node";
/// How often a running app is checkpointed (for restarts and hybrid moves).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// Starts a node in this process on a bound listener: its directories and
/// engine are ready when this returns (or the error says why not), and it
/// serves until stopped. `tern up`, `tern demo`, the tests and the
/// benchmarks start their nodes this way.
pub fn spawn(
    bound: tern_api::local::Bound,
    config: NodeConfig,
) -> anyhow::Result<tern_api::local::Served> {
    let node = start(&bound.listener, config)?;
    Ok(tern_api::local::Served::spawn(
        bound,
        move |listener, shutdown| serve(node, listener, shutdown),
    ))
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
    tern_api::names::check_node_name(&config.name)?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = match &config.advertise_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if addr.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", addr.port()),
        None => format!("{scheme}://{addr}"),
    };
    if let Some(tls) = &config.tls {
        match tls.identity.as_ref().map(|i| i.info()).transpose()? {
            Some(info) if info.role == Some(tern_api::tls::Role::Node(config.name.clone())) => {}
            Some(info) => anyhow::bail!(
                "the node's certificate names {}, not node {}: join again under that name, or use its name",
                info.role.map_or("no tern role".to_string(), |r| r.to_string()),
                config.name
            ),
            None => anyhow::bail!("a node serving TLS needs its certificate and key"),
        }
    }
    Node::open(config, url)
}

/// Serves a prepared node, registers and reports to the control plane.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let reporter = tokio::spawn(report::report_loop(node.clone()));
    let reaper = tokio::spawn(reap_loop(node.clone()));
    let metrics = match &node.config.metrics_listener {
        Some(l) => Some(tokio::spawn(tern_api::metrics::serve_listener(
            l.try_clone()?,
            node.metrics.registry.clone(),
            std::future::pending(),
        ))),
        None => None,
    };
    let handler_node = node.clone();
    let handler: tern_api::server::Handler = Arc::new(move |req| {
        let n = handler_node.clone();
        Box::pin(async move { http::route(n, req).await })
    });
    let opts = match &node.config.tls {
        Some(tls) => tern_api::server::ServeOptions::tls(tls.server_config()?),
        None => tern_api::server::ServeOptions::plain(),
    };
    tern_api::server::serve(listener, opts, handler, shutdown).await;
    reporter.abort();
    reaper.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    // Stop every app's actor; their last checkpoints stay on disk.
    for h in node.take_all_local() {
        h.shutdown();
    }
    Ok(())
}

/// Drops migration sessions whose source went quiet (checked every few
/// seconds, so a session lives at most a little past its time-to-live).
async fn reap_loop(node: Arc<Node>) {
    let ttl = node.config.session_ttl;
    let every = (ttl / 12).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        migrate::reap_sessions(&node, ttl);
    }
}
