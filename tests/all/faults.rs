//! Faults during live migration, between real nodes in this process over
//! real HTTP on loopback: a target that dies in the middle of a move (during
//! the first copy, during the rounds, at the stop-and-copy), a page chunk
//! damaged on the wire, a big app written to hard while it moves hot, the
//! token on the node-to-node endpoints, and a move whose answer to the
//! control plane is lost.
//!
//! The faults come from the relay of `crate::relay`, put between the source
//! and the target (the source is told `to_url` = the relay).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_api::client::{Client, ClientError};
use tern_api::types::{
    InvokeRequest, InvokeResponse, MigrateRequest, MigrationOpen, MigrationReport, Mode, StartApp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::nodes::{client, deploy, migrate, TestNode, TOKEN};
use crate::relay::{Fault, Hook, Relay};

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Asks `from` to move `app` to whatever listens at `to_url` (a relay).
async fn migrate_via(
    c: &Client,
    from: &TestNode,
    to_name: &str,
    to_url: &str,
    app: &str,
    mode: Mode,
    generation: u64,
) -> Result<MigrationReport, ClientError> {
    let req = MigrateRequest {
        to_name: to_name.into(),
        to_url: to_url.into(),
        mode,
        generation,
        checkpoint_url: Some(format!("{}/v1/checkpoints/{app}", from.url)),
        postcopy_after_rounds: None,
    };
    c.post_json(&format!("{}/v1/apps/{app}/migrate", from.url), &req)
        .await
}

async fn invoke(
    c: &Client,
    url: &str,
    app: &str,
    export: &str,
    args: &[String],
) -> Result<InvokeResponse, ClientError> {
    let req = InvokeRequest {
        export: export.into(),
        args: args.to_vec(),
    };
    c.post_json(&format!("{url}/v1/apps/{app}/invoke"), &req)
        .await
}

async fn get_count(c: &Client, url: &str) -> (i64, String) {
    let r = invoke(c, url, "counter", "get", &[])
        .await
        .unwrap_or_else(|e| panic!("get on {url}: {e}"));
    (r.results[0].as_i64().expect("an i64"), r.node)
}

/// Waits until a counter reaches `at_least`, within the deadline.
async fn wait_count(rx: &mut watch::Receiver<u64>, at_least: u64, what: &str) {
    let reached = tokio::time::timeout(DEADLINE, rx.wait_for(|&n| n >= at_least))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    assert!(
        reached,
        "{what}: fewer than {at_least} within {DEADLINE:?} (at {})",
        *rx.borrow()
    );
}

/// Counter writers: each adds 1 through app ingress at `entry` in a loop,
/// until stopped, and keeps the totals it got back. Any failed call fails
/// the test.
struct Writers {
    stop: watch::Sender<bool>,
    done: Arc<watch::Sender<u64>>,
    tasks: Vec<JoinHandle<Vec<i64>>>,
}

impl Writers {
    fn start(entry: &str, app: &str, count: usize) -> Writers {
        let (stop, _) = watch::channel(false);
        let done = Arc::new(watch::channel(0u64).0);
        let tasks = (0..count)
            .map(|_| {
                let stop = stop.subscribe();
                let done = done.clone();
                let url = format!("{entry}/apps/{app}/");
                tokio::spawn(async move {
                    let c = client();
                    let mut totals = Vec::new();
                    while !*stop.borrow() {
                        let (status, body) = c
                            .send(
                                hyper::Method::POST,
                                &url,
                                "text/plain",
                                Bytes::from_static(b"1"),
                            )
                            .await
                            .unwrap_or_else(|e| panic!("a write failed: {e}"));
                        assert_eq!(status, 200);
                        totals.push(
                            String::from_utf8_lossy(&body)
                                .trim()
                                .parse::<i64>()
                                .expect("a count"),
                        );
                        done.send_modify(|n| *n += 1);
                    }
                    totals
                })
            })
            .collect();
        Writers { stop, done, tasks }
    }

    fn done(&self) -> watch::Receiver<u64> {
        self.done.subscribe()
    }

    /// Waits for `more` writes after now.
    async fn wait_more(&self, more: u64, what: &str) {
        let mut rx = self.done();
        let at = *rx.borrow();
        wait_count(&mut rx, at + more, what).await;
    }

    /// Stops the writers; every total they got back, sorted.
    async fn finish(self) -> Vec<i64> {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(
                tokio::time::timeout(DEADLINE, t)
                    .await
                    .expect("writers end")
                    .expect("no write failed"),
            );
        }
        all.sort();
        all
    }
}

async fn app_status_code(c: &Client, node: &TestNode, app: &str) -> u16 {
    match c
        .get_json::<serde_json::Value>(&format!("{}/v1/apps/{app}", node.url))
        .await
    {
        Ok(_) => 200,
        Err(e) => e.status().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------
// The target dies mid-transfer
// ---------------------------------------------------------------------------

/// Moves a counter hot, written to all along, to a target that dies at the
/// `nth` request of a step. The move fails, the app goes on at the source
/// with every write, and a later move to the (healthy) target works.
async fn target_dies_at(suffix: &'static str, nth: usize) {
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::COUNTER, "counter").await;

    let writers = Writers::start(&src.url, "counter", 2);
    writers.wait_more(20, "writes before the move").await;
    // While the relay holds the fatal request, the app keeps serving
    // (before the stop-and-copy): let 20 more writes land there, so the
    // attempt fails with writes made during it. At `/commit` the app is
    // paused: writes that arrive are held, and must run at the source after
    // the failure.
    let hook: Option<Hook> = if suffix == "/commit" {
        None
    } else {
        let mut rx = writers.done();
        Some(Box::new(move || {
            Box::pin(async move {
                let at = *rx.borrow();
                wait_count(&mut rx, at + 20, "writes while the target holds a transfer").await;
            })
        }))
    };
    let relay = Relay::start(&dst.url, "dst", Fault::DieAt { suffix, nth }, hook).await;
    let e = migrate_via(&c, &src, "dst", &relay.url, "counter", Mode::Hot, 2)
        .await
        .expect_err("a move to a dead target fails");
    eprintln!("target died at {suffix} #{nth}: {e}");
    assert!(
        relay.is_dead(),
        "the relay never reached its fatal request: {:?}",
        relay.exchanges()
    );
    let seen = relay.exchanges();
    let fatal = seen
        .iter()
        .find(|x| x.path.ends_with(suffix) && x.status.is_none())
        .expect("the fatal request");
    assert!(fatal.body_len > 0, "{fatal:?}");
    assert_eq!(
        e.status(),
        Some(502),
        "the source reports an unreachable target: {e}"
    );

    // Nothing runs on the target.
    assert_eq!(app_status_code(&c, &dst, "counter").await, 404);

    // The app still serves at the source, and writes go on.
    writers.wait_more(20, "writes after the failed move").await;
    let totals = writers.finish().await;
    let n = totals.len() as i64;
    assert_eq!(
        totals,
        (1..=n).collect::<Vec<_>>(),
        "every write ran exactly once, in the source's state"
    );
    let (count, node) = get_count(&c, &src.url).await;
    assert_eq!((count, node.as_str()), (n, "src"));
    let st: serde_json::Value = c
        .get_json(&format!("{}/v1/apps/counter", src.url))
        .await
        .unwrap();
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["generation"], 1, "{st}");

    // A later move to a healthy target works, writes still on.
    let writers = Writers::start(&src.url, "counter", 2);
    writers.wait_more(10, "writes before the second move").await;
    let r = migrate(&c, &src, &dst, "counter", Mode::Hot, 3)
        .await
        .expect("a move to a healthy target works");
    assert!(r.rounds >= 2 && r.bytes_sent > 0, "{r:?}");
    writers.wait_more(10, "writes after the second move").await;
    let totals = writers.finish().await;
    let m = totals.len() as i64;
    assert_eq!(
        totals,
        (n + 1..=n + m).collect::<Vec<_>>(),
        "every write ran exactly once"
    );
    let (count, node) = get_count(&c, &dst.url).await;
    assert_eq!((count, node.as_str()), (n + m, "dst"));
    eprintln!(
        "{suffix}: {n} writes kept through the failed move; then moved hot in {:.1} ms (downtime {:.2} ms, {} rounds), {m} more writes",
        r.total_ms, r.downtime_ms, r.rounds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_dies_during_the_first_copy() {
    target_dies_at("/base", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_dies_during_the_rounds() {
    target_dies_at("/pages", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_dies_at_the_stop_and_copy() {
    target_dies_at("/commit", 1).await;
}

// ---------------------------------------------------------------------------
// A damaged chunk
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_page_chunk_is_refused_and_the_app_stays() {
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::COUNTER, "counter").await;
    let writers = Writers::start(&src.url, "counter", 2);
    writers.wait_more(20, "writes before the move").await;

    let relay = Relay::start(&dst.url, "dst", Fault::CorruptFirstPages, None).await;
    let e = migrate_via(&c, &src, "dst", &relay.url, "counter", Mode::Hot, 2)
        .await
        .expect_err("a damaged chunk fails the move");
    eprintln!("damaged chunk: {e}");
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    let seen = relay.exchanges();
    let damaged = seen
        .iter()
        .find(|x| x.tampered)
        .unwrap_or_else(|| panic!("the relay damaged no /pages body: {seen:?}"));
    assert!(damaged.path.ends_with("/pages"), "{damaged:?}");
    assert_eq!(
        damaged.status,
        Some(400),
        "the target refuses the damaged chunk: {damaged:?}"
    );
    assert!(
        !seen.iter().any(|x| x.path.ends_with("/commit")),
        "no stop-and-copy after a refused chunk: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|x| x.method == "DELETE" && x.status == Some(200)),
        "the source closes the session on the target: {seen:?}"
    );

    // Nothing runs on the target; the app runs on the source, state intact.
    assert_eq!(app_status_code(&c, &dst, "counter").await, 404);
    writers.wait_more(20, "writes after the failed move").await;
    let totals = writers.finish().await;
    let n = totals.len() as i64;
    assert_eq!(
        totals,
        (1..=n).collect::<Vec<_>>(),
        "every write ran exactly once"
    );
    let (count, node) = get_count(&c, &src.url).await;
    assert_eq!((count, node.as_str()), (n, "src"));

    // The same move without the damage goes through.
    let r = migrate(&c, &src, &dst, "counter", Mode::Hot, 3)
        .await
        .expect("an undamaged move works");
    let (count, node) = get_count(&c, &dst.url).await;
    assert_eq!((count, node.as_str()), (n, "dst"), "{r:?}");
}

// ---------------------------------------------------------------------------
// A big, busy app
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_big_busy_app_moves_hot_with_every_byte() {
    // 16 pages per call, and the call that grows the memory soon after the
    // move starts (it starts after 20 calls and its first copy takes dozens
    // of calls' time): pages the tracker must arm late.
    let r = busy_app_moves_hot(16, Some(25)).await;
    assert!(r.rounds >= 2, "{r:?}");
}

/// An app that dirties 16 MiB per call, about as fast as pages move: pre-copy
/// cannot converge, so it slows the app down and stops within its budget
/// (not after 30 rounds of sending the memory again), and the pause takes
/// the rest; the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_writing_faster_than_it_moves_still_moves_hot_within_budget() {
    let r = busy_app_moves_hot(4096, None).await;
    let memory = 64u64 << 20;
    assert!(
        r.note
            .as_deref()
            .is_some_and(|n| n.contains("did not converge") && n.contains("the app slowed to 1/")),
        "{r:?}"
    );
    // The first copy, at most twice the memory again in rounds, the round
    // that crossed that budget, and the pause: five times the memory, and
    // the state (without the budget: seven times and more).
    assert!(
        r.bytes_sent <= 5 * memory + (4 << 20),
        "{} MiB sent: {r:?}",
        r.bytes_sent >> 20
    );
}

/// A 64 MiB heapstate app called without pause by one writer (`touch(TOUCH,
/// seed)` for seed 1, 2, 3..., except `grow(1)` at call `grow_at`) moves
/// hot; its state on the target equals an unmoved run's, and after a cold
/// move back the source's.
async fn busy_app_moves_hot(touch: i64, grow_at: Option<i64>) -> MigrationReport {
    const GROW_PAGES: i64 = 1024; // x 64 KiB = 64 MiB
    let grow_at = grow_at.unwrap_or(-1);
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::HEAPSTATE, "heap").await;
    let grown = invoke(&c, &src.url, "heap", "grow", &[GROW_PAGES.to_string()])
        .await
        .expect("grow");
    let mem_pages = grown.results[0].as_i64().unwrap();
    assert!(mem_pages >= GROW_PAGES, "memory is {mem_pages} Wasm pages");

    // One writer, so the order of its calls is known, through the source
    // (which forwards once the app has moved).
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, mut done) = watch::channel(0u64);
    let entry = src.url.clone();
    let writer = tokio::spawn(async move {
        let c = client();
        let mut seed = 0i64;
        let mut failures = Vec::new();
        while !*stop_rx.borrow() {
            seed += 1;
            let (export, args) = if seed == grow_at {
                ("grow", vec!["1".to_string()])
            } else {
                ("touch", vec![touch.to_string(), seed.to_string()])
            };
            match invoke(&c, &entry, "heap", export, &args).await {
                Ok(r) if r.results[0].as_i64().is_some_and(|n| n > 0) => {}
                Ok(r) => failures.push(format!("touch #{seed}: {r:?}")),
                Err(e) => failures.push(format!("touch #{seed}: {e}")),
            }
            done_tx.send_modify(|n| *n += 1);
        }
        (seed, failures)
    });
    wait_count(&mut done, 20, "touches before the move").await;

    let r = migrate(&c, &src, &dst, "heap", Mode::Hot, 2)
        .await
        .expect("the busy app moves");
    eprintln!(
        "64 MiB busy app, hot: downtime {:.2} ms, total {:.1} ms, {} bytes, {} rounds, {} pages, {} held, tracking {}",
        r.downtime_ms, r.total_ms, r.bytes_sent, r.rounds, r.pages_sent, r.requests_held, r.dirty_tracking
    );
    assert!(
        r.bytes_sent >= (GROW_PAGES as u64) << 16,
        "the whole buffer went over: {r:?}"
    );
    let at = *done.borrow();
    wait_count(&mut done, at + 20, "touches after the move").await;
    let _ = stop.send(true);
    let (calls, failures) = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("writer ends")
        .unwrap();
    assert!(failures.is_empty(), "no touch call failed: {failures:?}");

    // The digest on the target...
    let on_target = invoke(&c, &dst.url, "heap", "digest", &[])
        .await
        .expect("digest on the target");
    assert_eq!(on_target.node, "dst");
    let d_target = on_target.results[0].as_i64().unwrap();
    // ...is what the same calls give in an instance that never moved...
    let rt = crate::support::fresh_runtime();
    let mut reference = crate::support::start(&rt, std::path::Path::new(tern_artifacts::HEAPSTATE));
    use tern_runtime::Val;
    reference.call("grow", &[Val::I64(GROW_PAGES)]).unwrap();
    for seed in 1..=calls {
        if seed == grow_at {
            reference.call("grow", &[Val::I64(1)]).unwrap();
        } else {
            reference
                .call("touch", &[Val::I64(touch), Val::I64(seed)])
                .unwrap();
        }
    }
    let d_reference = match reference.call("digest", &[]).unwrap()[0] {
        Val::I64(d) => d,
        ref v => panic!("digest returned {v:?}"),
    };
    assert_eq!(
        d_target, d_reference,
        "the moved app's state is the unmoved run's ({calls} touches)"
    );
    // ...and what the source computes after a cold move back.
    let back = migrate(&c, &dst, &src, "heap", Mode::Cold, 3)
        .await
        .expect("cold move back");
    let on_source = invoke(&c, &src.url, "heap", "digest", &[])
        .await
        .expect("digest on the source");
    assert_eq!(on_source.node, "src");
    assert_eq!(on_source.results[0].as_i64().unwrap(), d_target, "{back:?}");
    eprintln!(
        "{calls} touches, digests equal ({d_target:#x}); cold back: total {:.1} ms, {} bytes",
        back.total_ms, back.bytes_sent
    );
    r
}

// ---------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_endpoints_require_the_token() {
    let node = TestNode::start("tok").await;
    let open = MigrationOpen {
        app: "x".into(),
        from: "elsewhere".into(),
        mode: Mode::Hot,
        spec: StartApp {
            name: "x".into(),
            module_sha256: "00".repeat(32),
            generation: 2,
            restart: "never".into(),
            ..Default::default()
        },
        checkpoint_digest: None,
        checkpoint_url: None,
        source_url: None,
    };
    let wrong = format!("{TOKEN}x");
    for token in [None, Some("wrong"), Some(wrong.as_str()), Some("")] {
        let c = Client::with_tls(token.map(str::to_string), &crate::nodes::trust()).unwrap();
        let e = c
            .post_json::<_, serde_json::Value>(&format!("{}/v1/migrations", node.url), &open)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401), "token {token:?}: {e}");
        for step in ["base", "pages", "commit", "cold"] {
            let e = c
                .post_bytes(
                    &format!("{}/v1/migrations/x-0/{step}", node.url),
                    Bytes::from_static(b"junk"),
                )
                .await
                .unwrap_err();
            assert_eq!(e.status(), Some(401), "token {token:?}, {step}: {e}");
        }
        let e = c
            .delete(&format!("{}/v1/migrations/x-0", node.url))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(401), "token {token:?}, delete: {e}");
    }
    // With the token the same call gets past the check (and fails on the
    // unknown module instead).
    let e = client()
        .post_json::<_, serde_json::Value>(&format!("{}/v1/migrations", node.url), &open)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
}

/// The link between the control plane and a move's source is cut after the
/// source took the request: the move goes on without its caller and
/// completes. The control plane, whose answer never came, finds out from
/// the target and records the app there (before, it kept the app on the
/// source, which no longer reported it, and restarted it from its
/// checkpoint over the copy that had moved: `tern soak` lost writes so).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_whose_answer_is_lost_is_found_where_it_went() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = crate::nodes::start_control(dir.path(), |c| {
        c.rebalance_interval = Duration::from_secs(3600)
    })
    .await;
    // n1, the source, is known to the cluster by the relay's address.
    let bound = TestNode::bind().await;
    let relay = Relay::start(
        &bound.url,
        "n1",
        Fault::LoseAnswerAt {
            suffix: "/v1/apps/counter/migrate",
            stall_next: Duration::ZERO,
        },
        None,
    )
    .await;
    let relay_url = relay.url.clone();
    let cu = control.clone();
    let n1 = TestNode::start_on(bound, "n1", move |c| {
        c.control_url = Some(cu);
        c.advertise_url = Some(relay_url);
    });
    let cu = control.clone();
    let n2 = TestNode::start_with("n2", move |c| c.control_url = Some(cu)).await;
    let c = client();
    crate::nodes::wait_for_nodes(&c, &control, 2).await;
    let (counter, none) = (tern_artifacts::COUNTER, serde_json::json!({}));
    crate::nodes::deploy_through(&c, &control, counter, "counter", "n1", none).await;
    let add = |url: String| {
        let c = c.clone();
        async move {
            let r: InvokeResponse = c
                .post_json(
                    &format!("{url}/v1/apps/counter/invoke"),
                    &InvokeRequest {
                        export: "add".into(),
                        args: vec!["5".into()],
                    },
                )
                .await
                .unwrap();
            (r.results[0].as_i64().unwrap(), r.node)
        }
    };
    assert_eq!(add(n1.url.clone()).await, (5, "n1".to_string()));

    let report: MigrationReport = c
        .post_json(
            &format!("{control}/v1/apps/counter/migrate"),
            &serde_json::json!({"to": "n2", "mode": "hot"}),
        )
        .await
        .expect("the move happened: the control plane finds it on the target");
    assert!(
        relay
            .exchanges()
            .iter()
            .any(|e| e.path.ends_with("/migrate")),
        "the source took the request: {:?}",
        relay.exchanges()
    );
    assert_eq!(
        (report.to.as_str(), report.generation),
        ("n2", 2),
        "{report:?}"
    );
    assert!(
        report
            .note
            .as_deref()
            .is_some_and(|n| n.contains("answer was lost")),
        "{report:?}"
    );
    let app: serde_json::Value = c
        .get_json(&format!("{control}/v1/apps/counter"))
        .await
        .unwrap();
    assert_eq!(
        (app["node"].as_str(), app["generation"].as_u64()),
        (Some("n2"), Some(2)),
        "{app}"
    );
    // It keeps its state there (the table places it where it runs, so no
    // heartbeat calls it lost).
    assert_eq!(add(n2.url.clone()).await, (10, "n2".to_string()));
    drop(n1);
}
