//! The WASI side of an app: what it is given (nothing by default), its clock,
//! where its output goes, and the store's data that holds it ([`HostState`],
//! shared by the engine's linker and every instance's store).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::error::{Error, Result};
use crate::sandbox::{AppLimiter, InterruptHandle};
use crate::snapshot::{Preopen, WasiState};

/// The data of a store: the app's WASI context, its limiter, and what the
/// engine's epoch callback checks during a call (an interrupt, a deadline).
pub struct HostState {
    pub(crate) wasi: wasmtime_wasi::p1::WasiP1Ctx,
    pub(crate) limits: AppLimiter,
    pub(crate) interrupt: InterruptHandle,
    /// When the call in progress must end (its time limit), if it has one.
    pub(crate) deadline: Option<Instant>,
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn host_now_ns() -> i128 {
    process_start().elapsed().as_nanos() as i128
}

/// The guest's monotonic clock: the host's, shifted so that it continues
/// from the last value the guest read before a snapshot, never backwards.
#[derive(Clone)]
pub struct GuestClock {
    inner: Arc<ClockInner>,
}

struct ClockInner {
    offset_ns: std::sync::atomic::AtomicI64,
    observed: AtomicU64,
}

impl GuestClock {
    /// A clock that reads `start_ns` now.
    pub fn starting_at(start_ns: u64) -> GuestClock {
        let clock = GuestClock {
            inner: Arc::new(ClockInner {
                offset_ns: std::sync::atomic::AtomicI64::new(0),
                observed: AtomicU64::new(0),
            }),
        };
        clock.continue_from(start_ns);
        clock
    }

    /// Makes the clock read `ns` now (and never less than it afterwards).
    pub fn continue_from(&self, ns: u64) {
        self.inner
            .offset_ns
            .store((ns as i128 - host_now_ns()) as i64, Ordering::Relaxed);
        self.inner.observed.fetch_max(ns, Ordering::Relaxed);
    }

    /// The latest value the guest has read (or the start value).
    pub fn observed(&self) -> u64 {
        self.inner.observed.load(Ordering::Relaxed)
    }
}

impl wasmtime_wasi::HostMonotonicClock for GuestClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let v =
            (host_now_ns() + self.inner.offset_ns.load(Ordering::Relaxed) as i128).max(0) as u64;
        let prev = self.inner.observed.fetch_max(v, Ordering::Relaxed);
        v.max(prev)
    }
}

/// The last lines an app wrote to stdout and stderr, kept for `tern logs`.
#[derive(Default)]
pub struct LogBuffer {
    inner: Mutex<LogInner>,
    notify: std::sync::Condvar,
}

#[derive(Default)]
struct LogInner {
    lines: VecDeque<(u64, String)>,
    /// The bytes of `lines`.
    bytes: usize,
    partial: Vec<u8>,
    next_seq: u64,
}

/// Lines kept per app, at most...
const LOG_LINES_KEPT: usize = 10_000;
/// ...and bytes: an app that logs long lines keeps fewer of them.
pub const LOG_BYTES_KEPT: usize = 4 << 20;
const LOG_LINE_MAX: usize = 16 * 1024;

impl LogBuffer {
    pub fn new() -> Arc<LogBuffer> {
        Arc::new(LogBuffer::default())
    }

    /// Appends raw output, splitting it into lines.
    pub fn write(&self, bytes: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b == b'\n' || g.partial.len() >= LOG_LINE_MAX {
                let line = String::from_utf8_lossy(&g.partial).into_owned();
                g.partial.clear();
                let seq = g.next_seq;
                g.next_seq += 1;
                g.bytes += line.len();
                g.lines.push_back((seq, line));
                while g.lines.len() > LOG_LINES_KEPT || g.bytes > LOG_BYTES_KEPT {
                    match g.lines.pop_front() {
                        Some((_, old)) => g.bytes -= old.len(),
                        None => break,
                    }
                }
                if b == b'\n' {
                    continue;
                }
            }
            g.partial.push(b);
        }
        drop(g);
        self.notify.notify_all();
    }

    /// Adds one line written by the platform itself.
    pub fn line(&self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write(&bytes);
    }

    /// Waits up to `timeout` for a line with sequence number `>= from`.
    pub fn wait_since(&self, from: u64, timeout: std::time::Duration) -> (u64, Vec<String>) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .notify
            .wait_timeout_while(g, timeout, |g| g.next_seq <= from)
            .unwrap_or_else(|e| e.into_inner());
        let lines = g
            .lines
            .iter()
            .filter(|(s, _)| *s >= from)
            .map(|(_, l)| l.clone())
            .collect();
        (g.next_seq, lines)
    }
}

struct LogWriter(Arc<LogBuffer>);

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[derive(Clone)]
struct LogStream(Arc<LogBuffer>);

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogWriter(self.0.clone()))
    }
}

/// Where an app's stdout and stderr go.
#[derive(Clone, Default)]
pub enum Stdio {
    /// Discarded.
    #[default]
    Null,
    /// The host process's own stdin, stdout and stderr (for `tern run`).
    Inherit,
    /// Into a log buffer (apps on a node).
    Capture(Arc<LogBuffer>),
}

/// Something a snapshot records as given to its app that a restore does
/// not give again (see [`regrant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotGranted {
    /// A directory: the host path the snapshot names, and the guest path.
    Dir { host: String, guest: String },
    /// A directory the snapshot had read-write, given read-only.
    DirWritable { guest: String },
    /// An environment variable, by name (its value is not repeated: it may
    /// be a secret).
    Env(String),
    /// The arguments after the program name.
    Args(Vec<String>),
}

impl std::fmt::Display for NotGranted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotGranted::Dir { host, guest } => write!(f, "directory {host} as {guest}"),
            NotGranted::DirWritable { guest } => write!(f, "directory {guest} read-write"),
            NotGranted::Env(name) => write!(f, "environment variable {name}"),
            NotGranted::Args(args) => write!(f, "arguments {args:?}"),
        }
    }
}

/// What an app restored from a snapshot that is data, not authority, is
/// given: the arguments, variables and directories of `grant` and nothing
/// else, with the snapshot's clock reading and random seed (which grant
/// nothing). Directories the snapshot also names come first, in its order,
/// so that they keep their file descriptors. Returns, beside it, what the
/// snapshot asked for and does not get.
pub fn regrant(asked: &WasiState, grant: &WasiState) -> (WasiState, Vec<NotGranted>) {
    let position = |guest: &str| {
        asked
            .preopens
            .iter()
            .position(|p| p.guest == guest)
            .unwrap_or(usize::MAX)
    };
    let mut preopens = grant.preopens.clone();
    preopens.sort_by_key(|p| position(&p.guest));
    let mut missing = Vec::new();
    for p in &asked.preopens {
        match grant.preopens.iter().find(|g| g.guest == p.guest) {
            None => missing.push(NotGranted::Dir {
                host: p.host.clone(),
                guest: p.guest.clone(),
            }),
            Some(g) if g.read_only && !p.read_only => missing.push(NotGranted::DirWritable {
                guest: p.guest.clone(),
            }),
            Some(_) => {}
        }
    }
    for (k, _) in &asked.env {
        if !grant.env.iter().any(|(g, _)| g == k) {
            missing.push(NotGranted::Env(k.clone()));
        }
    }
    let asked_args = asked.args.get(1..).unwrap_or_default();
    let given_args = grant.args.get(1..).unwrap_or_default();
    if !asked_args.is_empty() && asked_args != given_args {
        missing.push(NotGranted::Args(asked_args.to_vec()));
    }
    let wasi = WasiState {
        args: grant.args.clone(),
        env: grant.env.clone(),
        preopens,
        monotonic_ns: asked.monotonic_ns,
        random_seed: asked.random_seed,
    };
    (wasi, missing)
}

/// Builds the WASI context an app gets: only what it was given.
pub(crate) fn build_ctx(
    state: &WasiState,
    stdio: &Stdio,
    clock: &GuestClock,
) -> Result<wasmtime_wasi::p1::WasiP1Ctx> {
    let mut b = WasiCtxBuilder::new();
    b.args(&state.args);
    for (k, v) in &state.env {
        b.env(k, v);
    }
    for Preopen {
        host,
        guest,
        read_only,
    } in &state.preopens
    {
        let perms = if *read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(host, guest, perms)
            .map_err(|e| Error::Other(format!("cannot give directory `{host}` to the app: {e}")))?;
    }
    b.monotonic_clock(clock.clone());
    if let Some(seed) = state.random_seed {
        use rand::SeedableRng;
        b.secure_random(rand::rngs::StdRng::seed_from_u64(seed));
        b.insecure_random(rand::rngs::StdRng::seed_from_u64(
            seed ^ 0x9e37_79b9_7f4a_7c15,
        ));
        b.insecure_random_seed(seed as u128);
    }
    match stdio {
        Stdio::Null => {}
        Stdio::Inherit => {
            b.inherit_stdin().inherit_stdout().inherit_stderr();
        }
        Stdio::Capture(buf) => {
            b.stdout(LogStream(buf.clone()))
                .stderr(LogStream(buf.clone()));
        }
    }
    Ok(b.build_p1())
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stdio::Null => "Null",
            Stdio::Inherit => "Inherit",
            Stdio::Capture(_) => "Capture",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_in_lines_and_bytes() {
        let logs = LogBuffer::new();
        // 1,000 lines of 16 KiB: 16 MiB written, at most 4 MiB kept.
        let line = vec![b'x'; LOG_LINE_MAX - 1];
        for _ in 0..1_000 {
            logs.write(&line);
            logs.write(b"\n");
        }
        let (next, lines) = logs.wait_since(0, std::time::Duration::ZERO);
        assert_eq!(next, 1_000);
        let kept: usize = lines.iter().map(String::len).sum();
        assert!(kept <= LOG_BYTES_KEPT, "{kept} bytes kept");
        assert!(kept >= LOG_BYTES_KEPT - LOG_LINE_MAX, "{kept} bytes kept");
        // Short lines: the line bound holds.
        for i in 0..(LOG_LINES_KEPT + 10) {
            logs.line(&format!("line {i}"));
        }
        let (_, lines) = logs.wait_since(0, std::time::Duration::ZERO);
        assert_eq!(lines.len(), LOG_LINES_KEPT);
        assert_eq!(lines.last().map(String::as_str), Some("line 10009"));
    }
}
