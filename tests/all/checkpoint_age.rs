//! A checkpoint's age follows the app across moves: an app moved more often
//! than the checkpoint interval is still checkpointed once an interval (the
//! soak found apps that moved every few hundred milliseconds never
//! checkpointed again, so a node's death rolled them back to their first
//! checkpoint, however old).

use std::time::{Duration, Instant};

use tern_api::types::{AppStatus, Mode};

use crate::nodes::{client, deploy, migrate, TestNode};

async fn checkpoint_ms(c: &tern_api::client::Client, node: &TestNode) -> Option<u64> {
    let s: AppStatus = c
        .get_json(&format!("{}/v1/apps/counter", node.url))
        .await
        .unwrap();
    s.checkpoint.and_then(|c| c.unix_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_keeps_moving_is_still_checkpointed_every_interval() {
    let nodes = [TestNode::start("a").await, TestNode::start("b").await];
    let c = client();
    deploy(&c, &nodes[0], tern_artifacts::COUNTER, "counter").await;
    let _: serde_json::Value = c
        .post_json(&format!("{}/v1/apps/counter/checkpoint", nodes[0].url), &())
        .await
        .unwrap();
    let first = checkpoint_ms(&c, &nodes[0]).await.expect("a checkpoint");
    // Moved every 300 ms, hot and cold by turns: each node holds it for
    // far less than the interval.
    let deadline = Instant::now() + tern_node::CHECKPOINT_INTERVAL + Duration::from_secs(5);
    let (mut at, mut generation) = (0, 1);
    let newer = loop {
        let mode = if generation % 2 == 0 {
            Mode::Cold
        } else {
            Mode::Hot
        };
        migrate(
            &c,
            &nodes[at],
            &nodes[1 - at],
            "counter",
            mode,
            generation + 1,
        )
        .await
        .unwrap();
        at = 1 - at;
        generation += 1;
        let seen = checkpoint_ms(&c, &nodes[at]).await;
        assert!(
            seen >= Some(first),
            "the app's checkpoint time did not come with it: {seen:?} after {first}"
        );
        if seen > Some(first) {
            break seen.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint within the interval and 5 s after the last one while the app kept moving"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let age = newer - first;
    assert!(
        age >= tern_node::CHECKPOINT_INTERVAL.as_millis() as u64,
        "checkpointed after {age} ms: sooner than the interval"
    );
}

/// A checkpoint the control plane did not get (it was away) is not the
/// app's restart point: the status keeps naming the one before, says why,
/// and the node tries again within seconds, not an interval later (the
/// soak found the status naming a checkpoint no restart could use).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_the_control_plane_missed_is_not_counted_and_is_sent_again() {
    use tern_api::local::Bound;
    let dir = tempfile::tempdir().unwrap();
    let bound = Bound::loopback().await.unwrap();
    let addr = bound.url.trim_start_matches("https://").to_string();
    let (ctl, served) = crate::nodes::start_control_on(bound, dir.path(), |_| {}).await;
    let cu = ctl.clone();
    let node = TestNode::start_with("n1", move |cfg| cfg.control_url = Some(cu)).await;
    let c = client();
    crate::nodes::wait_for_nodes(&c, &ctl, 1).await;
    crate::nodes::deploy_through(
        &c,
        &ctl,
        tern_artifacts::COUNTER,
        "counter",
        "n1",
        serde_json::json!({}),
    )
    .await;
    let status = |c: tern_api::client::Client, url: String| async move {
        c.get_json::<AppStatus>(&format!("{url}/v1/apps/counter"))
            .await
            .unwrap()
            .checkpoint
            .unwrap_or_default()
    };
    let checkpoint = |c: tern_api::client::Client, url: String| async move {
        c.post_json::<_, serde_json::Value>(&format!("{url}/v1/apps/counter/checkpoint"), &())
            .await
    };
    checkpoint(c.clone(), node.url.clone()).await.unwrap();
    let good = status(c.clone(), node.url.clone()).await;
    assert!(good.error.is_none() && good.unix_ms.is_some(), "{good:?}");

    // Stopped, its store closed (the next one opens the same).
    served
        .shut_down(Duration::from_secs(10))
        .await
        .expect("the control plane stops");
    let _ = checkpoint(c.clone(), node.url.clone()).await;
    let missed = status(c.clone(), node.url.clone()).await;
    assert_eq!(missed.unix_ms, good.unix_ms, "{missed:?}");
    assert!(
        missed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not sent to the control plane")),
        "{missed:?}"
    );

    // The control plane comes back: the node sends a new one soon.
    let (_ctl, _served) =
        crate::nodes::start_control_on(Bound::at(&addr).await.unwrap(), dir.path(), |_| {}).await;
    let t0 = Instant::now();
    loop {
        let now = status(c.clone(), node.url.clone()).await;
        if now.error.is_none() && now.unix_ms > good.unix_ms {
            break;
        }
        assert!(
            t0.elapsed() < tern_node::CHECKPOINT_INTERVAL,
            "not sent again within an interval: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
