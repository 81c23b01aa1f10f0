//! A move whose caller goes away in the middle (the control plane that asked
//! for it dies) still ends: the app is handed over or resumed, never left
//! paused. The soak found apps paused for good on their source after the
//! control plane was killed during a cold move: the source's handling of
//! the move was cancelled with the request, between the pause and the
//! handover.

use std::time::{Duration, Instant};

use tern_api::types::{InvokeRequest, InvokeResponse, MigrateRequest, Mode};

use crate::nodes::{client, deploy, expect, TestNode};
use crate::relay::{Fault, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_whose_caller_goes_away_still_ends() {
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::COUNTER, "counter").await;
    expect(&c, &dst.url, "src", "counter", 2).await;
    // The relay holds the handover (a cold move's commit): by then the source has paused
    // the app and sent its state.
    let relay = Relay::start(&dst.url, "dst", Fault::HoldAt { suffix: "/commit" }, None).await;
    let caller = tokio::spawn({
        let c = c.clone();
        let req = MigrateRequest {
            to_name: "dst".into(),
            to_url: relay.url.clone(),
            mode: Mode::Cold,
            generation: 2,
            checkpoint_url: None,
            postcopy_after_rounds: None,
        };
        let url = format!("{}/v1/apps/counter/migrate", src.url);
        async move { c.post_json::<_, serde_json::Value>(&url, &req).await }
    });
    relay.wait_held().await;
    // The caller goes away; then the handover goes through.
    caller.abort();
    let _ = caller.await;
    relay.release();
    let quick = c.clone().with_timeout(Duration::from_secs(2));
    let get = InvokeRequest {
        export: "get".into(),
        args: vec![],
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        let mut answer = None;
        for node in [&src, &dst] {
            let url = format!("{}/v1/apps/counter/invoke", node.url);
            if let Ok(r) = quick.post_json::<_, InvokeResponse>(&url, &get).await {
                answer = Some(r);
            }
        }
        if let Some(r) = answer {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the app answers on neither node 30 s after its mover went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answered.results[0].as_i64(), Some(0), "{answered:?}");
}
