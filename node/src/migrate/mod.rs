//! The migration protocol between two nodes.
//!
//! Source (`migrate_out`), for hot and hybrid:
//! 1. make sure the target has the module (by sha256);
//! 2. open a session on the target (`POST /v1/migrations`); for hybrid the
//!    target first restores the checkpoint it holds (or fetches it);
//! 3. start dirty-page tracking and send the first copy while the app
//!    serves: the state without pages, then every non-zero page in 4 MiB
//!    slices read between the app's calls (hot), or the pages that differ
//!    from the checkpoint (hybrid);
//! 4. rounds: send the pages written since the last round, until few are
//!    left or the rounds stop converging;
//! 5. stop-and-copy: the app's actor holds new calls, runs the snapshot hook,
//!    and the last dirty pages and the state go to the target, which
//!    verifies them, puts them in place, resumes the app and acknowledges;
//! 6. handover: routing flips to the target, the held calls are replayed
//!    there in order, and only then does the source drop its copy.
//!
//! Cold freezes first and then sends the same way, with the app frozen all
//! along: the state, the pages in slices, the commit; then it hands over.
//! (`/cold`, one whole snapshot in one request, is still accepted.)
//! Any failure before the acknowledgement and the source resumes the app
//! itself, held calls first: nothing is lost or run twice, and generation
//! numbers fence any stale copy.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tern_api::types::{
    InvokeRequest, MigrateRequest, MigrationAck, MigrationOpen, MigrationOpened, MigrationReport,
    Mode, StartApp,
};

use super::app::{ApiErr, AppHandle, Cmd, FreezeResult, PrecopyFirst};
use super::{Node, Slot};
use tern_runtime::engine::LoadedModule;
use tern_runtime::instance::{Instance, RestoreOptions};
use tern_runtime::snapshot::{PageChunk, PageChunkRef, Snapshot};

/// Stop pre-copy when a round has at most this many dirty pages (1 MiB).
const CONVERGED_PAGES: u64 = 256;
/// Never more rounds than this.
const MAX_ROUNDS: u32 = 30;
/// Rounds may re-send at most this many times the app's memory: an app that
/// writes pages faster than they move never converges, and more rounds only
/// cost bandwidth and time (the pause takes the rest).
const ROUND_BUDGET: u64 = 2;
/// The most a move slows an app that outruns it: after each call, a pause
/// of this many times the call (the app runs 1/16 of the time).
const MAX_THROTTLE: u32 = 15;

fn err(status: u16, msg: impl Into<String>) -> ApiErr {
    (status, msg.into())
}

fn client_err(context: &str, e: tern_api::client::ClientError) -> ApiErr {
    (e.status().unwrap_or(502), format!("{context}: {e}"))
}

/// Frames the stop-and-copy message: chunks, then the state snapshot.
pub(crate) fn encode_commit(chunks: &[PageChunk], state: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        let b = c.encode();
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(&b);
    }
    out.extend_from_slice(state.as_bytes());
    out
}

/// Reads a stop-and-copy message, checking every part before use.
pub(crate) fn decode_commit(bytes: &[u8]) -> Result<(Vec<PageChunk>, Snapshot), String> {
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or("stop-and-copy message is truncated")?;
        let s = &bytes[*at..end];
        *at = end;
        Ok(s)
    };
    let mut at = 0;
    let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) as usize;
    if n > 1024 {
        return Err("stop-and-copy message names too many chunks".into());
    }
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u64::from_le_bytes(take(&mut at, 8)?.try_into().unwrap()) as usize;
        chunks.push(PageChunk::decode(take(&mut at, len)?).map_err(|e| e.to_string())?);
    }
    let state = Snapshot::from_bytes(bytes[at..].to_vec()).map_err(|e| e.to_string())?;
    Ok((chunks, state))
}

/// A snapshot's encoded bytes as a request body, without copying them (the
/// body owns the snapshot and frees it once sent).
fn snapshot_body(snap: Snapshot) -> Bytes {
    struct Owned(Snapshot);
    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    Bytes::from_owner(Owned(snap))
}

/// Frees a large value (a snapshot of tens of MiB: unmapping it takes
/// milliseconds) off the path that waits for the answer.
fn release<T: Send + 'static>(value: T) {
    tokio::task::spawn_blocking(move || drop(value));
}

use tern_util::now_unix_ms;

/// Makes sure a node holds a module, uploading it if not.
pub(crate) async fn ensure_module(
    node: &Node,
    url: &str,
    module: &LoadedModule,
) -> Result<u64, ApiErr> {
    let sha = module.hash_hex();
    let murl = format!("{url}/v1/modules/{sha}");
    if node
        .client
        .exists(&murl)
        .await
        .map_err(|e| client_err("target node", e))?
    {
        return Ok(0);
    }
    let bytes = Bytes::from(module.original.as_ref().clone());
    let n = bytes.len() as u64;
    node.client
        .put_bytes(&murl, bytes)
        .await
        .map_err(|e| client_err("cannot upload the module to the target", e))?;
    Ok(n)
}

/// Moves a local app to another node and reports what it took.
pub(crate) async fn migrate_out(
    node: Arc<Node>,
    app: String,
    req: MigrateRequest,
) -> Result<MigrationReport, ApiErr> {
    let handle = node.local(&app).ok_or_else(|| {
        err(
            404,
            format!("app {app} does not run on node {}", node.name()),
        )
    })?;
    let spec = handle.spec();
    if req.generation <= spec.generation {
        return Err(err(
            409,
            format!(
                "the new generation {} must be newer than {}",
                req.generation, spec.generation
            ),
        ));
    }
    let started_unix_ms = now_unix_ms();
    let t0 = Instant::now();
    let module = node
        .runtime
        .loaded(&handle.module_sha())
        .ok_or_else(|| err(500, "the app's module is not loaded on this node"))?;
    let mut bytes_sent = ensure_module(&node, &req.to_url, &module).await?;

    let mut mode = req.mode;
    let mut note = None;
    let mut checkpoint = None;
    if mode == Mode::Hybrid {
        match node.latest_checkpoint(&app) {
            Some(cp) => checkpoint = Some(cp),
            None => {
                mode = Mode::Hot;
                note =
                    Some("no checkpoint of the app yet: moved hot instead of hybrid".to_string());
            }
        }
    }
    let open = MigrationOpen {
        app: app.clone(),
        from: node.name().to_string(),
        mode,
        spec: StartApp {
            generation: req.generation,
            ..spec.clone()
        },
        checkpoint_digest: checkpoint.as_ref().map(|c| c.0.clone()),
        checkpoint_url: req.checkpoint_url.clone(),
    };
    let opened: MigrationOpened = node
        .client
        .post_json(&format!("{}/v1/migrations", req.to_url), &open)
        .await
        .map_err(|e| client_err("the target refused the migration", e))?;
    let session = format!("{}/v1/migrations/{}", req.to_url, opened.id);

    let mut rounds = 0u32;
    let mut pages_sent = 0u64;
    let mut tracking = "none".to_string();
    let mut paused_at: Option<Instant> = None;
    let outcome = async {
        if mode == Mode::Cold {
            let (t_pause, frozen) = freeze(&handle, true, &mut paused_at).await?;
            let FreezeResult::Cold { state, memories } = frozen else {
                return Err(err(500, "unexpected freeze result"));
            };
            // The same steps as a hot move's first copy and commit, with the
            // app frozen all along: the state, the pages in slices (read,
            // sent and applied in a pipeline), then the state again to commit.
            let commit = encode_commit(&[], &state);
            bytes_sent += (state.as_bytes().len() + commit.len()) as u64;
            node.client
                .post_bytes(&format!("{session}/base"), snapshot_body(*state))
                .await
                .map_err(|e| client_err("sending the state", e))?;
            let (b, p) = send_slices(&node, &handle, &session, &memories).await?;
            bytes_sent += b;
            pages_sent += p;
            let ack = post_ack(&node, &format!("{session}/commit"), Bytes::from(commit)).await?;
            return Ok((t_pause, ack));
        }
        let base = checkpoint.as_ref().map(|c| c.1.clone());
        let first = handle.ask(|tx| Cmd::PrecopyStart(base, tx)).await??;
        tracking = handle.tracking_kind();
        // The app's memory, which bounds what the rounds may send again.
        let mut memory_bytes = handle.status().memory_bytes;
        match first {
            PrecopyFirst::Sliced { state, memories } => {
                memory_bytes = memories.iter().map(|&(_, pages)| pages * 4096).sum();
                // The target starts from the state with zeroed memories...
                bytes_sent += state.as_bytes().len() as u64;
                node.client
                    .post_bytes(&format!("{session}/base"), snapshot_body(*state))
                    .await
                    .map_err(|e| client_err("sending the first copy", e))?;
                // ...and the pages follow in slices, the next one read from
                // the app while this one is on the wire.
                let (b, p) = send_slices(&node, &handle, &session, &memories).await?;
                bytes_sent += b;
                pages_sent += p;
            }
            PrecopyFirst::Delta(chunks) => {
                let (b, p) = send_chunks(&node, &session, &chunks).await?;
                bytes_sent += b;
                pages_sent += p;
            }
        }
        rounds = 1;
        let mut previous = pages_sent.max(1);
        let mut stalled = 0;
        let budget = ROUND_BUDGET * memory_bytes.max(16 << 20);
        let mut resent = 0u64;
        let mut throttle = 0u32;
        loop {
            let chunks = handle.ask(Cmd::PrecopyRound).await??;
            let dirty: u64 = chunks.iter().map(|c| c.pages.len() as u64).sum();
            let (b, p) = send_chunks(&node, &session, &chunks).await?;
            bytes_sent += b;
            pages_sent += p;
            resent += b;
            rounds += 1;
            if dirty >= previous {
                stalled += 1;
            }
            if dirty <= CONVERGED_PAGES {
                break;
            }
            // Not shrinking by a quarter a round: the app writes about as
            // fast as pages move. Slow it down, more each round (it runs
            // 1/2, 1/4, 1/8, then 1/16 of the time), so that the rounds
            // catch up and the pause stays short.
            if dirty * 4 > previous * 3 && throttle < MAX_THROTTLE {
                throttle = throttle * 4 + 3;
                let _ = handle.send(Cmd::Throttle(throttle));
            }
            previous = dirty;
            if rounds >= MAX_ROUNDS || stalled >= 3 || resent >= budget {
                let slowed = if throttle > 0 {
                    format!(", the app slowed to 1/{} of its pace", throttle + 1)
                } else {
                    String::new()
                };
                let why = format!(
                    "pre-copy did not converge (the app writes pages about as fast as they move): \
                     stopped after {rounds} rounds and {} MiB sent again ({dirty} pages dirty in the last round{slowed}); \
                     what was still dirty moved in the pause",
                    resent >> 20
                );
                note = Some(match note.take() {
                    Some(n) => format!("{n}; {why}"),
                    None => why,
                });
                break;
            }
        }
        let (t_pause, frozen) = freeze(&handle, false, &mut paused_at).await?;
        let FreezeResult::Final(last) = frozen else {
            return Err(err(500, "unexpected freeze result"));
        };
        let body = encode_commit(&last.chunks, &last.state);
        bytes_sent += body.len() as u64;
        pages_sent += last
            .chunks
            .iter()
            .map(|c| c.pages.len() as u64)
            .sum::<u64>();
        let ack = post_ack(&node, &format!("{session}/commit"), Bytes::from(body)).await?;
        Ok((t_pause, ack))
    }
    .await;

    let (t_pause, _ack) = match outcome {
        Ok(x) => x,
        Err(e) => {
            // No acknowledgement. If the answer was lost but the target did
            // take over, the app must not resume here too: ask the target.
            if paused_at.is_some() && took_over(&node, &req.to_url, &app, req.generation).await {
                (
                    paused_at.unwrap_or(t0),
                    MigrationAck {
                        generation: req.generation,
                        resume_ms: 0.0,
                    },
                )
            } else {
                // The app goes on here, held calls first.
                let _ = handle.ask(Cmd::Unfreeze).await;
                let _ = node.client.delete(&session).await;
                return Err(e);
            }
        }
    };
    let downtime = t_pause.elapsed();

    // Handover: route to the target, replay held calls there, then drop.
    node.apps.lock().unwrap_or_else(|e| e.into_inner()).insert(
        app.clone(),
        Slot::Moved {
            url: req.to_url.clone(),
        },
    );
    let held = handle.ask(Cmd::Release).await.unwrap_or_default();
    let requests_held = held.len() as u64;
    for cmd in held {
        forward(&node, &req.to_url, &app, cmd).await;
    }
    node.forget_checkpoint(&app);
    Ok(MigrationReport {
        app,
        mode: mode.to_string(),
        from: node.name().to_string(),
        to: req.to_name,
        downtime_ms: downtime.as_secs_f64() * 1e3,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        bytes_sent,
        rounds,
        pages_sent,
        requests_held,
        dirty_tracking: tracking,
        generation: req.generation,
        started_unix_ms,
        checkpoint_bytes_fetched: opened.checkpoint_bytes_fetched,
        note,
        reason: None,
    })
}

/// Whether the target runs the app at the new generation (asked a few
/// times, in case the network hiccuped).
async fn took_over(node: &Node, url: &str, app: &str, generation: u64) -> bool {
    for attempt in 0..3 {
        match node
            .client
            .get_json::<tern_api::types::AppStatus>(&format!("{url}/v1/apps/{app}"))
            .await
        {
            Ok(st) => return st.generation == generation,
            Err(e) if e.status().is_some() => return false,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await
            }
        }
    }
    false
}

async fn send_chunks(
    node: &Node,
    session: &str,
    chunks: &[PageChunk],
) -> Result<(u64, u64), ApiErr> {
    let (mut bytes, mut pages) = (0, 0);
    for c in chunks {
        if c.pages.is_empty() && chunks.len() > 1 {
            continue;
        }
        let body = c.encode();
        bytes += body.len() as u64;
        pages += c.pages.len() as u64;
        node.client
            .post_bytes(&format!("{session}/pages"), Bytes::from(body))
            .await
            .map_err(|e| client_err("sending pages", e))?;
    }
    Ok((bytes, pages))
}

/// Freezes the app (`cold`: for a whole copy). `paused_at` is set before
/// asking (so a failure after it checks whether the target took over) and
/// then to the moment the actor actually stopped serving.
async fn freeze(
    handle: &AppHandle,
    cold: bool,
    paused_at: &mut Option<Instant>,
) -> Result<(Instant, FreezeResult), ApiErr> {
    *paused_at = Some(Instant::now());
    let (at, frozen) = handle.ask(|reply| Cmd::Freeze { cold, reply }).await??;
    *paused_at = Some(at);
    Ok((at, frozen))
}

/// Pages per slice of a hot move's first copy (4 MiB): small enough that
/// the app is never held for long, large enough to keep the wire busy.
const SLICE_PAGES: u64 = 1024;
/// Slices on the wire at once: while the target applies one, the next is
/// already arriving, and the source reads the one after.
const SLICES_IN_FLIGHT: usize = 2;

/// The first copy of a hot move (or the pages of a cold one): every
/// memory's non-zero pages, read from the app slice by slice (between two
/// slices a running app serves calls) and sent as page chunks, up to
/// [`SLICES_IN_FLIGHT`] at once while the next is read.
async fn send_slices(
    node: &Node,
    handle: &AppHandle,
    session: &str,
    memories: &[(u32, u64)],
) -> Result<(u64, u64), ApiErr> {
    type Send = tokio::task::JoinHandle<Result<(u64, u64), ApiErr>>;
    let slices: Vec<(u32, u64, u64)> = memories
        .iter()
        .flat_map(|&(memory, pages)| {
            (0..pages.div_ceil(SLICE_PAGES).max(1))
                .map(move |k| (memory, k * SLICE_PAGES, ((k + 1) * SLICE_PAGES).min(pages)))
        })
        .collect();
    let url = format!("{session}/pages");
    let (mut bytes, mut pages) = (0, 0);
    let mut in_flight: std::collections::VecDeque<Send> = std::collections::VecDeque::new();
    let outcome = async {
        for &(memory, first, end) in &slices {
            let (body, n) = handle
                .ask(move |reply| Cmd::PrecopySlice {
                    memory,
                    first,
                    end,
                    reply,
                })
                .await??;
            // All-zero slices are skipped, but the first of each memory
            // always goes, so the target learns every memory's size.
            if n == 0 && first != 0 {
                continue;
            }
            if in_flight.len() >= SLICES_IN_FLIGHT {
                if let Some(done) = in_flight.pop_front() {
                    let (b, p) = done.await.map_err(|e| err(500, e.to_string()))??;
                    bytes += b;
                    pages += p;
                }
            }
            let (client, url) = (node.client.clone(), url.clone());
            in_flight.push_back(tokio::spawn(async move {
                let len = body.len() as u64;
                client
                    .post_bytes(&url, Bytes::from(body))
                    .await
                    .map_err(|e| client_err("sending pages", e))?;
                Ok((len, n))
            }));
        }
        while let Some(done) = in_flight.pop_front() {
            let (b, p) = done.await.map_err(|e| err(500, e.to_string()))??;
            bytes += b;
            pages += p;
        }
        Ok::<_, ApiErr>(())
    }
    .await;
    for send in in_flight {
        send.abort();
    }
    outcome.map(|()| (bytes, pages))
}

/// Sends the last message and reads the acknowledgement.
async fn post_ack(node: &Node, url: &str, body: Bytes) -> Result<MigrationAck, ApiErr> {
    let answer = node
        .client
        .post_bytes(url, body)
        .await
        .map_err(|e| client_err("the target did not take over", e))?;
    serde_json::from_slice(&answer).map_err(|e| {
        err(
            502,
            format!("the target's acknowledgement is unreadable: {e}"),
        )
    })
}

/// Replays a held call on the node the app moved to, answering its caller.
pub(crate) async fn forward(node: &Node, url: &str, app: &str, cmd: Cmd) {
    match cmd {
        Cmd::Invoke(req, reply) => {
            let r = node
                .client
                .post_json::<InvokeRequest, tern_api::types::InvokeResponse>(
                    &format!("{url}/v1/apps/{app}/invoke"),
                    &req,
                )
                .await
                .map_err(|e| (e.status().unwrap_or(502), e.to_string()));
            let _ = reply.send(r);
        }
        Cmd::Http(req, reply) => {
            let _ = reply.send(super::http::forward_request(node, url, app, req).await);
        }
        Cmd::Snapshot(reply) => {
            let r = node
                .client
                .post_bytes(&format!("{url}/v1/apps/{app}/snapshot"), Bytes::new())
                .await
                .map_err(|e| (e.status().unwrap_or(502), e.to_string()))
                .and_then(|b| Snapshot::from_bytes(b.to_vec()).map_err(|e| (502, e.to_string())));
            let _ = reply.send(r);
        }
        Cmd::Stop(reply) | Cmd::Start(reply) => {
            let _ = reply.send(Err((409, format!("app {app} moved to {url}: ask there"))));
        }
        _ => {}
    }
}

/// A migration arriving on this node.
pub(crate) struct TargetSession {
    pub app: String,
    pub logs: Arc<tern_runtime::wasi::LogBuffer>,
    pub spec: StartApp,
    pub module: Arc<LoadedModule>,
    pub inst: Mutex<Option<Instance>>,
}

/// Opens a target session: checks fencing and the module, and for hybrid
/// restores the checkpoint first.
pub(crate) async fn open_session(
    node: Arc<Node>,
    open: MigrationOpen,
) -> Result<MigrationOpened, ApiErr> {
    node.check_generation(&open.app, open.spec.generation)
        .map_err(|m| err(409, m))?;
    if let Some(h) = node.local(&open.app) {
        if h.spec().generation >= open.spec.generation {
            return Err(err(
                409,
                format!(
                    "app {} already runs here at generation {}",
                    open.app,
                    h.spec().generation
                ),
            ));
        }
    }
    let sha: [u8; 32] = hex::decode(&open.spec.module_sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| err(400, "bad module sha256"))?;
    let module = node.module(&sha).await.map_err(|m| err(409, m))?;
    let mut fetched = 0;
    let mut inst = None;
    let logs = tern_runtime::wasi::LogBuffer::new();
    if open.mode == Mode::Hybrid {
        let digest = open
            .checkpoint_digest
            .clone()
            .ok_or_else(|| err(400, "hybrid migration without a checkpoint digest"))?;
        let (snap, n) = node
            .checkpoint_for(&open.app, &digest, open.checkpoint_url.as_deref())
            .await?;
        fetched = n;
        let rt = node.runtime.clone();
        let m = module.clone();
        let opts = restore_options(&node, &open.app, &snap, &logs, false, true);
        let restored =
            tokio::task::spawn_blocking(move || Instance::restore(&rt, &snap, Some(m), opts))
                .await
                .map_err(|e| err(500, e.to_string()))?
                .map_err(|e| err(500, format!("cannot restore the checkpoint: {e}")))?;
        inst = Some(restored);
    }
    let id = format!(
        "{}-{}",
        open.app,
        node.session_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let session = Arc::new(TargetSession {
        app: open.app,
        logs,
        spec: open.spec,
        module,
        inst: Mutex::new(inst),
    });
    node.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), session);
    Ok(MigrationOpened {
        id,
        checkpoint_bytes_fetched: fetched,
    })
}

fn session(node: &Node, id: &str) -> Result<Arc<TargetSession>, ApiErr> {
    node.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| err(404, format!("no migration session {id}")))
}

/// The first whole copy (hot).
pub(crate) async fn receive_base(node: Arc<Node>, id: String, body: Bytes) -> Result<(), ApiErr> {
    let s = session(&node, &id)?;
    let rt = node.runtime.clone();
    let snap = tokio::task::spawn_blocking(move || {
        // `Vec::from` takes the body's buffer over when it can (no copy).
        let snap = Snapshot::from_bytes(Vec::from(body))
            .map_err(|e| err(400, format!("first copy rejected: {e}")))?;
        let opts = restore_options(&node, &s.app, &snap, &s.logs, false, false);
        let inst = Instance::restore(&rt, &snap, Some(s.module.clone()), opts)
            .map_err(|e| err(400, format!("first copy does not restore: {e}")))?;
        *s.inst.lock().unwrap_or_else(|e| e.into_inner()) = Some(inst);
        Ok(snap)
    })
    .await
    .map_err(|e| err(500, e.to_string()))??;
    release(snap);
    Ok(())
}

/// A round of pages.
pub(crate) async fn receive_pages(node: Arc<Node>, id: String, body: Bytes) -> Result<(), ApiErr> {
    let s = session(&node, &id)?;
    tokio::task::spawn_blocking(move || {
        let chunk = PageChunkRef::decode(&body)
            .map_err(|e| err(400, format!("page chunk rejected: {e}")))?;
        let mut g = s.inst.lock().unwrap_or_else(|e| e.into_inner());
        let inst = g
            .as_mut()
            .ok_or_else(|| err(409, "pages before the first copy"))?;
        inst.apply_chunk_ref(&chunk)
            .map_err(|e| err(400, e.to_string()))
    })
    .await
    .map_err(|e| err(500, e.to_string()))?
}

/// Stop-and-copy (hot, hybrid) or the whole snapshot (cold): put the state
/// in place, resume the app here, acknowledge.
pub(crate) async fn receive_final(
    node: Arc<Node>,
    id: String,
    body: Bytes,
    cold: bool,
) -> Result<MigrationAck, ApiErr> {
    let s = session(&node, &id)?;
    let t0 = Instant::now();
    let rt = node.runtime.clone();
    let s2 = s.clone();
    let node2 = node.clone();
    let (inst, spent) = tokio::task::spawn_blocking(move || {
        if cold {
            let snap = Snapshot::from_bytes(Vec::from(body))
                .map_err(|e| err(400, format!("snapshot rejected: {e}")))?;
            let opts = restore_options(&node2, &s2.app, &snap, &s2.logs, true, false);
            let inst = Instance::restore(&rt, &snap, Some(s2.module.clone()), opts)
                .map_err(|e| err(400, format!("snapshot does not restore: {e}")))?;
            return Ok((inst, Some(snap)));
        }
        let (chunks, state) =
            decode_commit(&body).map_err(|e| err(400, format!("stop-and-copy rejected: {e}")))?;
        let mut inst = s2
            .inst
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| err(409, "commit before the first copy"))?;
        for c in &chunks {
            inst.apply_chunk(c).map_err(|e| err(400, e.to_string()))?;
        }
        inst.apply_state(&state)
            .map_err(|e| err(400, e.to_string()))?;
        inst.run_restore_hook()
            .map_err(|e| err(500, format!("the app's restore hook failed: {e}")))?;
        Ok((inst, None))
    })
    .await
    .map_err(|e| err(500, e.to_string()))??;
    node.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    node.admit_generation(&s.app, s.spec.generation)
        .map_err(|m| err(409, m))?;
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        s.module.clone(),
        s.spec.clone(),
        node.config.data_dir.clone(),
        Some((inst, s.logs.clone())),
    );
    node.install(handle);
    if let Some(snap) = spent {
        release(snap);
    }
    Ok(MigrationAck {
        generation: s.spec.generation,
        resume_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// How an app restores on this node: its logs here, its directory here, the
/// limits it was deployed with.
pub(crate) fn restore_options(
    node: &Node,
    app: &str,
    snap: &Snapshot,
    logs: &Arc<tern_runtime::wasi::LogBuffer>,
    hooks: bool,
    copy_on_write: bool,
) -> RestoreOptions {
    let mut wasi = snap.body.wasi.clone();
    let dir = super::app::app_dir(&node.config.data_dir, app);
    let carry_dir = Some(std::path::PathBuf::from(&dir.host));
    wasi.preopens = vec![dir];
    RestoreOptions {
        carry_dir,
        copy_on_write,
        hooks,
        wasi_override: Some(wasi),
        limits_override: None,
        stdio: tern_runtime::wasi::Stdio::Capture(logs.clone()),
    }
}
