//! The source of a post-copy: the switch (freeze, the frame, the target's
//! acknowledgement), then the handover with the frozen instance kept to
//! answer the target's page requests while every page is pushed; and the
//! resume here if the target is lost before all pages are in.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_api::types::StartApp;
use tern_runtime::snapshot::{PostcopyFrame, RemotePages};

use super::{Outgoing, MAX_REJECTED_PUSHES, PUSHES_IN_FLIGHT, PUSH_PAGES};
use crate::app::{AppHandle, Cmd};
use crate::error::{NodeError, Result};
use crate::migrate::replay::replay_held;
use crate::migrate::source::Move;
use crate::node::{lock, Node};

/// Attempts per push before the target counts as lost.
const PUSH_ATTEMPTS: u32 = 4;
/// The longest a watch request is kept before it is answered.
const WATCH_MAX: Duration = Duration::from_secs(10);
/// How often a kept watch request looks whether the move ended.
const WATCH_STEP: Duration = Duration::from_millis(100);
/// How long a page request arriving right after the switch waits for the
/// frozen instance to be handed over.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

impl Move {
    /// Freezes the app and sends the switch-over frame; the target resumes
    /// the app and acknowledges. Returns when the app stopped serving; the
    /// pages the target lacks are kept for [`Move::postcopy_finish`].
    pub(crate) async fn postcopy_switch(&mut self) -> Result<Instant> {
        self.paused_at = Some(Instant::now());
        let (at, frame) = self.handle.ask(Cmd::PostcopyFreeze).await??;
        self.paused_at = Some(at);
        // The frame was made by this node a moment ago: reading it back
        // gives the page list without a second copy of the state.
        let remote = PostcopyFrame::decode(&frame)
            .map_err(|e| NodeError::internal(format!("post-copy frame: {e}")))?
            .remote;
        // Kept before the frame goes: if its answer is lost but the target
        // took over (`Move::rollback` asks), these pages must still be
        // pushed; a list set only on the answer was empty then, nothing
        // went, and the target had to restart from its checkpoint.
        self.postcopy_remote = remote;
        self.bytes_sent += frame.len() as u64;
        // The target resumes the app as soon as it has the frame and may
        // ask for pages at once: it may from now on (its fetches wait until
        // the frozen instance is handed over in `postcopy_finish`).
        lock(&self.node.postcopy.outgoing)
            .insert(self.app.clone(), Arc::new(Outgoing::new(&self.to_name)));
        // A node's URL is scheme, host and port: nothing a query needs to
        // escape (the target checks what it gets).
        let url = format!("{}/postcopy?from_url={}", self.session, self.node.url());
        let answer = self
            .peer
            .post_bytes(&url, Bytes::from(frame))
            .await
            // The page service stays open: the answer may be what was lost
            // while the target took over and already asks for pages (and
            // watches this node). `Move::rollback` closes it if the target
            // did not take over.
            .map_err(|e| NodeError::peer("the target did not take over", e))?;
        let _: tern_api::types::MigrationAck = serde_json::from_slice(&answer).map_err(|e| {
            NodeError::new(
                crate::ErrorKind::Peer(502),
                format!("the target's acknowledgement is unreadable: {e}"),
            )
        })?;
        Ok(at)
    }

    /// After the switch: routing flips, held calls are replayed on the
    /// target, and every page the target lacks is pushed while the frozen
    /// instance answers its requests. If the target is lost meanwhile, the
    /// app resumes here (at `spec`'s generation) and the move fails saying
    /// so. Returns how many calls were held.
    pub(crate) async fn postcopy_finish(&mut self, spec: StartApp) -> Result<u64> {
        self.node.mark_moved(&self.app, &self.to_url);
        let released = self.handle.ask(Cmd::Release).await;
        let (held, inst) = match released {
            Ok((held, Some(inst))) => (held, inst),
            failed => {
                lock(&self.node.postcopy.outgoing).remove(&self.app);
                failed?;
                return Err(NodeError::internal(
                    "the app's instance was gone when its pages were to be sent",
                ));
            }
        };
        let n = held.len() as u64;
        let out = lock(&self.node.postcopy.outgoing)
            .entry(self.app.clone())
            .or_insert_with(|| Arc::new(Outgoing::new(&self.to_name)))
            .clone();
        *lock(&out.inst) = Some(inst);
        out.ready.send_replace(true);
        // The held calls are replayed while the pages go: a call that
        // touches many pages still here would otherwise wait on each in
        // turn, and hold up the pushes that bring them in bulk.
        let remote = std::mem::take(&mut self.postcopy_remote);
        let (node, to_url, app) = (self.node.clone(), self.to_url.clone(), self.app.clone());
        let push_after = self.node.config.postcopy_push_after;
        let ((), pushed) = tokio::join!(replay_held(&node, &to_url, &app, held), async {
            tokio::time::sleep(push_after).await;
            self.push_all(&out, &remote, spec.generation).await
        });
        lock(&self.node.postcopy.outgoing).remove(&self.app);
        let served_pages = out.pages_served.load(Ordering::Relaxed);
        self.bytes_sent += out.bytes_served.load(Ordering::Relaxed);
        self.pages_sent += served_pages;
        let total: u64 = remote.iter().map(RemotePages::pages).sum();
        match pushed {
            Ok(()) => {
                let done = self
                    .peer
                    .post_bytes(&self.push_url("done", spec.generation), Bytes::new())
                    .await;
                super::super::target::release(lock(&out.inst).take());
                // Every push was accepted, yet the target may still lack
                // pages (it then goes on from its checkpoint): the move did
                // not deliver the app's state, and says so. An answer lost
                // on the way is no news: the target's watch sees the move
                // end and checks its pages itself.
                let done = done
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .unwrap_or_default();
                if let Some(left) = done["remaining"].as_u64().filter(|&left| left > 0) {
                    return Err(NodeError::new(
                        crate::ErrorKind::Peer(502),
                        format!("post-copy: the target still lacked {left} of {total} pages when every push was in; it goes on from its checkpoint (see the app's status there)"),
                    ));
                }
                self.node.forget_checkpoint(&self.app);
                // How the target placed them: moved into place where its
                // kernel can, copied where it cannot (a cost worth seeing).
                let placed = match (done["moved"].as_u64(), done["copied"].as_u64()) {
                    (Some(m), Some(c)) => {
                        format!("; the target moved {m} into place and copied {c} (those fetched, and any push it could not move)")
                    }
                    _ => String::new(),
                };
                self.add_note(format!(
                    "post-copy: {total} pages to deliver; {served_pages} fetched by the target on first touch, the rest pushed{placed}"
                ));
                Ok(n)
            }
            Err(PushError::TargetGaveUp(e)) => {
                // The target is alive and dropped the move (its own
                // restart from a checkpoint): the copy here must not run.
                super::super::target::release(lock(&out.inst).take());
                Err(NodeError::new(
                    crate::ErrorKind::Peer(502),
                    format!("the target gave up the post-copy before every page was in (see the app's status there): {e}"),
                ))
            }
            Err(PushError::TargetLost(e)) => {
                let inst = lock(&out.inst).take();
                self.resume_here(spec, inst, e).await
            }
        }
    }

    /// Resumes the app here from the frozen instance after the target was
    /// lost mid-post-copy, and fails the move saying so.
    async fn resume_here(
        &mut self,
        spec: StartApp,
        inst: Option<tern_runtime::instance::Instance>,
        e: String,
    ) -> Result<u64> {
        let lost = format!("the target {} was lost mid-post-copy ({e})", self.to_name);
        let inst = inst
            .ok_or_else(|| NodeError::internal(format!("{lost}; the frozen copy is gone too")))?;
        let module = self
            .node
            .runtime
            .loaded(&self.handle.module_sha())
            .ok_or_else(|| {
                NodeError::internal(format!("{lost}; the app's module is not loaded here"))
            })?;
        self.node.admit_generation(&self.app, spec.generation)?;
        let generation = spec.generation;
        let handle = AppHandle::spawn(
            self.node.runtime.clone(),
            module,
            spec,
            self.node.data_dir().clone(),
            Some((inst, self.handle.logs().clone())),
        )?;
        self.node.install(handle);
        Err(NodeError::new(
            crate::ErrorKind::Peer(502),
            format!(
                "{lost}: the app resumed on {} from its state at the switch, at generation {generation}; what it did on the target since is lost",
                self.node.name()
            ),
        ))
    }

    /// A push (`pages`) or the end (`done`) of the post-copy at
    /// `generation`: the target takes it for that move only.
    fn push_url(&self, step: &str, generation: u64) -> String {
        format!(
            "{}/v1/postcopy/{}/{step}?generation={generation}",
            self.to_url, self.app
        )
    }

    fn add_note(&mut self, why: String) {
        self.note = Some(match self.note.take() {
            Some(n) => format!("{n}; {why}"),
            None => why,
        });
    }

    /// Pushes every remote page in slices, a few on the wire at once.
    async fn push_all(
        &mut self,
        out: &Arc<Outgoing>,
        remote: &[RemotePages],
        generation: u64,
    ) -> Result<(), PushError> {
        type Push = tokio::task::JoinHandle<Result<u64, PushError>>;
        // Page slices, received straight into resident memory there.
        let url = format!("{}&format=slice", self.push_url("pages", generation));
        let mut in_flight: VecDeque<Push> = VecDeque::new();
        let slices = remote.iter().flat_map(|r| {
            r.runs
                .iter()
                .flat_map(|&(first, n)| first..first + n)
                .collect::<Vec<u64>>()
                .chunks(PUSH_PAGES)
                .map(|c| (r.memory, c.to_vec()))
                .collect::<Vec<_>>()
        });
        let mut result = Ok(());
        for (memory, pages) in slices {
            if in_flight.len() >= PUSHES_IN_FLIGHT {
                if let Some(done) = in_flight.pop_front() {
                    match done.await {
                        Ok(Ok(b)) => self.bytes_sent += b,
                        Ok(Err(e)) => {
                            result = Err(e);
                            break;
                        }
                        Err(j) => {
                            result = Err(PushError::TargetLost(j.to_string()));
                            break;
                        }
                    }
                }
            }
            let out2 = out.clone();
            let n = pages.len() as u64;
            let body = tokio::task::spawn_blocking(move || {
                lock(&out2.inst)
                    .as_mut()
                    .map(|i| i.encode_push(memory, &pages))
            })
            .await;
            let body = match body {
                Ok(Some(Ok(slice))) => crate::migrate::source::slice_body(slice),
                other => {
                    result = Err(PushError::TargetLost(format!(
                        "cannot read the pages to push: {other:?}"
                    )));
                    break;
                }
            };
            self.pages_sent += n;
            let (client, url) = (self.peer.clone(), url.clone());
            in_flight.push_back(tokio::spawn(async move {
                let len = body.len() as u64;
                let (mut attempt, mut damaged) = (0, 0);
                loop {
                    match client.post_bytes(&url, body.clone()).await {
                        Ok(_) => return Ok(len),
                        Err(e) if e.status() == Some(404) => {
                            return Err(PushError::TargetLost(e.to_string()))
                        }
                        // The bytes arrived damaged and nothing of them
                        // was kept: again, as the target asks (it ends the
                        // move, 409, when the link damages too many).
                        Err(e) if e.status() == Some(422) => {
                            damaged += 1;
                            if damaged >= MAX_REJECTED_PUSHES {
                                return Err(PushError::TargetGaveUp(e.to_string()));
                            }
                        }
                        Err(e) if e.status().is_some() => {
                            return Err(PushError::TargetGaveUp(e.to_string()))
                        }
                        Err(e) => {
                            attempt += 1;
                            if attempt >= PUSH_ATTEMPTS {
                                return Err(PushError::TargetLost(e.to_string()));
                            }
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
            }));
        }
        while let Some(done) = in_flight.pop_front() {
            match done.await {
                Ok(Ok(b)) if result.is_ok() => self.bytes_sent += b,
                // A target that answered it ended the move outweighs a
                // push that could not reach it: it is alive, and a copy
                // resumed here would run beside its own.
                Ok(Err(e)) if result.is_ok() || matches!(e, PushError::TargetGaveUp(_)) => {
                    result = Err(e)
                }
                _ => {}
            }
        }
        result
    }
}

enum PushError {
    /// The target cannot be reached, or no longer knows the move.
    TargetLost(String),
    /// The target answered and refused (its post-copy failed there).
    TargetGaveUp(String),
}

impl std::fmt::Debug for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::TargetLost(e) => write!(f, "target lost: {e}"),
            PushError::TargetGaveUp(e) => write!(f, "target gave up: {e}"),
        }
    }
}

/// `POST /v1/postcopy/APP/fetch?memory=N` on the source: the pages the
/// target asks for, from the frozen instance.
pub(crate) async fn serve_fetch(
    node: Arc<Node>,
    app: String,
    memory: u32,
    body: Bytes,
) -> Result<Bytes> {
    let out = lock(&node.postcopy.outgoing)
        .get(&app)
        .cloned()
        .ok_or_else(|| NodeError::not_found(format!("no post-copy of {app} leaves this node")))?;
    // Between the switch and the handover of the frozen instance (the
    // target runs the app's restore hook before it acknowledges the
    // switch): the frozen app's actor answers.
    if !*out.ready.borrow() {
        if let Some(h) = node.local(&app) {
            let asked = h.ask(|tx| Cmd::ServePages(memory, body.clone(), tx)).await;
            // An actor that ended meanwhile handed its instance over: below.
            if let Ok(answer) = asked {
                let chunk = answer?;
                out.served(chunk.len());
                return Ok(Bytes::from(chunk));
            }
        }
    }
    let mut ready = out.ready.subscribe();
    if tokio::time::timeout(HANDOVER_WAIT, ready.wait_for(|r| *r))
        .await
        .is_err()
    {
        return Err(NodeError::conflict(format!(
            "the pages of {app} are not served here yet: ask again"
        )));
    }
    let chunk = tokio::task::spawn_blocking(move || {
        let mut g = lock(&out.inst);
        let inst = g
            .as_mut()
            .ok_or_else(|| NodeError::conflict(format!("the post-copy of {app} has ended")))?;
        let chunk = inst
            .serve_page_request(memory, &body)
            .map_err(|e| NodeError::bad_request(format!("page request refused: {e}")))?;
        drop(g);
        out.served(chunk.len());
        Ok::<_, NodeError>(chunk)
    })
    .await??;
    Ok(Bytes::from(chunk))
}

/// `GET /v1/postcopy/APP/watch?wait_ms=N` on the source: whether the
/// post-copy of `app` still leaves here, answered when it ends or after
/// `wait_ms` (at most [`WATCH_MAX`]). The target keeps one such request
/// out at all times: its connection breaks the moment this node dies, so
/// the target learns of it at once and stops acknowledging calls whose
/// effects it could not keep.
pub(crate) async fn serve_watch(node: &Node, app: &str, wait_ms: u64) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms).min(WATCH_MAX);
    loop {
        if !lock(&node.postcopy.outgoing).contains_key(app) {
            return false;
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        tokio::time::sleep(WATCH_STEP).await;
    }
}
