//! The dashboard in a real browser: a control plane and two nodes in this
//! process, an app under load, and headless Chromium on the control plane's
//! page. A relay in front of the target node holds the migration's first
//! copy, so the page is checked *while* the app moves (the move shows as
//! running, the app as migrating), then after it (done, with the downtime
//! the migration reported, the app on its new node), and the demand plot
//! shows the predictor's forecasts against what the app used. Screenshots
//! are kept in `target/test-artifacts/`.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tern_api::types::MigrationReport;
use tokio::task::block_in_place;

use crate::browser::{artifact_dir, Browser};
use crate::nodes::{client, start_control, Load, TestNode, TOKEN};
use crate::relay::{Fault, Relay};

const WAIT: Duration = Duration::from_secs(60);

/// `document.querySelector(sel)`'s attribute or text, as a JS expression.
fn js_attr(sel: &str, attr: &str) -> String {
    format!("(() => {{ const e = document.querySelector({sel:?}); return e ? e.getAttribute({attr:?}) : null; }})()")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_migration_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop_control) = start_control(dir.path(), |c| {
        c.rebalance_interval = Duration::from_secs(3600)
    })
    .await;
    let node1 = TestNode::start_with("node-1", |c| c.control_url = Some(control.clone())).await;
    // node-2 is known to the cluster by the relay's address, and the relay
    // holds the first copy of the first migration to it.
    let bound = TestNode::bind().await;
    let relay = Relay::start(
        &bound.url,
        "node-2",
        Fault::HoldAt { suffix: "/base" },
        None,
    )
    .await;
    let relay_url = relay.url.clone();
    let _node2 = TestNode::start_on(bound, "node-2", |c| {
        c.control_url = Some(control.clone());
        c.advertise_url = Some(relay_url);
    });

    let c = client();
    // The deploy names node-1: it must have registered first.
    crate::nodes::wait_for_nodes(&c, &control, 2).await;
    let counter = tern_artifacts::COUNTER;
    crate::nodes::deploy_through(
        &c,
        &control,
        counter,
        "counter",
        "node-1",
        serde_json::json!({}),
    )
    .await;
    // Paced, so that the rest of the test suite keeps some CPU.
    let load = Load::start(
        format!("{}/apps/counter/", node1.url),
        b"1",
        Some(Duration::from_millis(2)),
    );

    let page = format!("{control}/#token={TOKEN}");
    let mut b = block_in_place(Browser::start);
    block_in_place(|| {
        b.navigate(&page);
        // Both nodes, the app on node-1, live.
        b.wait_for(
            "both nodes ready",
            r#"document.querySelectorAll('#nodes .node[data-state="ready"]').length === 2"#,
            WAIT,
        );
        b.wait_for(
            "counter running on node-1",
            r#"(() => { const r = document.querySelector('#apps tr[data-app="counter"]'); return r && r.dataset.node === "node-1" && r.dataset.state === "running"; })()"#,
            WAIT,
        );
        assert_eq!(
            b.eval("document.getElementById('status').dataset.status"),
            "live"
        );
        // The token left the address bar.
        assert_eq!(b.eval("location.hash"), "");
    });

    // Start the move; the relay holds its first copy.
    let mover = {
        let c = c.clone();
        let url = format!("{control}/v1/apps/counter/migrate");
        tokio::spawn(async move {
            c.post_json::<_, MigrationReport>(
                &url,
                &serde_json::json!({"to": "node-2", "mode": "hot"}),
            )
            .await
        })
    };
    tokio::time::timeout(WAIT, relay.wait_held())
        .await
        .expect("the migration never reached the target's first copy");
    let served_before = load.served();
    block_in_place(|| {
        b.wait_for(
            "the migration as running",
            r#"(() => { const r = document.querySelector('#migrations tr[data-status="running"][data-app="counter"]'); return r && r.dataset.mode === "hot" && r.dataset.from === "node-1" && r.dataset.to === "node-2"; })()"#,
            WAIT,
        );
        b.wait_for(
            "counter as migrating",
            r#"document.querySelector('#apps tr[data-app="counter"]').dataset.state === "migrating""#,
            WAIT,
        );
        assert_eq!(
            b.eval(&js_attr(
                "#nodes .node[data-node=\"node-1\"] .chip[data-app=\"counter\"]",
                "class"
            )),
            "chip migrating"
        );
        assert!(
            b.eval("document.querySelectorAll('#timeline rect.span.running').length") == 1,
            "the timeline draws the running move"
        );
        b.screenshot(&artifact_dir().join("dashboard-migrating.png"));
    });
    // The app kept serving on node-1 while its move was held.
    let deadline = tokio::time::Instant::now() + WAIT;
    while load.served() < served_before + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app stopped serving during the first copy"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    relay.release();
    let report = tokio::time::timeout(WAIT, mover)
        .await
        .expect("the migration did not finish")
        .unwrap()
        .expect("the migration failed");
    assert_eq!(
        (report.from.as_str(), report.to.as_str()),
        ("node-1", "node-2")
    );

    block_in_place(|| {
        b.wait_for(
            "the migration as done",
            r#"document.querySelector('#migrations tr[data-status="done"][data-app="counter"]') !== null && document.querySelector('#migrations tr[data-status="running"]') === null"#,
            WAIT,
        );
        b.wait_for(
            "counter running on node-2",
            r#"(() => { const r = document.querySelector('#apps tr[data-app="counter"]'); return r && r.dataset.node === "node-2" && r.dataset.state === "running"; })()"#,
            WAIT,
        );
        // The downtime on the page is the one the migration reported.
        let shown = b.eval(
            r#"document.querySelector('#migrations tr[data-status="done"][data-app="counter"] td.downtime').textContent"#,
        );
        let shown = shown.as_str().unwrap().to_string();
        let (num, unit) = shown.split_once(' ').expect("downtime with a unit");
        let num: f64 = num.parse().unwrap();
        let ms = if unit == "s" { num * 1000.0 } else { num };
        assert!(
            (ms - report.downtime_ms).abs() <= 0.01 + report.downtime_ms * 0.01,
            "page shows {shown}, the report says {} ms",
            report.downtime_ms
        );
        assert_eq!(
            b.eval("document.querySelectorAll('#timeline rect.down').length"),
            1,
            "the timeline marks the downtime"
        );
        // Predicted against observed demand, once the predictor has a model.
        b.wait_for(
            "the predictor's forecasts for counter",
            r#"(() => { const c = document.querySelector('#demand .chart[data-app="counter"]'); const m = c && /^error: model .*\((\d+) periods\)/.exec(c.querySelector('.stat').textContent); return m && Number(m[1]) >= 3 && c.querySelector('polyline.line-predicted') !== null && c.querySelector('polyline.line-actual') !== null; })()"#,
            WAIT,
        );
        b.screenshot(&artifact_dir().join("dashboard.png"));

        // A wrong token gets the form and says why.
        b.navigate(&format!("{control}/#token=wrong"));
        b.wait_for(
            "the token form after a 401",
            r#"!document.getElementById('login').hidden && document.getElementById('login-why').textContent.includes('401')"#,
            WAIT,
        );
        assert_eq!(b.eval("document.getElementById('main').hidden"), true);
    });

    assert_eq!(load.stop().await, 0, "requests failed during the move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_page_is_self_contained_and_its_data_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |c| {
        c.rebalance_interval = Duration::from_secs(3600)
    })
    .await;
    let raw = crate::nodes::anonymous();
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let (status, body) = raw
            .send(
                hyper::Method::GET,
                &format!("{control}{path}"),
                "text/plain",
                Bytes::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}");
        let text = String::from_utf8_lossy(&body).replace("http://www.w3.org/2000/svg", "");
        assert!(text.len() > 100, "{path} ({kind}) is nearly empty");
        // Nothing is loaded from another origin.
        for needle in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(needle), "{path} refers to {needle}");
        }
    }
    let e = raw
        .get_json::<Value>(&format!("{control}/v1/dashboard"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    let v: Value = client()
        .get_json(&format!("{control}/v1/dashboard"))
        .await
        .unwrap();
    for key in [
        "nodes",
        "apps",
        "in_flight",
        "migrations",
        "demand",
        "policy",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
}
