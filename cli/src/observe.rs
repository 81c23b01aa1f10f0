//! What the commands that run cluster processes (`tern control`, `tern
//! node`, `tern up`) share for being watched: Prometheus metrics on a
//! listener of their own, and logs as text or JSON lines.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct Observe {
    /// Also serve Prometheus metrics (`GET /metrics`) at ADDR, over plain
    /// HTTP and without credentials: bind it to loopback or a monitoring
    /// network. (`/metrics` on the API address needs the operator's token,
    /// or on a control plane a dashboard token.) For `tern up`, the control
    /// plane's address; node-N gets the port after it N times (port 0: any).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Logs on stderr as `text` or `json` (one JSON object per line). The
    /// level comes from TERN_LOG (e.g. `debug`, `tern_node=debug`; default `info`).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Crates whose events only a debugging operator wants.
const QUIET: &str =
    "info,wasmtime=warn,cranelift=warn,hyper=warn,hyper_util=warn,rustls=warn,h2=warn";

impl Observe {
    /// Installs the process's log writer (once; a second call changes nothing).
    pub fn init_logs(&self) -> Result<()> {
        use tracing_subscriber::EnvFilter;
        let filter = match std::env::var("TERN_LOG") {
            Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(v.trim()).with_context(|| {
                format!("TERN_LOG={v}: not a log filter (try `info` or `tern_node=debug`)")
            })?,
            _ => EnvFilter::new(QUIET),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let _ = if self.log_format == "json" {
            builder.json().flatten_event(true).try_init()
        } else {
            builder.try_init()
        };
        Ok(())
    }

    /// The metrics listener, bound, if one was asked for.
    pub fn metrics_listener(&self) -> Result<Option<Arc<std::net::TcpListener>>> {
        self.metrics_at(0)
    }

    /// The metrics listener of the `n`-th process of `tern up` (0: the
    /// control plane): the given port plus `n` (any free port for port 0).
    pub fn metrics_at(&self, n: u16) -> Result<Option<Arc<std::net::TcpListener>>> {
        let Some(addr) = &self.metrics_listen else {
            return Ok(None);
        };
        let sock: std::net::SocketAddr = match addr.parse() {
            Ok(s) => s,
            Err(_) => {
                // A host name: resolve it.
                use std::net::ToSocketAddrs;
                addr.to_socket_addrs()
                    .with_context(|| format!("--metrics-listen {addr}: expected HOST:PORT"))?
                    .next()
                    .with_context(|| format!("--metrics-listen {addr}: no address"))?
            }
        };
        let port = match sock.port() {
            0 => 0,
            p => p.checked_add(n).with_context(|| {
                format!("--metrics-listen {addr}: port {p} + {n} is past 65535")
            })?,
        };
        let at = std::net::SocketAddr::new(sock.ip(), port);
        tern_api::metrics::bind(&at.to_string()).map(Some)
    }
}
