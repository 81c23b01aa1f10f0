//! Migration benchmark: two nodes in this process on loopback, an app of
//! 16, 64 or 256 MiB (every page filled with non-zero, incompressible words)
//! written to at a fixed dirty rate while it moves back and forth hot, cold
//! and hybrid. For every migration: downtime, total time, bytes sent and
//! rounds (from the source's `MigrationReport`), next to a raw transfer of
//! the same number of bytes over the same loopback (a plain tokio TCP
//! sender and receiver), measured right after it in the same run.
//!
//! Run with `cargo bench -p tern-node --bench migrate`.
//!
//! Dirty rates are fractions of the app's 4 KiB pages written per 10 ms: a
//! background task calls the guest's `dirty(n)` (n pseudo-random pages)
//! through the node API every 10 ms, on the node the app is on, with n
//! computed from the time since its last call so the average rate holds even
//! when a call is delayed (held during a stop-and-copy, forwarded after it).
//!
//! Hybrid: before each move the app is checkpointed on its node
//! (`POST /v1/apps/NAME/checkpoint`) and the checkpoint is staged on the
//! target (written to its data directory, as the control plane's copy would
//! be); staging is not timed, so the delta is what was written between the
//! checkpoint and the move.
//!
//! Post-copy (`TERN_BENCH_MODES=postcopy`): the downtime is the switch
//! (freeze, the state without pages, the target's resume); the total runs
//! until the source has delivered every page (pushed, or fetched by the
//! target on first touch), so it compares with the raw transfer of the
//! same bytes like the others. `TERN_BENCH_SIZES=64,1024` covers 1 GiB.
//!
//! p99 is nearest-rank: with fewer than 100 samples it is the maximum.
//! total/raw is the median of the per-move ratios, with their range
//! (min–max) beside it: never the best move alone.
//! Knobs for quick looks: `TERN_BENCH_SIZES=16,64`, `TERN_BENCH_RATES=0,1`
//! (percent), `TERN_BENCH_MODES=hot,cold`, `TERN_BENCH_REPS=2` (multiplies
//! the default counts), `TERN_BENCH_OUT=path` (also write the table there),
//! `TERN_BENCH_SAMPLES=1` (every migration's figures on stderr too),
//! `TERN_BENCH_STOCK_MIB=0` (the nodes keep no stock of resident memory;
//! default: `NodeConfig`'s, 256 MiB).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_api::client::Client;
use tern_api::local::{Bound, Served};
use tern_api::types::{
    InvokeRequest, InvokeResponse, MigrateRequest, MigrationReport, Mode, StartApp,
};
use tern_node::NodeConfig;

const TOKEN: &str = "bench-token-0123456789";
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const APP: &str = "mig";

/// The guest: grows its memory, fills it, dirties pages, digests it.
const GUEST: &str = r#"
(module
  (memory 1)
  ;; xorshift64 state of `dirty`, in a mutable global (it moves with the app)
  (global $x (mut i64) (i64.const 0x2545f4914f6cdd1d))
  (func $next (result i64)
    (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 13))))
    (global.set $x (i64.xor (global.get $x) (i64.shr_u (global.get $x) (i64.const 7))))
    (global.set $x (i64.xor (global.get $x) (i64.shl (global.get $x) (i64.const 17))))
    (global.get $x))
  ;; Grows the memory to $pages Wasm pages; returns the new size.
  (func (export "grow_to") (param $pages i32) (result i32)
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $pages) (memory.size))))))
    (memory.size))
  ;; Fills every byte of memory with xorshift64 words (never zero).
  (func (export "fill") (param $seed i64) (result i32)
    (local $a i32) (local $end i32) (local $x i64)
    (local.set $x (i64.or (local.get $seed) (i64.const 1)))
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (block $done
      (loop $words
        (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (i64.store (local.get $a) (local.get $x))
        (local.set $a (i32.add (local.get $a) (i32.const 8)))
        (br $words)))
    (i32.shr_u (local.get $end) (i32.const 12)))
  ;; Writes one word in each of $n pseudo-random 4 KiB pages; returns $n.
  (func (export "dirty") (param $n i32) (result i32)
    (local $i i32) (local $pages i64) (local $r i64)
    (local.set $pages (i64.extend_i32_u (i32.shl (memory.size) (i32.const 4))))
    (block $done
      (loop $next_page
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $r (call $next))
        (i64.store
          (i32.add
            (i32.wrap_i64 (i64.shl (i64.rem_u (local.get $r) (local.get $pages)) (i64.const 12)))
            (i32.and (i32.wrap_i64 (i64.shr_u (local.get $r) (i64.const 52))) (i32.const 0xff8)))
          (local.get $r))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next_page)))
    (local.get $n))
  ;; A position-sensitive digest of the whole memory and the RNG state.
  (func (export "digest") (result i64)
    (local $a i32) (local $end i32) (local $h i64)
    (local.set $h (global.get $x))
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (block $done
      (loop $words
        (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $h (i64.mul (i64.xor (local.get $h) (i64.load (local.get $a))) (i64.const 0x100000001b3)))
        (local.set $a (i32.add (local.get $a) (i32.const 8)))
        (br $words)))
    (local.get $h)))
"#;

struct Node {
    name: String,
    url: String,
    dir: tempfile::TempDir,
    _served: Served,
}

/// `TERN_BENCH_TLS=1`: the nodes speak TLS with certificates of one CA
/// (mutual TLS between them, as in a cluster); else plain HTTP.
fn tls_mode() -> bool {
    std::env::var("TERN_BENCH_TLS").is_ok_and(|v| v == "1")
}

fn bench_ca() -> &'static tern_api::tls::Ca {
    static CA: std::sync::OnceLock<tern_api::tls::Ca> = std::sync::OnceLock::new();
    CA.get_or_init(|| tern_api::tls::Ca::generate().unwrap())
}

async fn start_node(name: &str) -> Node {
    let bound = Bound::loopback().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(name, TOKEN, dir.path());
    // `TERN_BENCH_STOCK_MIB=0`: no resident stock (for a side-by-side run).
    if let Some(mib) = std::env::var("TERN_BENCH_STOCK_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.resident_stock_bytes = mib << 20;
    }
    let bound = if tls_mode() {
        let ca = bench_ca();
        let id = ca
            .issue(
                &tern_api::tls::Role::Node(name.into()),
                &tern_api::tls::local_hosts(&[]),
            )
            .unwrap();
        config.tls = Some(tern_api::tls::Tls::new(ca.cert_pem.clone(), Some(id)).unwrap());
        bound
    } else {
        bound.plain()
    };
    let url = bound.url.clone();
    let served = tern_node::spawn(bound, config).unwrap();
    Node {
        name: name.into(),
        url,
        dir,
        _served: served,
    }
}

fn client() -> Client {
    if tls_mode() {
        let trust = tern_api::tls::Tls::new(bench_ca().cert_pem.clone(), None).unwrap();
        Client::with_tls(Some(TOKEN.into()), &trust).unwrap()
    } else {
        Client::new(Some(TOKEN.into()))
    }
}

/// Announces a move to its target, as the control plane does.
async fn expect(c: &Client, to_url: &str, from: &str, generation: u64) {
    let e = tern_api::types::MigrationExpect {
        app: APP.into(),
        from: from.into(),
        generation,
    };
    let _: serde_json::Value = c
        .post_json(&format!("{to_url}/v1/migrations/expect"), &e)
        .await
        .expect("announce the move");
}

async fn invoke(
    c: &Client,
    url: &str,
    export: &str,
    args: &[String],
) -> Result<InvokeResponse, String> {
    let req = InvokeRequest {
        export: export.into(),
        args: args.to_vec(),
    };
    c.post_json(&format!("{url}/v1/apps/{APP}/invoke"), &req)
        .await
        .map_err(|e| e.to_string())
}

async fn invoke_i64(c: &Client, url: &str, export: &str, args: &[String]) -> i64 {
    let r = invoke(c, url, export, args)
        .await
        .unwrap_or_else(|e| panic!("{export}: {e}"));
    r.results[0]
        .as_i64()
        .unwrap_or_else(|| panic!("{export} returned {:?}", r.results))
}

/// Background writer: `dirty(n)` every 10 ms on the node the app is on
/// (with n = 0 at the 0 % rate: the calls then only probe how long the app
/// takes to answer, i.e. how long it is unavailable).
struct Dirtier {
    stop: Arc<AtomicUsize>,
    calls: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    pages: Arc<AtomicU64>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the writer saw over a row.
struct Calls {
    made: u64,
    failed: u64,
    pages: u64,
    /// Latency of each call, ms.
    latencies: Vec<f64>,
}

impl Dirtier {
    /// `per_10ms`: pages per 10 ms; `host`: index into `urls` of the app's node.
    fn start(urls: [String; 2], host: Arc<AtomicUsize>, per_10ms: f64) -> Dirtier {
        let stop = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let pages = Arc::new(AtomicU64::new(0));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, c, f, p, l) = (
            stop.clone(),
            calls.clone(),
            failed.clone(),
            pages.clone(),
            latencies.clone(),
        );
        let task = tokio::spawn(async move {
            let client = client();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            let mut owed = 0.0f64;
            while s.load(Ordering::Relaxed) == 0 {
                tick.tick().await;
                let now = Instant::now();
                owed += per_10ms * (now - last).as_secs_f64() / 0.010;
                last = now;
                let n = owed.floor();
                owed -= n;
                let url = &urls[host.load(Ordering::Relaxed)];
                let t0 = Instant::now();
                let r = invoke(&client, url, "dirty", &[format!("{}", n as u64)]).await;
                l.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1e3);
                c.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(_) => {
                        p.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if f.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("dirty call failed: {e}");
                        }
                    }
                }
            }
        });
        Dirtier {
            stop,
            calls,
            failed,
            pages,
            latencies,
            task,
        }
    }

    async fn stop(self) -> Calls {
        self.stop.store(1, Ordering::Relaxed);
        let _ = self.task.await;
        Calls {
            made: self.calls.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pages: self.pages.load(Ordering::Relaxed),
            latencies: std::mem::take(&mut *self.latencies.lock().unwrap()),
        }
    }
}

/// Waits until every large value the last move left behind is freed, and
/// the nodes' stock of resident memory
/// (`tern_runtime::resident`, shared by both nodes of this process) is full
/// again after the last move took from it, as it is on a node that was idle
/// before a move arrives; and so that its refill, which runs in the
/// background, overlaps neither the move nor the raw transfer it is
/// compared with.
async fn settle() {
    // The source frees its copy of the app in the background after the
    // move: that is not the next measurement's to pay for either.
    let t0 = Instant::now();
    while tern_node::releases_pending() > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::task::spawn_blocking(|| tern_runtime::resident::wait_full(Duration::from_secs(10)))
        .await
        .unwrap();
}

/// Moves `n` bytes over a fresh loopback TCP connection: connect, write,
/// until the receiver has read them all.
async fn raw_transfer(n: u64) -> Duration {
    tern_api::local::raw_loopback_transfer(n)
        .await
        .expect("a raw loopback transfer")
}

struct Sample {
    report: MigrationReport,
    raw: Duration,
}

struct Row {
    size_mib: u64,
    rate_pct: f64,
    mode: Mode,
    samples: Vec<Sample>,
    calls: Calls,
    elapsed: Duration,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// How many migrations per configuration.
fn reps(size_mib: u64, rate_pct: f64, mode: Mode) -> usize {
    // A non-converging pre-copy of 256 MiB (1 % and 10 %) takes ~10 s a move.
    let base = match (size_mib, mode) {
        (1024, _) => 3,
        (_, Mode::Postcopy) => 7,
        (64, Mode::Hot) if rate_pct == 1.0 => 30,
        (64, Mode::Hot | Mode::Hybrid) if rate_pct >= 10.0 => 5,
        (256, Mode::Cold) => 3,
        (256, _) if rate_pct > 0.0 => 2,
        (256, _) => 4,
        _ => 10,
    };
    let scale: f64 = std::env::var("TERN_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((base as f64 * scale).round() as usize).max(2)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let t_all = Instant::now();
    let sizes: Vec<u64> = env_list("TERN_BENCH_SIZES")
        .map(|v| v.iter().map(|s| s.parse().unwrap()).collect())
        .unwrap_or(vec![16, 64, 256]);
    let rates: Vec<f64> = env_list("TERN_BENCH_RATES")
        .map(|v| v.iter().map(|s| s.parse().unwrap()).collect())
        .unwrap_or(vec![0.0, 1.0, 10.0]);
    let modes: Vec<Mode> = env_list("TERN_BENCH_MODES")
        .map(|v| v.iter().map(|s| s.parse().unwrap()).collect())
        .unwrap_or(vec![Mode::Hot, Mode::Cold, Mode::Hybrid]);

    let nodes = [start_node("a").await, start_node("b").await];
    let urls = [nodes[0].url.clone(), nodes[1].url.clone()];
    let c = client();
    let wasm = wat::parse_str(GUEST).expect("guest WAT");
    let sha = hex::encode(tern_runtime::sha256(&wasm));
    for n in &nodes {
        c.put_bytes(
            &format!("{}/v1/modules/{sha}", n.url),
            Bytes::from(wasm.clone()),
        )
        .await
        .expect("upload module");
    }
    // Warm up loopback and the allocator.
    raw_transfer(64 * MIB).await;

    let mut rows = Vec::new();
    let mut generation = 1u64;
    let mut verified = Vec::new();
    for &size in &sizes {
        // Deploy and fill on node a.
        let spec = StartApp {
            name: APP.into(),
            module_sha256: sha.clone(),
            generation,
            restart: "never".into(),
            ..Default::default()
        };
        let _: serde_json::Value = c
            .post_json(&format!("{}/v1/apps", urls[0]), &spec)
            .await
            .expect("deploy");
        let host = Arc::new(AtomicUsize::new(0));
        let pages = invoke_i64(
            &c,
            &urls[0],
            "grow_to",
            &[format!("{}", size * MIB / 65536)],
        )
        .await;
        assert_eq!(pages as u64, size * MIB / 65536);
        let filled = invoke_i64(
            &c,
            &urls[0],
            "fill",
            &[format!("{}", 0x1234_5678_9abc_u64 + size)],
        )
        .await;
        assert_eq!(filled as u64, size * MIB / PAGE);
        let total_pages = (size * MIB / PAGE) as f64;

        for &rate in &rates {
            for &mode in &modes {
                let n = reps(size, rate, mode);
                let dirtier =
                    Dirtier::start(urls.clone(), host.clone(), total_pages * rate / 100.0);
                let t_row = Instant::now();
                let mut samples = Vec::new();
                for _ in 0..n {
                    let from = host.load(Ordering::Relaxed);
                    let to = 1 - from;
                    if mode == Mode::Hybrid {
                        let cp: serde_json::Value = c
                            .post_json(&format!("{}/v1/apps/{APP}/checkpoint", urls[from]), &())
                            .await
                            .expect("checkpoint");
                        let digest = cp["digest"].as_str().expect("digest").to_string();
                        let (_, bytes) = c
                            .send(
                                hyper::Method::GET,
                                &format!("{}/v1/checkpoints/{APP}", urls[from]),
                                "application/octet-stream",
                                Bytes::new(),
                            )
                            .await
                            .expect("fetch checkpoint");
                        let path: PathBuf = nodes[to]
                            .dir
                            .path()
                            .join("checkpoints")
                            .join(format!("{APP}-{digest}.snap"));
                        std::fs::write(&path, &bytes).expect("stage checkpoint");
                    }
                    generation += 1;
                    let req = MigrateRequest {
                        to_name: nodes[to].name.clone(),
                        to_url: urls[to].clone(),
                        mode,
                        generation,
                        checkpoint_url: Some(format!("{}/v1/checkpoints/{APP}", urls[from])),
                        postcopy_after_rounds: None,
                    };
                    expect(&c, &urls[to], &nodes[from].name, generation).await;
                    settle().await;
                    let report: MigrationReport = c
                        .post_json(&format!("{}/v1/apps/{APP}/migrate", urls[from]), &req)
                        .await
                        .unwrap_or_else(|e| {
                            panic!(
                                "{size} MiB {mode} migration {}→{}: {e}",
                                nodes[from].name, nodes[to].name
                            )
                        });
                    host.store(to, Ordering::Relaxed);
                    if mode == Mode::Hybrid {
                        assert_eq!(report.mode, "hybrid", "{report:?}");
                        assert_eq!(
                            report.checkpoint_bytes_fetched, 0,
                            "the checkpoint was staged: {report:?}"
                        );
                    }
                    settle().await;
                    let raw = raw_transfer(report.bytes_sent).await;
                    if std::env::var("TERN_BENCH_SAMPLES").is_ok_and(|v| v == "1") {
                        eprintln!(
                            "  {size} MiB {mode}: downtime {:.2} ms, total {:.1} ms, raw {:.1} ms",
                            report.downtime_ms,
                            report.total_ms,
                            raw.as_secs_f64() * 1e3
                        );
                    }
                    samples.push(Sample { report, raw });
                }
                let calls = dirtier.stop().await;
                let row = Row {
                    size_mib: size,
                    rate_pct: rate,
                    mode,
                    samples,
                    calls,
                    elapsed: t_row.elapsed(),
                };
                eprintln!("{}", line(&row));
                rows.push(row);
            }
        }
        // The state survived every move: the digest where it is now equals
        // the digest after one more (cold) move.
        let from = host.load(Ordering::Relaxed);
        let before = invoke_i64(&c, &urls[from], "digest", &[]).await;
        generation += 1;
        let req = MigrateRequest {
            to_name: nodes[1 - from].name.clone(),
            to_url: urls[1 - from].clone(),
            mode: Mode::Cold,
            generation,
            checkpoint_url: None,
            postcopy_after_rounds: None,
        };
        expect(&c, &urls[1 - from], &nodes[from].name, generation).await;
        let _: MigrationReport = c
            .post_json(&format!("{}/v1/apps/{APP}/migrate", urls[from]), &req)
            .await
            .expect("final move");
        let after = invoke_i64(&c, &urls[1 - from], "digest", &[]).await;
        assert_eq!(before, after, "{size} MiB: the state changed in a move");
        verified.push(size);
        c.delete(&format!("{}/v1/apps/{APP}", urls[1 - from]))
            .await
            .expect("delete app");
        generation += 1;
    }

    let table = table(&rows);
    println!("{table}");
    println!(
        "state verified after every size ({verified:?} MiB); whole bench {:.0} s",
        t_all.elapsed().as_secs_f64()
    );
    if let Ok(path) = std::env::var("TERN_BENCH_OUT") {
        std::fs::write(&path, &table).expect("write TERN_BENCH_OUT");
    }
}

fn stats(row: &Row) -> [f64; 12] {
    let f = |g: &dyn Fn(&Sample) -> f64| row.samples.iter().map(g).collect::<Vec<f64>>();
    let down = f(&|s| s.report.downtime_ms);
    let total = f(&|s| s.report.total_ms);
    let raw = f(&|s| s.raw.as_secs_f64() * 1e3);
    let ratio = f(&|s| s.report.total_ms / (s.raw.as_secs_f64() * 1e3));
    let bytes = f(&|s| s.report.bytes_sent as f64);
    let rounds = f(&|s| s.report.rounds as f64);
    [
        percentile(&down, 50.0),
        percentile(&down, 99.0),
        percentile(&total, 50.0),
        percentile(&raw, 50.0),
        median(&ratio),
        ratio.iter().cloned().fold(f64::INFINITY, f64::min),
        ratio.iter().cloned().fold(0.0, f64::max),
        median(&bytes) / MIB as f64,
        median(&rounds),
        rounds.iter().cloned().fold(0.0, f64::max),
        percentile(&row.calls.latencies, 50.0),
        row.calls.latencies.iter().cloned().fold(0.0, f64::max),
    ]
}

fn line(row: &Row) -> String {
    let [d50, d99, t50, r50, ratio, ratio_lo, ratio_hi, mib, rounds, rmax, l50, lmax] = stats(row);
    // Pages dirtied per 10 ms over the row, as a share of the app's pages.
    let achieved = row.calls.pages as f64
        / (row.elapsed.as_secs_f64() / 0.010)
        / (row.size_mib * MIB / PAGE) as f64
        * 100.0;
    format!(
        "| {} MiB | {}% ({:.2}%) | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}× ({:.2}–{:.2}) | {:.1} | {:.0} ({:.0}) | {:.1} / {:.0} | {} / {} |",
        row.size_mib,
        row.rate_pct,
        achieved,
        row.mode,
        row.samples.len(),
        d50,
        d99,
        t50,
        r50,
        ratio,
        ratio_lo,
        ratio_hi,
        mib,
        rounds,
        rmax,
        l50,
        lmax,
        row.calls.failed,
        row.calls.made,
    )
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| size | dirty per 10 ms (achieved) | mode | n | downtime p50 ms | downtime p99 ms | total p50 ms | raw p50 ms | total/raw p50 (range) | sent MiB (p50) | rounds p50 (max) | app call latency p50 / max ms | calls failed / made |\n");
    out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}
