//! `tern soak`: a chaos soak. It starts a cluster of its own as separate
//! processes (`cluster`), deploys ledger apps, calls them without pause
//! with calls that each carry a fresh id (`load`), moves them in a seeded
//! sequence of hot, cold and hybrid moves with faults injected at random
//! points (`moves`: processes killed; links cut, stalled or corrupted
//! through `relay`), and at the end reads every ledger back and checks
//! every call (`check`). `report` renders the outcome as text or JSON.
//!
//! It cannot pass by doing nothing: it fails unless the moves asked for
//! happened, calls were acknowledged all along, and faults were injected
//! when a fault rate was given.

mod check;
mod cluster;
mod disk;
mod load;
mod moves;
mod relay;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use tern_api::types::DeployRequest;

use crate::demo::apps;
use crate::util::parse_duration;
use cluster::Cluster;
use load::Load;
use moves::{Driver, MODES};

#[derive(Args)]
pub struct SoakArgs {
    /// Successful moves to make (the soak ends when they are done).
    #[arg(long, value_name = "N", default_value_t = 300)]
    migrations: u64,
    /// End after this long even if fewer moves were made (e.g. 10m).
    #[arg(long, value_name = "DUR")]
    duration: Option<String>,
    /// The seed of the sequence of moves and faults (and of the clients).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Ledger apps to deploy and move.
    #[arg(long, value_name = "N", default_value_t = 3)]
    apps: usize,
    /// Nodes to start (at least 2; 3 or more for the kills of a node that
    /// only forwards).
    #[arg(long, value_name = "N", default_value_t = 4)]
    nodes: usize,
    /// The share of moves a fault is injected into (0 to 1).
    #[arg(long, value_name = "R", default_value_t = 0.1)]
    fault_rate: f64,
    /// Move modes, comma-separated (default: all of them).
    #[arg(long, value_name = "MODE,...", value_delimiter = ',', default_values_t = MODES.iter().map(|m| m.to_string()))]
    modes: Vec<String>,
    /// The kinds of fault to inject, comma-separated (default: all of
    /// them): kill_source, kill_target, kill_control, kill_forwarder
    /// (SIGKILL, then a restart), cut_link, stall_link, corrupt_link (the
    /// network into the move's source or target), full_disk (the source's
    /// or target's disk full for a while; needs root, to mount).
    #[arg(long, value_name = "FAULT,...", value_delimiter = ',')]
    faults: Vec<String>,
    /// Run two control planes on this etcd store
    /// (`etcd://HOST:PORT/PREFIX`, a prefix of its own) instead of one on
    /// redb: one leads, the other stands by; kill_control kills the leader.
    #[arg(long, value_name = "URL")]
    etcd: Option<String>,
    /// Concurrent clients calling the apps.
    #[arg(long, value_name = "N", default_value_t = 4)]
    clients: usize,
    /// Keep the cluster's files (logs, state) here; by default they go to a
    /// temporary directory, removed when the soak passes.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

pub fn soak(a: SoakArgs) -> Result<ExitCode> {
    if a.nodes < 2 {
        bail!(
            "--nodes {}: a soak moves apps between nodes; give at least 2",
            a.nodes
        );
    }
    if a.apps == 0 || a.apps > 64 {
        bail!("--apps {}: give 1 to 64", a.apps);
    }
    if !(0.0..=1.0).contains(&a.fault_rate) {
        bail!(
            "--fault-rate {}: give a share between 0 and 1",
            a.fault_rate
        );
    }
    if a.clients == 0 || a.clients > 64 {
        bail!("--clients {}: give 1 to 64", a.clients);
    }
    for m in &a.modes {
        if !MODES.contains(&m.as_str()) {
            bail!("--modes: unknown mode `{m}` (known: {})", MODES.join(", "));
        }
    }
    let mut faults = a
        .faults
        .iter()
        .map(|f| {
            moves::Fault::ALL
                .into_iter()
                .find(|k| k.name() == f)
                .ok_or_else(|| anyhow::anyhow!("--faults: unknown fault `{f}`"))
        })
        .collect::<Result<Vec<_>>>()?;
    if faults.is_empty() {
        faults = moves::Fault::ALL.to_vec();
    }
    // Full disks need a small filesystem per node, mounted in a mount
    // namespace of the soak's own (made here, before any thread starts).
    if faults.contains(&moves::Fault::FullDisk) {
        if let Err(why) = disk::private_mounts() {
            eprintln!("soak: no full_disk faults: {why}");
            faults.retain(|f| *f != moves::Fault::FullDisk);
            if faults.is_empty() {
                bail!("--faults full_disk: {why}");
            }
        }
    }
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let (dir, temp) = match &a.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("tern-soak-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = rt.block_on(run(&a, &dir, duration, faults));
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = temp {
                let kept = t.keep();
                eprintln!("soak: the cluster's logs are kept in {}", kept.display());
            }
            return Err(e);
        }
    };
    let failures = report.failures();
    if !failures.is_empty() {
        if let Some(t) = temp {
            let kept = t.keep();
            eprintln!("soak: the cluster's logs are kept in {}", kept.display());
        }
    }
    report.print(a.json)?;
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("the soak failed: {}", failures.join("; "))
    }
}

async fn run(
    a: &SoakArgs,
    dir: &std::path::Path,
    duration: Option<Duration>,
    faults: Vec<moves::Fault>,
) -> Result<report::Report> {
    let epoch = Instant::now();
    eprintln!(
        "soak: starting a control plane and {} nodes in {}",
        a.nodes,
        dir.display()
    );
    let small_disks = faults.contains(&moves::Fault::FullDisk);
    let mut c = Cluster::start(dir, a.nodes, small_disks, a.etcd.as_deref()).await?;
    let names: Vec<String> = (1..=a.apps).map(|i| format!("ledger-{i}")).collect();
    deploy(&c, &names).await?;
    let (nodes, _) = moves::settle(&mut c, &names).await?;
    if a.modes.iter().any(|m| m == "hybrid") {
        // A hybrid move starts from the app's checkpoint: wait for the first.
        eprintln!("soak: waiting for a first checkpoint of every app (hybrid moves start from it)");
        c.wait_for("a checkpoint of every app", |_, apps| {
            apps.iter()
                .all(|a| a.checkpoint.as_ref().is_some_and(|c| c.unix_ms.is_some()))
        })
        .await?;
    }
    let entries: Vec<String> = c
        .nodes
        .iter()
        .filter_map(|p| {
            nodes
                .iter()
                .find(|n| n.name == p.name)
                .map(|n| n.url.clone())
        })
        .collect();
    eprintln!(
        "soak: {} apps deployed; {} clients calling them through every node",
        a.apps, a.clients
    );
    let load = Load::start(
        &c.anon,
        names.clone(),
        entries.clone(),
        a.clients,
        a.seed,
        epoch,
    );
    let mut driver = Driver::new(names.clone(), a.modes.clone(), a.fault_rate, a.seed, epoch);
    if !faults.is_empty() {
        driver.faults = faults;
    }
    // Bounded: every attempt is a move; failed ones (under faults) are
    // retried, up to twice as many attempts as moves asked for.
    let max_attempts = a.migrations * 2 + 20;
    let mut last_progress = Instant::now();
    let mut stopped_by = "the moves asked for were made";
    let result = loop {
        if driver.stats.migrations >= a.migrations {
            break Ok(());
        }
        if driver.stats.attempted >= max_attempts {
            stopped_by = "too many moves failed";
            break Ok(());
        }
        if duration.is_some_and(|d| epoch.elapsed() >= d) {
            stopped_by = "--duration ran out";
            break Ok(());
        }
        if load.full() {
            stopped_by = "the clients made as many calls as a soak records";
            break Ok(());
        }
        if let Err(e) = driver.step(&mut c).await {
            break Err(e);
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!("{}", progress(&driver, &load, a.migrations, epoch));
        }
    };
    eprintln!("{}", progress(&driver, &load, a.migrations, epoch));
    let settled = match result {
        Ok(()) => moves::settle(&mut c, &names).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let calls = load.stop().await;
    if let Err(e) = settled {
        if a.data_dir.is_some() {
            write_record(dir, &calls, &[], &driver.stats)?;
        }
        return Err(e);
    }
    eprintln!("soak: {stopped_by}; reading the ledgers back");
    let mut ledgers = Vec::new();
    for n in &names {
        ledgers.push(read_ledger(&c.anon, &entries, n).await?);
    }
    let verdict = check::check(&calls, &ledgers, &driver.stats.kills);
    if a.data_dir.is_some() {
        write_record(dir, &calls, &ledgers, &driver.stats)?;
    }
    Ok(report::Report::new(
        a,
        driver.stats,
        verdict,
        epoch.elapsed(),
        stopped_by,
    ))
}

/// An app's ledger, through each node in turn until one answers (a node
/// that has just restarted may not know the route yet).
async fn read_ledger(
    client: &tern_api::client::Client,
    entries: &[String],
    app: &str,
) -> Result<Vec<u64>> {
    let mut last = None;
    for round in 0..10 {
        for e in entries {
            match load::read_ledger(client, e, app).await {
                Ok(l) => return Ok(l),
                Err(err) => last = Some(err),
            }
        }
        tokio::time::sleep(Duration::from_millis(200 << round.min(4))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no node to read {app} through")))
}

/// What a soak saw, kept in its --data-dir for a person to dig into:
/// `calls.tsv`, `ledger-N.txt`, `moves.tsv`, `kills.tsv`.
fn write_record(
    dir: &std::path::Path,
    calls: &[load::Call],
    ledgers: &[Vec<u64>],
    stats: &moves::Stats,
) -> Result<()> {
    use std::fmt::Write as _;
    let mut t = String::from("id\tapp\tsent_ms\tdone_ms\toutcome\tseq\tgeneration\tnode\n");
    for c in calls {
        let _ = match c.outcome {
            load::Outcome::Acked {
                seq,
                generation,
                node,
            } => writeln!(
                t,
                "{}\t{}\t{}\t{}\tacked\t{seq}\t{}\t{}",
                c.id,
                c.app,
                c.sent_ms,
                c.done_ms,
                generation.map(|g| g.to_string()).unwrap_or_default(),
                node.map(|n| n.to_string()).unwrap_or_default()
            ),
            o => writeln!(
                t,
                "{}\t{}\t{}\t{}\t{o:?}\t\t\t",
                c.id, c.app, c.sent_ms, c.done_ms
            ),
        };
    }
    std::fs::write(dir.join("calls.tsv"), t)?;
    for (i, l) in ledgers.iter().enumerate() {
        let text: String = l.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(dir.join(format!("ledger-{}.txt", i + 1)), text)?;
    }
    let moves = "started_ms\tapp\tfrom\tto\tmode\tfault\tvictim\ttook_ms\toutcome\n".to_string()
        + &stats.log.join("\n");
    std::fs::write(dir.join("moves.tsv"), moves)?;
    let kills: String = stats
        .kills
        .iter()
        .map(|k| {
            format!(
                "{}\t{}\t{:?}\t{:?}\t{}\n",
                k.at_ms, k.app, k.checkpoint_ms, k.node, k.held
            )
        })
        .collect();
    std::fs::write(dir.join("kills.tsv"), kills)?;
    Ok(())
}

/// Uploads the ledger module and deploys `names`, one after the other on
/// the nodes in turn, restarted from their checkpoint if their node dies.
async fn deploy(c: &Cluster, names: &[String]) -> Result<()> {
    let sha = hex::encode(tern_runtime::sha256(apps::LEDGER));
    c.ctl
        .put_bytes(
            &c.url(&format!("/v1/modules/{sha}")),
            Bytes::from_static(apps::LEDGER),
        )
        .await
        .context("cannot upload the ledger module")?;
    for (i, name) in names.iter().enumerate() {
        let req = DeployRequest {
            name: name.clone(),
            module_sha256: sha.clone(),
            node: Some(c.nodes[i % c.nodes.len()].name.clone()),
            restart: Some("always".into()),
            ..Default::default()
        };
        let _: serde_json::Value = c
            .ctl
            .post_json(&c.url("/v1/apps"), &req)
            .await
            .with_context(|| format!("cannot deploy {name}"))?;
    }
    Ok(())
}

fn progress(d: &Driver, load: &Load, want: u64, epoch: Instant) -> String {
    use std::sync::atomic::Ordering;
    let s = &d.stats;
    format!(
        "soak: {:>5}/{want} moves ({}) · {} failed · {} faults · calls {} acked, {} not · {:.0} s",
        s.migrations,
        s.by_mode
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.failed,
        s.faults_injected(),
        load.acked.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        epoch.elapsed().as_secs_f64()
    )
}
