//! The `learned` policy on a live cluster: a control plane and nodes in
//! this process over real HTTP, a real Wasm app (`life`) given a periodic
//! CPU load by the test: busy for `HIGH` of every `CYCLE` sample periods,
//! idle in between. While the cluster's only node is too small for the
//! peaks, the predictor learns the period and the capacity advice asks for
//! more nodes. A big node joins right after a peak, and the control plane
//! moves the app there hot *before the next peak arrives*, its reason
//! naming the forecast; then nothing moves back and forth, although the
//! cool-down is short enough to allow it several times over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tern_api::types::{AppView, DeployRequest, MigrationReport, Resources};
use tern_scheduler::RebalanceConfig;

use crate::nodes::{client, start_control, TestNode};

/// The control plane's sample period (one predictor interval).
const PERIOD_MS: u64 = 1000;
/// Sample periods in one cycle of the load ...
const CYCLE: u64 = 3;
/// ... the first this many of which are the peak.
const HIGH: u64 = 1;
/// The rebalancer's rules: a cool-down shorter than a cycle, so that only
/// the policy keeps the app from moving back and forth.
const COOLDOWN_S: u64 = 2;
const MAX_MOVES: usize = 1;
const REBALANCE_EVERY: Duration = Duration::from_millis(250);
const SMALL_CPU: u64 = 500;
const BIG_CPU: u64 = 8000;
/// Longest wait for any one step.
const WAIT: Duration = Duration::from_secs(45);

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn in_peak(unix_ms: u64) -> bool {
    (unix_ms / PERIOD_MS) % CYCLE < HIGH
}

/// Start of the first peak after `unix_ms`.
fn next_peak(unix_ms: u64) -> u64 {
    let cycle_ms = CYCLE * PERIOD_MS;
    (unix_ms / cycle_ms + 1) * cycle_ms
}

/// Start of the first low phase (a peak just ended) after `unix_ms`.
fn next_low(unix_ms: u64) -> u64 {
    let cycle_ms = CYCLE * PERIOD_MS;
    let low = |c: u64| c * cycle_ms + HIGH * PERIOD_MS;
    let c = unix_ms / cycle_ms;
    if low(c) > unix_ms {
        low(c)
    } else {
        low(c + 1)
    }
}

async fn sleep_until(unix_ms: u64) {
    let now = now_unix_ms();
    if unix_ms > now {
        tokio::time::sleep(Duration::from_millis(unix_ms - now)).await;
    }
}

/// The periodic load: during a peak, one request after another into the
/// app's ingress (each a few ms of CPU in the guest); between peaks, none.
struct Wave {
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Wave {
    fn start(url: String) -> Wave {
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, st) = (served.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let c = crate::nodes::anonymous().with_timeout(Duration::from_secs(30));
            while !st.load(Ordering::Relaxed) {
                let now = now_unix_ms();
                if !in_peak(now) {
                    // Idle until the next period (then look again).
                    sleep_until((now / PERIOD_MS + 1) * PERIOD_MS).await;
                    continue;
                }
                let r = c
                    .send(hyper::Method::POST, &url, "text/plain", Bytes::new())
                    .await;
                match r {
                    Ok((status, _)) if status.is_success() => s.fetch_add(1, Ordering::Relaxed),
                    Ok((status, b)) => {
                        eprintln!("wave: {status} {}", String::from_utf8_lossy(&b));
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("wave: {e}");
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Wave {
            served,
            failed,
            stop,
            task,
        }
    }

    /// Stops the load; how many requests it sent, and how many failed.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.served.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The app's demand points as the dashboard has them: (period index,
/// observed CPU, predicted median).
fn points(dashboard: &Value, app: &str) -> Vec<(u64, u64, Option<f64>)> {
    dashboard["demand"][app]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["index"].as_u64().unwrap(),
                        p["actual_cpu"].as_u64().unwrap(),
                        p["predicted_cpu"].as_f64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_plane_moves_an_app_ahead_of_its_predicted_peak() {
    let t0 = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |cfg| {
        cfg.policy = tern_scheduler::Policy::Learned;
        cfg.sample_period = Duration::from_millis(PERIOD_MS);
        cfg.rebalance_interval = REBALANCE_EVERY;
        cfg.rebalance = RebalanceConfig {
            max_moves: MAX_MOVES,
            cooldown: COOLDOWN_S,
            ..RebalanceConfig::default()
        };
    })
    .await;
    let gib = 1u64 << 30;
    let small = TestNode::start_with("small", |c| {
        c.control_url = Some(control.clone());
        c.capacity = Some(Resources {
            cpu_milli: SMALL_CPU,
            memory_bytes: 4 * gib,
        });
    })
    .await;

    // Two apps on the small node: `wave` gets the periodic load, `calm` none
    // (once the control plane knows the node: it registers in the background).
    let c = client();
    let waited = tokio::time::Instant::now();
    while !c
        .get_json::<Vec<tern_api::types::NodeView>>(&format!("{control}/v1/nodes"))
        .await
        .is_ok_and(|ns| ns.iter().any(|n| n.name == "small"))
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "small never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (name, path) in [
        ("wave", tern_artifacts::LIFE),
        ("calm", tern_artifacts::COUNTER),
    ] {
        let bytes = std::fs::read(path).unwrap();
        let sha = hex::encode(tern_runtime::sha256(&bytes));
        c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
            .await
            .unwrap();
        let req = DeployRequest {
            name: name.into(),
            module_sha256: sha,
            node: Some("small".into()),
            cpu_milli: Some(50),
            memory_limit: Some(256 << 20),
            ..Default::default()
        };
        let _: Value = c
            .post_json(&format!("{control}/v1/apps"), &req)
            .await
            .unwrap();
    }
    let wave = Wave::start(format!("{}/apps/wave/step?n=20", small.url));

    // The predictor learns the period: peaks are predicted high before they
    // begin. Meanwhile the capacity advice asks for nodes.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut advised: Option<Value> = None;
    let learned_at = loop {
        let d: Value = c
            .get_json(&format!("{control}/v1/dashboard"))
            .await
            .unwrap();
        if advised.is_none() && d["capacity"]["extra_nodes"].as_u64().unwrap_or(0) >= 1 {
            advised = Some(d["capacity"].clone());
        }
        // The last two peaks were foreseen (each predicted high before its
        // first sample arrived).
        let ps = points(&d, "wave");
        let peaks: Vec<_> = ps.iter().filter(|(i, _, _)| i % CYCLE == 0).collect();
        let foreseen = |p: &Option<f64>| p.is_some_and(|p| p >= SMALL_CPU as f64 * 0.6);
        if let [.., (_, _, a), (i, _, b)] = peaks[..] {
            if foreseen(a) && foreseen(b) {
                break *i;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the predictor never foresaw two peaks in a row; wave's demand (index, observed, predicted): {ps:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let advised = advised.expect("the capacity advice asked for more nodes before the big node");
    eprintln!(
        "{:.1}s: peaks foreseen (the last at period {learned_at}); advice before: {advised}",
        t0.elapsed().as_secs_f64()
    );

    // A big node joins as the peak ends.
    sleep_until(next_low(now_unix_ms())).await;
    let joined_ms = now_unix_ms();
    let peak_ms = next_peak(joined_ms);
    let _big = TestNode::start_with("big", |c| {
        c.control_url = Some(control.clone());
        c.capacity = Some(Resources {
            cpu_milli: BIG_CPU,
            memory_bytes: 16 * gib,
        });
    })
    .await;

    // The control plane moves `wave` there before the next peak's load.
    let deadline = tokio::time::Instant::now() + WAIT;
    let moved: MigrationReport = loop {
        let ms: Vec<MigrationReport> = c
            .get_json(&format!("{control}/v1/migrations"))
            .await
            .unwrap();
        if let Some(m) = ms.into_iter().next() {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing moved; dashboard: {}",
            c.get_json::<Value>(&format!("{control}/v1/dashboard"))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lead_ms = peak_ms as i64 - moved.started_unix_ms as i64;
    eprintln!(
        "{:.1}s: big joined at {joined_ms}, {} ms before the peak at {peak_ms}; moved at {} ({lead_ms} ms before the peak): {moved:?}",
        t0.elapsed().as_secs_f64(),
        peak_ms - joined_ms,
        moved.started_unix_ms
    );
    assert_eq!(
        (moved.app.as_str(), moved.from.as_str(), moved.to.as_str()),
        ("wave", "small", "big"),
        "{moved:?}"
    );
    assert_eq!(moved.mode, "hot", "{moved:?}");
    assert!(
        moved.started_unix_ms >= joined_ms && moved.started_unix_ms < peak_ms,
        "the move started {lead_ms} ms before the peak (big joined {} ms before it): {moved:?}",
        peak_ms - joined_ms
    );
    let reason = moved.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("rebalance: overload: source expected at")
            && reason.contains(&format!("of {SMALL_CPU}m CPU"))
            && reason.contains("forecast for the next 1 s: wave at"),
        "{reason}"
    );

    // Two more cycles (three cool-downs): the peaks land on the big node,
    // and nothing moves back and forth.
    sleep_until(peak_ms + 2 * CYCLE * PERIOD_MS).await;
    let served_before = wave.served.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + WAIT;
    while wave.served.load(Ordering::Relaxed) < served_before + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "wave stopped serving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ms: Vec<MigrationReport> = c
        .get_json(&format!("{control}/v1/migrations"))
        .await
        .unwrap();
    for (i, a) in ms.iter().enumerate() {
        for b in &ms[i + 1..] {
            let apart_ms = b.started_unix_ms.abs_diff(a.started_unix_ms);
            assert!(
                a.app != b.app || apart_ms >= COOLDOWN_S * 1000,
                "{} moved twice within the cool-down: {ms:?}",
                a.app
            );
        }
    }
    // One move in the whole run (the budget: one per rebalance interval).
    assert_eq!(
        ms.len(),
        1,
        "one move is all the forecast asked for: {ms:?}"
    );
    let apps: Vec<AppView> = c.get_json(&format!("{control}/v1/apps")).await.unwrap();
    let node_of = |n: &str| apps.iter().find(|a| a.name == n).unwrap().node.clone();
    assert_eq!(node_of("wave").as_deref(), Some("big"), "{apps:?}");
    assert_eq!(node_of("calm").as_deref(), Some("small"), "{apps:?}");
    let d: Value = c
        .get_json(&format!("{control}/v1/dashboard"))
        .await
        .unwrap();
    assert_eq!(d["capacity"]["extra_nodes"], 0, "{}", d["capacity"]);
    assert_eq!(
        d["capacity"]["capacity_cpu_milli"],
        SMALL_CPU + BIG_CPU,
        "{}",
        d["capacity"]
    );
    let (served, failed) = wave.stop().await;
    eprintln!(
        "{:.1}s in all; {served} requests, {failed} failed; wave's demand (index mod {CYCLE}, observed, predicted): {:?}",
        t0.elapsed().as_secs_f64(),
        points(&d, "wave")
            .iter()
            .map(|(i, a, p)| (i % CYCLE, *a, p.map(|p| p.round() as u64)))
            .collect::<Vec<_>>()
    );
    assert_eq!(failed, 0, "requests failed");
}
