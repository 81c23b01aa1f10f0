//! Prometheus metrics, shared by the control plane and the nodes: the
//! answer of a `/metrics` endpoint (the OpenMetrics text format), the
//! plain-HTTP listener an operator may give for scrapes alone
//! (`--metrics-listen`), the process's own figures, and the label sets and
//! buckets both sides use, so that a dashboard's queries work on either.
//!
//! Two ways in, both documented in SECURITY.md:
//! - `GET /metrics` on the API listener, with the credentials that read
//!   the cluster (operator token; on the control plane also a `dashboard`
//!   token), over TLS like every other call;
//! - `GET /metrics` on a separate listener that serves nothing else and
//!   asks no credential (what Prometheus scrapes most simply), bound
//!   where the operator says — loopback unless they choose otherwise.

use std::future::Future;
use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::types::MigrationReport;

use crate::server::{self, Body, Handler, ServeOptions};

/// The content type of the answer (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Connections the metrics listener serves at once (scrapers are few).
const MAX_SCRAPERS: usize = 64;

/// `mode` of a move: cold, hot, hybrid or postcopy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

/// A move's mode and how it ended (`ok` or `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveLabels {
    pub mode: String,
    pub outcome: String,
}

/// Seconds a move's app was paused: 50 µs to ~3 s.
pub fn downtime_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16)
}

/// Seconds a whole move, or a call, took: 100 µs to ~100 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.5, 16)
}

/// Pre-copy rounds of a move.
pub fn round_buckets() -> impl Iterator<Item = f64> {
    [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0].into_iter()
}

type Histograms = Family<ModeLabels, Histogram, fn() -> Histogram>;

fn downtime_histogram() -> Histogram {
    Histogram::new(downtime_buckets())
}

/// A histogram of durations in seconds ([`duration_buckets`]).
pub fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

fn round_histogram() -> Histogram {
    Histogram::new(round_buckets())
}

/// Moves, as the control plane (every move it asked for) and a source
/// node (every move out of it) count them: by mode and outcome, and for
/// each move that ended well its downtime, total time, rounds and bytes.
#[derive(Clone)]
pub struct MoveMetrics {
    moves: Family<MoveLabels, Counter>,
    downtime: Histograms,
    total: Histograms,
    rounds: Histograms,
    bytes: Family<ModeLabels, Counter>,
}

impl MoveMetrics {
    /// Registers the families as `PREFIX_migrations_total`,
    /// `PREFIX_migration_downtime_seconds`, `..._duration_seconds`,
    /// `..._rounds`, `..._sent_bytes_total`.
    pub fn register(registry: &mut Registry, prefix: &str, whose: &str) -> MoveMetrics {
        let m = MoveMetrics {
            moves: Family::default(),
            downtime: Histograms::new_with_constructor(downtime_histogram),
            total: Histograms::new_with_constructor(duration_histogram),
            rounds: Histograms::new_with_constructor(round_histogram),
            bytes: Family::default(),
        };
        registry.register(
            format!("{prefix}_migrations"),
            format!("Count of {whose}, by mode and outcome (ok, failed)"),
            m.moves.clone(),
        );
        registry.register(
            format!("{prefix}_migration_downtime_seconds"),
            format!("How long the app was paused, for {whose}"),
            m.downtime.clone(),
        );
        registry.register(
            format!("{prefix}_migration_duration_seconds"),
            format!("How long the whole move took, for {whose}"),
            m.total.clone(),
        );
        registry.register(
            format!("{prefix}_migration_rounds"),
            format!("Pre-copy rounds, for {whose}"),
            m.rounds.clone(),
        );
        registry.register(
            format!("{prefix}_migration_sent_bytes"),
            format!("Bytes the source sent, for {whose}"),
            m.bytes.clone(),
        );
        m
    }

    /// A move asked for in `mode` ended (`Err`: it failed).
    pub fn moved(&self, mode: &str, outcome: Result<&MigrationReport, ()>) {
        self.moves
            .get_or_create(&MoveLabels {
                mode: mode.to_string(),
                outcome: if outcome.is_ok() { "ok" } else { "failed" }.to_string(),
            })
            .inc();
        let Ok(r) = outcome else {
            return;
        };
        // A move that fell back (post-copy to hot) reports the mode it used.
        let labels = ModeLabels {
            mode: if r.mode.is_empty() { mode } else { &r.mode }.to_string(),
        };
        self.downtime
            .get_or_create(&labels)
            .observe(r.downtime_ms / 1000.0);
        self.total
            .get_or_create(&labels)
            .observe(r.total_ms / 1000.0);
        self.rounds.get_or_create(&labels).observe(r.rounds as f64);
        self.bytes.get_or_create(&labels).inc_by(r.bytes_sent);
    }
}

/// The answer to `GET /metrics`: everything `registry` holds, now.
pub fn answer(registry: &Registry) -> Response<Body> {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => server::bytes(StatusCode::OK, CONTENT_TYPE, text),
        Err(_) => server::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        ),
    }
}

/// Serves `GET /metrics` of `registry` over plain HTTP on `listener` until
/// `shutdown` resolves; every other path is a 404. No credential is asked:
/// the operator chose where this listener is reachable from.
pub async fn serve_listener(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let handler: Handler = Arc::new(move |req| {
        let registry = registry.clone();
        Box::pin(async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => answer(&registry),
                _ => server::error(
                    StatusCode::NOT_FOUND,
                    "this listener serves GET /metrics only",
                ),
            }
        })
    });
    let opts = ServeOptions {
        max_connections: MAX_SCRAPERS,
        ..ServeOptions::plain()
    };
    server::serve(listener, opts, handler, shutdown).await;
    Ok(())
}

/// Binds the metrics listener at `addr` (`HOST:PORT`), with a message
/// that names the flag when it cannot.
pub fn bind(addr: &str) -> anyhow::Result<Arc<std::net::TcpListener>> {
    use anyhow::Context;
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics-listen {addr}: cannot listen there"))?;
    Ok(Arc::new(l))
}

/// The plain URL of a bound metrics listener (an unspecified address shown
/// as 127.0.0.1).
pub fn url_of(listener: &std::net::TcpListener) -> String {
    match listener.local_addr() {
        Ok(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{}/metrics", a.port()),
        Ok(a) => format!("http://{a}/metrics"),
        Err(_) => String::new(),
    }
}

/// The process's CPU time, resident memory and open files, read from
/// `/proc/self` at each scrape (`process_*`, the names every exporter uses).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = process_cpu_seconds() {
            let c = ConstCounter::new(cpu);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of this process",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        if let Some(rss) = process_resident_bytes() {
            let g = ConstGauge::new(rss as i64);
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of this process",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let g = ConstGauge::new(dir.count() as i64);
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of this process",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

fn process_resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

/// Encodes one metric without labels (a collector's figure).
pub fn encode_one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

/// Encodes one gauge or counter family from `(labels, value)` pairs (a
/// collector's per-app figures), skipping the descriptor when there are none.
pub fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let kind = first.metric_type();
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_from_proc() {
        let cpu = process_cpu_seconds().expect("cpu time");
        assert!(cpu >= 0.0);
        let rss = process_resident_bytes().expect("resident memory");
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        let mut r = Registry::default();
        r.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
