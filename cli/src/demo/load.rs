//! Load on the demo's apps: clients calling them through a node's ingress
//! all along, counting what was served and what failed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use tern_api::client::Client;

/// Load on one app through a node's ingress: served and failed counts.
#[derive(Clone)]
pub(super) struct Load {
    served: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Load {
    pub(super) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
    pub(super) fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

pub(super) fn start_load(
    client: Client,
    method: hyper::Method,
    url: String,
    body: &'static str,
) -> Load {
    let served = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, f, st) = (served.clone(), failed.clone(), stop.clone());
    tokio::spawn(async move {
        let c = client.with_timeout(Duration::from_secs(10));
        while !st.load(Ordering::Relaxed) {
            match c
                .send(
                    method.clone(),
                    &url,
                    "text/plain",
                    Bytes::from_static(body.as_bytes()),
                )
                .await
            {
                Ok(_) => s.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if std::env::var_os("TERN_DEMO_DEBUG").is_some() {
                        eprintln!("load error on {url}: {e}");
                    }
                    f.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    Load {
        served,
        failed,
        stop,
    }
}

/// The load's counts as one line: per app served, and failed in all.
pub(super) fn load_line(loads: &[Load; 2]) -> String {
    format!(
        "load: counter {} · kv {} requests served, {} failed",
        loads[0].served(),
        loads[1].served(),
        loads[0].failed() + loads[1].failed()
    )
}

/// Runs `fut` while `pb` shows `label` and, ten times a second, what `load`
/// served since it started.
pub(super) async fn with_live_count<F: Future>(
    pb: &ProgressBar,
    label: &str,
    load: &Load,
    fut: F,
) -> F::Output {
    let s0 = load.served();
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => pb.set_message(format!("{label}: {} requests served meanwhile", load.served() - s0)),
        }
    }
}

/// Waits (at most `secs`) until `load` has served `n` more requests.
pub(super) async fn served_more(load: &Load, n: u64, secs: u64) -> bool {
    let target = load.served() + n;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while load.served() < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
