//! The security model, tested: every listener speaks TLS unless asked not
//! to, clients check the server, a node's certificate does its own work and
//! nothing more (and not once revoked or from another CA), a migration is
//! accepted only from the node the control plane named, nothing readable
//! crosses the wire, and a listener cannot be exhausted by slow or many
//! clients.

use std::time::Duration;

use bytes::Bytes;
use tern_api::client::{Client, ClientError};
use tern_api::tls::{Ca, Role, Tls};
use tern_api::types::{DeployRequest, MigrateRequest, Mode, NodeInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::nodes::{
    anonymous, client, deploy, expect, identity, start_control, trust, TestNode, TOKEN,
};
use crate::relay::Tap;

/// A client presenting `role`'s certificate (of the test CA), no token.
pub(crate) fn as_role(role: Role) -> Client {
    Client::with_tls(None, &identity(role)).unwrap()
}

/// Sends one plain-HTTP request to `url`'s host and port; the raw answer.
async fn plain_request(url: &str) -> String {
    let addr = url.split_once("://").unwrap().1;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nauthorization: Bearer test-token-0123456789\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_by_default() {
    let node = TestNode::start("plain-1").await;
    let dir = tempfile::tempdir().unwrap();
    let (control, _c) = start_control(dir.path(), |_| {}).await;
    for url in [&node.url, &control] {
        assert!(url.starts_with("https://"), "{url}");
        let answer = plain_request(url).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{url}: {answer}");
        assert!(answer.contains("HTTPS only"), "{url}: {answer}");
        assert!(
            !answer.contains("\"name\""),
            "no data over plain HTTP: {answer}"
        );
    }
    // Over TLS, with the CA, the same call works.
    let v: serde_json::Value = client()
        .get_json(&format!("{}/v1/health", node.url))
        .await
        .unwrap();
    assert_eq!(v["name"], "plain-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_wrong_or_no_ca_is_refused() {
    let node = TestNode::start("ca-1").await;
    let other = Ca::generate().unwrap();
    let wrong = Client::with_tls(
        Some(TOKEN.into()),
        &Tls::new(other.cert_pem.clone(), None).unwrap(),
    )
    .unwrap();
    for c in [wrong, Client::new(Some(TOKEN.into()))] {
        let e = c
            .get_json::<serde_json::Value>(&format!("{}/v1/status", node.url))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Certificate { .. }), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_node_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _c) = start_control(dir.path(), |_| {}).await;
    let node = TestNode::start("f-1").await;
    // A certificate naming a node, signed by another CA: the handshake fails.
    let other = Ca::generate().unwrap();
    let id = other
        .issue(&Role::Node("f-1".into()), &tern_api::tls::local_hosts(&[]))
        .unwrap();
    let foreign = Client::with_tls(None, &Tls::new(trust().ca_pem, Some(id)).unwrap()).unwrap();
    for url in [
        format!("{control}/v1/nodes"),
        format!("{}/v1/status", node.url),
    ] {
        let e = foreign
            .post_json::<_, serde_json::Value>(&url, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            e.status().is_none(),
            "a foreign certificate must not reach the API: {url}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_is_refused_by_the_control_plane_and_by_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _c) = start_control(dir.path(), |_| {}).await;
    let peer = TestNode::start_with("r-peer", |c| c.control_url = Some(control.clone())).await;
    let thief = as_role(Role::Node("r-1".into()));
    let info = NodeInfo {
        name: "r-1".into(),
        url: "https://127.0.0.1:9".into(),
        ..Default::default()
    };
    let _: serde_json::Value = thief
        .post_json(&format!("{control}/v1/nodes"), &info)
        .await
        .expect("a node registers itself");
    // The operator revokes it, without a restart.
    let _: serde_json::Value = client()
        .send(
            hyper::Method::DELETE,
            &format!("{control}/v1/tokens/node/r-1"),
            "application/json",
            Bytes::new(),
        )
        .await
        .map(|(_, b)| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let e = thief
        .post_json::<_, serde_json::Value>(&format!("{control}/v1/nodes"), &info)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");
    // The other node learns the revocation in its next heartbeat answer.
    let _: serde_json::Value = client()
        .post_json(
            &format!("{}/v1/migrations/expect", peer.url),
            &tern_api::types::MigrationExpect {
                app: "x".into(),
                from: "r-1".into(),
                generation: 2,
            },
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // As the announced source of `x`, it could ask about `x` (404),
        // until the node learns the revocation (403).
        let r = thief
            .get_json::<serde_json::Value>(&format!("{}/v1/apps/x", peer.url))
            .await;
        match r {
            Err(e) if e.status() == Some(403) && e.to_string().contains("revoked") => break,
            _ if std::time::Instant::now() > deadline => {
                panic!("node r-peer still accepts the revoked certificate: {r:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_credential_cannot_act_as_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _c) = start_control(dir.path(), |_| {}).await;
    let owner = TestNode::start_with("o-1", |c| c.control_url = Some(control.clone())).await;
    let _other = TestNode::start_with("o-2", |c| c.control_url = Some(control.clone())).await;
    let c = client();
    let bytes = std::fs::read(tern_artifacts::COUNTER).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    // Nodes register within a heartbeat or two.
    for _ in 0..50 {
        let nodes: Vec<serde_json::Value> =
            c.get_json(&format!("{control}/v1/nodes")).await.unwrap();
        if nodes.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = DeployRequest {
        name: "secret".into(),
        module_sha256: sha.clone(),
        node: Some("o-1".into()),
        env: vec![("API_KEY".into(), "hunter2".into())],
        ..Default::default()
    };
    let _: serde_json::Value = c
        .post_json(&format!("{control}/v1/apps"), &d)
        .await
        .unwrap();

    // o-2's certificate, stolen: no deploy, no removal, no reading o-1's app.
    let stolen = as_role(Role::Node("o-2".into()));
    let mut d2 = d.clone();
    d2.name = "mine".into();
    let e = stolen
        .post_json::<_, serde_json::Value>(&format!("{control}/v1/apps"), &d2)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "deploy: {e}");
    let e = stolen
        .delete(&format!("{control}/v1/apps/secret"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "rm: {e}");
    for path in [
        "/v1/apps/secret",
        "/v1/apps",
        "/v1/checkpoints/secret",
        "/v1/tokens",
    ] {
        let e = stolen
            .get_json::<serde_json::Value>(&format!("{control}{path}"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(403), "GET {path}: {e}");
    }
    let e = stolen
        .post_bytes(&format!("{control}/v1/apps/secret/snapshot"), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "snapshot: {e}");
    // Nor pinning its checkpoint to read it by ranges.
    let digest = "0123456789abcdef0123456789abcdef";
    let e = stolen
        .post_json::<_, serde_json::Value>(
            &format!("{control}/v1/checkpoints/secret/pin?digest={digest}"),
            &serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "pin: {e}");
    let e = stolen
        .get_json::<serde_json::Value>(&format!(
            "{control}/v1/checkpoints/secret?digest={digest}&offset=0&len=4096"
        ))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "a range: {e}");
    let e = stolen
        .post_json::<_, serde_json::Value>(
            &format!("{control}/v1/nodes/o-1/heartbeat"),
            &serde_json::json!({"name": "o-1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "a heartbeat for another node: {e}");
    // Straight at the node that runs it: nothing either.
    for (m, path) in [
        (hyper::Method::GET, "/v1/apps/secret"),
        (hyper::Method::GET, "/v1/status"),
        (hyper::Method::POST, "/v1/apps/secret/snapshot"),
        (hyper::Method::POST, "/v1/apps/secret/invoke"),
        (hyper::Method::DELETE, "/v1/apps/secret"),
        (hyper::Method::POST, "/v1/apps"),
        (hyper::Method::GET, "/v1/checkpoints/secret"),
    ] {
        let e = stolen
            .send(
                m.clone(),
                &format!("{}{path}", owner.url),
                "application/json",
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(403), "{m} {path} on o-1: {e}");
    }
    // A dashboard token reads, and changes nothing.
    let made: tern_api::types::TokenCreated = c
        .post_json(
            &format!("{control}/v1/tokens"),
            &tern_api::types::TokenCreate {
                scope: tern_api::types::Scope::Dashboard,
                ttl_secs: None,
                note: None,
            },
        )
        .await
        .unwrap();
    let viewer = Client::with_tls(Some(made.token), &trust()).unwrap();
    let _: serde_json::Value = viewer
        .get_json(&format!("{control}/v1/dashboard"))
        .await
        .unwrap();
    let e = viewer
        .delete(&format!("{control}/v1/apps/secret"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // The app is untouched.
    let v: serde_json::Value = c
        .get_json(&format!("{control}/v1/apps/secret"))
        .await
        .unwrap();
    assert_eq!(v["node"], "o-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_goes_only_to_the_node_whose_certificate_names_the_target() {
    let src = TestNode::start("p-1").await;
    let dst = TestNode::start("p-2").await;
    let other = TestNode::start("p-3").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::COUNTER, "counter").await;
    let ask = |to_url: &str| MigrateRequest {
        to_name: "p-2".into(),
        to_url: to_url.into(),
        mode: Mode::Hot,
        generation: 2,
        checkpoint_url: None,
        postcopy_after_rounds: None,
    };
    // The move names p-2, but the address answers with p-3's certificate
    // (an address taken over, a record tampered with): nothing is sent.
    expect(&c, &other.url, "p-1", "counter", 2).await;
    let e = c
        .post_json::<_, serde_json::Value>(
            &format!("{}/v1/apps/counter/migrate", src.url),
            &ask(&other.url),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("names node p-3, not node p-2"),
        "{e}"
    );
    let e = c
        .get_json::<serde_json::Value>(&format!("{}/v1/apps/counter", other.url))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let v: serde_json::Value = c
        .get_json(&format!("{}/v1/apps/counter", src.url))
        .await
        .unwrap();
    assert_eq!(v["state"], "running");
    // To p-2 itself it moves.
    expect(&c, &dst.url, "p-1", "counter", 2).await;
    let r: tern_api::types::MigrationReport = c
        .post_json(
            &format!("{}/v1/apps/counter/migrate", src.url),
            &ask(&dst.url),
        )
        .await
        .unwrap();
    assert_eq!(r.to, "p-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_from_a_node_the_control_plane_did_not_name_is_refused() {
    let nodes = [
        TestNode::start("m-1").await,
        TestNode::start("m-2").await,
        TestNode::start("m-3").await,
    ];
    let c = client();
    deploy(&c, &nodes[0], tern_artifacts::COUNTER, "counter").await;
    let ask = |to: &TestNode, generation: u64| MigrateRequest {
        to_name: to.name.clone(),
        to_url: to.url.clone(),
        mode: Mode::Hot,
        generation,
        checkpoint_url: None,
        postcopy_after_rounds: None,
    };
    // Not announced at all.
    let e = c
        .post_json::<_, serde_json::Value>(
            &format!("{}/v1/apps/counter/migrate", nodes[0].url),
            &ask(&nodes[2], 2),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // Announced from another node.
    expect(&c, &nodes[2].url, "m-2", "counter", 2).await;
    let e = c
        .post_json::<_, serde_json::Value>(
            &format!("{}/v1/apps/counter/migrate", nodes[0].url),
            &ask(&nodes[2], 2),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // The app still runs at its source, and moves once the move is named.
    let v: serde_json::Value = c
        .get_json(&format!("{}/v1/apps/counter", nodes[0].url))
        .await
        .unwrap();
    assert_eq!(v["state"], "running");
    expect(&c, &nodes[2].url, "m-1", "counter", 2).await;
    let r: tern_api::types::MigrationReport = c
        .post_json(
            &format!("{}/v1/apps/counter/migrate", nodes[0].url),
            &ask(&nodes[2], 2),
        )
        .await
        .unwrap();
    assert_eq!(r.generation, 2);
    // A node cannot open a session in another node's name.
    let open = tern_api::types::MigrationOpen {
        app: "counter".into(),
        from: "m-1".into(),
        mode: Mode::Hot,
        spec: tern_api::types::StartApp {
            name: "counter".into(),
            module_sha256: "00".repeat(32),
            generation: 9,
            ..Default::default()
        },
        checkpoint_digest: None,
        checkpoint_url: None,
        source_url: None,
    };
    let e = as_role(Role::Node("m-2".into()))
        .post_json::<_, serde_json::Value>(&format!("{}/v1/migrations", nodes[1].url), &open)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
}

/// A page of the app's memory that is distinctive: not all one byte.
fn distinctive_page(snap: &tern_runtime::Snapshot) -> Vec<u8> {
    for m in &snap.body.memories {
        for r in &m.runs {
            let data = snap.run_data(r).unwrap();
            for page in data.chunks(4096) {
                let distinct = {
                    let mut seen = [false; 256];
                    page.iter().for_each(|b| seen[*b as usize] = true);
                    seen.iter().filter(|s| **s).count()
                };
                if page.len() == 4096 && distinct > 32 {
                    return page[1024..1024 + 256].to_vec();
                }
            }
        }
    }
    panic!("no distinctive page in the app's memory");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_in_the_middle_of_a_migration_reads_nothing() {
    let src = TestNode::start("w-1").await;
    let dst = TestNode::start("w-2").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::HEAPSTATE, "heap").await;
    let snap = c
        .post_bytes(&format!("{}/v1/apps/heap/snapshot", src.url), Bytes::new())
        .await
        .unwrap();
    let snap = tern_runtime::Snapshot::from_bytes(snap.to_vec()).unwrap();
    let page = distinctive_page(&snap);
    // Every byte between source and target goes through the tap.
    let tap = Tap::start(&dst.url).await;
    expect(&c, &dst.url, "w-1", "heap", 2).await;
    let req = MigrateRequest {
        to_name: "w-2".into(),
        to_url: tap.url.clone(),
        mode: Mode::Hot,
        generation: 2,
        checkpoint_url: None,
        postcopy_after_rounds: None,
    };
    let r: tern_api::types::MigrationReport = c
        .post_json(&format!("{}/v1/apps/heap/migrate", src.url), &req)
        .await
        .unwrap();
    let wire = tap.bytes();
    assert!(
        wire.len() as u64 >= r.bytes_sent / 2,
        "the tap saw the move ({} bytes of {})",
        wire.len(),
        r.bytes_sent
    );
    assert!(
        !contains(&wire, TOKEN.as_bytes()),
        "the token crossed the wire"
    );
    assert!(
        !contains(&wire, &page),
        "a page of the app's memory crossed the wire readable"
    );
    assert!(
        !contains(&wire, b"/v1/migrations"),
        "the protocol crossed the wire readable"
    );

    // The same tap between nodes asked to speak plain HTTP sees it all:
    // the check above would catch a leak.
    let plain = |name: &'static str| async move {
        let bound = TestNode::bind().await.plain();
        TestNode::start_on(bound, name, |c| c.tls = None)
    };
    let (p1, p2) = (plain("p-1").await, plain("p-2").await);
    let pc = Client::new(Some(TOKEN.into()));
    deploy(&pc, &p1, tern_artifacts::HEAPSTATE, "heap").await;
    let tap = Tap::start(&p2.url).await;
    let req = MigrateRequest {
        to_url: tap.url.clone(),
        to_name: "p-2".into(),
        ..req
    };
    let _: serde_json::Value = pc
        .post_json(&format!("{}/v1/apps/heap/migrate", p1.url), &req)
        .await
        .unwrap();
    let wire = tap.bytes();
    assert!(contains(&wire, TOKEN.as_bytes()) && contains(&wire, &page));
}

// ---------------------------------------------------------------------------
// Listener hardening
// ---------------------------------------------------------------------------

/// A plain server of `tern_api::server` answering 200, with these bounds.
async fn bounded_server(
    max_connections: usize,
    timeout: Duration,
) -> (String, tern_api::local::Served) {
    let bound = tern_api::local::Bound::loopback().await.unwrap().plain();
    let served = tern_api::local::Served::spawn(bound, move |listener, shutdown| async move {
        let handler: tern_api::server::Handler = std::sync::Arc::new(|_req| {
            Box::pin(async {
                tern_api::server::json(hyper::StatusCode::OK, &serde_json::json!({"ok": true}))
            })
        });
        let mut opts = tern_api::server::ServeOptions::plain();
        opts.max_connections = max_connections;
        opts.header_timeout = timeout;
        tern_api::server::serve(listener, opts, handler, shutdown).await;
        Ok(())
    });
    let addr = served.url.trim_start_matches("http://").to_string();
    (addr, served)
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_stay_open() {
    let (addr, _s) = bounded_server(4096, Duration::from_secs(1)).await;
    let mut conns = Vec::new();
    for _ in 0..500 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        conns.push(s);
    }
    let t0 = std::time::Instant::now();
    let mut open = 0;
    for s in &mut conns {
        if !closed_within(s, Duration::from_secs(4)).await {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "half-sent requests still open after {:?}",
        t0.elapsed()
    );
    // The server still serves.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds() {
    let cap = 20;
    let (addr, _s) = bounded_server(cap, Duration::from_secs(30)).await;
    let mut conns = Vec::new();
    for _ in 0..cap * 2 {
        conns.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut closed = 0;
    for s in &mut conns {
        if closed_within(s, Duration::from_millis(100)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, cap,
        "exactly the connections past the cap are closed"
    );
    // Once those held end, new ones are served again.
    drop(conns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Out of file descriptors, `accept` fails at once, again and again: the
/// loop must back off, not spin. Run in a child process (its descriptor
/// limit is lowered), whose CPU time is measured.
#[test]
fn accept_errors_do_not_spin() {
    if let Some(port_file) = std::env::var_os("TERN_TEST_ACCEPT_CHILD") {
        return accept_child(std::path::PathBuf::from(port_file));
    }
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "security::accept_errors_do_not_spin",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TERN_TEST_ACCEPT_CHILD", &port_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            if p.ends_with('\n') {
                break p.trim().to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // More connections than the child has descriptors left: its accepts
    // fail with EMFILE while these stay open.
    let conns: Vec<_> = (0..64)
        .filter_map(|_| std::net::TcpStream::connect(format!("127.0.0.1:{port}")).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    };
    let before = cpu(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(child.id()) - before;
    let _ = child.kill();
    let _ = child.wait();
    drop(conns);
    assert!(
        used < 0.4,
        "the accept loop used {used:.2} s of CPU in 2 s while out of descriptors"
    );
}

fn accept_child(port_file: std::path::PathBuf) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, _s) = bounded_server(4096, Duration::from_secs(30)).await;
        // Few descriptors left beyond those open now.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let lim = lower_fd_limit(open + 4);
        assert!(lim, "cannot lower the descriptor limit");
        let port = addr.rsplit_once(':').unwrap().1.to_string();
        std::fs::write(&port_file, format!("{port}\n")).unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
}

/// Lowers the soft limit on open descriptors to `n`.
fn lower_fd_limit(n: u64) -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct of the C layout.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return false;
        }
        r.rlim_cur = n.min(r.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0
    }
}

/// `GET /metrics` on the API listeners: for the operator (and, on the
/// control plane, a dashboard token), not for anybody, nor for a node's
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_api_listeners_need_the_operators_credentials() {
    use hyper::Method;
    let dir = tempfile::tempdir().unwrap();
    let (control, _c) = start_control(dir.path(), |_| {}).await;
    let node = TestNode::start_with("m-1", |c| c.control_url = Some(control.clone())).await;
    let get = |c: Client, url: String| async move {
        c.send_raw(Method::GET, &url, None, Bytes::new())
            .await
            .map(|r| {
                (
                    r.status.as_u16(),
                    String::from_utf8_lossy(&r.body).into_owned(),
                )
            })
    };
    let viewer: tern_api::types::TokenCreated = client()
        .post_json(
            &format!("{control}/v1/tokens"),
            &tern_api::types::TokenCreate {
                scope: tern_api::types::Scope::Dashboard,
                ttl_secs: None,
                note: None,
            },
        )
        .await
        .unwrap();
    let reader = anonymous().with_token(Some(viewer.token));
    for (who, c, at_control, at_node) in [
        ("the operator", client(), 200, 200),
        ("a dashboard token", reader, 200, 401),
        ("nobody", anonymous(), 401, 401),
        (
            "a node's certificate",
            as_role(Role::Node("m-1".into())),
            403,
            403,
        ),
    ] {
        for (url, want, what) in [
            (
                format!("{control}/metrics"),
                at_control,
                "tern_control_leading 1",
            ),
            (
                format!("{}/metrics", node.url),
                at_node,
                "tern_node_apps{node=\"m-1\"}",
            ),
        ] {
            let (status, body) = get(c.clone(), url.clone()).await.unwrap();
            assert_eq!(status, want, "{who} asking {url}: {body}");
            if status == 200 {
                assert!(body.contains(what), "{url} lacks {what}: {body}");
                assert!(body.ends_with("# EOF\n"));
            }
        }
    }
}
