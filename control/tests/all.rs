//! The control plane over real HTTP on 127.0.0.1 with a real redb store in
//! a temporary directory. Only what needs no node agent is tested here; the
//! end-to-end tests with real nodes live in `tests/`.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tern_api::client::{Client, ClientError};
use tern_api::types::{Heartbeat, NodeInfo, NodeView, Resources};
use tern_control::ControlConfig;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A control plane running in this test's runtime.
struct Control {
    url: String,
    served: tern_api::local::Served,
}

impl Control {
    async fn start(dir: &Path, tweak: impl FnOnce(&mut ControlConfig)) -> Control {
        let bound = tern_api::local::Bound::loopback().await.unwrap().plain();
        let mut cfg = ControlConfig::new(dir, TOKEN);
        tweak(&mut cfg);
        let served = tern_control::spawn(bound, cfg);
        Control {
            url: served.url.clone(),
            served,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn client(&self) -> Client {
        Client::new(Some(TOKEN.into())).with_timeout(Duration::from_secs(10))
    }

    /// Stops the server and waits until its store is closed.
    async fn stop(self) {
        self.served
            .shut_down(Duration::from_secs(30))
            .await
            .unwrap();
    }
}

fn node(name: &str, url: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        url: url.into(),
        labels: [("zone".to_string(), "eu".to_string())].into(),
        capacity: Resources {
            cpu_milli: 4000,
            memory_bytes: 8 << 30,
        },
        arch: std::env::consts::ARCH.into(),
        version: "test".into(),
    }
}

/// A URL where nothing listens (a port bound, then freed).
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// The smallest valid module, and its sha256.
fn module() -> (Vec<u8>, String) {
    let bytes = b"\0asm\x01\0\0\0".to_vec();
    let sha = hex::encode(Sha256::digest(&bytes));
    (bytes, sha)
}

/// A deploy request: `fields` over the defaults (DeployRequest has no
/// serde defaults for its lists).
fn deploy(fields: Value) -> Value {
    let mut v = serde_json::to_value(tern_api::types::DeployRequest::default()).unwrap();
    for (k, x) in fields.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn status(r: Result<impl Sized, ClientError>) -> (u16, String) {
    match r {
        Ok(_) => (200, String::new()),
        Err(ClientError::Status {
            status, message, ..
        }) => (status, message),
        Err(e) => panic!("expected an HTTP answer, got {e}"),
    }
}

/// Polls `cond` until it holds, or fails after `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn nodes(c: &Control) -> Vec<NodeView> {
    c.client().get_json(&c.url("/v1/nodes")).await.unwrap()
}

#[tokio::test]
async fn every_endpoint_but_the_dashboard_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |_| {}).await;
    let anon = Client::new(None);
    let wrong = Client::new(Some("not-the-token".into()));
    for path in [
        "/v1/nodes",
        "/v1/apps",
        "/v1/migrations",
        "/v1/apps/x",
        "/v1/no-such-thing",
    ] {
        let (s, msg) = status(anon.get_json::<Value>(&c.url(path)).await);
        assert_eq!(s, 401, "{path} without a token");
        assert!(msg.contains("token"), "{msg}");
        assert_eq!(
            status(wrong.get_json::<Value>(&c.url(path)).await).0,
            401,
            "{path} with a wrong token"
        );
    }
    let (s, _) = status(
        anon.post_json::<_, Value>(&c.url("/v1/nodes"), &node("n", "http://127.0.0.1:1"))
            .await,
    );
    assert_eq!(s, 401);
    let (s, _) = status(
        anon.put_bytes(
            &c.url(&format!("/v1/modules/{}", module().1)),
            module().0.into(),
        )
        .await,
    );
    assert_eq!(s, 401);
    // The right token works; the dashboard page needs none.
    assert!(c
        .client()
        .get_json::<Vec<NodeView>>(&c.url("/v1/nodes"))
        .await
        .unwrap()
        .is_empty());
    let (code, page) = anon
        .send(Method::GET, &c.url("/"), "text/html", Bytes::new())
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&page).contains("<html"));
    c.stop().await;
}

#[tokio::test]
async fn bodies_are_limited_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |cfg| cfg.max_blob_bytes = 1024).await;
    let client = c.client();
    // JSON bodies: 4 MiB at most.
    let big = vec![b' '; tern_api::MAX_JSON_BODY + 1];
    let (s, msg) = status(
        client
            .send(
                Method::POST,
                &c.url("/v1/nodes"),
                "application/json",
                big.into(),
            )
            .await,
    );
    assert_eq!(s, 413, "{msg}");
    let (s, msg) = status(
        client
            .send(
                Method::POST,
                &c.url("/v1/apps"),
                "application/json",
                Bytes::from_static(b"{nope"),
            )
            .await,
    );
    assert_eq!(s, 400);
    assert!(msg.contains("bad JSON"), "{msg}");
    // Blobs: the configured limit.
    let mut wasm = module().0;
    wasm.resize(2048, 0);
    let sha = hex::encode(Sha256::digest(&wasm));
    let (s, _) = status(
        client
            .put_bytes(&c.url(&format!("/v1/modules/{sha}")), wasm.into())
            .await,
    );
    assert_eq!(s, 413);
    c.stop().await;
}

#[tokio::test]
async fn modules_are_stored_by_their_own_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |_| {}).await;
    let client = c.client();
    let (bytes, sha) = module();
    let url = c.url(&format!("/v1/modules/{sha}"));
    assert!(!client.exists(&url).await.unwrap());
    // Bytes that hash to something else, bytes that are not wasm, a bad name.
    let other = "0".repeat(64);
    let (s, msg) = status(
        client
            .put_bytes(
                &c.url(&format!("/v1/modules/{other}")),
                bytes.clone().into(),
            )
            .await,
    );
    assert_eq!(s, 400);
    assert!(msg.contains(&sha), "the message names the real hash: {msg}");
    let (s, msg) = status(client.put_bytes(&url, Bytes::from_static(b"hello")).await);
    assert_eq!(s, 400);
    assert!(msg.contains("WebAssembly"), "{msg}");
    let (s, _) = status(
        client
            .put_bytes(&c.url("/v1/modules/xyz"), bytes.clone().into())
            .await,
    );
    assert_eq!(s, 400);
    // The real thing, twice.
    client.put_bytes(&url, bytes.clone().into()).await.unwrap();
    client.put_bytes(&url, bytes.clone().into()).await.unwrap();
    assert!(client.exists(&url).await.unwrap());
    let (_, got) = client
        .send(Method::GET, &url, "application/wasm", Bytes::new())
        .await
        .unwrap();
    assert_eq!(&got[..], &bytes[..]);
    c.stop().await;
}

#[tokio::test]
async fn nodes_register_heartbeat_and_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |_| {}).await;
    let client = c.client();
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-2", "http://127.0.0.1:1"))
        .await
        .unwrap();
    let answer: Value = client
        .post_json(&c.url("/v1/nodes"), &node("node-10", "http://127.0.0.1:2"))
        .await
        .unwrap();
    assert_eq!(answer["ok"], json!(true));
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-1", "http://127.0.0.1:3"))
        .await
        .unwrap();
    let hb = Heartbeat {
        name: "node-1".into(),
        usage: Resources {
            cpu_milli: 250,
            memory_bytes: 64 << 20,
        },
        apps: vec![],
        migrations_in: Vec::new(),
    };
    client
        .post_json::<_, Value>(&c.url("/v1/nodes/node-1/heartbeat"), &hb)
        .await
        .unwrap();

    let list = nodes(&c).await;
    let names: Vec<_> = list.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-10"], "natural order");
    let n1 = &list[0];
    assert_eq!(n1.url, "http://127.0.0.1:3");
    assert_eq!(n1.state, "ready");
    assert_eq!(n1.usage, hb.usage);
    assert_eq!(n1.capacity.cpu_milli, 4000);
    assert_eq!(n1.labels["zone"], "eu");
    assert!(n1.last_heartbeat_ms_ago.is_some_and(|ms| ms < 5_000));
    assert!(n1.apps.is_empty());
    assert_eq!(list[1].last_heartbeat_ms_ago, None);

    // Re-registering updates the address.
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-1", "http://127.0.0.1:4"))
        .await
        .unwrap();
    assert_eq!(nodes(&c).await[0].url, "http://127.0.0.1:4");

    // Mistakes.
    let (s, msg) = status(
        client
            .post_json::<_, Value>(
                &c.url("/v1/nodes/ghost/heartbeat"),
                &Heartbeat {
                    name: "ghost".into(),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!(s, 404);
    assert!(msg.contains("not registered"), "{msg}");
    let (s, _) = status(
        client
            .post_json::<_, Value>(&c.url("/v1/nodes/node-2/heartbeat"), &hb)
            .await,
    );
    assert_eq!(s, 400, "a heartbeat naming another node");
    let (s, _) = status(
        client
            .post_json::<_, Value>(&c.url("/v1/nodes"), &node("bad/name", "http://x"))
            .await,
    );
    assert_eq!(s, 400);
    let (s, _) = status(
        client
            .post_json::<_, Value>(&c.url("/v1/nodes"), &node("n", "ftp://x"))
            .await,
    );
    assert_eq!(s, 400);
    c.stop().await;
}

#[tokio::test]
async fn a_silent_node_goes_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |cfg| {
        cfg.heartbeat_timeout = Duration::from_millis(300)
    })
    .await;
    let client = c.client();
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-1", "http://127.0.0.1:1"))
        .await
        .unwrap();
    assert_eq!(nodes(&c).await[0].state, "ready");
    let cr = &c;
    eventually(10, "node-1 down", || async move {
        nodes(cr).await[0].state == "down"
    })
    .await;
    let hb = Heartbeat {
        name: "node-1".into(),
        ..Default::default()
    };
    client
        .post_json::<_, Value>(&c.url("/v1/nodes/node-1/heartbeat"), &hb)
        .await
        .unwrap();
    assert_eq!(nodes(&c).await[0].state, "ready");

    // A down node takes no app.
    let (bytes, sha) = module();
    client
        .put_bytes(&c.url(&format!("/v1/modules/{sha}")), bytes.into())
        .await
        .unwrap();
    eventually(10, "node-1 down again", || async move {
        nodes(cr).await[0].state == "down"
    })
    .await;
    let req = deploy(json!({"name": "a", "module_sha256": sha, "node": "node-1"}));
    let (s, msg) = status(client.post_json::<_, Value>(&c.url("/v1/apps"), &req).await);
    assert_eq!(s, 503, "{msg}");
    assert!(msg.contains("node-1 is down"), "{msg}");
    c.stop().await;
}

#[tokio::test]
async fn placement_decisions_list_every_candidate_with_terms() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |_| {}).await;
    let client = c.client();
    let (bytes, sha) = module();
    client
        .put_bytes(&c.url(&format!("/v1/modules/{sha}")), bytes.into())
        .await
        .unwrap();
    let mut small = node("node-1", "http://127.0.0.1:1");
    small.capacity = Resources {
        cpu_milli: 500,
        memory_bytes: 1 << 30,
    };
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &small)
        .await
        .unwrap();
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-2", "http://127.0.0.1:2"))
        .await
        .unwrap();
    let mut other_zone = node("node-3", "http://127.0.0.1:3");
    other_zone.labels = [("zone".to_string(), "us".to_string())].into();
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &other_zone)
        .await
        .unwrap();

    let req = deploy(
        json!({"name": "web", "module_sha256": sha, "cpu_milli": 1000, "memory_limit": 64 << 20, "labels": {"zone": "eu"}}),
    );
    let answer: Value = client
        .post_json(&c.url("/v1/apps?dry_run=1"), &req)
        .await
        .unwrap();
    assert_eq!(answer["app"], Value::Null, "a dry run deploys nothing");
    let d = &answer["decision"];
    assert_eq!(d["app"], "web");
    assert_eq!(d["node"], "node-2");
    assert_eq!(d["policy"], "requests");
    let cands = d["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 3);
    let by = |n: &str| cands.iter().find(|c| c["node"] == n).unwrap();
    assert_eq!(by("node-2")["feasible"], true);
    assert!(by("node-2")["score"].as_f64().is_some());
    assert!(by("node-2")["terms"]
        .as_object()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(by("node-1")["feasible"], false);
    assert!(
        by("node-1")["reason_if_not"]
            .as_str()
            .unwrap()
            .contains("CPU"),
        "{}",
        by("node-1")
    );
    assert!(by("node-3")["reason_if_not"]
        .as_str()
        .unwrap()
        .contains("zone=eu"));

    // The cost policy reports its terms; a drained node is filtered out.
    let req_cost = deploy(json!({"name": "web", "module_sha256": sha, "policy": "cost"}));
    let answer: Value = client
        .post_json(&c.url("/v1/apps?dry_run=1"), &req_cost)
        .await
        .unwrap();
    assert_eq!(answer["decision"]["policy"], "cost");
    let chosen = answer["decision"]["node"].as_str().unwrap().to_string();
    let cands = answer["decision"]["candidates"].as_array().unwrap().clone();
    assert!(
        cands.iter().any(|c| c["terms"].get("C").is_some()),
        "{cands:?}"
    );
    let drained: NodeView = client
        .post_json(
            &c.url(&format!("/v1/nodes/{chosen}/drain")),
            &json!({"drain": true}),
        )
        .await
        .unwrap();
    assert_eq!(drained.state, "draining");
    let answer: Value = client
        .post_json(&c.url("/v1/apps?dry_run=1"), &req_cost)
        .await
        .unwrap();
    assert_ne!(answer["decision"]["node"], json!(chosen));

    // Nowhere to go: the reasons, counted.
    let huge = deploy(json!({"name": "huge", "module_sha256": sha, "cpu_milli": 100_000}));
    let (s, msg) = status(
        client
            .post_json::<_, Value>(&c.url("/v1/apps"), &huge)
            .await,
    );
    assert_eq!(s, 503);
    assert!(msg.contains("no node can run app `huge`"), "{msg}");
    c.stop().await;
}

#[tokio::test]
async fn mistakes_get_messages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let c = Control::start(dir.path(), |_| {}).await;
    let client = c.client();
    let (bytes, sha) = module();

    // Unknown apps, for every app command.
    for (method, path) in [
        (Method::GET, "/v1/apps/ghost"),
        (Method::POST, "/v1/apps/ghost/invoke"),
        (Method::POST, "/v1/apps/ghost/call?path=/"),
        (Method::POST, "/v1/apps/ghost/migrate"),
        (Method::POST, "/v1/apps/ghost/snapshot"),
        (Method::POST, "/v1/apps/ghost/stop"),
        (Method::POST, "/v1/apps/ghost/start"),
        (Method::DELETE, "/v1/apps/ghost"),
        (Method::GET, "/v1/apps/ghost/logs"),
    ] {
        let body = match path {
            p if p.ends_with("invoke") => br#"{"export":"f","args":[]}"#.to_vec(),
            p if p.ends_with("migrate") => br#"{"to":"node-1"}"#.to_vec(),
            _ => Vec::new(),
        };
        let (s, msg) = status(
            client
                .send(
                    method.clone(),
                    &c.url(path),
                    "application/json",
                    body.into(),
                )
                .await,
        );
        assert_eq!(s, 404, "{method} {path}: {msg}");
        assert_eq!(msg, "no app named ghost: see `tern ps`", "{method} {path}");
    }
    let (s, msg) = status(
        client
            .put_bytes(
                &c.url("/v1/checkpoints/ghost?generation=1"),
                Bytes::from_static(b"x"),
            )
            .await,
    );
    assert_eq!(s, 404, "{msg}");
    let (s, _) = status(
        client
            .get_json::<Value>(&c.url("/v1/checkpoints/ghost"))
            .await,
    );
    assert_eq!(s, 404);

    // Deploying a module that was not uploaded, on an unknown node, to a dead node.
    let (s, msg) = status(
        client
            .post_json::<_, Value>(
                &c.url("/v1/apps"),
                &deploy(json!({"name": "a", "module_sha256": sha})),
            )
            .await,
    );
    assert_eq!(s, 400);
    assert!(msg.contains("has not been uploaded"), "{msg}");
    client
        .put_bytes(&c.url(&format!("/v1/modules/{sha}")), bytes.into())
        .await
        .unwrap();
    let (s, msg) = status(
        client
            .post_json::<_, Value>(
                &c.url("/v1/apps"),
                &deploy(json!({"name": "a", "module_sha256": sha, "node": "nowhere"})),
            )
            .await,
    );
    assert_eq!(s, 404);
    assert_eq!(msg, "no node named nowhere: see `tern nodes`");
    let dead = dead_url().await;
    client
        .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-1", &dead))
        .await
        .unwrap();
    let (s, msg) = status(
        client
            .post_json::<_, Value>(
                &c.url("/v1/apps"),
                &deploy(json!({"name": "a", "module_sha256": sha})),
            )
            .await,
    );
    assert_eq!(s, 502);
    assert!(
        msg.starts_with(&format!("node node-1 at {dead} does not answer ("))
            && msg.ends_with("start it again, or choose another node (`tern nodes`)"),
        "{msg}"
    );
    // The failed deploy left nothing behind.
    let apps: Vec<Value> = client.get_json(&c.url("/v1/apps")).await.unwrap();
    assert!(apps.is_empty(), "{apps:?}");

    // Bad names and policies.
    for (req, want) in [
        (
            deploy(json!({"name": "a/b", "module_sha256": sha})),
            "not a valid app name",
        ),
        (
            deploy(json!({"name": "a", "module_sha256": "abc"})),
            "64 lowercase hex",
        ),
        (
            deploy(json!({"name": "a", "module_sha256": sha, "restart": "sometimes"})),
            "unknown restart policy",
        ),
        (
            deploy(json!({"name": "a", "module_sha256": sha, "policy": "random"})),
            "unknown placement policy",
        ),
    ] {
        let (s, msg) = status(client.post_json::<_, Value>(&c.url("/v1/apps"), &req).await);
        assert_eq!(s, 400, "{req}: {msg}");
        assert!(msg.contains(want), "{req}: {msg}");
    }
    let (s, msg) = status(
        client
            .post_bytes(&c.url("/v1/restore?name=x"), Bytes::new())
            .await,
    );
    assert_eq!(s, 400, "{msg}");
    let (s, msg) = status(client.get_json::<Value>(&c.url("/v1/teapot")).await);
    assert_eq!(s, 404);
    assert!(msg.contains("no endpoint"), "{msg}");
    c.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart_of_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, sha) = module();
    let dead = dead_url().await;
    {
        let c = Control::start(dir.path(), |_| {}).await;
        let client = c.client();
        client
            .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-1", &dead))
            .await
            .unwrap();
        client
            .post_json::<_, Value>(&c.url("/v1/nodes"), &node("node-2", "http://127.0.0.1:2"))
            .await
            .unwrap();
        let hb = Heartbeat {
            name: "node-2".into(),
            usage: Resources {
                cpu_milli: 7,
                memory_bytes: 9,
            },
            apps: vec![],
            migrations_in: Vec::new(),
        };
        client
            .post_json::<_, Value>(&c.url("/v1/nodes/node-2/heartbeat"), &hb)
            .await
            .unwrap();
        client
            .post_json::<_, NodeView>(&c.url("/v1/nodes/node-2/drain"), &json!({}))
            .await
            .unwrap();
        client
            .put_bytes(&c.url(&format!("/v1/modules/{sha}")), bytes.clone().into())
            .await
            .unwrap();
        // A second control plane cannot open the same store.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = tern_control::run(l, ControlConfig::new(dir.path(), TOKEN), async {})
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("in use by another control plane"),
            "{e}"
        );
        c.stop().await;
    }
    let c = Control::start(dir.path(), |_| {}).await;
    let client = c.client();
    let list = nodes(&c).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].url, dead);
    assert_eq!(list[1].state, "draining");
    assert_eq!(
        list[1].usage,
        Resources {
            cpu_milli: 7,
            memory_bytes: 9
        }
    );
    assert!(list[1].last_heartbeat_ms_ago.is_some());
    let url = c.url(&format!("/v1/modules/{sha}"));
    assert!(client.exists(&url).await.unwrap());
    let (_, got) = client
        .send(Method::GET, &url, "application/wasm", Bytes::new())
        .await
        .unwrap();
    assert_eq!(&got[..], &bytes[..]);
    let migrations: Vec<Value> = client.get_json(&c.url("/v1/migrations")).await.unwrap();
    assert!(migrations.is_empty());
    c.stop().await;
}

#[tokio::test]
async fn an_empty_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tern_control::run(l, ControlConfig::new(dir.path(), ""), async {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
}

#[test]
fn token_files_are_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let t = tern_control::load_or_create_token(dir.path()).unwrap();
    assert_eq!(t.len(), 32);
    assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(tern_control::load_or_create_token(dir.path()).unwrap(), t);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let other = tempfile::tempdir().unwrap();
    assert_ne!(tern_control::load_or_create_token(other.path()).unwrap(), t);
}
