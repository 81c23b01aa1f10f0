//! The cluster a soak drives: `tern control` (redb) and N `tern node`s, each
//! a child process of this one, on loopback ports of their own, each node
//! behind a relay of this process that it advertises (`relay.rs`). They can be
//! killed (SIGKILL, like a machine dying) and started again on the same
//! port and data directory, as an operator's supervisor would. Every child
//! is killed and reaped when its [`Proc`] is dropped.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tern_api::client::Client;
use tern_api::types::{AppView, NodeView, Scope, TokenCreate, TokenCreated};

/// How long a node may miss heartbeats before the control plane restarts
/// its apps elsewhere (short, so that a killed node's apps come back soon).
const HEARTBEAT_TIMEOUT: &str = "2s";
/// How long the cluster may take to start, or to settle after a fault.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One child process: how to start it, and the running child.
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<OsString>,
    /// Arguments for the first start only (a node's join token).
    first_args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &str, program: &Path, args: Vec<OsString>, dir: &Path) -> Proc {
        Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            first_args: Vec::new(),
            env: Vec::new(),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process (its output appended to its log file).
    pub fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(std::mem::take(&mut self.first_args))
            .env_remove("TERN_TOKEN")
            .env_remove("TERN_CONTROL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it exited on its own (a crash): reaps it if so.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The control plane and the nodes, as processes, and clients of them.
pub struct Cluster {
    pub dir: PathBuf,
    /// One control plane, or two sharing an etcd store (one leads).
    pub controls: Vec<Proc>,
    /// Which of them leads, as last seen.
    leader: usize,
    /// The leader's URL.
    pub control_url: String,
    pub control_urls: Vec<String>,
    pub nodes: Vec<Proc>,
    /// The operator's client of the control plane.
    pub ctl: Client,
    /// An anonymous client, for app ingress.
    pub anon: Client,
    /// The relay in front of each node (what the node advertises), by name.
    relays: Vec<(String, super::relay::Relay)>,
    /// Whether each node's data directory is a small filesystem of its own
    /// (`disk.rs`), which the `full_disk` fault fills.
    small_disks: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.small_disks {
            for p in &mut self.nodes {
                p.kill();
                super::disk::unmount(&self.dir.join(&p.name));
            }
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A token no one can guess, for this run only.
fn fresh_token() -> String {
    let mut h = Sha256::new();
    h.update(std::process::id().to_string().as_bytes());
    h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    h.update(format!("{:p}", &h).as_bytes());
    format!("soak-{}", hex::encode(h.finalize()))
}

impl Cluster {
    /// Starts a control plane (two sharing `etcd`'s store, when given)
    /// and `nodes` nodes (`node-1`…) under `dir`, and waits until every
    /// node is ready.
    pub async fn start(
        dir: &Path,
        nodes: usize,
        small_disks: bool,
        etcd: Option<&str>,
    ) -> Result<Cluster> {
        let tern = std::env::current_exe().context("cannot find the tern binary")?;
        let token = fresh_token();
        let count = if etcd.is_some() { 2 } else { 1 };
        let mut controls = Vec::new();
        let mut control_urls = Vec::new();
        let mut ca = None;
        for i in 1..=count {
            let name = match count {
                1 => "control".to_string(),
                _ => format!("control-{i}"),
            };
            let port = free_port()?;
            control_urls.push(format!("https://127.0.0.1:{port}"));
            let control_dir = dir.join(&name);
            let mut args: Vec<OsString> = [
                "control",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--heartbeat-timeout",
                HEARTBEAT_TIMEOUT,
                "--rebalance-interval",
                "1h",
                "--data-dir",
            ]
            .iter()
            .map(OsString::from)
            .chain([control_dir.clone().into_os_string()])
            .collect();
            if let Some(store) = etcd {
                args.extend(["--store".into(), store.into()]);
            }
            // Control planes on one store share the first one's CA.
            if i > 1 {
                let first = dir.join("control-1");
                args.extend([
                    "--ca-cert".into(),
                    tern_api::tls::ca_path(&first).into_os_string(),
                    "--ca-key".into(),
                    first.join(tern_api::tls::CA_KEY_FILE).into_os_string(),
                ]);
            }
            let mut control = Proc::new(&name, &tern, args, dir);
            control.env.push(("TERN_TOKEN".into(), token.clone()));
            control.start()?;
            if ca.is_none() {
                let ca_file = tern_api::tls::ca_path(&control_dir);
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                ca = Some(loop {
                    if let Ok(pem) = std::fs::read_to_string(&ca_file) {
                        if pem.contains("END CERTIFICATE") {
                            break pem;
                        }
                    }
                    if control.exited() || Instant::now() > deadline {
                        bail!(
                            "the control plane did not start: see {}",
                            control.log.display()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                });
            }
            controls.push(control);
        }
        let ca = ca.expect("at least one control plane");
        let tls = tern_api::tls::Tls::new(ca, None)?;
        let ctl = Client::with_tls(Some(token), &tls)?.with_timeout(Duration::from_secs(10));
        let anon = Client::with_tls(None, &tls)?.with_timeout(Duration::from_secs(10));
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            controls,
            leader: 0,
            control_url: control_urls[0].clone(),
            control_urls,
            nodes: Vec::new(),
            ctl,
            anon,
            relays: Vec::new(),
            small_disks,
        };
        c.wait_for("the control plane to answer", |_, _| true)
            .await?;
        // Nodes join through the leader, and report to whichever leads.
        let mut control_list = vec![c.control_url.clone()];
        control_list.extend(
            c.control_urls
                .iter()
                .filter(|u| **u != c.control_url)
                .cloned(),
        );
        let control_list = control_list.join(",");
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let port = free_port()?;
            // Everything reaches the node through its relay (network faults).
            let relay =
                super::relay::Relay::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                    .await?;
            let advertise = format!("https://{}", relay.addr);
            if small_disks {
                super::disk::small_disk(&dir.join(&name))?;
            }
            let join: TokenCreated = c
                .ctl
                .post_json(
                    &c.url("/v1/tokens"),
                    &TokenCreate {
                        scope: Scope::Join,
                        ttl_secs: Some(600),
                        note: Some(format!("soak {name}")),
                    },
                )
                .await
                .context("cannot create a join token")?;
            let mut p = Proc::new(
                &name,
                &tern,
                [
                    "node",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--control",
                    &control_list,
                    "--name",
                    &name,
                    "--advertise",
                    &advertise,
                    "--data-dir",
                ]
                .iter()
                .map(OsString::from)
                .chain([dir.join(&name).into_os_string()])
                .collect(),
                dir,
            );
            p.first_args = vec!["--join".into(), join.token.into()];
            p.start()?;
            c.nodes.push(p);
            c.relays.push((name, relay));
        }
        c.wait_for("every node to be ready", |n, _| {
            n.len() == nodes && n.iter().all(|n| n.state == "ready")
        })
        .await?;
        Ok(c)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.control_url)
    }

    /// The nodes and apps as the control plane sees them.
    pub async fn table(&self) -> Result<(Vec<NodeView>, Vec<AppView>)> {
        let nodes = self.ctl.get_json(&self.url("/v1/nodes")).await?;
        let apps = self.ctl.get_json(&self.url("/v1/apps")).await?;
        Ok((nodes, apps))
    }

    /// Polls the control plane until `ok` holds for its table (bounded by
    /// [`SETTLE_TIMEOUT`]); restarts any process that died on its own.
    pub async fn wait_for(
        &mut self,
        what: &str,
        ok: impl Fn(&[NodeView], &[AppView]) -> bool,
    ) -> Result<(Vec<NodeView>, Vec<AppView>)> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            for p in self.controls.iter_mut().chain(self.nodes.iter_mut()) {
                if p.exited() {
                    bail!("{} exited on its own: see {}", p.name, p.log.display());
                }
            }
            let last = match self.table().await {
                Ok((n, a)) if ok(&n, &a) => return Ok((n, a)),
                Ok((n, a)) => {
                    format!(
                        "nodes {:?}, apps {:?}",
                        n.iter()
                            .map(|n| format!("{}:{}", n.name, n.state))
                            .collect::<Vec<_>>(),
                        a.iter()
                            .map(|a| format!(
                                "{}:{}@{}",
                                a.name,
                                a.state,
                                a.node.as_deref().unwrap_or("-")
                            ))
                            .collect::<Vec<_>>()
                    )
                }
                Err(e) => {
                    self.find_leader().await;
                    e.to_string()
                }
            };
            if Instant::now() > deadline {
                bail!(
                    "timed out after {} s waiting for {what} (last seen: {last}); logs in {}",
                    SETTLE_TIMEOUT.as_secs(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fills node `name`'s disk; the filler's path, to remove when the
    /// fault ends (`None`: no small disks, or the fill failed).
    pub async fn fill_disk(&self, name: &str) -> Option<PathBuf> {
        if !self.small_disks || !self.nodes.iter().any(|p| p.name == name) {
            return None;
        }
        let dir = self.dir.join(name);
        tokio::task::spawn_blocking(move || super::disk::fill(&dir))
            .await
            .ok()?
            .ok()
    }

    /// The relay in front of node `name`.
    pub fn relay(&self, name: &str) -> Option<&super::relay::Relay> {
        self.relays.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// With several control planes: the one that says it leads becomes
    /// the one this soak talks to.
    async fn find_leader(&mut self) {
        if self.control_urls.len() < 2 {
            return;
        }
        for (i, url) in self.control_urls.iter().enumerate() {
            let health = self
                .ctl
                .get_json::<serde_json::Value>(&format!("{url}/v1/health"))
                .await;
            if health.is_ok_and(|h| h["role"] != "standby") {
                self.leader = i;
                self.control_url = url.clone();
                return;
            }
        }
    }

    /// The process named `name` (`control`: the leading control plane, or
    /// a node's name).
    pub fn proc_mut(&mut self, name: &str) -> Option<&mut Proc> {
        if name == "control" {
            return self.controls.get_mut(self.leader);
        }
        self.nodes.iter_mut().find(|p| p.name == name)
    }
}
