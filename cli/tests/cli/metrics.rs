//! A real Prometheus scrapes a live `tern up`, and the logs come as JSON
//! lines when asked.

use super::*;
use tern_artifacts::tools::{plain_http, Prometheus};

/// `http://HOST:PORT` of `http://HOST:PORT/metrics`.
fn base(url: &str) -> &str {
    url.trim_end_matches("/metrics")
}

/// The single value of an instant query's answer, if it has exactly one.
fn single_value(answer: &str) -> Option<f64> {
    let doc: serde_json::Value = serde_json::from_str(answer).ok()?;
    let result = doc["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_a_live_cluster_and_sees_a_moves_downtime() {
    let mut cluster = Cluster::up_capturing(
        2,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--json",
            "--log-format",
            "json",
        ],
    );
    let stdout = line_channel(cluster.child.stdout.take().unwrap());
    let stderr = line_channel(cluster.child.stderr.take().unwrap());
    let timeout = std::time::Duration::from_secs(30);
    let mut doc = String::new();
    let report: serde_json::Value = loop {
        doc.push_str(
            &stdout
                .recv_timeout(timeout)
                .expect("`tern up --json` reports"),
        );
        if let Ok(v) = serde_json::from_str(&doc) {
            break v;
        }
    };
    let control = report["metrics_url"]
        .as_str()
        .expect("the control plane's metrics_url")
        .to_string();
    let nodes: Vec<(String, String)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["metrics_url"]
                    .as_str()
                    .expect("a node's metrics_url")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 2);

    // The metrics listener answers /metrics without a credential, and
    // nothing else.
    let (status, text) = plain_http(base(&control), "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("tern_control_leading 1"), "{text}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let (status, _) = plain_http(base(&control), "GET", "/v1/apps", "").unwrap();
    assert_eq!(
        status, 404,
        "the metrics listener serves nothing but /metrics"
    );

    // An app that moves hot, then answers calls on its new node.
    json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "counter",
        "--node",
        "node-1",
        "--json",
    ]));
    let moved = json(&cluster.tern(&["migrate", "counter", "--to", "node-2", "--json"]));
    let downtime_ms = moved["downtime_ms"].as_f64().unwrap();
    for _ in 0..3 {
        json(&cluster.tern(&["invoke", "counter", "add", "1", "--json"]));
    }

    let mut targets = vec![("control".to_string(), control.clone())];
    targets.extend(nodes.iter().cloned());
    let targets: Vec<(&str, &str)> = targets
        .iter()
        .map(|(j, u)| (j.as_str(), u.as_str()))
        .collect();
    let prometheus = Prometheus::start(&targets);
    let value = |expr: &str| prometheus.query(expr).as_deref().and_then(single_value);
    let eventually = |expr: &str, want: f64| {
        wait_for(60, &format!("Prometheus to see {expr} = {want}"), || {
            value(expr).filter(|v| (v - want).abs() <= 1e-9 * want.abs().max(1.0))
        })
    };

    // Every target scraped.
    eventually("sum(up)", 3.0);
    // The move's downtime, as the control plane counted it and as the
    // command reported it.
    let sum = wait_for(60, "the downtime of the move in Prometheus", || {
        value(r#"tern_migration_downtime_seconds_sum{mode="hot"}"#)
    });
    assert!(
        (sum * 1000.0 - downtime_ms).abs() <= 1e-6 * downtime_ms.max(1.0),
        "Prometheus has {sum} s, `tern migrate` said {downtime_ms} ms"
    );
    eventually(r#"tern_migration_downtime_seconds_count{mode="hot"}"#, 1.0);
    eventually(r#"tern_migrations_total{mode="hot",outcome="ok"}"#, 1.0);
    // The source node counted it too.
    eventually(
        r#"tern_node_migration_downtime_seconds_count{node="node-1",mode="hot"}"#,
        1.0,
    );
    // The app's series come from the node it runs on now.
    eventually(r#"tern_app_generation{app="counter",node="node-2"}"#, 2.0);
    eventually(r#"tern_app_calls_total{app="counter",node="node-2"}"#, 3.0);
    eventually(
        r#"tern_app_call_errors_total{app="counter",node="node-2"}"#,
        0.0,
    );
    eventually(r#"tern_node_apps{node="node-1"}"#, 0.0);
    eventually(r#"tern_node_apps{node="node-2"}"#, 1.0);
    eventually(r#"tern_cluster_nodes{state="ready"}"#, 2.0);
    // A placement the scheduler decided.
    json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "placed",
        "--json",
    ]));
    eventually(
        r#"tern_scheduler_decisions_total{policy="requests",outcome="placed"}"#,
        1.0,
    );
    eventually("sum(tern_node_apps)", 2.0);

    // The control plane logged the move, as one JSON object per line.
    let logged = wait_for(30, "the move in the JSON logs", || {
        for line in stderr.try_iter() {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
            assert!(
                event["level"].is_string() && event["timestamp"].is_string(),
                "{line}"
            );
            if event["message"] == "migrated" && event["app"] == "counter" {
                return Some(event);
            }
        }
        None
    });
    assert_eq!(logged["to"], "node-2");
    assert_eq!(logged["downtime_ms"].as_f64(), Some(downtime_ms));
}
