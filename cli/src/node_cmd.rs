//! `tern node`: run one node agent in the foreground.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use crate::util::{default_data_dir, shutdown_signal};

#[derive(Args)]
pub struct NodeArgs {
    /// Address to serve the node API and app ingress on.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The control plane to register with; several, comma-separated, when
    /// control planes share an etcd store (the node follows the leader).
    #[arg(long, value_name = "URL[,URL...]")]
    control: String,
    /// The node's name (default: the host name and port).
    #[arg(long)]
    name: Option<String>,
    /// A label for placement (repeatable), e.g. zone=eu-west.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Where the node keeps modules, checkpoints and apps' files.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The URL the control plane and other nodes reach this node at
    /// (default: https:// and the listen address; 0.0.0.0 becomes 127.0.0.1).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// A join token (`tern token create --scope join`): on first start the
    /// node checks the control plane against the CA the token pins, and
    /// gets a certificate naming it, kept in its data dir for later starts.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TERN_JOIN_TOKEN",
        hide_env_values = true
    )]
    join: Option<String>,
    /// An operator token this node also accepts, for operators who call it
    /// directly (with --insecure-plain-http: the cluster token, required).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve plain HTTP and talk to the control plane with the cluster
    /// token, without TLS: nothing is encrypted (only on one trusted machine).
    #[arg(long, conflicts_with = "join")]
    insecure_plain_http: bool,
    #[command(flatten)]
    observe: crate::observe::Observe,
    /// MiB of resident, zeroed memory the node keeps ready for apps that
    /// move to it, so that receiving their pages costs no page faults
    /// (0: none; the node holds this memory even when no app arrives).
    #[arg(long, value_name = "MIB", default_value_t = tern_node::DEFAULT_RESIDENT_STOCK >> 20)]
    resident_stock_mib: u64,
}

pub fn node(a: NodeArgs) -> Result<ExitCode> {
    a.observe.init_logs()?;
    let token = match (a.token.clone(), a.insecure_plain_http) {
        (Some(t), _) => t,
        (None, true) => std::fs::read_to_string(default_data_dir().join("token"))
            .map(|t| t.trim().to_string())
            .context("no cluster token: pass --token or set TERN_TOKEN (the token `tern up` or `tern control` wrote)")?,
        // Over TLS the node's certificate is its credential.
        (None, false) => String::new(),
    };
    let mut labels = BTreeMap::new();
    for kv in &a.labels {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--label {kv}: expected K=V"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        let name = a.name.unwrap_or_else(|| format!("node-{}", addr.port()));
        let data_dir = a
            .data_dir
            .unwrap_or_else(|| default_data_dir().join("nodes").join(&name));
        let scheme = if a.insecure_plain_http { "http" } else { "https" };
        let url = match &a.advertise {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if addr.ip().is_unspecified() => format!("{scheme}://127.0.0.1:{}", addr.port()),
            None => format!("{scheme}://{addr}"),
        };
        let control = a.control.trim_end_matches('/').to_string();
        let tls = if a.insecure_plain_http {
            None
        } else {
            Some(match tern_node::join::load(&data_dir)? {
                Some(tls) => tls,
                None => {
                    let join = a.join.as_deref().with_context(|| {
                        format!("node {name} has no certificate in {} yet: join the cluster with --join TOKEN (make one with `tern token create --scope join`)", data_dir.display())
                    })?;
                    let first = control.split(',').next().unwrap_or("").trim();
                    let tls = tern_node::join::join(first, join, &name, &url, &data_dir).await?;
                    eprintln!("node {name} joined the cluster at {first}; its certificate is in {}", data_dir.display());
                    tls
                }
            })
        };
        let mut config = tern_node::NodeConfig::new(name.clone(), token, data_dir);
        config.control_url = Some(control);
        config.labels = labels;
        config.advertise_url = Some(url.clone());
        config.tls = tls;
        config.metrics_listener = a.observe.metrics_listener()?;
        config.resident_stock_bytes = a.resident_stock_mib.saturating_mul(1 << 20);
        eprintln!("node {name} serving on {url}, reporting to {}", a.control);
        if let Some(l) = &config.metrics_listener {
            eprintln!("node {name} metrics at {}", tern_api::metrics::url_of(l));
        }
        tern_node::run(listener, config, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
