//! `tern demo`: a local cluster, example apps under load, moved hot, cold
//! and hybrid while they serve, placed by the learned scheduler.
//!
//! On a terminal each phase shows a progress bar on stderr; elsewhere (CI
//! logs, pipes) the same story comes as plain lines; `--json` prints one
//! document and nothing else.

mod load;
mod story;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tern_api::client::Client;
use tern_api::local::Bound;
use tern_api::types::{DeployRequest, MigrationReport};

use crate::local_cluster::LocalCluster;
use crate::output::outln;
use crate::util::{dashboard_url, print_json};
use load::{load_line, served_more, start_load, with_live_count, Load};
use story::Story;

/// The example apps the demo deploys, built for wasm32-wasip1 and embedded
/// by the build script (`COUNTER`, `KV`; and `LEDGER`, which `tern soak`
/// deploys).
pub(crate) mod apps {
    include!(concat!(env!("OUT_DIR"), "/demo_apps.rs"));
}

#[derive(Args)]
#[command(after_help = "More examples:\n  \
    tern demo --keep                          # then open the dashboard URL it prints; Ctrl-C stops\n  \
    tern demo --keep --listen 127.0.0.1:7080  # the dashboard at a fixed address\n  \
    tern demo --json                          # one JSON document, no progress bars")]
pub struct DemoArgs {
    /// Print one JSON document instead of the story (and no progress bars).
    #[arg(long)]
    json: bool,
    /// After the summary, keep the cluster running and the load going, and
    /// move `counter` hot to the next node every 10 s, until Ctrl-C or
    /// SIGTERM: something to watch on the dashboard.
    #[arg(long)]
    keep: bool,
    /// Where the demo's control plane, and so its dashboard, listens
    /// (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Serve plain HTTP instead of HTTPS (nothing encrypted, no
    /// certificates: for a browser on this machine that will not import
    /// the demo's CA).
    #[arg(long)]
    insecure_plain_http: bool,
}

#[derive(Serialize)]
struct DemoMigration {
    app: String,
    mode: String,
    from: String,
    to: String,
    downtime_ms: f64,
    total_ms: f64,
    bytes_sent: u64,
    rounds: u32,
    requests_served: u64,
    requests_failed: u64,
}

#[derive(Serialize)]
struct Placement {
    app: String,
    node: String,
    policy: String,
    candidates: serde_json::Value,
}

#[derive(Serialize)]
struct DemoReport {
    dashboard: String,
    migrations: Vec<DemoMigration>,
    placements: Vec<Placement>,
    requests_served: u64,
    requests_failed: u64,
}

/// What goes on running after the summary with `--keep`.
struct Running {
    loads: [Load; 2],
    cluster: LocalCluster,
    client: Client,
    control: String,
}

/// How often `--keep` moves `counter`.
const KEEP_MOVE_EVERY: Duration = Duration::from_secs(10);

/// `--keep`: moves `counter` hot to the node after the one it is on.
async fn move_counter_on(r: &Running) -> Result<MigrationReport> {
    let apps: Vec<tern_api::types::AppView> =
        r.client.get_json(&format!("{}/v1/apps", r.control)).await?;
    let from = apps
        .iter()
        .find(|v| v.name == "counter")
        .and_then(|v| v.node.clone())
        .unwrap_or_default();
    let next = match from.as_str() {
        "node-1" => "node-2",
        "node-2" => "node-3",
        _ => "node-1",
    };
    let body = serde_json::json!({ "to": next, "mode": "hot" });
    Ok(r.client
        .post_json(&format!("{}/v1/apps/counter/migrate", r.control), &body)
        .await?)
}

pub fn demo(a: DemoArgs) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("tern-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = tern_control::load_or_create_token(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let story = Story::new(a.json);
    let result = rt.block_on(async {
        // 1. A control plane (learned placement) and three nodes on loopback.
        let bound = Bound::at(&a.listen).await.with_context(|| {
            format!("cannot listen on {}: choose another address with --listen (e.g. 127.0.0.1:0 for any free port)", a.listen)
        })?;
        let mut cfg = tern_control::ControlConfig::new(dir.clone(), token.clone());
        if !a.insecure_plain_http {
            let host = a.listen.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
            cfg.tls = Some(tern_control::ClusterTls::load_or_create(&dir, &[host])?);
        }
        cfg.policy = tern_scheduler::Policy::Learned;
        // A short demo: one usage sample per second and a small model,
        // refitted often, so the dashboard's demand plot shows forecasts
        // within seconds (a real cluster samples once a minute).
        cfg.sample_period = Duration::from_secs(1);
        cfg.refit_interval = Duration::from_secs(5);
        cfg.predictor = tern_scheduler::PredictorConfig {
            lags: 3,
            window: 3,
            median_window: 3,
            long_window: 10,
            min_history: 20,
            ..tern_scheduler::PredictorConfig::default()
        };
        let cluster = LocalCluster::start(bound, cfg, 3).await?;
        let (control, dashboard) = (cluster.control_url.clone(), dashboard_url(&cluster.control_url, &token));
        story.say(&format!("▶ local cluster: control plane at {control}, 3 nodes (data in {})", dir.display()));
        story.say(&format!("▶ dashboard: {dashboard}"));
        if cluster.tls.is_some() {
            story.say(&format!("  (HTTPS with the demo's own CA: import {} into the browser as an authority, or run with --insecure-plain-http)", tern_api::tls::ca_path(&dir).display()));
        }
        let c = cluster.client();
        let pb = story.bar(3, "cluster starting: nodes registered");
        cluster
            .wait_ready(Duration::from_secs(30), |ready| pb.set_position(ready as u64))
            .await
            .context("the demo cluster did not start")?;
        pb.finish_and_clear();

        // 2. Deploy two example apps; the learned scheduler places them.
        let mut placements = Vec::new();
        let pb = story.bar(2, "deploying the examples");
        for (name, bytes) in [("counter", apps::COUNTER), ("kv", apps::KV)] {
            pb.set_message(format!("deploying {name}"));
            let sha = hex::encode(tern_runtime::sha256(bytes));
            c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from_static(bytes)).await?;
            let req = DeployRequest { name: name.into(), module_sha256: sha, ..Default::default() };
            let resp: serde_json::Value = c.post_json(&format!("{control}/v1/apps"), &req).await?;
            let node = resp["app"]["node"].as_str().unwrap_or("?").to_string();
            pb.inc(1);
            story.say(&format!("▶ deployed {name}: placed on {node} by the learned policy"));
            placements.push(Placement { app: name.into(), node, policy: "learned".into(), candidates: resp["decision"]["candidates"].clone() });
        }
        pb.finish_and_clear();
        let nodes: Vec<tern_api::types::NodeView> = c.get_json(&format!("{control}/v1/nodes")).await?;
        let entry = nodes.iter().find(|n| n.name == "node-1").map(|n| n.url.clone()).unwrap_or_default();

        // 3. Load: clients hit both apps through node-1's ingress all along.
        let loads = [
            start_load(cluster.anonymous_client(), hyper::Method::POST, format!("{entry}/apps/counter/"), "1"),
            start_load(cluster.anonymous_client(), hyper::Method::PUT, format!("{entry}/apps/kv/kv/demo"), "hello"),
        ];
        let pb = story.spinner("serving load on both apps through node-1");
        for (load, app) in loads.iter().zip(["counter", "kv"]) {
            if !served_more(load, 10, 30).await {
                bail!("{app} served no load through node-1 within 30 s ({} requests failed); TERN_DEMO_DEBUG=1 shows why", load.failed());
            }
        }
        pb.finish_and_clear();
        story.say("▶ serving load on both apps through node-1");
        // The load's live counts, at the bottom while the apps move.
        let load_bar = story.spinner(load_line(&loads));
        let load_ticker = {
            let bar = load_bar.clone();
            let counts = loads.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_message(load_line(&counts));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        // 4. Move them while they serve: hot, cold, then hybrid from a checkpoint.
        let mut migrations = Vec::new();
        for (app, mode) in [("counter", "hot"), ("kv", "cold"), ("counter", "hybrid")] {
            if mode == "hybrid" {
                story.note("▶ waiting for counter's first checkpoint (taken every 10 s) for the hybrid move");
                let pb = story.spinner("waiting for counter's first checkpoint (taken every 10 s) for the hybrid move");
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if c.send(hyper::Method::GET, &format!("{control}/v1/checkpoints/counter"), "application/json", Bytes::new()).await.is_ok() {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("no checkpoint of counter within 30 s");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                pb.finish_and_clear();
            }
            let apps: Vec<tern_api::types::AppView> = c.get_json(&format!("{control}/v1/apps")).await?;
            let from = apps.iter().find(|v| v.name == app).and_then(|v| v.node.clone()).unwrap_or_default();
            let to = ["node-1", "node-2", "node-3"].into_iter().find(|n| *n != from).unwrap();
            let load = &loads[if app == "counter" { 0 } else { 1 }];
            let label = format!("moving {app} {mode} {from} → {to}");
            let pb = story.spinner(label.clone());
            let (s0, f0) = (load.served(), load.failed());
            let (url, body) = (format!("{control}/v1/apps/{app}/migrate"), serde_json::json!({ "to": to, "mode": mode }));
            let r: MigrationReport = with_live_count(&pb, &label, load, c.post_json(&url, &body)).await?;
            let (s1, f1) = (load.served(), load.failed());
            pb.set_message(format!("{app} serving on {to}"));
            // The app serves again from its new node before the next move.
            if !served_more(load, 5, 30).await {
                bail!("{app} served nothing on {to} within 30 s of its {mode} move ({} requests failed)", load.failed());
            }
            pb.finish_and_clear();
            story.say(&format!(
                "▶ moved {app} {mode} {} → {}: downtime {:.2} ms, total {:.1} ms, {} sent, {} rounds, {} requests served meanwhile",
                r.from, r.to, r.downtime_ms, r.total_ms, crate::util::human_bytes(r.bytes_sent), r.rounds, s1 - s0
            ));
            migrations.push(DemoMigration {
                app: app.into(),
                mode: r.mode,
                from: r.from,
                to: r.to,
                downtime_ms: r.downtime_ms,
                total_ms: r.total_ms,
                bytes_sent: r.bytes_sent,
                rounds: r.rounds,
                requests_served: s1 - s0,
                requests_failed: f1 - f0,
            });
        }
        load_ticker.abort();
        load_bar.finish_and_clear();
        if !a.keep {
            for l in &loads {
                l.stop.store(true, Ordering::Relaxed);
            }
        }
        let served = loads.iter().map(Load::served).sum();
        let failed = loads.iter().map(Load::failed).sum();
        let report = DemoReport { dashboard, migrations, placements, requests_served: served, requests_failed: failed };
        Ok::<_, anyhow::Error>((report, Running { loads, cluster, client: c.clone(), control: control.clone() }))
    });
    let (report, running) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = story.multi.clear();
            drop(rt);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    if a.json {
        print_json(&report)?;
    } else {
        print_summary(&report)?;
    }
    if a.keep {
        let line = format!(
            "▶ the cluster keeps running with the load on, counter moves hot every 10 s: watch it at {}; Ctrl-C stops it",
            report.dashboard
        );
        if a.json {
            // Not part of the story: without it a waiting `--json --keep` is a mystery.
            eprintln!("{line}");
        } else {
            story.say(&line);
        }
        rt.block_on(async {
            let pb = story.spinner(load_line(&running.loads));
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut moves = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_MOVE_EVERY, KEEP_MOVE_EVERY);
            let stop = crate::util::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => pb.set_message(load_line(&running.loads)),
                    _ = moves.tick() => {
                        let line = match move_counter_on(&running).await {
                            Ok(r) => format!("▶ moved counter hot {} → {}: downtime {:.2} ms, total {:.1} ms", r.from, r.to, r.downtime_ms, r.total_ms),
                            Err(e) => format!("▶ moving counter failed: {e:#}"),
                        };
                        if a.json { eprintln!("{line}") } else { story.say(&line) }
                    }
                }
            }
            pb.finish_and_clear();
        });
        story.say(&format!("▶ stopping; {}", load_line(&running.loads)));
    }
    for l in &running.loads {
        l.stop.store(true, Ordering::Relaxed);
    }
    rt.block_on(running.cluster.shut_down(Duration::from_secs(15)));
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if report.requests_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(report: &DemoReport) -> Result<()> {
    outln!()?;
    outln!(
        "{:<8} {:<7} {:<7} {:<7} {:>11} {:>10} {:>10} {:>6} {:>8} {:>7}",
        "app",
        "mode",
        "from",
        "to",
        "downtime",
        "total",
        "bytes",
        "rounds",
        "served",
        "failed"
    )?;
    for m in &report.migrations {
        outln!(
            "{:<8} {:<7} {:<7} {:<7} {:>8.2} ms {:>7.1} ms {:>10} {:>6} {:>8} {:>7}",
            m.app,
            m.mode,
            m.from,
            m.to,
            m.downtime_ms,
            m.total_ms,
            crate::util::human_bytes(m.bytes_sent),
            m.rounds,
            m.requests_served,
            m.requests_failed
        )?;
    }
    outln!(
        "\n{} requests served during the demo, {} failed.",
        report.requests_served,
        report.requests_failed
    )?;
    Ok(())
}
