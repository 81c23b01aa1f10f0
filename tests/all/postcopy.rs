//! Post-copy moves between real nodes in this process, over real HTTP on
//! loopback: a busy 64 MiB app moves with every byte and a short pause;
//! a target that cannot page makes the move go hot; a target lost midway
//! leaves the app running on the source; a source lost midway makes the
//! target hold the app's calls at once and restart it from its last
//! checkpoint, never from a mix, and run the held calls there.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tern_api::client::Client;
use tern_api::types::{InvokeRequest, InvokeResponse, Mode};
use tokio::sync::watch;

use crate::nodes::{client, deploy, expect, migrate, start_control, TestNode};
use crate::relay::{Fault, Hook, Relay};

const DEADLINE: Duration = Duration::from_secs(60);
/// 64 KiB Wasm pages the heap app grows by: 64 MiB.
const GROW_PAGES: i64 = 1024;

pub(crate) async fn call(
    c: &Client,
    url: &str,
    app: &str,
    export: &str,
    args: &[i64],
) -> Result<InvokeResponse, String> {
    let req = InvokeRequest {
        export: export.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    c.post_json(&format!("{url}/v1/apps/{app}/invoke"), &req)
        .await
        .map_err(|e| e.to_string())
}

pub(crate) async fn digest(c: &Client, url: &str) -> i64 {
    call(c, url, "heap", "digest", &[])
        .await
        .expect("digest")
        .results[0]
        .as_i64()
        .unwrap()
}

pub(crate) async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 64 MiB heap app (every byte written) on `node`.
pub(crate) async fn heap_app(c: &Client, node: &TestNode) {
    deploy(c, node, tern_artifacts::HEAPSTATE, "heap").await;
    call(c, &node.url, "heap", "grow", &[GROW_PAGES])
        .await
        .expect("grow");
}

/// The heap app's status on the node at `url` (`None`: not there).
pub(crate) async fn heap_status(c: &Client, url: &str) -> Option<Value> {
    c.get_json(&format!("{url}/v1/apps/heap")).await.ok()
}

/// A post-copy move to node `dst` at `to_url`, at generation 2.
pub(crate) fn postcopy_to(to_url: &str) -> tern_api::types::MigrateRequest {
    tern_api::types::MigrateRequest {
        to_name: "dst".into(),
        to_url: to_url.into(),
        mode: Mode::Postcopy,
        generation: 2,
        checkpoint_url: None,
        postcopy_after_rounds: None,
    }
}

pub(crate) fn paging_here() -> bool {
    match tern_runtime::postcopy::available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: post-copy is unavailable here: {why}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_app_moves_postcopy_with_every_byte() {
    if !paging_here() {
        return;
    }
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    heap_app(&c, &src).await;
    // One writer through the source (which forwards once the app moved):
    // touch(256 pages, seed) for seed 1, 2, 3...
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, mut done) = watch::channel(0i64);
    let entry = src.url.clone();
    let writer = tokio::spawn(async move {
        let c = client();
        let mut seed = 0;
        let mut failures = Vec::new();
        while !*stop_rx.borrow() {
            seed += 1;
            match call(&c, &entry, "heap", "touch", &[256, seed]).await {
                Ok(r) if r.results[0].as_i64().is_some_and(|n| n > 0) => {}
                other => failures.push(format!("touch #{seed}: {other:?}")),
            }
            done_tx.send_replace(seed);
        }
        (seed, failures)
    });
    let _ = tokio::time::timeout(DEADLINE, done.wait_for(|&n| n >= 10)).await;
    let r = migrate(&c, &src, &dst, "heap", Mode::Postcopy, 2)
        .await
        .expect("the app moves post-copy");
    eprintln!(
        "64 MiB busy app, post-copy: downtime {:.2} ms, total {:.1} ms, {} bytes, {} pages, {} held; {:?}",
        r.downtime_ms, r.total_ms, r.bytes_sent, r.pages_sent, r.requests_held, r.note
    );
    assert_eq!(r.mode, "postcopy", "{r:?}");
    assert_eq!(r.rounds, 0, "{r:?}");
    // No control plane: no checkpoint a target could restart from, so none
    // is taken for the move; the report says what that means.
    assert!(
        r.note
            .as_deref()
            .is_some_and(|n| n.contains("no control plane keeps this app's checkpoints")),
        "{r:?}"
    );
    assert!(
        r.bytes_sent >= (GROW_PAGES as u64) << 16,
        "every page went over: {r:?}"
    );
    // The report says how the target placed them: each page once, moved
    // into place or copied.
    let note = r.note.as_deref().unwrap_or_default();
    let number_before = |what: &str| -> u64 {
        let head = &note[..note
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} in {note}"))];
        let word = head.split_whitespace().last().unwrap_or_default();
        word.parse()
            .unwrap_or_else(|_| panic!("{word:?} before {what:?}: {note}"))
    };
    let placed = number_before(" into place and copied") + {
        let tail = &note[note.find("and copied ").unwrap() + "and copied ".len()..];
        let word = tail.split(|c: char| !c.is_ascii_digit()).next().unwrap();
        word.parse::<u64>().unwrap()
    };
    assert_eq!(placed, number_before(" pages to deliver"), "{note}");
    let at = *done.borrow();
    let _ = tokio::time::timeout(DEADLINE, done.wait_for(|&n| n >= at + 10)).await;
    let _ = stop.send(true);
    let (calls, failures) = tokio::time::timeout(DEADLINE, writer)
        .await
        .unwrap()
        .unwrap();
    assert!(failures.is_empty(), "no call failed: {failures:?}");

    // The state on the target is an unmoved run's.
    let on_target = call(&c, &dst.url, "heap", "digest", &[]).await.unwrap();
    assert_eq!(on_target.node, "dst");
    let rt = crate::support::fresh_runtime();
    let mut reference = crate::support::start(&rt, std::path::Path::new(tern_artifacts::HEAPSTATE));
    use tern_runtime::Val;
    reference.call("grow", &[Val::I64(GROW_PAGES)]).unwrap();
    for seed in 1..=calls {
        reference
            .call("touch", &[Val::I64(256), Val::I64(seed)])
            .unwrap();
    }
    let Val::I64(want) = reference.call("digest", &[]).unwrap()[0] else {
        panic!("digest is an i64")
    };
    assert_eq!(
        on_target.results[0].as_i64().unwrap(),
        want,
        "{calls} touches"
    );
    // The source dropped its frozen copy; the target's app is whole.
    let st = heap_status(&c, &dst.url).await.expect("its status");
    assert_eq!(
        (st["state"].as_str(), st["generation"].as_u64()),
        (Some("running"), Some(2)),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_that_cannot_page_takes_the_move_hot() {
    let src = TestNode::start("src").await;
    let dst = TestNode::start_with("dst", |c| c.postcopy = false).await;
    let c = client();
    heap_app(&c, &src).await;
    let before = digest(&c, &src.url).await;
    let r = migrate(&c, &src, &dst, "heap", Mode::Postcopy, 2)
        .await
        .expect("moves");
    assert_eq!(r.mode, "hot", "{r:?}");
    let note = r.note.clone().unwrap_or_default();
    assert!(
        note.contains("post-copy is not available on the target"),
        "{note}"
    );
    assert!(r.rounds >= 1, "{r:?}");
    assert_eq!(digest(&c, &dst.url).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_lost_midway_leaves_the_app_running_on_the_source() {
    if !paging_here() {
        return;
    }
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let dst_url = dst.url.clone();
    let c = client();
    heap_app(&c, &src).await;
    call(&c, &src.url, "heap", "push", &[7]).await.unwrap();
    let at_switch = digest(&c, &src.url).await;
    // The target's node stops at the second push of pages.
    let hook: Hook = Box::new(move || Box::pin(async move { drop(dst) }));
    let relay = Relay::start(
        &dst_url,
        "dst",
        Fault::DieAt {
            suffix: "/pages",
            nth: 2,
        },
        Some(hook),
    )
    .await;
    expect(&c, &dst_url, "src", "heap", 2).await;
    let req = postcopy_to(&relay.url);
    let e = c
        .post_json::<_, Value>(&format!("{}/v1/apps/heap/migrate", src.url), &req)
        .await
        .expect_err("the move fails");
    eprintln!("target lost mid-post-copy: {e}");
    assert!(relay.is_dead(), "{:?}", relay.exchanges());
    let msg = e.to_string();
    assert!(
        msg.contains("was lost mid-post-copy") && msg.contains("resumed on src"),
        "{msg}"
    );
    // The app runs on the source again, from its state at the switch, at
    // the new generation (a copy the target might still hold is older).
    let st = heap_status(&c, &src.url).await.expect("its status");
    assert_eq!(
        (st["state"].as_str(), st["generation"].as_u64()),
        (Some("running"), Some(2)),
        "{st}"
    );
    assert_eq!(digest(&c, &src.url).await, at_switch);
    call(&c, &src.url, "heap", "push", &[8])
        .await
        .expect("it serves");
}

/// The switch's answer is lost on its way back after the target took
/// over, and the link is slow to come back: the source finds the target
/// running the app, and serves its pages all the while (the target's
/// watch and page requests are not refused while it asks), then pushes
/// every one. The move succeeds with every byte and the target never
/// restarts from a checkpoint (found by `tern soak`: nothing was pushed,
/// or the watch was refused, and the calls since the checkpoint were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_switch_answer_still_delivers_every_page() {
    if !paging_here() {
        return;
    }
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    heap_app(&c, &src).await;
    for v in [7, 9] {
        call(&c, &src.url, "heap", "push", &[v]).await.unwrap();
    }
    let before = digest(&c, &src.url).await;
    // Longer than the source's watch takes to see a move end.
    let relay = Relay::start(
        &dst.url,
        "dst",
        Fault::LoseAnswerAt {
            suffix: "/postcopy",
            stall_next: Duration::from_millis(600),
        },
        None,
    )
    .await;
    expect(&c, &dst.url, "src", "heap", 2).await;
    let req = postcopy_to(&relay.url);
    let r: tern_api::types::MigrationReport = c
        .post_json(&format!("{}/v1/apps/heap/migrate", src.url), &req)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the target took over: the move goes on and completes: {e}; {:?}",
                relay.exchanges()
            )
        });
    eprintln!("lost switch answer: {r:?}");
    let seen = relay.exchanges();
    assert!(
        seen.iter()
            .any(|x| x.path.ends_with("/postcopy") && x.status == Some(200)),
        "the target took the switch and its answer was dropped: {seen:?}"
    );
    assert_eq!(r.mode, "postcopy", "{r:?}");
    let st = heap_status(&c, &dst.url).await.expect("its status");
    assert_eq!(
        (st["state"].as_str(), st["generation"].as_u64()),
        (Some("running"), Some(2)),
        "{st}"
    );
    assert!(st["last_error"].is_null(), "no restart on the target: {st}");
    assert_eq!(digest(&c, &dst.url).await, before, "every page arrived");
    let len = call(&c, &dst.url, "heap", "push", &[11]).await.unwrap();
    assert_eq!(len.results[0].as_i64(), Some(3), "{len:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_lost_midway_makes_the_target_restart_from_the_checkpoint() {
    source_lost_midway(true, false).await;
}

/// An app with no checkpoint yet (it just arrived, or just started): the
/// source takes one before the switch, so a lost source still leaves the
/// target something whole to restart from (found by `tern soak`: the app
/// stayed failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_lost_midway_before_any_checkpoint_still_leaves_one_to_restart_from() {
    source_lost_midway(false, false).await;
}

/// A source that says it is done while pages are still missing (never the
/// case when every push landed) leaves the app as a lost source does: it
/// restarts from its checkpoint, not stopped (found by `tern soak`: the
/// app stayed stopped). A `/done` naming another generation of the app's
/// moves (an older move's late message) is no concern of this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_done_with_pages_missing_makes_the_target_restart_from_the_checkpoint() {
    source_lost_midway(true, true).await;
}

async fn source_lost_midway(checkpoint_first: bool, done_early: bool) {
    if !paging_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |_| {}).await;
    let cu = control.clone();
    // The source waits a minute before pushing: the move stays midway.
    let n1 = TestNode::start_with("n1", move |cfg| {
        cfg.control_url = Some(cu);
        cfg.postcopy_push_after = Duration::from_secs(60);
    })
    .await;
    let cu = control.clone();
    // n2 pulls no page of a lazy restart in the background: only those
    // the app touches come.
    let n2 = TestNode::start_with("n2", move |cfg| {
        cfg.control_url = Some(cu);
        cfg.lazy_pull_after = Duration::from_secs(60);
    })
    .await;
    let c = client();
    wait_until("the nodes register", || async {
        let v: Vec<Value> = c
            .get_json(&format!("{control}/v1/nodes"))
            .await
            .unwrap_or_default();
        v.len() == 2
    })
    .await;
    let bytes = std::fs::read(tern_artifacts::HEAPSTATE).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), bytes.into())
        .await
        .unwrap();
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": "heap", "module_sha256": sha, "node": "n1"}),
        )
        .await
        .unwrap();
    wait_until("the app runs", || async {
        call(&c, &n1.url, "heap", "len", &[]).await.is_ok()
    })
    .await;
    call(&c, &n1.url, "heap", "grow", &[256]).await.unwrap();
    call(&c, &n1.url, "heap", "push", &[1]).await.unwrap();
    if checkpoint_first {
        // A checkpoint (it reaches the control plane), then more state.
        let _: Value = c
            .post_json(&format!("{}/v1/apps/heap/checkpoint", n1.url), &json!({}))
            .await
            .unwrap();
        call(&c, &n1.url, "heap", "push", &[2]).await.unwrap();
    } else {
        // None yet: the move takes one of the state it moves.
        let st = heap_status(&c, &n1.url).await.expect("its status");
        assert!(
            st["checkpoint"].is_null() || st["checkpoint"]["unix_ms"].is_null(),
            "the app has no checkpoint before the move: {st}"
        );
    }

    let mover = {
        let (c, control) = (c.clone(), control.clone());
        tokio::spawn(async move {
            c.post_json::<_, Value>(
                &format!("{control}/v1/apps/heap/migrate"),
                &json!({"to": "n2", "mode": "postcopy"}),
            )
            .await
        })
    };
    // The app resumes on n2 with its pages still on n1...
    wait_until("the app runs on n2", || async {
        heap_status(&c, &n2.url)
            .await
            .is_some_and(|st| st["state"] == "running")
    })
    .await;
    // The app works there: its call brings the pages it touches over.
    call(&c, &n2.url, "heap", "push", &[5]).await.unwrap();
    // ...and n1 is lost. n2 notices at once (its watch on n1 breaks) and
    // holds the app's calls from then on: a call it acknowledged now on
    // the pages it has would be lost with the restart from the checkpoint
    // (found by `tern soak`: such writes were lost). It says so.
    if done_early {
        let generation = c
            .get_json::<Value>(&format!("{}/v1/apps/heap", n2.url))
            .await
            .unwrap()["generation"]
            .as_u64()
            .unwrap();
        let done = |g: u64| {
            let (c, url) = (c.clone(), n2.url.clone());
            async move {
                c.post_json::<_, Value>(
                    &format!("{url}/v1/postcopy/heap/done?generation={g}"),
                    &json!({}),
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(done(generation - 1).await["remaining"], 0);
        let st = heap_status(&c, &n2.url).await.expect("its status");
        assert!(st["last_error"].is_null(), "an older move's end: {st}");
        assert!(done(generation).await["remaining"].as_u64().unwrap() > 0);
        wait_until("n2 restarts the app", || async {
            heap_status(&c, &n2.url).await.is_some_and(|st| {
                st["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("restarted from its last checkpoint"))
            })
        })
        .await;
    } else {
        drop(n1);
        wait_until("n2 holds the app's calls", || async {
            heap_status(&c, &n2.url)
                .await
                .is_some_and(|st| st["holding"].is_string())
        })
        .await;
    }
    // A write now, on pages n2 holds, is held and runs on the instance
    // restored from the checkpoint: acknowledged, and kept.
    let held = call(&c, &n2.url, "heap", "push", &[5])
        .await
        .expect("the held call runs after the restart");
    // The app restarted on n2 from its checkpoint, lazily: most of its
    // 16 MiB is still on the control plane.
    let st = heap_status(&c, &n2.url).await.expect("its status");
    eprintln!("status after the loss: {}", st["last_error"]);
    assert_eq!(st["state"], "running", "{st}");
    assert!(st["holding"].is_null(), "{st}");
    let why = st["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("lost its source")
            && why.contains("restarted from its last checkpoint (lazily"),
        "{st}"
    );
    assert!(
        st["pages_pending"].as_u64().is_some_and(|p| p > 2000),
        "{st}"
    );
    // The checkpoint's state ([1]) and the held write, nothing else: not
    // the 2 written after the checkpoint, nor the 5 written on n2 before
    // the loss (both acknowledged before the source died: lost with it).
    let get = |export: &'static str, args: &'static [i64]| {
        let (c, url) = (c.clone(), n2.url.clone());
        async move {
            call(&c, &url, "heap", export, args).await.unwrap().results[0]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(held.results[0].as_i64(), Some(2), "{held:?}");
    assert_eq!(
        (
            get("len", &[]).await,
            get("sum", &[]).await,
            get("count", &[5]).await
        ),
        (2, 6, 1)
    );
    mover.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_that_does_not_converge_ends_in_postcopy_with_every_byte() {
    if !paging_here() {
        return;
    }
    let src = TestNode::start("src").await;
    let dst = TestNode::start("dst").await;
    let c = client();
    heap_app(&c, &src).await;
    // A writer that outruns pre-copy: 4096 pages (16 MiB) per call.
    let (stop, stop_rx) = watch::channel(false);
    let entry = src.url.clone();
    let writer = tokio::spawn(async move {
        let c = client();
        let mut seed = 0;
        while !*stop_rx.borrow() {
            seed += 1;
            call(&c, &entry, "heap", "touch", &[4096, seed])
                .await
                .expect("touch");
        }
        seed
    });
    expect(&c, &dst.url, "src", "heap", 2).await;
    let req = tern_api::types::MigrateRequest {
        to_name: "dst".into(),
        to_url: dst.url.clone(),
        mode: Mode::Hot,
        generation: 2,
        checkpoint_url: None,
        postcopy_after_rounds: Some(2),
    };
    let r: tern_api::types::MigrationReport = c
        .post_json(&format!("{}/v1/apps/heap/migrate", src.url), &req)
        .await
        .expect("moves");
    let _ = stop.send(true);
    let calls = tokio::time::timeout(DEADLINE, writer)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "hot then post-copy: mode {}, rounds {}, downtime {:.2} ms, total {:.1} ms; {:?}",
        r.mode, r.rounds, r.downtime_ms, r.total_ms, r.note
    );
    // Converged or switched, the state is the unmoved run's.
    if r.mode == "postcopy" {
        assert!(
            r.note
                .as_deref()
                .unwrap_or("")
                .contains("switched to post-copy"),
            "{r:?}"
        );
        assert_eq!(r.rounds, 2, "{r:?}");
    }
    let rt = crate::support::fresh_runtime();
    let mut reference = crate::support::start(&rt, std::path::Path::new(tern_artifacts::HEAPSTATE));
    use tern_runtime::Val;
    reference.call("grow", &[Val::I64(GROW_PAGES)]).unwrap();
    for seed in 1..=calls {
        reference
            .call("touch", &[Val::I64(4096), Val::I64(seed)])
            .unwrap();
    }
    let Val::I64(want) = reference.call("digest", &[]).unwrap()[0] else {
        panic!("digest is an i64")
    };
    assert_eq!(digest(&c, &dst.url).await, want, "{calls} touches");
}

/// An SDK app's restore hook runs on the target before it acknowledges the
/// switch, and reads memory still on the source: the source serves those
/// pages from the frozen app before it hands the instance over (found by
/// `tern soak`: every post-copy of its ledger apps stalled, then failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sdk_app_whose_restore_hook_reads_remote_pages_moves_postcopy() {
    if !paging_here() {
        return;
    }
    let src = TestNode::start("sdk-src").await;
    let dst = TestNode::start("sdk-dst").await;
    let c = client();
    deploy(&c, &src, tern_artifacts::COUNTER, "count").await;
    let ingress = crate::nodes::anonymous();
    let (status, body) = ingress
        .send(
            hyper::Method::POST,
            &format!("{}/apps/count/", src.url),
            "text/plain",
            bytes::Bytes::from_static(b"41"),
        )
        .await
        .expect("a call before the move");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"41\n"[..]));
    let r = migrate(&c, &src, &dst, "count", Mode::Postcopy, 2)
        .await
        .expect("the SDK app moves post-copy");
    assert_eq!(r.mode, "postcopy", "{r:?}");
    let (status, body) = ingress
        .send(
            hyper::Method::GET,
            &format!("{}/apps/count/", dst.url),
            "text/plain",
            bytes::Bytes::new(),
        )
        .await
        .expect("a call after the move");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"41\n"[..]));
}
