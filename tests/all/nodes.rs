//! Several nodes in this test process (each on its own port 0), an app
//! written to for the whole test while it moves hot, cold and hybrid between
//! them: every call succeeds exactly once and the final state is that of a
//! run that never moved.

use std::sync::Arc;

use bytes::Bytes;
use tern_api::client::Client;
use tern_api::local::{Bound, Served};
use tern_api::types::{
    InvokeRequest, InvokeResponse, MigrateRequest, MigrationReport, Mode, StartApp,
};
use tern_node::NodeConfig;

pub const TOKEN: &str = "test-token-0123456789";

/// The test process's cluster CA (every node and control plane of the
/// tests is certified by it, as in one cluster).
pub fn test_ca() -> Arc<tern_api::tls::Ca> {
    static CA: std::sync::OnceLock<Arc<tern_api::tls::Ca>> = std::sync::OnceLock::new();
    CA.get_or_init(|| Arc::new(tern_api::tls::Ca::generate().unwrap()))
        .clone()
}

/// What a client of the tests' cluster trusts (the CA, no identity).
pub fn trust() -> tern_api::tls::Tls {
    tern_api::tls::Tls::new(test_ca().cert_pem.clone(), None).unwrap()
}

/// The TLS material of `role`, certified by the test CA for loopback.
pub fn identity(role: tern_api::tls::Role) -> tern_api::tls::Tls {
    let ca = test_ca();
    let id = ca.issue(&role, &tern_api::tls::local_hosts(&[])).unwrap();
    tern_api::tls::Tls::new(ca.cert_pem.clone(), Some(id)).unwrap()
}

/// A control plane's TLS material, certified by the test CA.
pub fn control_tls() -> tern_control::ClusterTls {
    tern_control::ClusterTls {
        tls: identity(tern_api::tls::Role::Control),
        ca: Some(test_ca()),
    }
}

pub struct TestNode {
    pub name: String,
    pub url: String,
    _served: Served,
    _dir: tempfile::TempDir,
}

impl TestNode {
    /// Where the node keeps its modules, checkpoints and apps' files.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn start(name: &str) -> TestNode {
        TestNode::start_with(name, |_| {}).await
    }

    /// A node whose configuration `setup` adjusts (control plane, URL...).
    pub async fn start_with(name: &str, setup: impl FnOnce(&mut NodeConfig)) -> TestNode {
        TestNode::start_on(TestNode::bind().await, name, setup)
    }

    /// A listener for a node started later (when something must know the
    /// node's address before the node starts).
    pub async fn bind() -> Bound {
        Bound::loopback().await.unwrap()
    }

    /// Starts a node on a listener bound before.
    pub fn start_on(bound: Bound, name: &str, setup: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let url = bound.url.clone();
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(name, TOKEN, dir.path());
        config.tls = Some(identity(tern_api::tls::Role::Node(name.to_string())));
        setup(&mut config);
        TestNode {
            name: name.into(),
            url,
            _served: tern_node::spawn(bound, config).unwrap(),
            _dir: dir,
        }
    }
}

/// The operator's client: the token, trusting the test CA.
pub fn client() -> Client {
    Client::with_tls(Some(TOKEN.into()), &trust()).unwrap()
}

/// A client without a token (app ingress), trusting the test CA.
pub fn anonymous() -> Client {
    Client::with_tls(None, &trust()).unwrap()
}

/// Tells `to` that `from` will move `app` to it at `generation` (what the
/// control plane does before it asks the source).
pub async fn expect(c: &Client, to_url: &str, from: &str, app: &str, generation: u64) {
    let e = tern_api::types::MigrationExpect {
        app: app.into(),
        from: from.into(),
        generation,
    };
    let _: serde_json::Value = c
        .post_json(&format!("{to_url}/v1/migrations/expect"), &e)
        .await
        .unwrap();
}

/// Waits (at most a minute) until `n` nodes have registered with the
/// control plane at `control`.
pub async fn wait_for_nodes(c: &Client, control: &str, n: usize) {
    let t0 = std::time::Instant::now();
    while c
        .get_json::<Vec<serde_json::Value>>(&format!("{control}/v1/nodes"))
        .await
        .map_or(true, |v| v.len() < n)
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "{n} nodes never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Uploads a module to the control plane at `control` and deploys it as
/// `name` on `node`, with the given deploy fields besides.
pub async fn deploy_through(
    c: &Client,
    control: &str,
    path: &str,
    name: &str,
    node: &str,
    extra: serde_json::Value,
) {
    let bytes = std::fs::read(path).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    let mut req = serde_json::json!({"name": name, "module_sha256": sha, "node": node});
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    let _: serde_json::Value = c
        .post_json(&format!("{control}/v1/apps"), &req)
        .await
        .unwrap();
}

/// Uploads a module to a node and starts it as `name`.
pub async fn deploy(c: &Client, node: &TestNode, path: &str, name: &str) {
    let bytes = std::fs::read(path).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(
        &format!("{}/v1/modules/{sha}", node.url),
        Bytes::from(bytes),
    )
    .await
    .unwrap();
    let spec = StartApp {
        name: name.into(),
        module_sha256: sha,
        generation: 1,
        restart: "never".into(),
        ..Default::default()
    };
    let _: serde_json::Value = c
        .post_json(&format!("{}/v1/apps", node.url), &spec)
        .await
        .unwrap();
}

pub async fn migrate(
    c: &Client,
    from: &TestNode,
    to: &TestNode,
    app: &str,
    mode: Mode,
    generation: u64,
) -> Result<MigrationReport, String> {
    expect(c, &to.url, &from.name, app, generation).await;
    let req = MigrateRequest {
        to_name: to.name.clone(),
        to_url: to.url.clone(),
        mode,
        generation,
        checkpoint_url: Some(format!("{}/v1/checkpoints/{app}", from.url)),
        postcopy_after_rounds: None,
    };
    c.post_json(&format!("{}/v1/apps/{app}/migrate", from.url), &req)
        .await
        .map_err(|e| e.to_string())
}

async fn invoke(c: &Client, url: &str, app: &str, export: &str, args: &[&str]) -> InvokeResponse {
    let req = InvokeRequest {
        export: export.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    c.post_json(&format!("{url}/v1/apps/{app}/invoke"), &req)
        .await
        .unwrap_or_else(|e| panic!("invoke {export}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_written_to_while_it_moves_loses_no_call() {
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let c = client();
    deploy(&c, &nodes[0], tern_artifacts::COUNTER, "counter").await;

    // Writers: each call adds 1 through app ingress on node 1 (which
    // forwards once the app has moved) and gets the new total back.
    let writers = 3;
    let per_writer = 150;
    let entry = nodes[0].url.clone();
    let done = Arc::new(tokio::sync::watch::channel(0u64).0);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let entry = entry.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut totals = Vec::new();
            for _ in 0..per_writer {
                let (status, body) = c
                    .send(
                        hyper::Method::POST,
                        &format!("{entry}/apps/counter/"),
                        "text/plain",
                        Bytes::from_static(b"1"),
                    )
                    .await
                    .expect("every call succeeds");
                assert_eq!(status, 200);
                totals.push(
                    String::from_utf8(body.to_vec())
                        .unwrap()
                        .trim()
                        .parse::<i64>()
                        .unwrap(),
                );
                done.send_modify(|n| *n += 1);
            }
            totals
        }));
    }

    // Meanwhile: hot, hot, cold, then hybrid (after a checkpoint), around the nodes.
    let plan = [
        (0, 1, Mode::Hot),
        (1, 2, Mode::Hot),
        (2, 0, Mode::Cold),
        (0, 1, Mode::Hybrid),
        (1, 2, Mode::Hot),
    ];
    let mut reports = Vec::new();
    let mut progress = done.subscribe();
    for (gen, (from, to, mode)) in plan.into_iter().enumerate() {
        // Let the writers make progress between two moves (all of them
        // writing while each move runs), without a blind sleep.
        let want = ((gen as u64 + 1) * 40).min((writers * per_writer) as u64);
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            progress.wait_for(|&n| n >= want),
        )
        .await
        .expect("writers make progress")
        .expect("writers alive");
        if mode == Mode::Hybrid {
            let _: serde_json::Value = c
                .post_json(
                    &format!("{}/v1/apps/counter/checkpoint", nodes[from].url),
                    &(),
                )
                .await
                .unwrap();
        }
        let r = migrate(
            &c,
            &nodes[from],
            &nodes[to],
            "counter",
            mode,
            gen as u64 + 2,
        )
        .await
        .unwrap();
        assert_eq!(r.mode, mode.to_string(), "{r:?}");
        assert!(r.downtime_ms >= 0.0 && r.downtime_ms <= r.total_ms, "{r:?}");
        assert!(r.bytes_sent > 0, "{r:?}");
        if mode != Mode::Cold {
            assert!(r.rounds >= 2, "{r:?}");
        }
        reports.push(r);
    }
    let mut all: Vec<i64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let n = (writers * per_writer) as i64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every call ran exactly once"
    );
    // The app ends on node 3 with the total of a run that never moved.
    let r = invoke(&c, &nodes[2].url, "counter", "get", &[]).await;
    assert_eq!(r.results[0], serde_json::json!(n));
    assert_eq!(r.node, "n3");
    // Fencing: the old home refuses an older generation.
    let stale = StartApp {
        name: "counter".into(),
        module_sha256: hex::encode(tern_runtime::sha256(
            &std::fs::read(tern_artifacts::COUNTER).unwrap(),
        )),
        generation: 1,
        ..Default::default()
    };
    let e = c
        .post_json::<_, serde_json::Value>(&format!("{}/v1/apps", nodes[0].url), &stale)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("older than generation"), "{e}");
    for r in &reports {
        eprintln!("{} {}→{}: downtime {:.2} ms, total {:.1} ms, {} bytes, {} rounds, {} held, tracking {}", r.mode, r.from, r.to, r.downtime_ms, r.total_ms, r.bytes_sent, r.rounds, r.requests_held, r.dirty_tracking);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_requires_the_token() {
    let node = TestNode::start("t1").await;
    for token in [None, Some("wrong".to_string())] {
        let c = Client::with_tls(token, &trust()).unwrap();
        let e = c
            .get_json::<serde_json::Value>(&format!("{}/v1/status", node.url))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
    }
    let ok: serde_json::Value = client()
        .get_json(&format!("{}/v1/status", node.url))
        .await
        .unwrap();
    assert_eq!(ok["name"], "t1");
}

/// POSTs `body` to `url` (an app's ingress) one request at a time until
/// stopped, counting successes (2xx) and failures; `pace`: at most one
/// request per this interval.
pub struct Load {
    pub served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(url: String, body: &'static [u8], pace: Option<std::time::Duration>) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let served = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, st) = (served.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let c = anonymous().with_timeout(std::time::Duration::from_secs(30));
            let mut pace = pace.map(tokio::time::interval);
            while !st.load(Ordering::Relaxed) {
                if let Some(p) = &mut pace {
                    p.tick().await;
                }
                let r = c
                    .send(
                        hyper::Method::POST,
                        &url,
                        "text/plain",
                        Bytes::from_static(body),
                    )
                    .await;
                match r {
                    Ok((status, _)) if status.is_success() => s.fetch_add(1, Ordering::Relaxed),
                    Ok((status, b)) => {
                        eprintln!("load: {status} {}", String::from_utf8_lossy(&b));
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("load: {e}");
                        f.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Load {
            served,
            failed,
            stop,
            task,
        }
    }

    pub fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the load and returns how many requests failed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An app's own directory (`/data`) moves with it: hot, hybrid (from a
/// checkpoint older than the last writes) and cold, and the node it lands
/// on ends up with exactly the app's files, not what an earlier stay left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_files_move_with_it() {
    let nodes = [
        TestNode::start("f1").await,
        TestNode::start("f2").await,
        TestNode::start("f3").await,
    ];
    let c = client();
    deploy(&c, &nodes[0], tern_artifacts::HEAPSTATE, "notes").await;
    let call = |node: usize, export: &'static str, arg: Option<i64>| {
        let c = c.clone();
        let url = nodes[node].url.clone();
        async move {
            let args: Vec<String> = arg.iter().map(|a| a.to_string()).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = invoke(&c, &url, "notes", export, &args).await;
            r.results[0].as_i64().unwrap()
        }
    };
    for n in 1..=3 {
        assert!(call(0, "file_write", Some(n)).await > 0);
    }
    let on_first = call(0, "file_sum", None).await;
    assert!(on_first > 0);

    migrate(&c, &nodes[0], &nodes[1], "notes", Mode::Hot, 2)
        .await
        .unwrap();
    assert_eq!(call(1, "file_sum", None).await, on_first, "hot");
    assert_eq!(call(1, "file_remove", Some(1)).await, 0);
    assert!(call(1, "file_write", Some(4)).await > 0);
    let _: serde_json::Value = c
        .post_json(
            &format!("{}/v1/apps/notes/checkpoint", nodes[1].url),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert!(call(1, "file_write", Some(5)).await > 0);
    let on_second = call(1, "file_sum", None).await;

    migrate(&c, &nodes[1], &nodes[2], "notes", Mode::Hybrid, 3)
        .await
        .unwrap();
    assert_eq!(call(2, "file_sum", None).await, on_second, "hybrid");

    // Back to the first node, whose directory still holds 1.txt from before.
    migrate(&c, &nodes[2], &nodes[0], "notes", Mode::Cold, 4)
        .await
        .unwrap();
    assert_eq!(call(0, "file_sum", None).await, on_second, "cold");
    assert_eq!(
        call(0, "file_remove", Some(1)).await,
        -1,
        "a stale file came back"
    );
}

/// A control plane in this process on a free port, sampling usage every
/// 500 ms (each heartbeat) with a predictor small enough to fit after a few
/// seconds; `setup` adjusts the rest. Dropping the `Served` stops it.
pub async fn start_control(
    dir: &std::path::Path,
    setup: impl FnOnce(&mut tern_control::ControlConfig),
) -> (String, Served) {
    start_control_on(Bound::loopback().await.unwrap(), dir, setup).await
}

/// [`start_control`] on a listener the caller bound (to restart a control
/// plane at the same address).
pub async fn start_control_on(
    bound: Bound,
    dir: &std::path::Path,
    setup: impl FnOnce(&mut tern_control::ControlConfig),
) -> (String, Served) {
    let mut cfg = tern_control::ControlConfig::new(dir, TOKEN);
    cfg.tls = Some(control_tls());
    cfg.sample_period = std::time::Duration::from_millis(500);
    cfg.refit_interval = std::time::Duration::from_secs(1);
    cfg.predictor = tern_scheduler::PredictorConfig {
        lags: 2,
        window: 3,
        median_window: 3,
        long_window: 6,
        min_history: 8,
        ..tern_scheduler::PredictorConfig::default()
    };
    setup(&mut cfg);
    let served = tern_control::spawn(bound, cfg);
    (served.url.clone(), served)
}
