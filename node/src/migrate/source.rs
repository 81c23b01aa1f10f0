//! The source's driver: it moves a local app to another node, step by step
//! (see the protocol in `mod.rs`), and reports what the move took.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_api::client::Client;
use tern_api::types::{
    AppStatus, MigrateRequest, MigrationAck, MigrationOpen, MigrationOpened, MigrationReport, Mode,
    StartApp,
};
use tern_runtime::engine::LoadedModule;
use tern_runtime::snapshot::{CommitFrame, PageChunk, Snapshot};
use tern_util::now_unix_ms;

use super::replay::replay_held;
use crate::app::{AppHandle, Cmd, DirtyPages, FreezeResult, PrecopyFirst, SlicePages};
use crate::checkpoint::snapshot_body;
use crate::error::{NodeError, Result};
use crate::node::{lock, Node};

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
/// Pages per slice of a first copy (4 MiB): small enough that the app is
/// never held for long, large enough to keep the wire busy.
const SLICE_PAGES: u64 = 1024;
/// Slices on the wire at once: while the target applies one, the next is
/// already arriving, and the source reads the one after.
const SLICES_IN_FLIGHT: usize = 2;

/// Moves a local app to another node and reports what it took.
pub(crate) async fn migrate_out(
    node: Arc<Node>,
    app: String,
    req: MigrateRequest,
) -> Result<MigrationReport> {
    let handle = node.local(&app).ok_or_else(|| {
        NodeError::not_found(format!("app {app} does not run on node {}", node.name()))
    })?;
    let spec = handle.spec();
    if req.generation <= spec.generation {
        return Err(NodeError::conflict(format!(
            "the new generation {} must be newer than {}",
            req.generation, spec.generation
        )));
    }
    let started_unix_ms = now_unix_ms();
    let t0 = Instant::now();
    // No refill of this node's resident stock competes with the move.
    let _busy = tern_runtime::resident::busy();
    let module = node
        .runtime
        .loaded(&handle.module_sha())
        .ok_or_else(|| NodeError::internal("the app's module is not loaded on this node"))?;
    // Every request to the target goes through a client that accepts only
    // its certificate (over TLS).
    let peer = node.peer(&req.to_name)?;
    let module_bytes = ensure_module(&peer, &req.to_url, &module).await?;

    // Hybrid starts from the checkpoint the target holds or can fetch; an
    // app with none yet is checkpointed now (which also sends the
    // checkpoint to the control plane, where the target fetches it).
    let mut mode = req.mode;
    let mut note = None;
    let mut checkpoint = None;
    let mut _pinned = None;
    if mode == Mode::Hybrid {
        match hybrid_base(&node, &handle).await {
            Ok((cp, taken)) => {
                _pinned = Some(Pinned::new(&node, &app, cp.clone()));
                checkpoint = Some(cp);
                note = taken;
            }
            Err(why) => {
                mode = Mode::Hot;
                note = Some(format!("{why}: moved hot instead of hybrid"));
            }
        }
    }
    // Post-copy (or hot that may end in post-copy): the checkpoint the
    // target restarts from if this node is lost before every page is there
    // — taken now if the app has none yet. Without one, a lost source
    // would leave the target nothing to restart from: no post-copy then.
    // A node without a control plane keeps its checkpoints on its own disk
    // only, where a target whose source is lost cannot reach them: it takes
    // none for the move (its app has no such net, whatever the mode).
    let may_postcopy = mode == Mode::Postcopy || req.postcopy_after_rounds.is_some();
    let standalone = node.control_count() == 0 && node.latest_checkpoint(&app).is_none();
    let mut postcopy_checkpoint = None;
    if may_postcopy && standalone {
        note = note.or(Some(
            "no control plane keeps this app's checkpoints: if this node is lost before every page is on the target, the app's state is lost".to_string(),
        ));
    } else if may_postcopy {
        match hybrid_base(&node, &handle).await {
            Ok((cp, taken)) => {
                postcopy_checkpoint = Some(cp.0);
                note = note.or(taken);
            }
            Err(why) if mode == Mode::Postcopy => {
                mode = Mode::Hot;
                note = Some(format!(
                    "{why}: a post-copy needs a checkpoint to restart from if this node is lost; moved hot instead"
                ));
            }
            Err(why) => {
                note = Some(format!("{why}: this move will not switch to post-copy"));
            }
        }
    }
    let postcopy_fallback = postcopy_checkpoint.is_some() || standalone;
    let open = MigrationOpen {
        app: app.clone(),
        from: node.name().to_string(),
        mode,
        spec: StartApp {
            generation: req.generation,
            ..spec
        },
        checkpoint_digest: checkpoint
            .as_ref()
            .map(|c| c.0.clone())
            .or(postcopy_checkpoint),
        checkpoint_url: req.checkpoint_url.clone(),
        source_url: Some(node.url().to_string()),
    };
    // A live move starts tracking and takes its first copy's state while
    // the target opens its session (a round trip and a durable write
    // there): if the target refuses, the app just goes on unmoved.
    let open_url = format!("{}/v1/migrations", req.to_url);
    let opening = peer.post_json::<_, MigrationOpened>(&open_url, &open);
    let (opened, started) = if matches!(mode, Mode::Hot | Mode::Hybrid) {
        let base = checkpoint.as_ref().map(|c| c.1.clone());
        let start = handle.ask(|tx| Cmd::PrecopyStart(base, tx));
        let (opened, started) = tokio::join!(opening, start);
        (opened, Some(started.and_then(|r| r)))
    } else {
        (opening.await, None)
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if matches!(started, Some(Ok(_))) {
                let _ = handle.ask(Cmd::Unfreeze).await;
            }
            return Err(NodeError::peer("the target refused the migration", e));
        }
    };

    let mut mv = Move {
        peer,
        session: format!("{}/v1/migrations/{}", req.to_url, opened.id),
        node,
        handle,
        app,
        to_url: req.to_url.clone(),
        to_name: req.to_name.clone(),
        bytes_sent: module_bytes,
        pages_sent: 0,
        rounds: 0,
        tracking: "none".to_string(),
        note,
        paused_at: None,
        postcopy_remote: Vec::new(),
        postcopy_after: req.postcopy_after_rounds.filter(|_| {
            mode == Mode::Hot && opened.postcopy_unavailable.is_none() && postcopy_fallback
        }),
        postcopy_now: false,
    };
    if let (Mode::Postcopy, Some(why)) = (mode, &opened.postcopy_unavailable) {
        mode = Mode::Hot;
        mv.note = Some(format!(
            "post-copy is not available on the target ({why}): moved hot instead"
        ));
    }
    let outcome = match mode {
        Mode::Cold => mv.cold().await,
        Mode::Postcopy => mv.postcopy_switch().await,
        _ => match started {
            Some(first) => mv.live(first).await,
            // Post-copy unavailable on the target: hot after all.
            None => {
                let first = mv
                    .handle
                    .ask(|tx| Cmd::PrecopyStart(None, tx))
                    .await
                    .and_then(|r| r);
                mv.live(first).await
            }
        },
    };
    let t_pause = match outcome {
        Ok(t) => t,
        Err(e) => mv.rollback(e, req.generation).await?,
    };
    let downtime = t_pause.elapsed();
    if mv.postcopy_now {
        mode = Mode::Postcopy;
    }
    let requests_held = match mode {
        Mode::Postcopy => mv.postcopy_finish(open.spec.clone()).await?,
        _ => mv.handover().await,
    };
    Ok(MigrationReport {
        app: mv.app,
        mode: mode.to_string(),
        from: mv.node.name().to_string(),
        to: req.to_name,
        downtime_ms: downtime.as_secs_f64() * 1e3,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        bytes_sent: mv.bytes_sent,
        rounds: mv.rounds,
        pages_sent: mv.pages_sent,
        requests_held,
        dirty_tracking: mv.tracking,
        generation: req.generation,
        started_unix_ms,
        checkpoint_bytes_fetched: opened.checkpoint_bytes_fetched,
        note: mv.note,
        reason: None,
    })
}

/// A hybrid move's checkpoint, kept where the move's target can fetch it
/// by digest until the move ends (`Node::moving_checkpoints`).
struct Pinned {
    node: Arc<Node>,
    app: String,
}

impl Pinned {
    fn new(node: &Arc<Node>, app: &str, cp: (String, Arc<Snapshot>)) -> Pinned {
        lock(&node.moving_checkpoints).insert(app.to_string(), cp);
        Pinned {
            node: node.clone(),
            app: app.to_string(),
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        lock(&self.node.moving_checkpoints).remove(&self.app);
    }
}

/// The checkpoint a hybrid move starts from: the app's latest, or one
/// taken now when it has none yet (then with a note saying so). An error
/// says why there is no usable checkpoint.
async fn hybrid_base(
    node: &Node,
    handle: &AppHandle,
) -> std::result::Result<((String, Arc<Snapshot>), Option<String>), String> {
    if let Some(cp) = node.latest_checkpoint(handle.name()) {
        return Ok((cp, None));
    }
    node.checkpoint(handle)
        .await
        .map_err(|e| format!("no checkpoint of the app yet, and taking one failed ({e})"))?;
    // The target fetches the checkpoint from the control plane: one that
    // did not reach it is of no use to this move.
    if let Some(error) = handle.status().checkpoint.and_then(|c| c.error) {
        return Err(format!(
            "no checkpoint of the app yet, and the one taken now is {error}"
        ));
    }
    let cp = node
        .latest_checkpoint(handle.name())
        .ok_or_else(|| "no checkpoint of the app yet (the one taken now is gone)".to_string())?;
    let note = format!(
        "the app had no checkpoint yet: took one ({} bytes) before the move",
        cp.1.as_bytes().len()
    );
    Ok((cp, Some(note)))
}

/// Makes sure a node holds a module, uploading it if not; the bytes sent.
async fn ensure_module(peer: &Client, url: &str, module: &LoadedModule) -> Result<u64> {
    let murl = format!("{url}/v1/modules/{}", module.hash_hex());
    if peer
        .exists(&murl)
        .await
        .map_err(|e| NodeError::peer("target node", e))?
    {
        return Ok(0);
    }
    let bytes = Bytes::from(module.original.as_ref().clone());
    let n = bytes.len() as u64;
    peer.put_bytes(&murl, bytes)
        .await
        .map_err(|e| NodeError::peer("cannot upload the module to the target", e))?;
    Ok(n)
}

/// A move in progress on the source: where it goes and what it sent.
pub(crate) struct Move {
    pub(crate) node: Arc<Node>,
    /// The client for the target (`Node::peer`: only its certificate).
    pub(crate) peer: Client,
    pub(crate) handle: AppHandle,
    pub(crate) app: String,
    pub(crate) to_url: String,
    pub(crate) to_name: String,
    /// The target's session (`.../v1/migrations/ID`).
    pub(crate) session: String,
    pub(crate) bytes_sent: u64,
    pub(crate) pages_sent: u64,
    rounds: u32,
    tracking: String,
    pub(crate) note: Option<String>,
    /// Set when the app is asked to freeze: from then on a failure must ask
    /// the target whether it took over before resuming the app here.
    pub(crate) paused_at: Option<Instant>,
    /// Post-copy: the pages the target lacks after the switch.
    pub(crate) postcopy_remote: Vec<tern_runtime::snapshot::RemotePages>,
    /// Hot: switch to post-copy after this many rounds if not converged.
    postcopy_after: Option<u32>,
    /// Set when the rounds end that way.
    postcopy_now: bool,
}

impl Move {
    /// Cold: freeze, then the state, the pages in slices (read, sent and
    /// applied in a pipeline) and the commit, with the app frozen all along.
    /// Returns when the app stopped serving.
    async fn cold(&mut self) -> Result<Instant> {
        let (t_pause, frozen) = self.freeze(true).await?;
        let FreezeResult::Cold { state, memories } = frozen else {
            return Err(NodeError::internal("unexpected freeze result"));
        };
        let commit = CommitFrame::encode(&[], &state);
        self.bytes_sent += commit.len() as u64;
        self.send_first_copy(*state, &memories, "sending the state")
            .await?;
        self.commit(Bytes::from(commit)).await?;
        Ok(t_pause)
    }

    /// Hot and hybrid, once tracking started (`first`: what the app's
    /// actor answered to [`Cmd::PrecopyStart`]): the first copy and the
    /// rounds while the app serves, then the stop-and-copy. Returns when the
    /// app stopped serving.
    async fn live(&mut self, first: Result<PrecopyFirst>) -> Result<Instant> {
        let memory_bytes = self.first_copy(first?).await?;
        self.rounds(memory_bytes).await?;
        if self.postcopy_now {
            // Hot, then post-copy: what is still dirty stays on the source
            // and follows on demand (see `postcopy/source.rs`).
            return self.postcopy_switch().await;
        }
        self.stop_and_copy().await
    }

    /// Sends the first copy: the state with zeroed memories, then every
    /// non-zero page in slices (hot), or the pages that differ from the
    /// checkpoint the target restored (hybrid). Returns the app's memory
    /// size, which bounds what the rounds resend.
    async fn first_copy(&mut self, first: PrecopyFirst) -> Result<u64> {
        self.tracking = self.handle.tracking_kind();
        let mut memory_bytes = self.handle.status().memory_bytes;
        match first {
            PrecopyFirst::Sliced { state, memories } => {
                memory_bytes = memories.iter().map(|&(_, pages)| pages * 4096).sum();
                self.send_first_copy(*state, &memories, "sending the first copy")
                    .await?;
            }
            PrecopyFirst::Delta(chunks) => self.send_chunks(&chunks).await?,
        }
        self.rounds = 1;
        Ok(memory_bytes)
    }

    /// Rounds of the pages written since the last one, until few are left
    /// or they stop converging (then the app is slowed, and the pause takes
    /// what is left).
    async fn rounds(&mut self, memory_bytes: u64) -> Result<()> {
        let mut previous = self.pages_sent.max(1);
        let mut stalled = 0;
        let budget = ROUND_BUDGET * memory_bytes.max(16 << 20);
        let mut resent = 0u64;
        let mut throttle = 0u32;
        loop {
            let before = self.bytes_sent;
            let dirty = self.send_round().await?;
            resent += self.bytes_sent - before;
            self.rounds += 1;
            if dirty >= previous {
                stalled += 1;
            }
            if dirty <= CONVERGED_PAGES {
                return Ok(());
            }
            // Not shrinking by a quarter a round: the app writes about as
            // fast as pages move. Slow it down, more each round (it runs
            // 1/2, 1/4, 1/8, then 1/16 of the time), so that the rounds
            // catch up and the pause stays short.
            if dirty * 4 > previous * 3 && throttle < MAX_THROTTLE {
                throttle = throttle * 4 + 3;
                let _ = self.handle.send(Cmd::Throttle(throttle));
            }
            previous = dirty;
            if self.postcopy_after.is_some_and(|n| self.rounds >= n) {
                self.postcopy_now = true;
                self.note = Some(format!(
                    "pre-copy had not converged after {} rounds ({dirty} pages dirty in the last): switched to post-copy",
                    self.rounds
                ));
                return Ok(());
            }
            if self.rounds >= MAX_ROUNDS || stalled >= 3 || resent >= budget {
                let slowed = if throttle > 0 {
                    format!(", the app slowed to 1/{} of its pace", throttle + 1)
                } else {
                    String::new()
                };
                let why = format!(
                    "pre-copy did not converge (the app writes pages about as fast as they move): \
                     stopped after {} rounds and {} MiB sent again ({dirty} pages dirty in the last round{slowed}); \
                     what was still dirty moved in the pause",
                    self.rounds,
                    resent >> 20
                );
                self.note = Some(match self.note.take() {
                    Some(n) => format!("{n}; {why}"),
                    None => why,
                });
                return Ok(());
            }
        }
    }

    /// Freezes the app and sends the last dirty pages with its state; the
    /// target resumes it and acknowledges. Returns when the app stopped.
    async fn stop_and_copy(&mut self) -> Result<Instant> {
        let (t_pause, frozen) = self.freeze(false).await?;
        let FreezeResult::Final(last) = frozen else {
            return Err(NodeError::internal("unexpected freeze result"));
        };
        if !last.rest.is_empty() {
            self.send_slices(None, listed_slices(last.rest)).await?;
        }
        let body = CommitFrame::encode(&last.chunks, &last.state);
        self.bytes_sent += body.len() as u64;
        self.pages_sent += last
            .chunks
            .iter()
            .map(|c| c.pages.len() as u64)
            .sum::<u64>();
        self.commit(Bytes::from(body)).await?;
        Ok(t_pause)
    }

    /// No acknowledgement came. If the answer was lost but the target did
    /// take over, the app must not resume here too: the target is asked.
    /// Otherwise the app goes on here, held calls first, the target's
    /// session is deleted, and the move fails with `e`.
    async fn rollback(&mut self, e: NodeError, generation: u64) -> Result<Instant> {
        if let Some(paused_at) = self.paused_at {
            if took_over(&self.peer, &self.to_url, &self.app, generation).await {
                return Ok(paused_at);
            }
        }
        // A post-copy switch that did not happen: its page service closes.
        self.node.postcopy.close_outgoing(&self.app);
        let _ = self.handle.ask(Cmd::Unfreeze).await;
        let _ = self.peer.delete(&self.session).await;
        Err(e)
    }

    /// Routing flips to the target, the calls held during the pause are
    /// replayed there in order, and only then is the copy here freed (off
    /// the async workers: unmapping tens of MiB takes milliseconds of CPU
    /// the app's first calls on the target would otherwise wait behind).
    /// Returns how many calls were held.
    async fn handover(&mut self) -> u64 {
        self.node.mark_moved(&self.app, &self.to_url);
        let (held, frozen) = self.handle.ask(Cmd::Release).await.unwrap_or_default();
        let n = held.len() as u64;
        replay_held(&self.node, &self.to_url, &self.app, held).await;
        super::target::release(frozen);
        self.node.forget_checkpoint(&self.app);
        n
    }

    /// Freezes the app (`cold`: for a whole copy). `paused_at` is set
    /// before asking (so a failure after it checks whether the target took
    /// over) and then to the moment the actor actually stopped serving.
    async fn freeze(&mut self, cold: bool) -> Result<(Instant, FreezeResult)> {
        self.paused_at = Some(Instant::now());
        let (at, frozen) = self
            .handle
            .ask(|reply| Cmd::Freeze { cold, reply })
            .await??;
        self.paused_at = Some(at);
        Ok((at, frozen))
    }

    async fn post(&self, url: &str, body: Bytes) -> Result<Bytes, tern_api::client::ClientError> {
        self.peer.post_bytes(url, body).await
    }

    /// Sends the commit frame and reads the acknowledgement.
    async fn commit(&self, body: Bytes) -> Result<MigrationAck> {
        let answer = self
            .post(&format!("{}/commit", self.session), body)
            .await
            .map_err(|e| NodeError::peer("the target did not take over", e))?;
        serde_json::from_slice(&answer).map_err(|e| {
            NodeError::new(
                crate::ErrorKind::Peer(502),
                format!("the target's acknowledgement is unreadable: {e}"),
            )
        })
    }

    async fn send_chunks(&mut self, chunks: &[PageChunk]) -> Result<()> {
        let url = format!("{}/pages", self.session);
        for c in chunks {
            if c.pages.is_empty() && chunks.len() > 1 {
                continue;
            }
            let slice = tern_runtime::snapshot::encode_chunk(c);
            self.pages_sent += slice.pages;
            let body = slice_body(slice);
            self.bytes_sent += body.len() as u64;
            self.post(&url, body)
                .await
                .map_err(|e| NodeError::peer("sending pages", e))?;
        }
        Ok(())
    }

    /// The state (`base`: restored on the target with zeroed memories,
    /// `what` names the step in an error) and then every memory's non-zero
    /// pages, in slices (see [`Move::send_slices`]). The first slice is
    /// read while the state is on its way; pages go only once the target
    /// holds the state.
    async fn send_first_copy(
        &mut self,
        base: Snapshot,
        memories: &[(u32, u64)],
        what: &'static str,
    ) -> Result<()> {
        self.bytes_sent += base.as_bytes().len() as u64;
        let (client, url) = (self.peer.clone(), format!("{}/base", self.session));
        let body = owned_body(base);
        let base = tokio::spawn(async move {
            client
                .post_bytes(&url, body)
                .await
                .map_err(|e| NodeError::peer(what, e))?;
            Ok::<_, NodeError>(())
        });
        let slices = memories
            .iter()
            .flat_map(|&(memory, pages)| {
                (0..pages.div_ceil(SLICE_PAGES).max(1)).map(move |k| {
                    let (first, end) = (k * SLICE_PAGES, ((k + 1) * SLICE_PAGES).min(pages));
                    (memory, SlicePages::NonZero { first, end })
                })
            })
            .collect();
        self.send_slices(Some(base), slices).await
    }

    /// A round: the pages written since the last one, in slices (see
    /// [`Move::send_slices`]). Returns how many there were.
    async fn send_round(&mut self) -> Result<u64> {
        let dirty = self.handle.ask(Cmd::PrecopyRound).await??;
        let count = dirty.iter().map(|(_, pages)| pages.len() as u64).sum();
        self.send_slices(None, listed_slices(dirty)).await?;
        Ok(count)
    }

    /// Page slices, each read from the app when its turn comes (between
    /// two, a running app serves calls) and sent as a page chunk, up to
    /// [`SLICES_IN_FLIGHT`] at once while the next is read. A slice with no
    /// pages is skipped unless it is a memory's first (so the target learns
    /// every memory's size). `base`: a request that must be answered before
    /// any slice goes.
    async fn send_slices(
        &mut self,
        mut base: Option<tokio::task::JoinHandle<Result<()>>>,
        slices: Vec<(u32, SlicePages)>,
    ) -> Result<()> {
        type Send = tokio::task::JoinHandle<Result<(u64, u64)>>;
        let url = format!("{}/pages", self.session);
        let (mut bytes, mut pages) = (0, 0);
        let mut in_flight: VecDeque<Send> = VecDeque::new();
        let mut last_memory = None;
        let outcome = async {
            for (memory, which) in slices {
                let first_of_memory = last_memory != Some(memory);
                last_memory = Some(memory);
                let slice = self
                    .handle
                    .ask(move |reply| Cmd::PrecopySlice {
                        memory,
                        pages: which,
                        reply,
                    })
                    .await??;
                let n = slice.pages;
                if n == 0 && !first_of_memory {
                    continue;
                }
                if let Some(base) = base.take() {
                    base.await??;
                }
                if in_flight.len() >= SLICES_IN_FLIGHT {
                    if let Some(done) = in_flight.pop_front() {
                        let (b, p) = done.await??;
                        bytes += b;
                        pages += p;
                    }
                }
                let (client, url) = (self.peer.clone(), url.clone());
                in_flight.push_back(tokio::spawn(async move {
                    let body = slice_body(slice);
                    let len = body.len() as u64;
                    client
                        .post_bytes(&url, body)
                        .await
                        .map_err(|e| NodeError::peer("sending pages", e))?;
                    Ok((len, n))
                }));
            }
            if let Some(base) = base.take() {
                base.await??;
            }
            while let Some(done) = in_flight.pop_front() {
                let (b, p) = done.await??;
                bytes += b;
                pages += p;
            }
            Ok::<_, NodeError>(())
        }
        .await;
        if let Some(base) = base {
            base.abort();
        }
        for send in in_flight {
            send.abort();
        }
        self.bytes_sent += bytes;
        self.pages_sent += pages;
        outcome
    }
}

/// Dirty pages as slices of at most [`SLICE_PAGES`] (a memory with none
/// still gets an empty one: it carries the memory's size).
fn listed_slices(dirty: DirtyPages) -> Vec<(u32, SlicePages)> {
    dirty
        .into_iter()
        .flat_map(|(memory, pages)| {
            let mut parts: Vec<Vec<u64>> = pages
                .chunks(SLICE_PAGES as usize)
                .map(<[u64]>::to_vec)
                .collect();
            if parts.is_empty() {
                parts.push(Vec::new());
            }
            parts
                .into_iter()
                .map(move |part| (memory, SlicePages::Listed(part)))
        })
        .collect()
}

/// Whether the target runs the app at the new generation (asked a few
/// times, in case the network hiccuped).
async fn took_over(peer: &Client, url: &str, app: &str, generation: u64) -> bool {
    for attempt in 0..3 {
        match peer
            .get_json::<AppStatus>(&format!("{url}/v1/apps/{app}"))
            .await
        {
            Ok(st) => return st.generation == generation,
            Err(e) if e.status().is_some() => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
        }
    }
    false
}

/// An encoded page slice as a request body, without copying it; its buffer
/// goes back to the pool once sent.
pub(crate) fn slice_body(slice: tern_runtime::snapshot::EncodedSlice) -> Bytes {
    tern_api::server::recycled(slice.buf).slice(slice.start..)
}

/// A snapshot's encoded bytes as a request body, without copying them.
fn owned_body(snap: Snapshot) -> Bytes {
    snapshot_body(Arc::new(snap))
}
