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
