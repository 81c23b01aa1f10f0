//! The security regression suite, cluster side: each probe that once hurt a
//! node — a hostile name, garbage that fenced an app off, a flood of calls,
//! a migration whose source vanished, a stale route, a torn module file, a
//! full disk — repeated as an attacker or a careless operator would, and
//! answered with a clear error or a bounded, recovered node while other
//! apps go on serving.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tern_api::client::{Client, ClientError};
use tern_api::types::{Heartbeat, InvokeRequest, InvokeResponse, MigrationOpen, Mode, StartApp};

use crate::nodes::{client, deploy, migrate, start_control, TestNode};

/// Every wait here is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);

fn sha_of(path: &str) -> (Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    (bytes, sha)
}

async fn invoke(
    c: &Client,
    url: &str,
    app: &str,
    export: &str,
    args: &[&str],
) -> Result<InvokeResponse, ClientError> {
    let req = InvokeRequest {
        export: export.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    };
    c.post_json(&format!("{url}/v1/apps/{app}/invoke"), &req)
        .await
}

fn status_of<T>(r: Result<T, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.status().unwrap_or(0),
    }
}

/// Every entry in `dir`, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_app_names_are_refused_at_every_node_entry_point() {
    // The node's data dir sits inside `outer`: nothing may appear beside it.
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("node");
    let node = TestNode::start_with("n1", |c| c.data_dir = data.clone()).await;
    let c = client();
    deploy(&c, &node, tern_artifacts::COUNTER, "counter").await;
    let snap = c
        .post_bytes(
            &format!("{}/v1/apps/counter/snapshot", node.url),
            Bytes::new(),
        )
        .await
        .unwrap();
    let (_, sha) = sha_of(tern_artifacts::COUNTER);
    let before = tree(outer.path());

    let long = "x".repeat(64);
    for bad in [
        "../../x",
        "..",
        ".",
        ".hidden",
        "-flag",
        "a/b",
        "a%2Fb",
        "a\\b",
        long.as_str(),
    ] {
        // Restore, the probe that once wrote outside the data directory.
        let r = c
            .send(
                Method::POST,
                &format!("{}/v1/restore?name={bad}&generation=2", node.url),
                "application/octet-stream",
                snap.clone(),
            )
            .await;
        assert_eq!(status_of(r), 400, "restore as {bad:?}");
        // A start.
        let spec = StartApp {
            name: bad.into(),
            module_sha256: sha.clone(),
            generation: 5,
            ..Default::default()
        };
        let r = c
            .post_json::<_, Value>(&format!("{}/v1/apps", node.url), &spec)
            .await;
        assert_eq!(status_of(r), 400, "start as {bad:?}");
        // A migration session.
        let open = MigrationOpen {
            app: bad.into(),
            from: "elsewhere".into(),
            mode: Mode::Hot,
            spec: StartApp {
                name: bad.into(),
                ..spec.clone()
            },
            checkpoint_digest: None,
            checkpoint_url: None,
            source_url: None,
        };
        let r = c
            .post_json::<_, Value>(&format!("{}/v1/migrations", node.url), &open)
            .await;
        assert_eq!(status_of(r), 400, "migration of {bad:?}");
    }
    // A hybrid move whose checkpoint digest is a path.
    let open = MigrationOpen {
        app: "other".into(),
        from: "elsewhere".into(),
        mode: Mode::Hybrid,
        spec: StartApp {
            name: "other".into(),
            module_sha256: sha.clone(),
            generation: 3,
            ..Default::default()
        },
        checkpoint_digest: Some("../../../../tmp/x".into()),
        checkpoint_url: None,
        source_url: None,
    };
    let r = c
        .post_json::<_, Value>(&format!("{}/v1/migrations", node.url), &open)
        .await;
    assert_eq!(status_of(r), 400, "a digest that names a path");

    assert_eq!(tree(outer.path()), before, "files appeared or went");
    // The app went on serving throughout.
    let r = invoke(&c, &node.url, "counter", "add", &["1"])
        .await
        .unwrap();
    assert_eq!(r.results, vec![json!(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_with_the_last_generation_fences_nothing() {
    let node = TestNode::start("n1").await;
    let c = client();
    let r = c
        .send(
            Method::POST,
            &format!("{}/v1/restore?name=app&generation={}", node.url, u64::MAX),
            "application/octet-stream",
            Bytes::from_static(b"not a snapshot at all"),
        )
        .await;
    assert_eq!(status_of(r), 400);
    // The name is not fenced off: a real start at generation 1 works.
    deploy(&c, &node, tern_artifacts::COUNTER, "app").await;
    let r = invoke(&c, &node.url, "app", "add", &["2"]).await.unwrap();
    assert_eq!(r.results, vec![json!(2)]);
}

/// Deploys heapstate with a short per-call timeout: `spin_forever` then
/// holds the app's actor for that long.
async fn deploy_spinner(c: &Client, node: &TestNode, name: &str, timeout_ms: u64) {
    let (bytes, sha) = sha_of(tern_artifacts::HEAPSTATE);
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
        timeout_ms: Some(timeout_ms),
        ..Default::default()
    };
    let _: Value = c
        .post_json(&format!("{}/v1/apps", node.url), &spec)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_calls_is_bounded_and_answered_503_with_retry_after() {
    let node = TestNode::start("n1").await;
    let c = client();
    // Long enough for 400 clients to connect on a loaded machine (each a
    // TLS handshake of its own) while the call spins.
    deploy_spinner(&c, &node, "busy", 6000).await;
    deploy(&c, &node, tern_artifacts::COUNTER, "other").await;

    // The actor is held by a call that runs until its deadline...
    let spin = {
        let (c, url) = (c.clone(), node.url.clone());
        tokio::spawn(async move { invoke(&c, &url, "busy", "spin_forever", &[]).await })
    };
    wait_until("the spinning call is running", || async {
        let st: Value = c
            .get_json(&format!("{}/v1/apps/busy", node.url))
            .await
            .unwrap();
        st["in_call_ms"].is_u64()
    })
    .await;
    // ...while 400 more calls arrive at once.
    let mut calls = Vec::new();
    for _ in 0..400 {
        let url = format!("{}/v1/apps/busy/invoke", node.url);
        calls.push(tokio::spawn(async move {
            let raw = client()
                .send_raw(
                    Method::POST,
                    &url,
                    Some("application/json"),
                    Bytes::from(r#"{"export":"len","args":[]}"#),
                )
                .await
                .unwrap();
            (
                raw.status.as_u16(),
                raw.headers.get("retry-after").is_some(),
            )
        }));
    }
    // Another app on the node serves meanwhile.
    let r = invoke(&c, &node.url, "other", "add", &["1"]).await.unwrap();
    assert_eq!(r.results, vec![json!(1)]);
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            (200, _) => ok += 1,
            (503, true) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused > 0, "nothing was refused: the queue is not bounded");
    assert!(ok >= 200, "only {ok} calls were served");
    assert_eq!(ok + refused, 400);
    let e = spin.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("time"), "{e}");
    // The queue drained: the app takes calls again.
    let st: Value = c
        .get_json(&format!("{}/v1/apps/busy", node.url))
        .await
        .unwrap();
    assert_eq!(st["queued"], 0);
    invoke(&c, &node.url, "busy", "push", &["1"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_whose_client_left_are_not_run() {
    let node = TestNode::start("n1").await;
    let c = client();
    deploy_spinner(&c, &node, "app", 1000).await;
    let spin = {
        let (c, url) = (c.clone(), node.url.clone());
        tokio::spawn(async move { invoke(&c, &url, "app", "spin_forever", &[]).await })
    };
    wait_until("the spinning call is running", || async {
        let st: Value = c
            .get_json(&format!("{}/v1/apps/app", node.url))
            .await
            .unwrap();
        st["in_call_ms"].is_u64()
    })
    .await;
    // Clients that give up after 100 ms, long before the app is free.
    let impatient = c.clone().with_timeout(Duration::from_millis(100));
    for _ in 0..5 {
        let r = invoke(&impatient, &node.url, "app", "push", &["7"]).await;
        assert!(matches!(r, Err(ClientError::Timeout { .. })), "{r:?}");
    }
    let _ = spin.await.unwrap();
    // None of the abandoned pushes ran.
    let r = invoke(&c, &node.url, "app", "len", &[]).await.unwrap();
    assert_eq!(r.results, vec![json!(0)], "an abandoned call ran");
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_migration_sessions_expire_are_capped_and_shown() {
    let node = TestNode::start_with("n1", |c| c.session_ttl = Duration::from_millis(600)).await;
    let c = client();
    let (bytes, sha) = sha_of(tern_artifacts::COUNTER);
    c.put_bytes(
        &format!("{}/v1/modules/{sha}", node.url),
        Bytes::from(bytes),
    )
    .await
    .unwrap();
    let open = |app: &str| MigrationOpen {
        app: app.into(),
        from: "gone".into(),
        mode: Mode::Hot,
        spec: StartApp {
            name: app.into(),
            module_sha256: sha.clone(),
            generation: 2,
            ..Default::default()
        },
        checkpoint_digest: None,
        checkpoint_url: None,
        source_url: None,
    };
    // Eight sessions whose source then vanishes...
    let mut ids = Vec::new();
    for i in 0..8 {
        let opened: Value = c
            .post_json(
                &format!("{}/v1/migrations", node.url),
                &open(&format!("app{i}")),
            )
            .await
            .unwrap();
        ids.push(opened["id"].as_str().unwrap().to_string());
    }
    // ...are the most a node takes at once,
    let r = c
        .post_json::<_, Value>(&format!("{}/v1/migrations", node.url), &open("app8"))
        .await;
    assert_eq!(status_of(r), 503, "a ninth session");
    // are shown in the node's status,
    let st: Heartbeat = c
        .get_json(&format!("{}/v1/status", node.url))
        .await
        .unwrap();
    assert_eq!(st.migrations_in.len(), 8);
    assert!(st
        .migrations_in
        .iter()
        .all(|m| m.from == "gone" && m.mode == Mode::Hot));
    // and go once idle for the node's time-to-live, with what they held.
    wait_until("the sessions expire", || async {
        let st: Heartbeat = c
            .get_json(&format!("{}/v1/status", node.url))
            .await
            .unwrap();
        st.migrations_in.is_empty()
    })
    .await;
    let r = c
        .post_bytes(
            &format!("{}/v1/migrations/{}/pages", node.url, ids[0]),
            Bytes::new(),
        )
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("expired"), "{e}");
    // A new move is taken again.
    let r = c
        .post_json::<_, Value>(&format!("{}/v1/migrations", node.url), &open("app8"))
        .await;
    assert_eq!(status_of(r), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingress_follows_an_app_whose_last_node_died() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |_| {}).await;
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let control = control.clone();
        nodes.push(Some(
            TestNode::start_with(name, move |c| c.control_url = Some(control)).await,
        ));
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap().url.clone())
        .collect();
    let url = |i: usize| urls[i].clone();
    let c = client();
    wait_until("the nodes register", || async {
        let v: Vec<Value> = c
            .get_json(&format!("{control}/v1/nodes"))
            .await
            .unwrap_or_default();
        v.len() == 3
    })
    .await;
    let (bytes, sha) = sha_of(tern_artifacts::COUNTER);
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": "counter", "module_sha256": sha, "node": "n1", "restart": "always"}),
        )
        .await
        .unwrap();
    let post = |u: String| {
        let c = c.clone();
        async move {
            c.send(
                Method::POST,
                &format!("{u}/apps/counter/"),
                "text/plain",
                Bytes::from_static(b"1"),
            )
            .await
        }
    };
    post(url(0)).await.unwrap();
    // n1 -> n2 -> n3: n1 remembers only that the app went to n2.
    for to in ["n2", "n3"] {
        let _: Value = c
            .post_json(
                &format!("{control}/v1/apps/counter/migrate"),
                &json!({"to": to, "mode": "hot"}),
            )
            .await
            .unwrap();
    }
    post(url(0)).await.unwrap();
    // n2 dies: n1's route to the app is stale, but a request through n1
    // finds the app where the control plane says it is.
    nodes[1] = None;
    let (_, body) = post(url(0))
        .await
        .expect("ingress through n1 after n2 died");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "3");
    let (_, body) = post(url(0)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&body).trim(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_module_file_is_never_used() {
    let data = tempfile::tempdir().unwrap();
    let c = client();
    let (bytes, sha) = sha_of(tern_artifacts::COUNTER);
    {
        let node = TestNode::start_with("n1", |cfg| cfg.data_dir = data.path().to_path_buf()).await;
        c.put_bytes(
            &format!("{}/v1/modules/{sha}", node.url),
            Bytes::from(bytes.clone()),
        )
        .await
        .unwrap();
    }
    // The file is torn while the node is down.
    let file = data.path().join("modules").join(format!("{sha}.wasm"));
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let node = TestNode::start_with("n1", |cfg| cfg.data_dir = data.path().to_path_buf()).await;
    assert!(
        !c.exists(&format!("{}/v1/modules/{sha}", node.url))
            .await
            .unwrap(),
        "a torn module counted as held"
    );
    assert!(!file.exists(), "the torn file stayed");
    // Uploaded again, it works.
    c.put_bytes(
        &format!("{}/v1/modules/{sha}", node.url),
        Bytes::from(bytes),
    )
    .await
    .unwrap();
    deploy(&c, &node, tern_artifacts::COUNTER, "counter").await;
    invoke(&c, &node.url, "counter", "add", &["1"])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_app_leaves_nothing_behind_and_data_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let node = TestNode::start_with("n1", |cfg| cfg.data_dir = data.path().join("node")).await;
    let root = data.path().join("node");
    let c = client();
    deploy(&c, &node, tern_artifacts::COUNTER, "counter").await;
    invoke(&c, &node.url, "counter", "add", &["5"])
        .await
        .unwrap();
    let cp: Value = c
        .post_json(
            &format!("{}/v1/apps/counter/checkpoint", node.url),
            &json!({}),
        )
        .await
        .unwrap();
    assert!(cp["bytes"].as_u64().unwrap() > 0);
    let st: Value = c
        .get_json(&format!("{}/v1/apps/counter", node.url))
        .await
        .unwrap();
    assert!(st["checkpoint"]["unix_ms"].is_u64(), "{st}");
    assert_eq!(st["checkpoint"]["error"], Value::Null);
    // Limits: the node's defaults, shown.
    assert_eq!(st["limits"]["timeout_ms"], 30_000);
    assert_eq!(st["limits"]["memory_bytes"], 1u64 << 30);

    // Every directory is owner-only, every file too.
    for entry in tree(&root) {
        let p = root.join(&entry);
        let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{entry}");
        } else {
            assert_eq!(mode & 0o077, 0, "{entry} is {mode:o}");
        }
    }
    let checkpoint = root.join("checkpoints/counter.snap");
    assert!(checkpoint.exists());
    c.delete(&format!("{}/v1/apps/counter", node.url))
        .await
        .unwrap();
    assert!(!checkpoint.exists(), "the checkpoint outlived its app");
    assert!(
        !root.join("apps/counter").exists(),
        "the app's directory stayed"
    );
    let r = c
        .send(
            Method::GET,
            &format!("{}/v1/checkpoints/counter", node.url),
            "application/json",
            Bytes::new(),
        )
        .await;
    assert_eq!(status_of(r), 404, "the checkpoint stayed in memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let bound = tern_api::local::Bound::loopback().await.unwrap();
    let Err(e) = tern_node::spawn(bound, tern_node::NodeConfig::new("n1", "  ", dir.path())) else {
        panic!("a node started without a token");
    };
    assert!(e.to_string().contains("token"), "{e}");
}

/// A tmpfs of `size` bytes mounted at a directory of its own, unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tern-test",
            ])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for the full-disk test (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_reported_and_recovered_from() {
    let disk = SmallDisk::mount("24m");
    let data = disk.path().join("node");
    let node = TestNode::start_with("n1", |c| c.data_dir = data.clone()).await;
    let c = client();
    deploy(&c, &node, tern_artifacts::COUNTER, "counter").await;
    invoke(&c, &node.url, "counter", "add", &["1"])
        .await
        .unwrap();
    let checkpoint = |c: Client, url: String| async move {
        c.post_json::<_, Value>(&format!("{url}/v1/apps/counter/checkpoint"), &json!({}))
            .await
    };
    checkpoint(c.clone(), node.url.clone()).await.unwrap();

    // The disk fills up.
    let filler = disk.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let e = checkpoint(c.clone(), node.url.clone()).await.unwrap_err();
    assert_eq!(e.status(), Some(500), "{e}");
    assert!(e.to_string().contains("No space left"), "{e}");
    // The failure is in the app's status and logs, the app serves on, and
    // the last good checkpoint is intact.
    let st: Value = c
        .get_json(&format!("{}/v1/apps/counter", node.url))
        .await
        .unwrap();
    let err = st["checkpoint"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("No space left"), "{st}");
    assert!(
        st["checkpoint"]["unix_ms"].is_u64(),
        "the last good one is forgotten: {st}"
    );
    let r = invoke(&c, &node.url, "counter", "add", &["1"])
        .await
        .unwrap();
    assert_eq!(r.results, vec![json!(2)]);
    let logs: Value = c
        .get_json(&format!("{}/v1/apps/counter/logs", node.url))
        .await
        .unwrap();
    assert!(
        logs.to_string().contains("checkpoint of counter failed"),
        "{logs}"
    );
    let stray: Vec<String> = tree(&data.join("checkpoints"))
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
    tern_runtime::Snapshot::open(&data.join("checkpoints/counter.snap"), false)
        .expect("the last good checkpoint is intact");

    // Space comes back: so do checkpoints.
    std::fs::remove_file(&filler).unwrap();
    checkpoint(c.clone(), node.url.clone()).await.unwrap();
    let st: Value = c
        .get_json(&format!("{}/v1/apps/counter", node.url))
        .await
        .unwrap();
    assert_eq!(st["checkpoint"]["error"], Value::Null, "{st}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_to_a_node_then_back_keeps_working_after_probes() {
    // The probes above leave a node usable for the real thing: two nodes,
    // a hot move there and back.
    let (a, b) = (TestNode::start("a").await, TestNode::start("b").await);
    let c = client();
    deploy(&c, &a, tern_artifacts::COUNTER, "counter").await;
    invoke(&c, &a.url, "counter", "add", &["3"]).await.unwrap();
    migrate(&c, &a, &b, "counter", Mode::Hot, 2).await.unwrap();
    migrate(&c, &b, &a, "counter", Mode::Cold, 3).await.unwrap();
    let r = invoke(&c, &a.url, "counter", "get", &[]).await.unwrap();
    assert_eq!(r.results, vec![json!(3)]);
}

/// Whether a thread named `name` runs in this process.
fn thread_alive(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_in_an_endless_loop_is_stopped_and_removed_at_once() {
    let node = TestNode::start("n1").await;
    let c = client();
    // The default limits: 30 s per call, far longer than this test waits.
    let (bytes, sha) = sha_of(tern_artifacts::HEAPSTATE);
    c.put_bytes(
        &format!("{}/v1/modules/{sha}", node.url),
        Bytes::from(bytes),
    )
    .await
    .unwrap();
    for name in ["loop-stop", "loop-rm"] {
        let spec = StartApp {
            name: name.into(),
            module_sha256: sha.clone(),
            generation: 1,
            ..Default::default()
        };
        let st: Value = c
            .post_json(&format!("{}/v1/apps", node.url), &spec)
            .await
            .unwrap();
        assert_eq!(st["limits"]["timeout_ms"], 30_000);
        invoke(&c, &node.url, name, "push", &["1"]).await.unwrap();
    }
    let spin = |name: &'static str| {
        let (c, url) = (c.clone(), node.url.clone());
        tokio::spawn(async move { invoke(&c, &url, name, "spin_forever", &[]).await })
    };
    let running = |name: &'static str| {
        let (c, url) = (c.clone(), node.url.clone());
        async move {
            let st: Value = c.get_json(&format!("{url}/v1/apps/{name}")).await.unwrap();
            st["in_call_ms"].is_u64()
        }
    };

    // Stop: answered within a second, the looping call cut off.
    let call = spin("loop-stop");
    wait_until("loop-stop spins", || running("loop-stop")).await;
    let t0 = Instant::now();
    let st: Value = c
        .post_json(&format!("{}/v1/apps/loop-stop/stop", node.url), &json!({}))
        .await
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(st["state"], "stopped");
    let e = call.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("interrupted"), "{e}");
    // Started again, it runs (afresh: the cut-off call tore its state).
    let _: Value = c
        .post_json(&format!("{}/v1/apps/loop-stop/start", node.url), &json!({}))
        .await
        .unwrap();
    let r = invoke(&c, &node.url, "loop-stop", "len", &[])
        .await
        .unwrap();
    assert_eq!(r.results, vec![json!(0)]);

    // Remove: the app's thread (and with it its instance) is gone within a
    // second.
    let call = spin("loop-rm");
    wait_until("loop-rm spins", || running("loop-rm")).await;
    assert!(thread_alive("app-loop-rm"));
    let t0 = Instant::now();
    c.delete(&format!("{}/v1/apps/loop-rm", node.url))
        .await
        .unwrap();
    wait_until("the removed app's thread ends", || async {
        !thread_alive("app-loop-rm")
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the thread ended after {:?}",
        t0.elapsed()
    );
    let _ = call.await.unwrap().unwrap_err();
}
