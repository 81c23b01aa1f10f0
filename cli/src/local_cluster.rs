//! A whole cluster in this process: a control plane and nodes `node-1` …
//! `node-N` on loopback ports, stopped together. `tern up` and `tern demo`
//! run one; the end-to-end tests do too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tern_api::client::Client;
use tern_api::local::{Bound, Served};
use tern_api::types::NodeView;
use tern_control::ControlConfig;
use tern_node::NodeConfig;

/// A node of a [`LocalCluster`].
pub struct LocalNode {
    pub name: String,
    pub url: String,
    pub data_dir: PathBuf,
    /// Where its metrics listener is (`http://ADDR/metrics`), if it has one.
    pub metrics_url: Option<String>,
    served: Served,
}

/// A control plane and its nodes, in this process.
pub struct LocalCluster {
    pub control_url: String,
    pub token: String,
    /// The cluster's TLS material (`None`: plain HTTP, asked for).
    pub tls: Option<tern_control::ClusterTls>,
    /// The control plane's data directory; node `NAME` keeps its data in
    /// `nodes/NAME` under it.
    pub data_dir: PathBuf,
    pub nodes: Vec<LocalNode>,
    control: Served,
}

impl LocalCluster {
    /// Starts a control plane on `bound` with `config`, and `nodes` nodes
    /// on free loopback ports that report to it.
    pub async fn start(bound: Bound, config: ControlConfig, nodes: u16) -> Result<LocalCluster> {
        let bound = if config.tls.is_some() {
            bound
        } else {
            bound.plain()
        };
        let control_url = bound.url.clone();
        let token = config.token.clone();
        let data_dir = config.data_dir.clone();
        let tls = config.tls.clone();
        let control = tern_control::spawn(bound, config);
        let mut cluster = LocalCluster {
            control_url,
            token,
            tls,
            data_dir,
            nodes: Vec::new(),
            control,
        };
        for i in 1..=nodes {
            cluster.add_node(&format!("node-{i}"), |_| {}).await?;
        }
        Ok(cluster)
    }

    /// Adds a node named `name` (its configuration adjusted by `setup`).
    pub async fn add_node(
        &mut self,
        name: &str,
        setup: impl FnOnce(&mut NodeConfig),
    ) -> Result<&LocalNode> {
        let bound = Bound::loopback()
            .await
            .context("cannot bind a loopback port for a node")?;
        let dir = self.data_dir.join("nodes").join(name);
        let mut config = NodeConfig::new(name, self.token.clone(), dir.clone());
        config.control_url = Some(self.control_url.clone());
        // Nodes of this process get their certificates from the cluster's
        // CA directly (a node elsewhere joins with a token).
        let bound = match &self.tls {
            Some(t) => {
                config.tls = Some(t.issue_node(name, &[])?);
                bound
            }
            None => bound.plain(),
        };
        let url = bound.url.clone();
        setup(&mut config);
        let metrics_url = config
            .metrics_listener
            .as_deref()
            .map(tern_api::metrics::url_of);
        let served =
            tern_node::spawn(bound, config).with_context(|| format!("cannot start node {name}"))?;
        self.nodes.push(LocalNode {
            name: name.to_string(),
            url,
            data_dir: dir,
            metrics_url,
            served,
        });
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// A client with the cluster's token, trusting its CA.
    pub fn client(&self) -> Client {
        self.anonymous_client().with_token(Some(self.token.clone()))
    }

    /// A client without a token (app ingress), trusting the cluster's CA.
    pub fn anonymous_client(&self) -> Client {
        match &self.tls {
            Some(t) => {
                Client::with_tls(None, &t.client_trust()).unwrap_or_else(|_| Client::new(None))
            }
            None => Client::new(None),
        }
    }

    /// Waits until every node has registered and reports ready, calling
    /// `progress` with the count of ready nodes as it grows.
    pub async fn wait_ready(
        &self,
        within: Duration,
        mut progress: impl FnMut(usize),
    ) -> Result<()> {
        let c = self.client().with_timeout(Duration::from_secs(5));
        let deadline = Instant::now() + within;
        loop {
            let nodes: Vec<NodeView> = c
                .get_json(&format!("{}/v1/nodes", self.control_url))
                .await
                .unwrap_or_default();
            let ready = nodes.iter().filter(|n| n.state == "ready").count();
            progress(ready);
            if ready >= self.nodes.len() {
                return Ok(());
            }
            if self.control.is_finished() {
                bail!("the control plane stopped while its nodes were starting");
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {} nodes registered within {} s",
                    ready,
                    self.nodes.len(),
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the control plane ends by itself (a failure); its outcome.
    pub async fn control_ended(&mut self) -> Result<()> {
        self.control.ended().await
    }

    /// Stops a node now, as if its process died (its apps stop with it).
    pub fn kill_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == name) {
            n.served.stop();
        }
    }

    /// Stops the nodes and the control plane, waiting for each at most
    /// `deadline`; what did not stop cleanly, one line each.
    pub async fn shut_down(mut self, deadline: Duration) -> Vec<String> {
        for n in &mut self.nodes {
            n.served.stop();
        }
        self.control.stop();
        let mut problems = Vec::new();
        for n in self.nodes {
            if let Err(e) = n.served.shut_down(deadline).await {
                problems.push(format!("{}: {e:#}", n.name));
            }
        }
        if let Err(e) = self.control.shut_down(deadline).await {
            problems.push(format!("the control plane: {e:#}"));
        }
        problems
    }
}
