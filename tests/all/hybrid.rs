//! Hybrid moves through the control plane: an app that has no checkpoint
//! yet is checkpointed first, and the move goes on hybrid; an app
//! checkpointed again while its move opens still moves from the checkpoint
//! the move chose.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tern_api::types::MigrationReport;

use crate::nodes::{client, deploy_through, expect, start_control, wait_for_nodes, TestNode};
use crate::relay::{Fault, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hybrid_on_an_app_without_a_checkpoint_takes_one_and_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |_| {}).await;
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let control = control.clone();
        nodes.push(TestNode::start_with(name, move |c| c.control_url = Some(control)).await);
    }
    let c = client();
    let t0 = Instant::now();
    loop {
        let v: Vec<Value> = c
            .get_json(&format!("{control}/v1/nodes"))
            .await
            .unwrap_or_default();
        if v.len() == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "nodes register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bytes = std::fs::read(tern_artifacts::COUNTER).unwrap();
    let sha = hex::encode(tern_runtime::sha256(&bytes));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(bytes))
        .await
        .unwrap();
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": "counter", "module_sha256": sha, "node": "n1", "restart": "never"}),
        )
        .await
        .unwrap();
    let post = |url: String| {
        let c = c.clone();
        async move {
            let (status, body) = c
                .send(
                    Method::POST,
                    &format!("{url}/apps/counter/"),
                    "text/plain",
                    Bytes::from_static(b"5"),
                )
                .await
                .unwrap();
            assert_eq!(status, 200);
            String::from_utf8_lossy(&body).trim().to_string()
        }
    };
    assert_eq!(post(nodes[0].url.clone()).await, "5");
    assert_eq!(post(nodes[0].url.clone()).await, "10");
    // Moments after the deploy the node has taken no periodic checkpoint
    // (the first comes after 10 s), so the control plane holds none.
    let none = c
        .send(
            Method::GET,
            &format!("{control}/v1/checkpoints/counter"),
            "application/octet-stream",
            Bytes::new(),
        )
        .await;
    assert!(
        matches!(&none, Err(e) if e.status() == Some(404)),
        "no checkpoint before the move: {none:?}"
    );

    let report: MigrationReport = c
        .post_json(
            &format!("{control}/v1/apps/counter/migrate"),
            &json!({"to": "n2", "mode": "hybrid"}),
        )
        .await
        .expect("a hybrid move of an app without a checkpoint goes on");
    assert_eq!(report.mode, "hybrid", "{report:?}");
    assert_eq!((report.from.as_str(), report.to.as_str()), ("n1", "n2"));
    let note = report.note.clone().unwrap_or_default();
    assert!(note.contains("took one"), "the report says why: {report:?}");
    assert!(
        report.checkpoint_bytes_fetched > 0,
        "the target fetched the new checkpoint from the control plane: {report:?}"
    );
    // The checkpoint taken for the move is the control plane's now.
    let (status, kept) = c
        .send(
            Method::GET,
            &format!("{control}/v1/checkpoints/counter"),
            "application/octet-stream",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(kept.len() as u64, report.checkpoint_bytes_fetched);
    // The app goes on where it moved, with the state it had.
    assert_eq!(post(nodes[1].url.clone()).await, "15");
    let app: Value = c
        .get_json(&format!("{control}/v1/apps/counter"))
        .await
        .unwrap();
    assert_eq!(app["node"], "n2", "{app}");

    // Back and forth, each time from a newer checkpoint: a node keeps one
    // fetched copy of an app's checkpoint, not one per move.
    let fetched = |node: &TestNode| {
        std::fs::read_dir(node.data_dir().join("checkpoints"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("counter-") && n.ends_with(".snap")
            })
            .count()
    };
    for (i, to) in ["n1", "n2", "n1", "n2"].into_iter().enumerate() {
        let from = if to == "n1" { &nodes[1] } else { &nodes[0] };
        assert_eq!(post(from.url.clone()).await, (20 + 5 * i).to_string());
        let _: Value = c
            .post_json(
                &format!("{}/v1/apps/counter/checkpoint", from.url),
                &json!({}),
            )
            .await
            .unwrap();
        let r: MigrationReport = c
            .post_json(
                &format!("{control}/v1/apps/counter/migrate"),
                &json!({"to": to, "mode": "hybrid"}),
            )
            .await
            .unwrap();
        assert!(r.checkpoint_bytes_fetched > 0, "{r:?}");
    }
    for n in &nodes {
        assert_eq!(fetched(n), 1, "fetched checkpoints kept on {}", n.name);
    }
}

/// The source chooses the app's latest checkpoint as the move's base; if
/// the app is checkpointed again before the target fetches it, the control
/// plane holds the newer one. The target then fetches the chosen one from
/// the source, which keeps it for the move (found by `tern soak`: about
/// one hybrid move in 150 failed with "the checkpoint ... changed
/// meanwhile").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_taken_while_a_hybrid_move_opens_does_not_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _stop) = start_control(dir.path(), |_| {}).await;
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let control = control.clone();
        nodes.push(TestNode::start_with(name, move |c| c.control_url = Some(control)).await);
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let c = client();
    wait_for_nodes(&c, &control, 2).await;
    let never = json!({"restart": "never"});
    deploy_through(
        &c,
        &control,
        tern_artifacts::COUNTER,
        "counter",
        "n1",
        never,
    )
    .await;
    let add = |url: String, n: i64| {
        let c = c.clone();
        async move {
            let r: Value = c
                .post_json(
                    &format!("{url}/v1/apps/counter/invoke"),
                    &json!({"export": "add", "args": [n.to_string()]}),
                )
                .await
                .unwrap();
            r["results"][0].as_i64().unwrap()
        }
    };
    let checkpoint = |url: String| {
        let c = c.clone();
        async move {
            let r: Value = c
                .post_json(&format!("{url}/v1/apps/counter/checkpoint"), &json!({}))
                .await
                .unwrap();
            r["digest"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(add(n1.url.clone(), 5).await, 5);
    let chosen = checkpoint(n1.url.clone()).await;

    // The move's opening is held on its way to n2 (after the source chose
    // its base); meanwhile the app changes and is checkpointed again.
    let relay = Relay::start(
        &n2.url,
        "n2",
        Fault::HoldAt {
            suffix: "/v1/migrations",
        },
        None,
    )
    .await;
    expect(&c, &n2.url, "n1", "counter", 2).await;
    let mover = {
        let (c, url) = (c.clone(), n1.url.clone());
        let req = tern_api::types::MigrateRequest {
            to_name: "n2".into(),
            to_url: relay.url.clone(),
            mode: tern_api::types::Mode::Hybrid,
            generation: 2,
            checkpoint_url: Some(format!("{control}/v1/checkpoints/counter")),
            postcopy_after_rounds: None,
        };
        tokio::spawn(async move {
            c.post_json::<_, MigrationReport>(&format!("{url}/v1/apps/counter/migrate"), &req)
                .await
        })
    };
    relay.wait_held().await;
    assert_eq!(add(n1.url.clone(), 5).await, 10);
    let newer = checkpoint(n1.url.clone()).await;
    assert_ne!(newer, chosen);
    let (_, at_control) = c
        .send(
            Method::GET,
            &format!("{control}/v1/checkpoints/counter"),
            "application/octet-stream",
            Bytes::new(),
        )
        .await
        .unwrap();
    assert!(!at_control.is_empty());
    relay.release();

    let report = mover
        .await
        .unwrap()
        .expect("the move goes on from the checkpoint it chose");
    assert_eq!(report.mode, "hybrid", "{report:?}");
    assert!(report.checkpoint_bytes_fetched > 0, "{report:?}");
    // n2 holds the chosen checkpoint, fetched from n1, and the app there
    // has every change, the one after that checkpoint too.
    assert!(
        n2.data_dir()
            .join("checkpoints")
            .join(format!("counter-{chosen}.snap"))
            .exists(),
        "n2 fetched the checkpoint the move chose"
    );
    assert_eq!(add(n2.url.clone(), 5).await, 15);
}

/// The pages a hybrid move sends first: exactly those that differ from the
/// checkpoint, byte for byte (format 2 checkpoints keep no page hashes),
/// whether the checkpoint is raw or compressed, for pages it stored, pages
/// it did not (zero) and pages added since by `memory.grow`.
#[test]
fn the_delta_from_a_checkpoint_is_exactly_the_pages_that_changed() {
    use tern_runtime::{Instance, RestoreOptions, Snapshot, SnapshotOptions, Val};
    const PAGE: u64 = 4096;
    let rt = crate::support::fresh_runtime();
    let m = rt
        .load(
            wat::parse_str(
                r#"(module (memory 2)
                     (func (export "grow") (param i32) (result i32)
                       (memory.grow (local.get 0))))"#,
            )
            .unwrap(),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for compress in [false, true] {
        let mut inst = Instance::start(&rt, &m, Default::default()).unwrap();
        // Pages 1, 2 and 20 hold data; the rest of the 32 are zero.
        for (p, b) in [(1u64, 7u8), (2, 8), (20, 9)] {
            inst.write_memory(p * PAGE, &vec![b; PAGE as usize])
                .unwrap();
        }
        let path = dir.path().join(format!("cp-{compress}.snap"));
        inst.snapshot(SnapshotOptions {
            embed_module: false,
            compress,
            hooks: false,
        })
        .unwrap()
        .write_file(&path)
        .unwrap();
        let cp = Snapshot::open(&path, true).unwrap();
        assert!(cp.body.memories.iter().all(|m| m.page_hashes.is_empty()));
        let mut target =
            Instance::restore(&rt, &cp, Some(m.clone()), RestoreOptions::default()).unwrap();
        assert!(
            inst.pages_differing_from(&cp).unwrap()[0].pages.is_empty(),
            "nothing changed yet"
        );
        // Changed: a stored page (1), one rewritten with what it held (2,
        // unchanged), a stored page zeroed (20), a zero page written (5),
        // and a page of memory grown since (40).
        inst.write_memory(PAGE + 100, &[1]).unwrap();
        inst.write_memory(2 * PAGE, &[8; 64]).unwrap();
        inst.write_memory(20 * PAGE, &vec![0; PAGE as usize])
            .unwrap();
        inst.write_memory(5 * PAGE + 4095, &[3]).unwrap();
        assert_eq!(inst.call("grow", &[Val::I32(1)]).unwrap().len(), 1);
        inst.write_memory(40 * PAGE, &[4]).unwrap();
        let delta = inst.pages_differing_from(&cp).unwrap();
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].pages, vec![1, 5, 20, 40], "compress {compress}");
        assert_eq!(delta[0].byte_size, 3 * 65536);
        // Applied to the checkpoint, the delta gives the memory back.
        target.apply_chunk(&delta[0]).unwrap();
        assert_eq!(
            target.read_memory(0, 3 * 65536).unwrap(),
            inst.read_memory(0, 3 * 65536).unwrap(),
            "compress {compress}"
        );
    }
}
