//! Lazy restore: when a node is lost, the control plane restarts its apps
//! elsewhere from their checkpoints, and the new node starts each app as
//! soon as its state is in; the pages come as the app touches them and in
//! the background, read by ranges from the control plane's pinned copy of
//! the checkpoint. A copy that is not the checkpoint named fails the app
//! rather than letting it run on. An operator's restore of a snapshot file
//! goes the same way, from the bytes the control plane was sent.

use std::time::Duration;

use serde_json::{json, Value};
use tern_api::client::Client;

use crate::nodes::{client, start_control, TestNode};
use crate::postcopy::{call, paging_here, wait_until};

/// A control plane and two nodes, `n1` running a 16 MiB heap app that was
/// checkpointed; `n2` waits `pull_after` before pulling pages a lazy
/// restore's app has not touched. Returns the app's digest at the
/// checkpoint.
struct Cluster {
    dir: tempfile::TempDir,
    control: String,
    served: Option<tern_api::local::Served>,
    n1: Option<TestNode>,
    n2: TestNode,
    c: Client,
}

fn control_setup(cfg: &mut tern_control::ControlConfig) {
    cfg.heartbeat_timeout = Duration::from_secs(3);
    cfg.rebalance_interval = Duration::from_secs(3600);
}

async fn cluster(pull_after: Duration) -> (Cluster, i64) {
    cluster_with(pull_after, true).await
}

/// As [`cluster`], with `n2` paging (post-copy on) or not.
async fn cluster_with(pull_after: Duration, n2_pages: bool) -> (Cluster, i64) {
    let dir = tempfile::tempdir().unwrap();
    let (control, served) = start_control(dir.path(), control_setup).await;
    let cu = control.clone();
    let n1 = TestNode::start_with("n1", move |cfg| cfg.control_url = Some(cu)).await;
    let cu = control.clone();
    let n2 = TestNode::start_with("n2", move |cfg| {
        cfg.control_url = Some(cu);
        cfg.lazy_pull_after = pull_after;
        cfg.postcopy = n2_pages;
    })
    .await;
    let c = client();
    crate::nodes::wait_for_nodes(&c, &control, 2).await;
    let bytes = std::fs::read(tern_artifacts::HEAPSTATE).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), bytes.into())
        .await
        .unwrap();
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": "heap", "module_sha256": sha, "node": "n1", "restart": "always"}),
        )
        .await
        .unwrap();
    wait_until("the app runs", || async {
        call(&c, &n1.url, "heap", "len", &[]).await.is_ok()
    })
    .await;
    call(&c, &n1.url, "heap", "grow", &[256]).await.unwrap();
    for v in [1, 3] {
        call(&c, &n1.url, "heap", "push", &[v]).await.unwrap();
    }
    let _: Value = c
        .post_json(&format!("{}/v1/apps/heap/checkpoint", n1.url), &json!({}))
        .await
        .unwrap();
    let at_checkpoint = get(&c, &n1.url, "digest").await;
    // Written after the checkpoint: lost with n1.
    call(&c, &n1.url, "heap", "push", &[2]).await.unwrap();
    let cl = Cluster {
        dir,
        control,
        served: Some(served),
        n1: Some(n1),
        n2,
        c,
    };
    (cl, at_checkpoint)
}

async fn get(c: &Client, url: &str, export: &str) -> i64 {
    call(c, url, "heap", export, &[]).await.unwrap().results[0]
        .as_i64()
        .unwrap()
}

async fn status(c: &Client, url: &str) -> Value {
    status_of(c, url, "heap").await
}

async fn status_of(c: &Client, url: &str, app: &str) -> Value {
    c.get_json(&format!("{url}/v1/apps/{app}"))
        .await
        .unwrap_or(Value::Null)
}

impl Cluster {
    /// The control plane stops and starts again on its data directory, at
    /// the same address.
    async fn restart_control(&mut self) {
        use tern_api::local::Bound;
        if let Some(served) = self.served.take() {
            served
                .shut_down(Duration::from_secs(10))
                .await
                .expect("the control plane stops");
        }
        let addr = self.control.trim_start_matches("https://");
        let bound = Bound::at(addr).await.unwrap();
        let (_, served) =
            crate::nodes::start_control_on(bound, self.dir.path(), control_setup).await;
        self.served = Some(served);
    }

    /// n1 is lost; returns once the app runs on n2 (restarted there).
    async fn lose_n1(&mut self) {
        drop(self.n1.take());
        let (c, n2) = (&self.c, &self.n2.url);
        wait_until("the app is restarted on n2", || async {
            status(c, n2).await["state"] == "running"
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_from_a_checkpoint_runs_before_its_pages_are_in() {
    if !paging_here() {
        return;
    }
    // The background pull waits a minute: only what the app touches comes.
    let (mut cl, at_checkpoint) = cluster(Duration::from_secs(60)).await;
    cl.lose_n1().await;
    let (c, n2) = (&cl.c, cl.n2.url.clone());
    let st = status(c, &n2).await;
    eprintln!("restarted lazily: {st}");
    let pending = st["pages_pending"].as_u64().unwrap_or(0);
    assert!(
        pending > 2000,
        "most of the 16 MiB is still on the control plane: {st}"
    );
    // The app answers from its checkpoint's state (the 2 written after it
    // is gone), with most of its pages still away.
    assert_eq!(get(c, &n2, "len").await, 2);
    assert_eq!(get(c, &n2, "sum").await, 4);
    let st = status(c, &n2).await;
    assert!(
        st["pages_pending"].as_u64().is_some_and(|p| p > 2000),
        "a few calls bring only the pages they touch: {st}"
    );
    // The control plane restarts meanwhile: the file n2 reads the pages
    // from stays (its load once removed every pin, and the app failed on
    // its next page).
    cl.restart_control().await;
    let (c, n2) = (&cl.c, cl.n2.url.clone());
    // Reading the whole heap brings its pages (a page it never reads, of
    // the stack say, may stay away): the state is the checkpoint's.
    assert_eq!(get(c, &n2, "digest").await, at_checkpoint);
    let st = status(c, &n2).await;
    assert!(
        st["pages_pending"].as_u64().unwrap_or(0) < 64,
        "the pages the app read came in: {st}"
    );
    let app: Value = c
        .get_json(&format!("{}/v1/apps/heap", cl.control))
        .await
        .unwrap();
    assert_eq!(app["node"], "n2", "{app}");
    // It goes on as any app.
    let r = call(c, &n2, "heap", "push", &[9]).await.unwrap();
    assert_eq!(r.results[0].as_i64(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_pulls_every_page_in_the_background_and_checks_the_file() {
    if !paging_here() {
        return;
    }
    let (mut cl, at_checkpoint) = cluster(Duration::ZERO).await;
    cl.lose_n1().await;
    let (c, n2) = (&cl.c, cl.n2.url.clone());
    // Nothing touched: the pull alone brings every page, then checks the
    // file's digest; the app is whole and not failed.
    wait_until("every page is in", || async {
        status(c, &n2).await["pages_pending"].is_null()
    })
    .await;
    let st = status(c, &n2).await;
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(get(c, &n2, "digest").await, at_checkpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_checkpoint_fails_the_lazily_restored_app() {
    if !paging_here() {
        return;
    }
    let (mut cl, _) = cluster(Duration::from_secs(2)).await;
    cl.lose_n1().await;
    // The pinned copy is damaged in its image, far from any page the app
    // touched, before the pull reads it.
    let pinned = std::fs::read_dir(cl.dir.path().join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "pinned"))
        .expect("the checkpoint read by the restart is pinned");
    let mut bytes = std::fs::read(&pinned).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&pinned, &bytes).unwrap();
    let (c, n2) = (&cl.c, cl.n2.url.clone());
    wait_until("the app is failed", || async {
        status(c, &n2).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("is not the one named"))
    })
    .await;
    let st = status(c, &n2).await;
    eprintln!("damaged checkpoint: {st}");
    // Failed, never run on from a state that is not the checkpoint's.
    assert_eq!(st["state"], "failed", "{st}");
    assert!(call(c, &n2, "heap", "len", &[]).await.is_err());
}

/// `POST /v1/checkpoints/NAME/pin?digest=D` (a post-copy target whose
/// source was lost restarts the app lazily from it): only for the node
/// that runs the app, only for its latest checkpoint, and the pinned copy
/// is then read by ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_is_pinned_only_for_the_node_of_its_app_and_only_the_latest() {
    use tern_api::tls::Role;
    let (cl, _) = cluster(Duration::from_secs(60)).await;
    let n1 = cl.n1.as_ref().unwrap();
    let taken: Value =
        cl.c.post_json(&format!("{}/v1/apps/heap/checkpoint", n1.url), &json!({}))
            .await
            .unwrap();
    let digest = taken["digest"].as_str().unwrap();
    let pin = |who: &Client, digest: &str| {
        let (who, url) = (
            who.clone(),
            format!("{}/v1/checkpoints/heap/pin?digest={digest}", cl.control),
        );
        async move { who.post_json::<_, Value>(&url, &json!({})).await }
    };
    let (as_n1, as_n2) = (
        crate::security::as_role(Role::Node("n1".into())),
        crate::security::as_role(Role::Node("n2".into())),
    );
    let status = |r: Result<Value, tern_api::client::ClientError>| r.err().and_then(|e| e.status());
    assert_eq!(
        status(pin(&as_n2, digest).await),
        Some(403),
        "n2 runs no heap"
    );
    assert_eq!(status(pin(&as_n1, "not-a-digest").await), Some(400));
    let older = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        status(pin(&as_n1, older).await),
        Some(409),
        "not the latest"
    );
    let pinned = pin(&as_n1, digest).await.unwrap();
    assert_eq!(pinned["bytes"], taken["bytes"], "{pinned}");
    let (_, head) = as_n1
        .send(
            hyper::Method::GET,
            &format!(
                "{}/v1/checkpoints/heap?digest={digest}&offset=0&len=8",
                cl.control
            ),
            "application/octet-stream",
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(&head[..], b"TERNSNAP");
}

/// A snapshot of the app taken through the control plane, as `tern
/// snapshot` gets it: its bytes and the cluster's tag.
async fn snapshot_through(c: &Client, control: &str, app: &str) -> (bytes::Bytes, String) {
    let raw = c
        .send_raw(
            hyper::Method::POST,
            &format!("{control}/v1/apps/{app}/snapshot"),
            Some("application/octet-stream"),
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(raw.status.is_success(), "snapshot: {}", raw.status);
    let tag = raw.headers["x-tern-snapshot-mac"]
        .to_str()
        .unwrap()
        .to_string();
    (raw.body, tag)
}

/// How many environment variables and arguments app `app` at `url` got
/// (the `WHAT_AM_I_GIVEN` module).
async fn given(c: &Client, url: &str, app: &str) -> Vec<i64> {
    let mut out = vec![];
    for export in ["env_count", "arg_count"] {
        let r = call(c, url, app, export, &[]).await.unwrap();
        out.push(r.results[0].as_i64().unwrap());
    }
    out
}

/// `tern restore FILE` as the CLI sends it, onto n2: `tag` None is a
/// foreign file.
async fn restore_through(
    c: &Client,
    control: &str,
    name: &str,
    bytes: bytes::Bytes,
    tag: Option<&str>,
) -> Value {
    restore_onto(c, control, name, "n2", bytes, tag).await
}

/// As [`restore_through`], onto `node` (with any more of the query after
/// it).
async fn restore_onto(
    c: &Client,
    control: &str,
    name: &str,
    node: &str,
    bytes: bytes::Bytes,
    tag: Option<&str>,
) -> Value {
    let mut q = format!("{control}/v1/restore?name={name}&node={node}");
    let mut c = c.clone();
    match tag {
        Some(t) => c = c.with_header("x-tern-snapshot-mac", t),
        None => q.push_str("&foreign=1"),
    }
    let (status, body) = c
        .send(hyper::Method::POST, &q, "application/octet-stream", bytes)
        .await
        .unwrap_or_else(|e| panic!("restore of {name}: {e}"));
    assert_eq!(status, 201);
    serde_json::from_slice(&body).unwrap()
}

/// `tern restore FILE`: the control plane keeps the bytes it was sent and
/// names them to the node, which runs the app as soon as its state is in
/// (a tagged file and a foreign one alike); the pages follow as touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_restore_runs_before_its_pages_are_in() {
    if !paging_here() {
        return;
    }
    // No background pull for a minute: only what the apps touch comes.
    let (cl, _) = cluster(Duration::from_secs(60)).await;
    let (c, control, n2) = (&cl.c, cl.control.as_str(), cl.n2.url.clone());
    let n1 = cl.n1.as_ref().unwrap().url.clone();
    let at_snapshot = get(c, &n1, "digest").await;
    let (bytes, tag) = snapshot_through(c, control, "heap").await;
    for (name, tag) in [("copy", Some(tag.as_str())), ("stranger", None)] {
        let view = restore_through(c, control, name, bytes.clone(), tag).await;
        assert_eq!(view["node"], "n2", "{view}");
        let st = status_of(c, &n2, name).await;
        eprintln!("{name} restored: {st}");
        assert_eq!(st["state"], "running", "{st}");
        assert!(
            st["pages_pending"].as_u64().is_some_and(|p| p > 2000),
            "most of the 16 MiB is still on the control plane: {st}"
        );
        // The snapshot's state: three values pushed, the heap read whole.
        let r = |export| call(c, &n2, name, export, &[]);
        assert_eq!(r("len").await.unwrap().results[0].as_i64(), Some(3));
        assert_eq!(
            r("digest").await.unwrap().results[0].as_i64(),
            Some(at_snapshot)
        );
        let st = status_of(c, &n2, name).await;
        assert!(
            st["pages_pending"].as_u64().unwrap_or(0) < 64,
            "the pages the app read came in: {st}"
        );
    }
    // The restored copy is the checkpoint the control plane restarts it
    // from, should n2 be lost.
    let cp: Value = c
        .get_json(&format!("{control}/v1/apps/copy"))
        .await
        .unwrap();
    assert_eq!(cp["node"], "n2", "{cp}");
    let kept = c
        .send_raw(
            hyper::Method::GET,
            &format!("{control}/v1/checkpoints/copy"),
            None,
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(kept.status, 200);
    assert!(
        kept.body == bytes,
        "the checkpoint kept is the snapshot restored"
    );
}

/// A node that cannot page reads the snapshot whole before the app runs;
/// the restore is the same to the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_restore_on_a_node_that_cannot_page_reads_the_file_whole() {
    let (cl, _) = cluster_with(Duration::from_secs(60), false).await;
    let (c, control, n2) = (&cl.c, cl.control.as_str(), cl.n2.url.clone());
    let n1 = cl.n1.as_ref().unwrap().url.clone();
    let at_snapshot = get(c, &n1, "digest").await;
    let (bytes, tag) = snapshot_through(c, control, "heap").await;
    restore_through(c, control, "copy", bytes, Some(&tag)).await;
    let st = status_of(c, &n2, "copy").await;
    assert_eq!(st["state"], "running", "{st}");
    assert!(st["pages_pending"].is_null(), "every page is in: {st}");
    let r = call(c, &n2, "copy", "digest", &[]).await.unwrap();
    assert_eq!(r.results[0].as_i64(), Some(at_snapshot));
}

/// A foreign file (no tag of this cluster) restored through the control
/// plane keeps none of the environment or arguments it carries, as a
/// whole-file restore did; a tagged one keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_restore_keeps_none_of_the_files_environment() {
    let (mut cl, _) = cluster(Duration::from_secs(60)).await;
    let (c, control, n2) = (&cl.c.clone(), cl.control.clone(), cl.n2.url.clone());
    let control = control.as_str();
    let n1 = cl.n1.as_ref().unwrap().url.clone();
    let wasm = wat::parse_str(crate::hardening_local::WHAT_AM_I_GIVEN).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&wasm));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), wasm.into())
        .await
        .unwrap();
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": "given", "module_sha256": sha, "node": "n1",
                    "env": [["TOKEN", "hunter2"]], "args": ["--flag"]}),
        )
        .await
        .unwrap();
    wait_until("the app runs", || async {
        call(c, &n1, "given", "env_count", &[]).await.is_ok()
    })
    .await;
    assert_eq!(given(c, &n1, "given").await, [1, 2]);
    let (bytes, tag) = snapshot_through(c, control, "given").await;
    restore_through(c, control, "stranger", bytes.clone(), None).await;
    assert_eq!(given(c, &n2, "stranger").await, [0, 1], "foreign");
    restore_through(c, control, "twin", bytes.clone(), Some(&tag)).await;
    assert_eq!(given(c, &n2, "twin").await, [1, 2], "tagged");
    // Restored onto n1, which is then lost before the app checkpoints:
    // the control plane restarts it on n2 from the bytes it was sent,
    // still foreign, and the file's environment stays out.
    restore_onto(c, control, "drifter", "n1&restart=always", bytes, None).await;
    assert_eq!(given(c, &n1, "drifter").await, [0, 1], "foreign on n1");
    cl.lose_n1().await;
    wait_until("drifter is restarted on n2", || async {
        status_of(c, &n2, "drifter").await["state"] == "running"
    })
    .await;
    assert_eq!(
        given(c, &n2, "drifter").await,
        [0, 1],
        "foreign after a restart from the file it was restored from"
    );
}
