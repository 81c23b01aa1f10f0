//! The moves of a soak and the faults injected into them: a seeded
//! sequence of (app, target node, mode), each maybe with a fault at a
//! random point of the move — a SIGKILL of its source, of its target, of
//! the control plane, or of a node that only forwards (the killed process
//! started again at once, as a supervisor would), or a network fault on
//! the link into its source or target (cut, stalled, or one byte
//! corrupted: `relay.rs`), or its disk full for a while (`disk.rs`); and,
//! before each move,
//! a wait until the cluster has settled (every node ready, every app
//! answering from the node the control plane says it runs on).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tern_api::types::{AppView, MigrationReport, NodeView};

use super::check::Kill;
use super::cluster::Cluster;

/// The modes a soak moves apps in, by default: every one the platform has.
/// A new mode is one more name here (and in `tern migrate --mode`).
pub const MODES: &[&str] = &["hot", "cold", "hybrid", "postcopy"];

/// A fault injected into a move: a SIGKILL of one of its processes, or a
/// fault on the network link into its source or target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Source,
    Target,
    Control,
    Forwarder,
    /// Every connection into the node cut.
    CutLink,
    /// No byte into or out of the node for 0.2–3 s.
    StallLink,
    /// One byte flipped in what the node receives or sends next.
    CorruptLink,
    /// The node's disk full for 0.2–3 s (`disk.rs`).
    FullDisk,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::Source,
        Fault::Target,
        Fault::Control,
        Fault::Forwarder,
        Fault::CutLink,
        Fault::StallLink,
        Fault::CorruptLink,
        Fault::FullDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Source => "kill_source",
            Fault::Target => "kill_target",
            Fault::Control => "kill_control",
            Fault::Forwarder => "kill_forwarder",
            Fault::CutLink => "cut_link",
            Fault::StallLink => "stall_link",
            Fault::CorruptLink => "corrupt_link",
            Fault::FullDisk => "full_disk",
        }
    }

    /// Whether it kills a process (the others leave every process running).
    fn kills(self) -> bool {
        matches!(
            self,
            Fault::Source | Fault::Target | Fault::Control | Fault::Forwarder
        )
    }
}

/// What the moves did.
#[derive(Debug, Default)]
pub struct Stats {
    pub attempted: u64,
    pub migrations: u64,
    pub by_mode: BTreeMap<String, u64>,
    pub failed: u64,
    /// Moves that failed with no fault injected into them.
    pub failed_without_fault: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub restarts: u64,
    pub downtime_ms: Vec<f64>,
    pub kills: Vec<Kill>,
    /// The first errors of moves that failed with no fault.
    pub errors: Vec<String>,
    /// One line per move (`moves.tsv` in --data-dir): when it started (ms),
    /// app, from, to, mode, fault and victim, outcome.
    pub log: Vec<String>,
}

impl Stats {
    pub fn faults_injected(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// Drives the moves.
pub struct Driver {
    pub apps: Vec<String>,
    /// The kinds of fault to inject (default: all).
    pub faults: Vec<Fault>,
    pub modes: Vec<String>,
    pub fault_rate: f64,
    pub stats: Stats,
    rng: StdRng,
    epoch: Instant,
    epoch_unix_ms: u64,
    /// A running mean of how long a move takes (ms): faults land within it.
    move_ms: f64,
}

impl Driver {
    pub fn new(
        apps: Vec<String>,
        modes: Vec<String>,
        fault_rate: f64,
        seed: u64,
        epoch: Instant,
    ) -> Driver {
        Driver {
            apps,
            faults: Fault::ALL.to_vec(),
            modes,
            fault_rate,
            stats: Stats::default(),
            rng: StdRng::seed_from_u64(seed),
            epoch,
            epoch_unix_ms: tern_util::now_unix_ms()
                .saturating_sub(epoch.elapsed().as_millis() as u64),
            move_ms: 50.0,
        }
    }

    /// One move, maybe with a fault; the cluster settled first.
    pub async fn step(&mut self, c: &mut Cluster) -> Result<()> {
        let (nodes, apps) = settle(c, &self.apps).await?;
        let app_ix = self.rng.random_range(0..self.apps.len());
        let name = self.apps[app_ix].clone();
        let from = apps
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.node.clone())
            .unwrap_or_default();
        let others: Vec<&NodeView> = nodes.iter().filter(|n| n.name != from).collect();
        let to = others[self.rng.random_range(0..others.len())].name.clone();
        let mode = self.modes[self.rng.random_range(0..self.modes.len())].clone();
        let fault = self
            .rng
            .random_bool(self.fault_rate)
            .then(|| self.faults[self.rng.random_range(0..self.faults.len())]);
        let victim = fault.and_then(|f| match f {
            Fault::CutLink | Fault::StallLink | Fault::CorruptLink | Fault::FullDisk => {
                Some(if self.rng.random_bool(0.5) {
                    from.clone()
                } else {
                    to.clone()
                })
            }
            Fault::Source => Some(from.clone()),
            Fault::Target => Some(to.clone()),
            Fault::Control => Some("control".to_string()),
            Fault::Forwarder => {
                let bystanders: Vec<&NodeView> = nodes
                    .iter()
                    .filter(|n| n.name != from && n.name != to)
                    .collect();
                (!bystanders.is_empty()).then(|| {
                    bystanders[self.rng.random_range(0..bystanders.len())]
                        .name
                        .clone()
                })
            }
        });
        let delay =
            Duration::from_millis(self.rng.random_range(0..=(self.move_ms * 1.5) as u64 + 2));
        let stall = Duration::from_millis(self.rng.random_range(200..=3000));
        self.stats.attempted += 1;

        let client = c.ctl.clone().with_timeout(Duration::from_secs(120));
        let url = c.url(&format!("/v1/apps/{name}/migrate"));
        let body = serde_json::json!({"to": to, "mode": mode});
        let started = Instant::now();
        let migrate = client.post_json::<_, MigrationReport>(&url, &body);
        tokio::pin!(migrate);
        let mut result = None;
        // A stall or a full disk lasts a while: the next move starts after it.
        let mut fault_ends = None;
        let mut filler = None;
        if let (Some(fault), Some(victim)) = (fault, &victim) {
            tokio::select! {
                r = &mut migrate => result = Some(r),
                _ = tokio::time::sleep(delay) => {}
            }
            let at_ms = self.epoch.elapsed().as_millis() as u64;
            *self.stats.faults.entry(fault.name()).or_default() += 1;
            match (fault, c.relay(victim)) {
                (Fault::CutLink, Some(r)) => r.cut(),
                (Fault::StallLink, Some(r)) => {
                    r.stall(stall);
                    fault_ends = Some(tokio::time::Instant::now() + stall);
                }
                (Fault::CorruptLink, Some(r)) => r.corrupt_next(),
                _ => {}
            }
            if fault == Fault::FullDisk {
                filler = c.fill_disk(victim).await;
                fault_ends = Some(tokio::time::Instant::now() + stall);
            }
            if fault.kills() {
                if let Some(p) = c.proc_mut(victim) {
                    p.kill();
                    p.start()?;
                }
                self.stats.restarts += 1;
                if victim != "control" {
                    self.record_kill(at_ms, victim, &apps, &name, &from, &to);
                }
            }
        }
        let result = match result {
            Some(r) => r,
            None => migrate.await,
        };
        if let Some(t) = fault_ends {
            tokio::time::sleep_until(t).await;
        }
        if let Some(f) = filler {
            let _ = std::fs::remove_file(f);
        }
        // A corruption that met no byte during its move must not hit the next.
        if let (Some(Fault::CorruptLink), Some(victim)) = (fault, &victim) {
            if let Some(r) = c.relay(victim) {
                r.disarm();
            }
        }
        self.stats.log.push(format!(
            "{}\t{name}\t{from}\t{to}\t{mode}\t{}\t{}\t{}\t{}",
            (started - self.epoch).as_millis(),
            fault.map(Fault::name).unwrap_or("-"),
            victim.as_deref().unwrap_or("-"),
            started.elapsed().as_millis(),
            match &result {
                Ok(r) => format!(
                    "ok generation {} downtime {:.1} ms",
                    r.generation, r.downtime_ms
                ),
                Err(e) => format!("failed: {e}"),
            }
        ));
        match result {
            Ok(report) => {
                self.stats.migrations += 1;
                *self.stats.by_mode.entry(mode).or_default() += 1;
                self.stats.downtime_ms.push(report.downtime_ms);
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                self.move_ms = 0.8 * self.move_ms + 0.2 * ms;
            }
            Err(e) => {
                self.stats.failed += 1;
                if fault.is_none() {
                    self.stats.failed_without_fault += 1;
                    if self.stats.errors.len() < 10 {
                        self.stats
                            .errors
                            .push(format!("{mode} move of {name} {from}->{to}: {e}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// A node was killed: every app it held (and the moving app, if it was
    /// the move's source or target) may restart from a checkpoint. Every
    /// app is recorded: the checker also counts the kill for an app whose
    /// last call the node answered (a move can complete unseen).
    fn record_kill(
        &mut self,
        at_ms: u64,
        victim: &str,
        apps: &[AppView],
        moving: &str,
        from: &str,
        to: &str,
    ) {
        for (ix, name) in self.apps.iter().enumerate() {
            let view = apps.iter().find(|a| &a.name == name);
            let held = view.is_some_and(|a| a.node.as_deref() == Some(victim))
                || (name == moving && (victim == from || victim == to));
            let checkpoint_ms = view
                .and_then(|a| a.checkpoint.as_ref())
                .and_then(|c| c.unix_ms)
                .map(|t| t as i64 - self.epoch_unix_ms as i64);
            self.stats.kills.push(Kill {
                at_ms,
                app: ix as u16,
                checkpoint_ms,
                node: victim.strip_prefix("node-").and_then(|n| n.parse().ok()),
                held,
            });
        }
    }
}

/// Waits until every node is ready and every app answers from the node the
/// control plane places it on.
pub async fn settle(c: &mut Cluster, apps: &[String]) -> Result<(Vec<NodeView>, Vec<AppView>)> {
    let deadline = Instant::now() + super::cluster::SETTLE_TIMEOUT;
    loop {
        let want = c.nodes.len();
        let (nodes, views) = c
            .wait_for("every node ready and every app running", |n, a| {
                n.len() == want
                    && n.iter().all(|n| n.state == "ready")
                    && apps.iter().all(|name| {
                        a.iter()
                            .any(|a| &a.name == name && a.state == "running" && a.node.is_some())
                    })
            })
            .await?;
        let why = match answers_where_placed(c, &nodes, &views).await {
            Ok(()) => return Ok((nodes, views)),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            anyhow::bail!(
                "the apps did not answer from where the control plane places them within {} s ({why}); logs in {}",
                super::cluster::SETTLE_TIMEOUT.as_secs(),
                c.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Err`: the first app that does not, and what it answered.
async fn answers_where_placed(
    c: &Cluster,
    nodes: &[NodeView],
    apps: &[AppView],
) -> std::result::Result<(), String> {
    for a in apps {
        let Some(node) = nodes.iter().find(|n| Some(&n.name) == a.node.as_ref()) else {
            return Err(format!("{} is placed on no known node", a.name));
        };
        let url = format!("{}/apps/{}/", node.url, a.name);
        match c.anon.send_raw(Method::GET, &url, None, Bytes::new()).await {
            Ok(r) if r.status.as_u16() == 200 => {
                let at = r
                    .headers
                    .get(tern_node::NODE_HEADER)
                    .and_then(|v| v.to_str().ok());
                if at != Some(node.name.as_str()) {
                    return Err(format!(
                        "{} (generation {}) is placed on {} but answered from {at:?}",
                        a.name, a.generation, node.name
                    ));
                }
            }
            Ok(r) => {
                return Err(format!(
                    "{} (generation {}) on {} answered {} {}",
                    a.name,
                    a.generation,
                    node.name,
                    r.status,
                    String::from_utf8_lossy(&r.body).trim()
                ))
            }
            Err(e) => return Err(format!("{} on {}: {e}", a.name, node.name)),
        }
    }
    Ok(())
}
