//! The control plane's scheduler loop on a live cluster: a small node runs
//! two CPU-bound apps under load, its demand (observed from heartbeats and
//! forecast by the predictor) goes past its capacity, and the rebalancer
//! relieves it by moving an app hot to the big node while the load goes on
//! through the small node's ingress, without a failed request.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tern_api::types::{AppView, DeployRequest, MigrationReport, Resources};
use tern_scheduler::RebalanceConfig;

use crate::nodes::{client, start_control, Load, TestNode};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overloaded_node_is_relieved_by_hot_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |cfg| {
        cfg.policy = tern_scheduler::Policy::Learned;
        cfg.rebalance_interval = Duration::from_millis(500);
        cfg.rebalance = RebalanceConfig {
            max_moves: 1,
            cooldown: 30,
            ..RebalanceConfig::default()
        };
    })
    .await;
    // A small node and a big one.
    let gib = 1u64 << 30;
    let small = TestNode::start_with("small", |c| {
        c.control_url = Some(control.clone());
        c.capacity = Some(Resources {
            cpu_milli: 200,
            memory_bytes: 4 * gib,
        });
    })
    .await;
    let _big = TestNode::start_with("big", |c| {
        c.control_url = Some(control.clone());
        c.capacity = Some(Resources {
            cpu_milli: 16_000,
            memory_bytes: 16 * gib,
        });
    })
    .await;

    let c = client();
    // The deploys name the small node: it must have registered first.
    crate::nodes::wait_for_nodes(&c, &control, 2).await;
    let bytes = std::fs::read(tern_artifacts::LIFE).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    // Both fit on the small node by what they declare (50m each).
    for name in ["life-a", "life-b"] {
        let req = DeployRequest {
            name: name.into(),
            module_sha256: sha.clone(),
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
    let loads: Vec<Load> = ["life-a", "life-b"]
        .iter()
        .map(|a| Load::start(format!("{}/apps/{a}/step?n=20", small.url), b"", None))
        .collect();

    // The rebalancer moves one of them off the small node, hot.
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
            "the small node was never relieved; nodes: {}",
            c.get_json::<Value>(&format!("{control}/v1/nodes"))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("rebalanced: {moved:?}");
    assert_eq!(moved.mode, "hot", "{moved:?}");
    assert_eq!(
        (moved.from.as_str(), moved.to.as_str()),
        ("small", "big"),
        "{moved:?}"
    );
    let reason = moved.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("rebalance: overload: source expected at")
            && reason.contains("of 200m CPU"),
        "{reason}"
    );
    assert!(
        moved.downtime_ms > 0.0 && moved.downtime_ms < moved.total_ms,
        "{moved:?}"
    );

    // The moved app serves from the big node, still through the small
    // node's ingress, and no request failed on the way.
    let apps: Vec<AppView> = c.get_json(&format!("{control}/v1/apps")).await.unwrap();
    let on = |n: &str| apps.iter().filter(|a| a.node.as_deref() == Some(n)).count();
    assert!(on("big") >= 1, "{apps:?}");
    let load = &loads[if moved.app == "life-a" { 0 } else { 1 }];
    let after = load.served();
    let deadline = tokio::time::Instant::now() + WAIT;
    while load.served() < after + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} stopped serving after its move",
            moved.app
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for l in loads {
        assert_eq!(l.stop().await, 0, "requests failed");
    }
}
