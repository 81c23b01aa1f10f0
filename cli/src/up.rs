//! `tern up`: a control plane and N nodes on loopback, in this process, in
//! the foreground, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::commands::control::{control_config, DEFAULT_LISTEN};
use tern_api::local::Bound;

use crate::local_cluster::LocalCluster;
use crate::output::outln;
use crate::util::print_json;
use crate::util::{default_data_dir, shutdown_signal};

#[derive(Args)]
pub struct UpArgs {
    /// How many nodes to start (named node-1 … node-N).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=64))]
    nodes: u16,
    /// Where the control plane listens.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Where the cluster keeps its state and token (default: $TERN_DATA_DIR,
    /// $XDG_DATA_HOME/tern or ~/.local/share/tern).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Default placement policy.
    #[arg(long, value_name = "POLICY", default_value = "requests", value_parser = ["requests", "cost", "learned"])]
    policy: String,
    /// A node without a heartbeat for this long is down.
    #[arg(long, value_name = "DUR", default_value = "5s")]
    heartbeat_timeout: String,
    /// How often the rebalancer runs.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    rebalance_interval: String,
    #[command(flatten)]
    limits: crate::commands::control::DefaultLimits,
    /// Print where everything is as one JSON document (then run as usual).
    #[arg(long)]
    json: bool,
    /// Serve plain HTTP instead of HTTPS: nothing is encrypted (only for a
    /// browser or tool on this machine that cannot be given the CA).
    #[arg(long)]
    insecure_plain_http: bool,
    #[command(flatten)]
    observe: crate::observe::Observe,
}

#[derive(Serialize)]
struct UpReport {
    control_url: String,
    /// The dashboard, with a read-only token in the fragment: open it in a browser.
    dashboard: String,
    data_dir: String,
    token_file: String,
    /// The cluster's CA: clients find it in the data dir; a browser
    /// trusts the dashboard once this file is imported as an authority.
    ca_file: Option<String>,
    /// The control plane's metrics listener (`--metrics-listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_url: Option<String>,
    nodes: Vec<NodeReport>,
}

#[derive(Serialize)]
struct NodeReport {
    name: String,
    url: String,
    data_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_url: Option<String>,
}

pub fn up(a: UpArgs) -> Result<ExitCode> {
    a.observe.init_logs()?;
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    tern_util::create_private_dir(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let token = tern_control::load_or_create_token(&data_dir)?;
    let mut cfg = control_config(
        &data_dir,
        token.clone(),
        &a.policy,
        &a.heartbeat_timeout,
        &a.rebalance_interval,
    )?;
    a.limits.apply(&mut cfg)?;
    cfg.metrics_listener = a.observe.metrics_at(0)?;
    let metrics_url = cfg
        .metrics_listener
        .as_deref()
        .map(tern_api::metrics::url_of);
    let node_metrics = (1..=a.nodes)
        .map(|i| a.observe.metrics_at(i))
        .collect::<Result<Vec<_>>>()?;
    if !a.insecure_plain_http {
        let hosts = crate::commands::control::cert_hosts(&a.listen, None);
        cfg.tls = Some(tern_control::ClusterTls::load_or_create(&data_dir, &hosts)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let bound = Bound::at(&a.listen).await.with_context(|| {
            format!("cannot listen on {}: is a cluster already running there? (`tern nodes` asks it; or use --listen)", a.listen)
        })?;
        let mut cluster = LocalCluster::start(bound, cfg, 0).await?;
        for (i, metrics) in node_metrics.into_iter().enumerate() {
            let name = format!("node-{}", i + 1);
            cluster
                .add_node(&name, |c| c.metrics_listener = metrics)
                .await?;
        }
        let viewer = dashboard_token(&cluster, &data_dir).await.unwrap_or_else(|e| {
            eprintln!("warning: no read-only token for the dashboard ({e:#}); it uses the cluster token");
            token.clone()
        });
        let report = UpReport {
            control_url: cluster.control_url.clone(),
            dashboard: crate::util::dashboard_url(&cluster.control_url, &viewer),
            data_dir: data_dir.display().to_string(),
            token_file: data_dir.join("token").display().to_string(),
            ca_file: cluster
                .tls
                .as_ref()
                .map(|_| tern_api::tls::ca_path(&data_dir).display().to_string()),
            metrics_url,
            nodes: cluster
                .nodes
                .iter()
                .map(|n| NodeReport {
                    name: n.name.clone(),
                    url: n.url.clone(),
                    data_dir: n.data_dir.display().to_string(),
                    metrics_url: n.metrics_url.clone(),
                })
                .collect(),
        };
        if a.json {
            print_json(&report)?;
        } else {
            print_report(&report, &data_dir)?;
        }

        let early = tokio::select! {
            _ = shutdown_signal() => None,
            r = cluster.control_ended() => Some(r),
        };
        if let Some(r) = early {
            let _ = cluster.shut_down(Duration::from_secs(15)).await;
            r?;
            anyhow::bail!("the control plane stopped by itself");
        }
        if !a.json {
            eprintln!("stopping…");
        }
        for problem in cluster.shut_down(Duration::from_secs(15)).await {
            eprintln!("warning: {problem}");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if !a.json {
        eprintln!("cluster stopped");
    }
    Ok(ExitCode::SUCCESS)
}

/// A read-only token for the dashboard's URL: the one kept in
/// `DATA_DIR/dashboard-token` while the control plane accepts it, else a
/// new one.
async fn dashboard_token(cluster: &LocalCluster, data_dir: &std::path::Path) -> Result<String> {
    cluster
        .wait_ready(Duration::from_secs(10), |_| {})
        .await
        .ok();
    let path = data_dir.join("dashboard-token");
    let c = cluster
        .anonymous_client()
        .with_timeout(Duration::from_secs(10));
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        let probe = c.clone().with_token(Some(t.clone()));
        if probe
            .get_json::<serde_json::Value>(&format!("{}/v1/dashboard", cluster.control_url))
            .await
            .is_ok()
        {
            return Ok(t);
        }
    }
    let req = tern_api::types::TokenCreate {
        scope: tern_api::types::Scope::Dashboard,
        ttl_secs: None,
        note: Some("the dashboard of `tern up`".into()),
    };
    let made: tern_api::types::TokenCreated = cluster
        .client()
        .post_json(&format!("{}/v1/tokens", cluster.control_url), &req)
        .await?;
    tern_control::write_token(&path, &made.token)?;
    Ok(made.token)
}

fn print_report(r: &UpReport, data_dir: &std::path::Path) -> Result<()> {
    outln!("tern cluster up")?;
    outln!("  control plane  {}", r.control_url)?;
    outln!("  data           {}", r.data_dir)?;
    outln!("  token          {}", r.token_file)?;
    match &r.ca_file {
        Some(ca) => outln!("  ca             {ca}")?,
        None => outln!(
            "  WARNING: plain HTTP (--insecure-plain-http): nothing on the wire is encrypted"
        )?,
    }
    if let Some(m) = &r.metrics_url {
        outln!("  metrics        {m}")?;
    }
    for n in &r.nodes {
        outln!("  {:<13}  {}", n.name, n.url)?;
        if let Some(m) = &n.metrics_url {
            outln!("  {:<13}  {m}", "  metrics")?;
        }
    }
    outln!("dashboard: {}", r.dashboard)?;
    if let Some(ca) = &r.ca_file {
        outln!("  (a read-only token; the browser trusts the page once {ca} is imported as a certificate authority)")?;
    }
    let default_dir = default_data_dir();
    let same_dir = default_dir.canonicalize().unwrap_or(default_dir) == data_dir;
    if !same_dir || r.control_url != crate::client::DEFAULT_CONTROL {
        outln!("For the client commands in another shell:")?;
        if r.control_url != crate::client::DEFAULT_CONTROL {
            outln!("  export TERN_CONTROL={}", r.control_url)?;
        }
        if !same_dir {
            outln!("  export TERN_TOKEN=$(cat {})", r.token_file)?;
            if let Some(ca) = &r.ca_file {
                outln!("  export TERN_CA={ca}")?;
            }
        }
    }
    outln!("Try: tern nodes, tern deploy APP.wasm --name APP, tern ps. Ctrl-C stops the cluster.")?;
    Ok(())
}
