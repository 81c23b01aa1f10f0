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
    /// (default: http:// and the listen address; 0.0.0.0 becomes 127.0.0.1).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// The cluster token (else TERN_TOKEN, else the default token file).
    #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub fn node(a: NodeArgs) -> Result<ExitCode> {
    let token = match a.token {
        Some(t) => t,
        None => std::fs::read_to_string(default_data_dir().join("token"))
            .map(|t| t.trim().to_string())
            .context("no cluster token: pass --token or set TERN_TOKEN (the token `tern up` or `tern control` wrote)")?,
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
        let mut config = tern_node::NodeConfig::new(name.clone(), token, data_dir);
        config.control_url = Some(a.control.trim_end_matches('/').to_string());
        config.labels = labels;
        config.advertise_url = a.advertise;
        eprintln!(
            "node {name} serving on http://{addr}, reporting to {}",
            a.control
        );
        tern_node::run(listener, config, shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
