//! Restart benchmark: a control plane and two nodes in this process, over
//! TLS on loopback. An app of 64 or 256 MiB (every page filled with
//! non-zero words) is checkpointed on `node-1`, which is then killed; the
//! control plane restarts the app on `node-2` from the checkpoint, either
//! lazily (the node starts the app once its state is in and reads pages as
//! they are touched and in the background) or whole (`node-2` cannot page:
//! it reads the whole file first, as every restart did before).
//!
//! For each restart: its time as the control plane measured it (from its
//! start to the node's answer that the app runs: `tern_restart_seconds`),
//! the app's first call after it (touching 16 pages), and a call that reads
//! every page (with lazy restore: every page not yet pulled is fetched on
//! touch). Next to them, a raw transfer of the checkpoint's bytes over the
//! same loopback (plain tokio TCP), measured right after in the same run:
//! restart/raw is the median of the per-restart ratios, with their range.
//!
//! The same for an operator's restore (`tern restore FILE`): the app is
//! snapshotted through the control plane (as `tern snapshot` does) and the
//! snapshot restored as another app on `node-2`; the restore is timed by
//! its caller, from sending the file to the control plane's answer.
//!
//! Run with `cargo bench -p tern --bench restart` (or `--workspace`).
//! Knobs: `TERN_BENCH_SIZES=64,256` (MiB), `TERN_BENCH_REPS=3`,
//! `TERN_BENCH_KINDS=restart,restore`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde_json::{json, Value};
use tern::LocalCluster;
use tern_api::client::Client;
use tern_api::local::Bound;
use tern_api::types::{InvokeRequest, InvokeResponse};

const APP: &str = "big";
/// The app an operator's restore makes.
const COPY: &str = "copy";
const TOKEN: &str = "bench-token-0123456789";

/// Grows its memory, fills it with xorshift words, reads pages.
const GUEST: &str = r#"
(module
  (memory 1)
  (func (export "grow_to") (param $pages i32) (result i32)
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $pages) (memory.size))))))
    (memory.size))
  (func (export "fill") (param $seed i64) (result i32)
    (local $a i32) (local $end i32) (local $x i64)
    (local.set $x (i64.or (local.get $seed) (i64.const 1)))
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (i64.store (local.get $a) (local.get $x))
        (local.set $a (i32.add (local.get $a) (i32.const 8)))
        (br $l)))
    (i32.const 1))
  ;; Adds one word of each of the first $pages 4 KiB pages (all: -1).
  (func (export "touch") (param $pages i32) (result i64)
    (local $a i32) (local $end i32) (local $sum i64)
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (if (i32.ge_s (local.get $pages) (i32.const 0))
      (then (if (i32.lt_u (i32.shl (local.get $pages) (i32.const 12)) (local.get $end))
        (then (local.set $end (i32.shl (local.get $pages) (i32.const 12)))))))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $sum (i64.add (local.get $sum) (i64.load (local.get $a))))
        (local.set $a (i32.add (local.get $a) (i32.const 4096)))
        (br $l)))
    (local.get $sum)))
"#;

struct Sample {
    restart: Duration,
    first_call: Duration,
    every_page: Duration,
    raw: Duration,
    file_bytes: u64,
}

fn main() -> Result<()> {
    let sizes: Vec<u64> = std::env::var("TERN_BENCH_SIZES")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .map(|s| s.trim().parse().context("TERN_BENCH_SIZES"))
        .collect::<Result<_>>()?;
    let reps: usize = std::env::var("TERN_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let kinds = std::env::var("TERN_BENCH_KINDS").unwrap_or_else(|_| "restart,restore".into());
    println!("| app | what | how | time (ms) | time / raw | first call (ms) | call reading every page (ms) | file |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in kinds.split(',').map(str::trim) {
        let restore = match kind {
            "restart" => false,
            "restore" => true,
            other => bail!("TERN_BENCH_KINDS: `{other}` is neither restart nor restore"),
        };
        for &mib in &sizes {
            for lazy in [true, false] {
                let mut samples = Vec::new();
                // Alternating would mix clusters; each sample is its own.
                for _ in 0..reps {
                    samples.push(rt.block_on(one(mib, lazy, restore))?);
                }
                print_row(mib, kind, lazy, &samples);
            }
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and range of some figures, as "median [min–max]".
fn spread(mut v: Vec<f64>, digits: usize) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    format!(
        "{med:.digits$} [{:.digits$}–{:.digits$}]",
        v[0],
        v[v.len() - 1]
    )
}

fn print_row(mib: u64, kind: &str, lazy: bool, s: &[Sample]) {
    println!(
        "| {mib} MiB | {kind} | {} | {} | {} | {} | {} | {:.1} MiB |",
        if lazy { "lazy" } else { "whole file first" },
        spread(s.iter().map(|x| ms(x.restart)).collect(), 1),
        spread(
            s.iter()
                .map(|x| x.restart.as_secs_f64() / x.raw.as_secs_f64())
                .collect(),
            2
        ),
        spread(s.iter().map(|x| ms(x.first_call)).collect(), 2),
        spread(s.iter().map(|x| ms(x.every_page)).collect(), 1),
        s[0].file_bytes as f64 / (1 << 20) as f64,
    );
}

async fn invoke(c: &Client, url: &str, export: &str, args: &[i64]) -> Result<InvokeResponse> {
    invoke_app(c, url, APP, export, args).await
}

async fn invoke_app(
    c: &Client,
    url: &str,
    app: &str,
    export: &str,
    args: &[i64],
) -> Result<InvokeResponse> {
    let req = InvokeRequest {
        export: export.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    c.post_json(&format!("{url}/v1/apps/{app}/invoke"), &req)
        .await
        .with_context(|| format!("{export} on {url}"))
}

/// One restart of a `mib` MiB app (or, `restore`, an operator's restore
/// of its snapshot), on a cluster of its own.
async fn one(mib: u64, lazy: bool, restore: bool) -> Result<Sample> {
    let dir = tempfile::tempdir()?;
    let mut cfg = tern_control::ControlConfig::new(dir.path(), TOKEN);
    cfg.heartbeat_timeout = Duration::from_secs(1);
    cfg.rebalance_interval = Duration::from_secs(3600);
    cfg.tls = Some(tern_control::ClusterTls::load_or_create(
        dir.path(),
        &["127.0.0.1".to_string()],
    )?);
    let mut cl = LocalCluster::start(Bound::loopback().await?, cfg, 0).await?;
    cl.add_node("node-1", |_| {}).await?;
    cl.add_node("node-2", |c| c.postcopy = lazy).await?;
    cl.wait_ready(Duration::from_secs(30), |_| {}).await?;
    let c = cl.client().with_timeout(Duration::from_secs(120));
    let control = cl.control_url.clone();
    let (n1, n2) = (cl.nodes[0].url.clone(), cl.nodes[1].url.clone());
    let wasm = wat::parse_str(GUEST)?;
    let sha = hex::encode(tern_runtime::sha256(&wasm));
    c.put_bytes(&format!("{control}/v1/modules/{sha}"), Bytes::from(wasm))
        .await?;
    let _: Value = c
        .post_json(
            &format!("{control}/v1/apps"),
            &json!({"name": APP, "module_sha256": sha, "node": "node-1", "restart": "always"}),
        )
        .await?;
    invoke(&c, &n1, "grow_to", &[(mib * 16) as i64]).await?;
    invoke(&c, &n1, "fill", &[7]).await?;
    let want = invoke(&c, &n1, "touch", &[-1]).await?.results[0].clone();
    let (restart, file_bytes, app) = if restore {
        let (t, bytes) = operator_restore(&c, &control).await?;
        (t, bytes, COPY)
    } else {
        let _: Value = c
            .post_json(&format!("{n1}/v1/apps/{APP}/checkpoint"), &json!({}))
            .await?;
        // Kept as `NAME@DIGEST.snap`.
        let file_bytes = std::fs::read_dir(dir.path().join("checkpoints"))?
            .flatten()
            .find(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!("{APP}@")) && name.ends_with(".snap")
            })
            .context("the control plane holds the checkpoint")?
            .metadata()?
            .len();
        cl.kill_node("node-1");
        let t0 = Instant::now();
        loop {
            let app: Value = c
                .get_json(&format!("{control}/v1/apps/{APP}"))
                .await
                .unwrap_or(Value::Null);
            if app["node"] == "node-2" && app["state"] == "running" {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the app was not restarted on node-2: {app}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (restart_seconds(&c, &control).await?, file_bytes, APP)
    };
    let t = Instant::now();
    invoke_app(&c, &n2, app, "touch", &[16]).await?;
    let first_call = t.elapsed();
    let t = Instant::now();
    let got = invoke_app(&c, &n2, app, "touch", &[-1]).await?.results[0].clone();
    let every_page = t.elapsed();
    if got != want {
        bail!("the {app} app's memory differs: {got} != {want}");
    }
    let raw = tern_api::local::raw_loopback_transfer(file_bytes).await?;
    for e in cl.shut_down(Duration::from_secs(10)).await {
        eprintln!("shutting down: {e}");
    }
    Ok(Sample {
        restart,
        first_call,
        every_page,
        raw,
        file_bytes,
    })
}

/// `tern restore FILE` of the app's snapshot as [`COPY`] on node-2: the
/// snapshot is taken through the control plane (with the cluster's tag)
/// and sent back; the time from sending it to the answer, and its size.
async fn operator_restore(c: &Client, control: &str) -> Result<(Duration, u64)> {
    let raw = c
        .send_raw(
            hyper::Method::POST,
            &format!("{control}/v1/apps/{APP}/snapshot"),
            Some("application/octet-stream"),
            Bytes::new(),
        )
        .await?;
    if !raw.status.is_success() {
        bail!("snapshot: {}", raw.status);
    }
    let tag = raw
        .headers
        .get("x-tern-snapshot-mac")
        .context("the snapshot's tag")?
        .to_str()?
        .to_string();
    let bytes = raw.body;
    let c = c.clone().with_header("x-tern-snapshot-mac", &tag);
    let t = Instant::now();
    let (status, answer) = c
        .send(
            hyper::Method::POST,
            &format!("{control}/v1/restore?name={COPY}&node=node-2"),
            "application/octet-stream",
            bytes.clone(),
        )
        .await?;
    let took = t.elapsed();
    if status != 201 {
        bail!("restore: {status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok((took, bytes.len() as u64))
}

/// The one restart's time, from the control plane's metrics.
async fn restart_seconds(c: &Client, control: &str) -> Result<Duration> {
    let (_, text) = c
        .send(
            hyper::Method::GET,
            &format!("{control}/metrics"),
            "text/plain",
            Bytes::new(),
        )
        .await?;
    let text = String::from_utf8_lossy(&text);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    match (
        field("tern_restart_seconds_sum"),
        field("tern_restart_seconds_count"),
    ) {
        (Some(sum), Some(1.0)) => Ok(Duration::from_secs_f64(sum)),
        other => bail!("expected one restart in the metrics, found {other:?}"),
    }
}
