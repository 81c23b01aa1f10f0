//! A node serves its apps only while the control plane hears from it
//! (`node/src/lease.rs`). The soak found copies of an app answering on a
//! node the control plane had declared down (its heartbeats late on a
//! loaded machine) while the control plane restarted them elsewhere: two
//! copies served at once. Now the node stops first, and serves again once
//! its heartbeats are acknowledged. Meanwhile a call for an app it does not
//! hold is answered 503, not 404: nobody could say where the app runs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tern_api::local::Bound;
use tern_api::types::NodeView;

use crate::nodes::{client, deploy_through, start_control_on, wait_for_nodes, TestNode};

/// The control plane's heartbeat timeout here: the node's lease is half.
const TIMEOUT: Duration = Duration::from_secs(6);

async fn call(c: &tern_api::client::Client, node: &TestNode) -> (u16, String) {
    match c
        .send(
            hyper::Method::POST,
            &format!("{}/apps/counter/", node.url),
            "text/plain",
            Bytes::from_static(b"1"),
        )
        .await
    {
        Ok((status, body)) => (status.as_u16(), String::from_utf8_lossy(&body).into()),
        Err(e) => (e.status().unwrap_or(0), e.to_string()),
    }
}

/// Deploys `module` as `name` on node n1 through the control plane `ctl`,
/// once n1 has registered.
async fn deploy_on_n1(
    c: &tern_api::client::Client,
    ctl: &str,
    module: &str,
    name: &str,
    timeout_ms: Option<u64>,
) {
    wait_for_nodes(c, ctl, 1).await;
    deploy_through(
        c,
        ctl,
        module,
        name,
        "n1",
        json!({ "timeout_ms": timeout_ms }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_the_control_plane_stops_serving_before_its_apps_could_move() {
    let dir = tempfile::tempdir().unwrap();
    let bound = Bound::loopback().await.unwrap();
    let addr = bound.url.trim_start_matches("https://").to_string();
    let setup = |cfg: &mut tern_control::ControlConfig| cfg.heartbeat_timeout = TIMEOUT;
    let (ctl, served) = start_control_on(bound, dir.path(), setup).await;
    let node = TestNode::start_with("n1", |cfg| cfg.control_url = Some(ctl.clone())).await;
    let c = client().with_timeout(Duration::from_secs(5));
    deploy_on_n1(&c, &ctl, tern_artifacts::COUNTER, "counter", None).await;
    let (status, body) = call(&c, &node).await;
    assert_eq!((status, body.trim()), (200, "1"));

    // The control plane goes away: within half its timeout (and so before
    // it could call the node down and start the app elsewhere) the node
    // answers 503 and says why, on its ingress and on its API.
    let cut = Instant::now();
    drop(served);
    let refused_after = loop {
        let (status, body) = call(&c, &node).await;
        if status == 503 {
            assert!(body.contains("has not reached the control plane"), "{body}");
            break cut.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(cut.elapsed() < 2 * TIMEOUT, "n1 kept serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("n1 stopped serving {refused_after:?} after the control plane went away");
    assert!(
        refused_after < TIMEOUT,
        "n1 served {refused_after:?} after its last heartbeat; the control plane acts after {TIMEOUT:?}"
    );
    let e = c
        .post_json::<_, Value>(
            &format!("{}/v1/apps/counter/invoke", node.url),
            &json!({"export": "get", "args": []}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");

    // An app the node does not hold, while nobody can say where it runs:
    // 503 (try again), not 404 (no such app), and nothing remembered.
    let (status, body) = match c
        .send(
            hyper::Method::POST,
            &format!("{}/apps/elsewhere/", node.url),
            "text/plain",
            Bytes::from_static(b"1"),
        )
        .await
    {
        Ok((status, body)) => (status.as_u16(), String::from_utf8_lossy(&body).into_owned()),
        Err(e) => (e.status().unwrap_or(0), e.to_string()),
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("control plane did not answer"), "{body}");

    // The control plane comes back at the same address: the node's next
    // acknowledged heartbeat lets it serve again, the same copy, its state
    // whole (nothing ran while it refused).
    let (ctl, _served) = start_control_on(Bound::at(&addr).await.unwrap(), dir.path(), setup).await;
    let back = Instant::now();
    // A call made through the control plane at once, before the node's
    // next heartbeat renewed its lease, is not refused: the node answered
    // that it did not run it, and the control plane asked again.
    let got: Value = c
        .post_json(
            &format!("{ctl}/v1/apps/counter/invoke"),
            &json!({"export": "get", "args": []}),
        )
        .await
        .expect("the control plane rides out the node's lapsed lease");
    assert_eq!(got["node"], "n1", "{got}");
    let body = loop {
        let (status, body) = call(&c, &node).await;
        if status == 200 {
            break body;
        }
        assert!(
            back.elapsed() < 2 * TIMEOUT,
            "n1 never served again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let served_before: i64 = body.trim().parse().unwrap();
    assert!(served_before >= 2, "{body}");
    // And an app that exists nowhere is again a plain 404.
    let (status, _) = match c
        .send(
            hyper::Method::POST,
            &format!("{}/apps/elsewhere/", node.url),
            "text/plain",
            Bytes::from_static(b"1"),
        )
        .await
    {
        Ok((status, body)) => (status.as_u16(), body),
        Err(e) => (e.status().unwrap_or(0), Bytes::new()),
    };
    assert_eq!(status, 404);
}

/// A control plane that takes connections and never answers (a stopped
/// process, a wedged machine) does not keep its nodes from the one that
/// answers: a heartbeat or registration waits no longer than a lease
/// lasts (an answer after that would grant nothing), then the node tries
/// the next control plane. It waited 120 s before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_that_never_answers_does_not_hold_its_nodes() {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("https://{}", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        // Keeps what it accepts open and silent (a handful: the node's).
        let mut open = Vec::new();
        while open.len() < 64 {
            match hung.accept().await {
                Ok((s, _)) => open.push(s),
                Err(_) => break,
            }
        }
        open
    });
    let dir = tempfile::tempdir().unwrap();
    let bound = Bound::loopback().await.unwrap();
    let (ctl, _served) = start_control_on(bound, dir.path(), |_| {}).await;
    let controls = format!("{hung_url},{ctl}");
    let t0 = Instant::now();
    let _node = TestNode::start_with("n1", move |cfg| cfg.control_url = Some(controls)).await;
    let c = client().with_timeout(Duration::from_secs(5));
    loop {
        let ready = c
            .get_json::<Vec<NodeView>>(&format!("{ctl}/v1/nodes"))
            .await
            .is_ok_and(|ns| {
                ns.iter()
                    .any(|n| n.name == "n1" && n.last_heartbeat_ms_ago.is_some())
            });
        if ready {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "n1 never reached the control plane that answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "n1 registered with the answering control plane after {:?}",
        t0.elapsed()
    );
    held.abort();
}

/// A call admitted while the lease held, that waits for its turn until
/// after the lease ran out (behind a long call, here), is refused when its
/// turn comes, not run: the control plane may be starting the app
/// elsewhere by then. It ran and was acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_turn_comes_after_the_lease_ran_out_is_not_run() {
    const SHORT: Duration = Duration::from_secs(4);
    const LONG_MS: u64 = 8000;
    let dir = tempfile::tempdir().unwrap();
    let bound = Bound::loopback().await.unwrap();
    let addr = bound.url.trim_start_matches("https://").to_string();
    let setup = |cfg: &mut tern_control::ControlConfig| cfg.heartbeat_timeout = SHORT;
    let (ctl, served) = start_control_on(bound, dir.path(), setup).await;
    let node = TestNode::start_with("n1", |cfg| cfg.control_url = Some(ctl.clone())).await;
    let c = client().with_timeout(Duration::from_secs(30));
    // Its calls may run 8 s: twice the heartbeat timeout.
    deploy_on_n1(&c, &ctl, tern_artifacts::HEAPSTATE, "app", Some(LONG_MS)).await;
    let invoke = |export: &'static str, args: Value| {
        let (c, url) = (c.clone(), format!("{}/v1/apps/app/invoke", node.url));
        async move {
            c.post_json::<_, Value>(&url, &json!({"export": export, "args": args}))
                .await
        }
    };
    let t0 = Instant::now();
    while invoke("push", json!(["1"])).await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the app never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let app_url = format!("{}/v1/apps/app", node.url);
    let status = || {
        let (c, url) = (c.clone(), app_url.clone());
        async move { c.get_json::<Value>(&url).await.unwrap() }
    };
    // Starts `export` and waits until `started` says so. On a loaded
    // machine the lease can lapse for a moment while the control plane is
    // there (the call is then refused at once, unrun): it tries again.
    async fn start<F, S, Fut>(
        what: &str,
        call: F,
        started: S,
    ) -> tokio::task::JoinHandle<Result<Value, tern_api::client::ClientError>>
    where
        F: Fn() -> tokio::task::JoinHandle<Result<Value, tern_api::client::ClientError>>,
        S: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..20 {
            let t0 = Instant::now();
            let h = call();
            while !h.is_finished() && !started().await {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{what} never started"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !h.is_finished() {
                return h;
            }
            let e = h
                .await
                .unwrap()
                .expect_err(&format!("{what} returned at once"));
            assert_eq!(e.status(), Some(503), "{what}: {e}");
        }
        panic!("{what} was refused 20 times");
    }
    let spin = start(
        "the long call",
        || tokio::spawn(invoke("spin_forever", json!([]))),
        || async { status().await["in_call_ms"].is_u64() },
    )
    .await;
    let queued = start(
        "the queued push",
        || tokio::spawn(invoke("push", json!(["7"]))),
        // The running call keeps its place until it answers: two.
        || async { status().await["queued"] == 2 },
    )
    .await;
    // The control plane goes; the lease (2 s) runs out long before the
    // long call ends.
    drop(served);
    let e = spin.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("time"), "{e}");
    let e = queued
        .await
        .unwrap()
        .expect_err("the queued push ran after the lease");
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(
        e.to_string().contains("has not reached the control plane"),
        "{e}"
    );

    // Back with its control plane, the node serves the app as it was: one
    // push, not two.
    let (_ctl, _served) =
        start_control_on(Bound::at(&addr).await.unwrap(), dir.path(), setup).await;
    let t0 = Instant::now();
    let len = loop {
        match invoke("len", json!([])).await {
            Ok(r) => break r["results"][0].clone(),
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e}");
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "n1 never served again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(len, json!(1));
}
