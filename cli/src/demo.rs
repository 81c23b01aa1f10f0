//! `tern demo`: a local cluster, example apps under load, moved hot, cold
//! and hybrid while they serve, placed by the learned scheduler.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use tern_api::client::Client;
use tern_api::types::{DeployRequest, MigrationReport};

use crate::util::print_json;

#[derive(Args)]
pub struct DemoArgs {
    /// Print one JSON document instead of the story.
    #[arg(long)]
    json: bool,
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
    migrations: Vec<DemoMigration>,
    placements: Vec<Placement>,
    requests_served: u64,
    requests_failed: u64,
}

/// Load on one app through a node's ingress: served and failed counts.
struct Load {
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

fn start_load(method: hyper::Method, url: String, body: &'static str) -> Load {
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, f, st) = (served.clone(), failed.clone(), stop.clone());
    tokio::spawn(async move {
        let c = Client::new(None).with_timeout(Duration::from_secs(10));
        while !st.load(Ordering::Relaxed) {
            match c
                .send(
                    method.clone(),
                    &url,
                    "text/plain",
                    Bytes::from_static(body.as_bytes()),
                )
                .await
            {
                Ok(_) => s.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if std::env::var_os("TERN_DEMO_DEBUG").is_some() {
                        eprintln!("load error on {url}: {e}");
                    }
                    f.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    Load {
        served,
        failed,
        stop,
    }
}

pub fn demo(a: DemoArgs) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("tern-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = tern_control::load_or_create_token(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let say = |s: &str| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let result = rt.block_on(async {
        // 1. A control plane (learned placement) and three nodes on loopback.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let control = format!("http://{}", listener.local_addr()?);
        let mut cfg = tern_control::ControlConfig::new(dir.clone(), token.clone());
        cfg.policy = tern_scheduler::Policy::Learned;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(tern_control::run(listener, cfg, stopped(stop_rx.clone())));
        for i in 1..=3 {
            let name = format!("node-{i}");
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let mut nc = tern_runtime::node::NodeConfig::new(name.clone(), token.clone(), dir.join("nodes").join(&name));
            nc.control_url = Some(control.clone());
            tokio::spawn(tern_runtime::node::run(l, nc, stopped(stop_rx.clone())));
        }
        say(&format!("▶ local cluster: control plane at {control}, 3 nodes (data in {})", dir.display()));
        let c = Client::new(Some(token.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes: Vec<tern_api::types::NodeView> = c.get_json(&format!("{control}/v1/nodes")).await.unwrap_or_default();
            if nodes.iter().filter(|n| n.state == "ready").count() == 3 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the demo cluster's nodes did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // 2. Deploy two example apps; the learned scheduler places them.
        let mut placements = Vec::new();
        for (name, path) in [("counter", tern_artifacts::COUNTER), ("kv", tern_artifacts::KV)] {
            let bytes = std::fs::read(path).with_context(|| format!("example {name} not built at {path}: run `cargo build --release` first"))?;
            let sha = hex::encode(tern_runtime::sha256(&bytes));
            c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes)).await?;
            let req = DeployRequest { name: name.into(), module_sha256: sha, ..Default::default() };
            let resp: serde_json::Value = c.post_json(&format!("{control}/v1/apps"), &req).await?;
            let node = resp["app"]["node"].as_str().unwrap_or("?").to_string();
            say(&format!("▶ deployed {name}: placed on {node} by the learned policy"));
            placements.push(Placement { app: name.into(), node, policy: "learned".into(), candidates: resp["decision"]["candidates"].clone() });
        }
        let nodes: Vec<tern_api::types::NodeView> = c.get_json(&format!("{control}/v1/nodes")).await?;
        let entry = nodes.iter().find(|n| n.name == "node-1").map(|n| n.url.clone()).unwrap_or_default();

        // 3. Load: clients hit both apps through node-1's ingress all along.
        let loads = [
            start_load(hyper::Method::POST, format!("{entry}/apps/counter/"), "1"),
            start_load(hyper::Method::PUT, format!("{entry}/apps/kv/kv/demo"), "hello"),
        ];
        say("▶ serving load on both apps through node-1");
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 4. Move them while they serve: hot, cold, then hybrid from a checkpoint.
        let mut migrations = Vec::new();
        let checkpoint_ready = || async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if c.send(hyper::Method::GET, &format!("{control}/v1/checkpoints/counter"), "application/json", Bytes::new()).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        };
        for (app, mode) in [("counter", "hot"), ("kv", "cold"), ("counter", "hybrid")] {
            if mode == "hybrid" {
                say("▶ waiting for counter's first checkpoint (taken every 10 s) for the hybrid move");
                if !checkpoint_ready().await {
                    bail!("no checkpoint of counter within 30 s");
                }
            }
            let apps: Vec<tern_api::types::AppView> = c.get_json(&format!("{control}/v1/apps")).await?;
            let from = apps.iter().find(|v| v.name == app).and_then(|v| v.node.clone()).unwrap_or_default();
            let to = ["node-1", "node-2", "node-3"].into_iter().find(|n| *n != from).unwrap();
            let load = &loads[if app == "counter" { 0 } else { 1 }];
            let (s0, f0) = (load.served.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
            let r: MigrationReport = c.post_json(&format!("{control}/v1/apps/{app}/migrate"), &serde_json::json!({ "to": to, "mode": mode })).await?;
            let (s1, f1) = (load.served.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
            say(&format!("▶ moved {app} {mode} {} → {}: downtime {:.2} ms, total {:.1} ms, {} sent, {} rounds", r.from, r.to, r.downtime_ms, r.total_ms, crate::util::human_bytes(r.bytes_sent), r.rounds));
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
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for l in &loads {
            l.stop.store(true, Ordering::Relaxed);
        }
        let served = loads.iter().map(|l| l.served.load(Ordering::Relaxed)).sum();
        let failed = loads.iter().map(|l| l.failed.load(Ordering::Relaxed)).sum();
        let _ = stop_tx.send(true);
        Ok::<_, anyhow::Error>(DemoReport { migrations, placements, requests_served: served, requests_failed: failed })
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if a.json {
        print_json(&report)?;
    } else {
        println!();
        println!(
            "{:<8} {:<7} {:<7} {:<7} {:>11} {:>10} {:>10} {:>6} {:>8} {:>7}",
            "app", "mode", "from", "to", "downtime", "total", "bytes", "rounds", "served", "failed"
        );
        for m in &report.migrations {
            println!(
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
            );
        }
        println!(
            "\n{} requests served during the demo, {} failed.",
            report.requests_served, report.requests_failed
        );
    }
    Ok(if report.requests_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
