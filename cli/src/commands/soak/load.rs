//! The clients of a soak: tasks that call the ledger apps without pause,
//! each call with an id never used before, through the ingress of a node
//! chosen at random (so that most calls are forwarded), and record what
//! became of it: acknowledged (with the position the ledger gave it and the
//! copy that answered), failed, or unknown (sent, and no answer came).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tern_api::client::Client;
use tokio::sync::watch;

/// What became of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 from the app: `seq` is the position the ledger gave the id;
    /// `generation` and `node` name the copy that answered, when known.
    Acked {
        seq: u64,
        generation: Option<u64>,
        node: Option<u16>,
    },
    /// An answer that was not a success (the call may or may not have run).
    Failed,
    /// No answer (a cut connection, a timeout): it may or may not have run.
    Unknown,
}

/// One call, as the client saw it. Times are ms since the soak started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub id: u64,
    pub app: u16,
    pub sent_ms: u64,
    pub done_ms: u64,
    pub outcome: Outcome,
}

/// The most calls one soak records (a bound on its memory: ~40 bytes a
/// call); past it the clients stop calling and the soak says so.
pub const MAX_CALLS: usize = 4_000_000;
/// Each client waits this long between two calls.
const PACE: Duration = Duration::from_millis(5);
/// A call without an answer after this long is unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The running clients and what they recorded.
pub struct Load {
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub acked: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    /// Node URLs the clients send through (index = node number - 1).
    pub entries: Arc<Mutex<Vec<String>>>,
    stop: watch::Sender<bool>,
    full: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients calling `apps` through `entries`.
    pub fn start(
        client: &Client,
        apps: Vec<String>,
        entries: Vec<String>,
        clients: usize,
        seed: u64,
        epoch: Instant,
    ) -> Load {
        let (stop, stopped) = watch::channel(false);
        let next_id = Arc::new(AtomicU64::new(1));
        let load = Load {
            calls: Arc::new(Mutex::new(Vec::new())),
            acked: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            entries: Arc::new(Mutex::new(entries)),
            stop,
            full: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|k| {
                let c = Caller {
                    client: client.clone().with_timeout(CALL_TIMEOUT),
                    apps: apps.clone(),
                    entries: load.entries.clone(),
                    calls: load.calls.clone(),
                    acked: load.acked.clone(),
                    failed: load.failed.clone(),
                    full: load.full.clone(),
                    next_id: next_id.clone(),
                    rng: StdRng::seed_from_u64(seed ^ (0x9e37_79b9 * (k as u64 + 1))),
                    epoch,
                };
                tokio::spawn(c.run(stopped.clone()))
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Whether the clients stopped because [`MAX_CALLS`] were made.
    pub fn full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Stops the clients after their calls in flight, and hands back every
    /// call they made.
    pub async fn stop(self) -> Vec<Call> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Caller {
    client: Client,
    apps: Vec<String>,
    entries: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    full: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
    rng: StdRng,
    epoch: Instant,
}

impl Caller {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        while !*stopped.borrow() {
            if self.calls.lock().map(|c| c.len()).unwrap_or(MAX_CALLS) >= MAX_CALLS {
                self.full.store(true, Ordering::Relaxed);
                return;
            }
            self.one().await;
            tokio::select! {
                _ = stopped.changed() => {}
                _ = tokio::time::sleep(PACE) => {}
            }
        }
    }

    async fn one(&mut self) {
        let app = self.rng.random_range(0..self.apps.len());
        let entry = {
            let e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            e[self.rng.random_range(0..e.len())].clone()
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sent_ms = self.epoch.elapsed().as_millis() as u64;
        let url = format!("{entry}/apps/{}/ledger", self.apps[app]);
        let r = self
            .client
            .send_raw(
                Method::POST,
                &url,
                Some("text/plain"),
                Bytes::from(id.to_string()),
            )
            .await;
        let outcome = match r {
            Ok(r) if r.status.as_u16() == 200 => {
                let header = |h: &str| {
                    r.headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                match std::str::from_utf8(&r.body)
                    .ok()
                    .and_then(|b| b.trim().parse::<u64>().ok())
                {
                    Some(seq) => Outcome::Acked {
                        seq,
                        generation: header(tern_node::GENERATION_HEADER)
                            .and_then(|g| g.parse().ok()),
                        node: header(tern_node::NODE_HEADER)
                            .and_then(|n| n.strip_prefix("node-").and_then(|i| i.parse().ok())),
                    },
                    None => Outcome::Failed,
                }
            }
            Ok(_) => Outcome::Failed,
            Err(e) if e.never_delivered() => Outcome::Failed,
            Err(_) => Outcome::Unknown,
        };
        match outcome {
            Outcome::Acked { .. } => self.acked.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
        let call = Call {
            id,
            app: app as u16,
            sent_ms,
            done_ms: self.epoch.elapsed().as_millis() as u64,
            outcome,
        };
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

/// Reads an app's whole ledger through the node at `entry`, page by page.
pub async fn read_ledger(client: &Client, entry: &str, app: &str) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    // Bounded: a page holds at least one id, and the ledger at most
    // MAX_CALLS of them.
    for _ in 0..=MAX_CALLS {
        let url = format!("{entry}/apps/{app}/ledger?from={}", ids.len());
        let r = client
            .send_raw(Method::GET, &url, None, Bytes::new())
            .await?;
        if r.status.as_u16() != 200 {
            anyhow::bail!(
                "reading the ledger of {app}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        let text = String::from_utf8_lossy(&r.body);
        let mut lines = text.lines();
        let len: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("the ledger of {app} answered no length"))?;
        let before = ids.len();
        for l in lines {
            ids.push(
                l.trim()
                    .parse::<u64>()
                    .map_err(|_| anyhow::anyhow!("the ledger of {app} holds `{l}`"))?,
            );
        }
        if ids.len() >= len {
            return Ok(ids);
        }
        if ids.len() == before {
            anyhow::bail!("the ledger of {app} stopped at {before} of {len} ids");
        }
    }
    anyhow::bail!("the ledger of {app} never ended")
}
