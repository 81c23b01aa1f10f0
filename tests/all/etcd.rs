//! Control planes sharing a real etcd (Debian's `etcd-server`, started by
//! the test on loopback ports): one leads, the other stands by and names
//! it; the records survive the leader, which a standby replaces at once
//! when it resigns and within the lease when it dies; nodes given both
//! control planes follow the leader; a leader whose lease is gone writes
//! nothing more.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tern_api::types::{AppView, DeployRequest, MigrationReport, NodeInfo, NodeView};
use tern_artifacts::tools::Etcd;
use tern_control::StoreConfig;

use crate::nodes::{client, deploy_through, start_control, Load, TestNode};

const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(5);

/// What the tests ask of etcd beyond starting it.
trait EtcdExt {
    fn store(&self, prefix: &str) -> StoreConfig;
    fn get(&self, key: &str) -> Option<String>;
    fn grant(&self, ttl_s: u64) -> String;
    fn usurp(&self, key: &str, value: &str, lease: &str);
    fn revoke(&self, lease: &str);
}

impl EtcdExt for Etcd {
    fn store(&self, prefix: &str) -> StoreConfig {
        self.store_url(prefix).parse().unwrap()
    }

    /// A key's value, straight from etcd.
    fn get(&self, key: &str) -> Option<String> {
        let body = json!({"key": B64.encode(key)}).to_string();
        let (_, answer) = self.http("POST", "/v3/kv/range", &body)?;
        let v: Value = serde_json::from_str(&answer).ok()?;
        let kv = &v["kvs"][0];
        let value = B64.decode(kv["value"].as_str()?).ok()?;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    fn grant(&self, ttl_s: u64) -> String {
        let body = json!({"TTL": ttl_s.to_string()}).to_string();
        let (_, answer) = self.http("POST", "/v3/lease/grant", &body).unwrap();
        let v: Value = serde_json::from_str(&answer).unwrap();
        v["ID"].as_str().expect("a lease").to_string()
    }

    /// Takes the leader key over as a rival control plane would: ends the
    /// holder's lease (the key goes with it), then creates the key anew
    /// under `lease` (again, if the holder was quicker to win it back).
    fn usurp(&self, key: &str, value: &str, lease: &str) {
        for _ in 0..20 {
            let body = json!({"key": B64.encode(key)}).to_string();
            let (_, answer) = self.http("POST", "/v3/kv/range", &body).unwrap();
            let v: Value = serde_json::from_str(&answer).unwrap();
            if let Some(held) = v["kvs"][0]["lease"].as_str() {
                self.revoke(held);
            }
            let body = json!({
                "compare": [{"key": B64.encode(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": B64.encode(key), "value": B64.encode(value), "lease": lease}}]
            })
            .to_string();
            let (status, answer) = self.http("POST", "/v3/kv/txn", &body).unwrap();
            assert_eq!(status, 200, "{answer}");
            if answer.contains("\"succeeded\":true") {
                return;
            }
        }
        panic!("could not take {key} over");
    }

    fn revoke(&self, lease: &str) {
        let body = json!({"ID": lease}).to_string();
        let (status, answer) = self.http("POST", "/v3/lease/revoke", &body).unwrap();
        assert_eq!(status, 200, "{answer}");
    }
}

/// A control plane on the etcd store, with a short lease.
async fn control(
    etcd: &Etcd,
    prefix: &str,
    dir: &std::path::Path,
) -> (String, tern_api::local::Served) {
    let store = etcd.store(prefix);
    start_control(dir, move |cfg| {
        cfg.store = store;
        cfg.lease_ttl = LEASE;
        cfg.heartbeat_timeout = Duration::from_secs(10);
    })
    .await
}

/// Waits until `url` answers its health with `role` ("control" when it
/// leads, "standby" naming the leader); returns the health document.
async fn role(url: &str, role: &str) -> Value {
    let c = client();
    let t0 = Instant::now();
    loop {
        if let Ok(h) = c.get_json::<Value>(&format!("{url}/v1/health")).await {
            // A standby is told which control plane leads once it asked.
            if h["role"] == role && (role != "standby" || h["leader"].is_string()) {
                return h;
            }
        }
        assert!(t0.elapsed() < WAIT, "{url} never became {role}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < WAIT, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(c: &tern_api::client::Client, ingress: &str) -> i64 {
    let (_, body) = c
        .send(
            hyper::Method::POST,
            &format!("{ingress}/apps/counter/"),
            "text/plain",
            Bytes::from_static(b"0"),
        )
        .await
        .unwrap();
    String::from_utf8_lossy(&body).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_planes_on_etcd_fail_over_and_keep_the_cluster() {
    let etcd = Etcd::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, stop_a) = control(&etcd, "ha", dir_a.path()).await;
    role(&a, "control").await;
    let (b, _stop_b) = control(&etcd, "ha", dir_b.path()).await;
    let h = role(&b, "standby").await;
    assert_eq!(h["leader"], a.as_str(), "{h}");
    let c = client();
    // A standby answers 503 and names the leader.
    let e = c
        .get_json::<Value>(&format!("{b}/v1/apps"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains(&a), "{e}");
    // Its dashboard page loads (the data it polls says it stands by).
    let (status, page) = crate::nodes::anonymous()
        .send(
            hyper::Method::GET,
            &format!("{b}/"),
            "text/plain",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert!(
        status.is_success() && String::from_utf8_lossy(&page).contains("<html"),
        "{status}"
    );

    // Two nodes that know both control planes.
    let both = format!("{a},{b}");
    let n1 = TestNode::start_with("n1", |cfg| cfg.control_url = Some(both.clone())).await;
    let _n2 = TestNode::start_with("n2", |cfg| cfg.control_url = Some(both.clone())).await;
    eventually("both nodes registered with the leader", async || {
        let ns: Vec<NodeView> = c.get_json(&format!("{a}/v1/nodes")).await.ok()?;
        (ns.len() == 2).then_some(())
    })
    .await;

    // An app deployed and moved through the leader.
    let bytes = std::fs::read(tern_artifacts::COUNTER).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{a}/v1/modules/{sha}"), Bytes::from(bytes.clone()))
        .await
        .unwrap();
    let req = DeployRequest {
        name: "counter".into(),
        module_sha256: sha.clone(),
        node: Some("n1".into()),
        restart: Some("always".into()),
        ..Default::default()
    };
    let _: Value = c.post_json(&format!("{a}/v1/apps"), &req).await.unwrap();
    let load = Load::start(format!("{}/apps/counter/", n1.url), b"1", None);
    let r: MigrationReport = c
        .post_json(
            &format!("{a}/v1/apps/counter/migrate"),
            &json!({"to": "n2", "mode": "hot"}),
        )
        .await
        .unwrap();
    assert_eq!((r.from.as_str(), r.to.as_str()), ("n1", "n2"));

    // The leader resigns: the standby leads at once, with every record.
    let t0 = Instant::now();
    drop(stop_a);
    role(&b, "control").await;
    let takeover = t0.elapsed();
    eprintln!("the standby led {takeover:?} after the leader resigned");
    assert!(
        takeover < LEASE,
        "a resignation needs no lease expiry: {takeover:?}"
    );
    let apps: Vec<AppView> = c.get_json(&format!("{b}/v1/apps")).await.unwrap();
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert_eq!(
        (apps[0].node.as_deref(), apps[0].generation),
        (Some("n2"), 2),
        "{apps:?}"
    );
    let moves: Vec<MigrationReport> = c.get_json(&format!("{b}/v1/migrations")).await.unwrap();
    assert_eq!(moves.len(), 1, "{moves:?}");
    // It holds counter's checkpoint if its copy of the leader's files
    // (`mirror`) caught it; if not, it asks counter's node for one at once
    // rather than waiting for the node's next periodic one (every 10 s).
    let t0 = Instant::now();
    eventually(
        "a fresh checkpoint of counter on the new leader",
        async || {
            c.send(
                hyper::Method::GET,
                &format!("{b}/v1/checkpoints/counter"),
                "text/plain",
                Bytes::new(),
            )
            .await
            .ok()
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The module comes from etcd: this control plane never received it.
    let (_, got) = c
        .send(
            hyper::Method::GET,
            &format!("{b}/v1/modules/{sha}"),
            "application/wasm",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert!(got == bytes, "the module from etcd differs");
    // The nodes report to the new leader.
    eventually("the nodes heartbeat to the new leader", async || {
        let ns: Vec<NodeView> = c.get_json(&format!("{b}/v1/nodes")).await.ok()?;
        ns.iter()
            .all(|n| n.state == "ready" && n.last_heartbeat_ms_ago.is_some_and(|ms| ms < 1500))
            .then_some(())
    })
    .await;
    // And it runs the cluster: a move back, state kept, nothing failed.
    let r: MigrationReport = c
        .post_json(
            &format!("{b}/v1/apps/counter/migrate"),
            &json!({"to": "n1", "mode": "hot"}),
        )
        .await
        .unwrap();
    assert_eq!((r.from.as_str(), r.to.as_str()), ("n2", "n1"));
    let served = load.served.clone();
    assert_eq!(load.stop().await, 0, "requests failed");
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served > 0);
    assert_eq!(count(&c, &n1.url).await, served as i64, "every write once");

    // The old leader comes back as a standby.
    let (a2, _stop_a2) = control(&etcd, "ha", dir_a.path()).await;
    let h = role(&a2, "standby").await;
    assert_eq!(h["leader"], b.as_str(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leader_writes_nothing_and_stands_by() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, _stop_a) = control(&etcd, "fence", dir.path()).await;
    role(&a, "control").await;
    let leader = etcd.get("/fence/leader").expect("a leader key");
    assert_eq!(leader, a);
    // Another takes the leader key over (as when this one was cut off from
    // etcd past its lease and a standby won): this one must stop writing.
    let usurper = "http://127.0.0.1:9";
    let lease = etcd.grant(60);
    etcd.usurp("/fence/leader", usurper, &lease);
    let c = client();
    let node = NodeInfo {
        name: "ghost".into(),
        url: "http://127.0.0.1:9".into(),
        arch: "x86_64".into(),
        ..NodeInfo::default()
    };
    let e = c
        .post_json::<_, Value>(&format!("{a}/v1/nodes"), &node)
        .await
        .expect_err("a write without the leadership");
    assert!(
        e.to_string().contains("lost the leadership") || e.status() == Some(503),
        "{e}"
    );
    assert!(
        etcd.get("/fence/nodes/ghost").is_none(),
        "a deposed leader wrote"
    );
    let h = role(&a, "standby").await;
    assert_eq!(h["leader"], usurper, "{h}");
    // The other's lease ends: this one leads again, and writes.
    etcd.revoke(&lease);
    role(&a, "control").await;
    let _: Value = c.post_json(&format!("{a}/v1/nodes"), &node).await.unwrap();
    assert!(etcd.get("/fence/nodes/ghost").is_some());
}

/// A leader that cannot reach etcd for longer than its lease gives the
/// leadership up (another may hold it by then) and acts no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_etcd_stands_by_after_its_lease() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let store = etcd.store("cut");
    let (a, _stop) = start_control(dir.path(), move |cfg| {
        cfg.store = store;
        cfg.lease_ttl = Duration::from_secs(2);
    })
    .await;
    role(&a, "control").await;
    drop(etcd);
    let t0 = Instant::now();
    let c = client();
    eventually("the cut-off leader to stand by", async || {
        let h: Value = c.get_json(&format!("{a}/v1/health")).await.ok()?;
        (h["role"] == "standby").then_some(())
    })
    .await;
    eprintln!("stood by {:?} after etcd went away", t0.elapsed());
    let e = c
        .get_json::<Value>(&format!("{a}/v1/apps"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_planes_reach_etcd_over_mutual_tls_only_with_the_right_certificates() {
    // etcd's CA is not the cluster's: an operator's etcd has its own PKI.
    let pki = tempfile::tempdir().unwrap();
    let ca = tern_api::tls::Ca::generate().unwrap();
    let server = ca
        .issue(
            &tern_api::tls::Role::Node("etcd".into()),
            &["127.0.0.1".into()],
        )
        .unwrap();
    let client_id = ca
        .issue(&tern_api::tls::Role::Control, &["127.0.0.1".into()])
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = pki.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", &ca.cert_pem);
    let etcd = Etcd::start_tls(
        &ca_pem,
        &write("etcd.pem", &server.cert_pem),
        &write("etcd.key", &server.key_pem),
    );
    let url = etcd.store_url("secure");
    assert!(url.starts_with("etcd+https://"), "{url}");
    // `--store etcd+https://...` parses as the command line gives it.
    let StoreConfig::Etcd(bare) = url.parse::<StoreConfig>().unwrap() else {
        panic!("{url} is not an etcd store");
    };
    let good = bare.clone().with_tls(tern_control::EtcdTls {
        ca_pem: ca.cert_pem.clone(),
        client: Some((client_id.cert_pem.clone(), client_id.key_pem.clone())),
    });

    // Without a client certificate, or trusting another CA, etcd is not
    // reached, and the error says why.
    let no_client = bare.clone().with_tls(tern_control::EtcdTls {
        ca_pem: ca.cert_pem.clone(),
        client: None,
    });
    let other = tern_api::tls::Ca::generate().unwrap();
    let wrong_ca = bare.clone().with_tls(tern_control::EtcdTls {
        ca_pem: other.cert_pem.clone(),
        client: Some((client_id.cert_pem.clone(), client_id.key_pem.clone())),
    });
    for (what, u) in [
        ("no client certificate", no_client),
        ("another CA", wrong_ca),
    ] {
        let err = tokio::task::spawn_blocking(move || {
            tern_control::etcd_token(&u, Some("t0123456789abcdef"), || unreachable!())
        })
        .await
        .unwrap()
        .expect_err(what);
        let msg = format!("{err:#}");
        assert!(msg.contains("etcd"), "{what}: {msg}");
    }

    // With them, two control planes share it: one leads, one stands by,
    // and the standby takes over with the records the leader wrote.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: std::path::PathBuf| {
        let store = StoreConfig::Etcd(good.clone());
        async move {
            start_control(&dir, move |cfg| {
                cfg.store = store;
                cfg.lease_ttl = LEASE;
            })
            .await
        }
    };
    let (a, stop_a) = start(dir_a.path().into()).await;
    role(&a, "control").await;
    let (b, _stop_b) = start(dir_b.path().into()).await;
    assert_eq!(role(&b, "standby").await["leader"], a.as_str());
    let c = client();
    let both = format!("{a},{b}");
    let _n1 = TestNode::start_with("n1", |cfg| cfg.control_url = Some(both.clone())).await;
    eventually("the node registered", async || {
        let ns: Vec<NodeView> = c.get_json(&format!("{a}/v1/nodes")).await.ok()?;
        (ns.len() == 1).then_some(())
    })
    .await;
    let bytes = std::fs::read(tern_artifacts::COUNTER).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{a}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    let req = DeployRequest {
        name: "counter".into(),
        module_sha256: sha.clone(),
        ..Default::default()
    };
    let _: Value = c.post_json(&format!("{a}/v1/apps"), &req).await.unwrap();
    drop(stop_a);
    role(&b, "control").await;
    let apps: Vec<AppView> = c.get_json(&format!("{b}/v1/apps")).await.unwrap();
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert_eq!(apps[0].module_sha256, sha);
}

/// A control plane on etcd that calls a node down after 3 s and does not
/// rebalance.
fn quick(store: StoreConfig) -> impl FnOnce(&mut tern_control::ControlConfig) {
    move |cfg| {
        cfg.store = store;
        cfg.lease_ttl = LEASE;
        cfg.heartbeat_timeout = Duration::from_secs(3);
        cfg.rebalance_interval = Duration::from_secs(3600);
    }
}

/// The counter, deployed through `control` on `n1`, restarted always.
async fn deploy_counter_on_n1(c: &tern_api::client::Client, control: &str) {
    let always = json!({ "restart": "always" });
    deploy_through(c, control, tern_artifacts::COUNTER, "counter", "n1", always).await;
}

/// Adds 1 to the counter `n` times at the node `url`, each acknowledged.
async fn add_to_counter(c: &tern_api::client::Client, url: &str, n: usize) {
    for _ in 0..n {
        let (status, _) = c
            .send(
                hyper::Method::POST,
                &format!("{url}/apps/counter/"),
                "text/plain",
                Bytes::from_static(b"1"),
            )
            .await
            .unwrap();
        assert!(status.is_success(), "{status}");
    }
}

/// RELIABILITY item 20: a control plane that led before, and kept the file
/// of a checkpoint it received then, leads again after another one
/// received newer checkpoints. Its old file is not the checkpoint the
/// shared record names: it asks the app's node for a fresh one, and a
/// restart after the node is lost starts from that, with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_leading_again_never_restarts_from_its_older_checkpoint() {
    let etcd = Etcd::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bound_a = tern_api::local::Bound::loopback().await.unwrap();
    let (a, stop_a) =
        crate::nodes::start_control_on(bound_a, dir_a.path(), quick(etcd.store("again"))).await;
    role(&a, "control").await;
    let (b, stop_b) = start_control(dir_b.path(), quick(etcd.store("again"))).await;
    role(&b, "standby").await;
    let both = format!("{a},{b}");
    let n1 = TestNode::start_with("n1", |cfg| cfg.control_url = Some(both.clone())).await;
    let n2 = TestNode::start_with("n2", |cfg| cfg.control_url = Some(both.clone())).await;
    let c = client();
    crate::nodes::wait_for_nodes(&c, &a, 2).await;
    deploy_counter_on_n1(&c, &a).await;
    let add = async |n: usize| add_to_counter(&c, &n1.url, n).await;
    let latest = async |leader: &str| -> Option<Bytes> {
        let (status, got) = c
            .send(
                hyper::Method::GET,
                &format!("{leader}/v1/checkpoints/counter"),
                "text/plain",
                Bytes::new(),
            )
            .await
            .ok()?;
        status.is_success().then_some(got)
    };
    // A checkpoint of the counter at `value`, which `leader` received (the
    // node answers once the control plane has it).
    let checkpoint_at = async |leader: &str, value: i64| -> Bytes {
        assert_eq!(count(&c, &n1.url).await, value);
        let _: Value = c
            .post_json(
                &format!("{}/v1/apps/counter/checkpoint", n1.url),
                &json!({}),
            )
            .await
            .unwrap();
        let st: Value = c
            .get_json(&format!("{}/v1/apps/counter", n1.url))
            .await
            .unwrap();
        assert!(st["checkpoint"]["error"].is_null(), "{st}");
        latest(leader).await.expect("the leader has the checkpoint")
    };
    add(3).await;
    let old = checkpoint_at(&a, 3).await;

    // A resigns; B leads and receives the newer checkpoints.
    drop(stop_a);
    role(&b, "control").await;
    // (B asks for a checkpoint when it takes over: let it land first.)
    eventually("a checkpoint of counter on B", async || latest(&b).await).await;
    add(5).await;
    let newer = checkpoint_at(&b, 8).await;
    assert!(old != newer, "the state changed, so did its checkpoint");

    // A comes back (same address, same directory, its old file still
    // there) and leads again when B resigns.
    let bound_a = tern_api::local::Bound::at(a.trim_start_matches("https://"))
        .await
        .unwrap();
    let (a2, _stop_a2) =
        crate::nodes::start_control_on(bound_a, dir_a.path(), quick(etcd.store("again"))).await;
    assert_eq!(a2, a);
    role(&a, "standby").await;
    drop(stop_b);
    role(&a, "control").await;
    let served = eventually("a checkpoint of counter on A again", async || {
        latest(&a).await
    })
    .await;
    assert!(
        served != old,
        "A served the file of an older checkpoint as the latest"
    );

    // n1 is lost: the counter restarts on n2 with all 8 writes.
    drop(n1);
    eventually("the counter restarted on n2", async || {
        let st: Value = c
            .get_json(&format!("{}/v1/apps/counter", n2.url))
            .await
            .ok()?;
        (st["state"] == "running").then_some(())
    })
    .await;
    assert_eq!(count(&c, &n2.url).await, 8, "writes lost to the restart");
}

/// A standby keeps copies of the leader's checkpoint files (`mirror`):
/// when the leader is lost together with an app's node, the new leader
/// still restarts the app from its checkpoint, with every write it holds,
/// rather than afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_restarts_an_app_from_the_checkpoint_of_a_leader_lost_with_its_node() {
    let etcd = Etcd::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, stop_a) = start_control(dir_a.path(), quick(etcd.store("mirror"))).await;
    role(&a, "control").await;
    let (b, _stop_b) = start_control(dir_b.path(), quick(etcd.store("mirror"))).await;
    role(&b, "standby").await;
    let both = format!("{a},{b}");
    let n1 = TestNode::start_with("n1", |cfg| cfg.control_url = Some(both.clone())).await;
    let n2 = TestNode::start_with("n2", |cfg| cfg.control_url = Some(both.clone())).await;
    let c = client();
    crate::nodes::wait_for_nodes(&c, &a, 2).await;
    deploy_counter_on_n1(&c, &a).await;
    add_to_counter(&c, &n1.url, 5).await;
    let taken: Value = c
        .post_json(
            &format!("{}/v1/apps/counter/checkpoint", n1.url),
            &json!({}),
        )
        .await
        .unwrap();
    let st: Value = c
        .get_json(&format!("{}/v1/apps/counter", n1.url))
        .await
        .unwrap();
    assert!(st["checkpoint"]["error"].is_null(), "A has it: {st}");
    // The standby copies the file, named by its digest.
    let copy = dir_b.path().join("checkpoints").join(format!(
        "counter@{}.snap",
        taken["digest"].as_str().unwrap()
    ));
    eventually("the standby holds the checkpoint", async || {
        copy.exists().then_some(())
    })
    .await;

    // n1 and the leader are lost at once: no node can send B a fresh
    // checkpoint of the counter.
    drop(n1);
    drop(stop_a);
    role(&b, "control").await;
    eventually("the counter restarted on n2", async || {
        let st: Value = c
            .get_json(&format!("{}/v1/apps/counter", n2.url))
            .await
            .ok()?;
        (st["state"] == "running").then_some(())
    })
    .await;
    assert_eq!(
        count(&c, &n2.url).await,
        5,
        "restarted from the mirrored checkpoint, not afresh"
    );
}
