//! The target of a post-copy: the switch (the app restored without its
//! pages, the pager started, the app resumed and acknowledged), the fetch
//! loop that asks the source for the pages the app touches, the pushes
//! from the source, and the restart from the last checkpoint if the source
//! is lost before every page is in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_api::types::MigrationAck;
use tern_runtime::instance::Instance;
use tern_runtime::postcopy::{PageWant, PushReceiver};
use tern_runtime::snapshot::{PageChunkRef, PageRequest, PostcopyFrame};
use tokio::sync::mpsc;

use super::{Incoming, FETCH_PAGES};
use crate::app::{AppHandle, Cmd};
use crate::error::{NodeError, Result};
use crate::migrate::restore_options;
use crate::migrate::target::{delete_session, release, session, TargetSession};
use crate::node::{lock, Node};

/// Faults waiting for the fetch loop, at most (one per page: a page asked
/// for is not asked again, so this bounds nothing the app needs).
const WANTS_QUEUED: usize = 1024;
/// With pages still missing and nothing from the source for this long,
/// the source counts as lost.
const STALL: Duration = Duration::from_secs(10);
/// The longest pause between two attempts of a fetch that could not reach
/// the source. A fetch is tried again until the source answers, the
/// watch gives it up, or no page came for [`STALL`]: a source alive but
/// briefly unreachable (new connections refused for a moment) must not be
/// given up while the app's acknowledged writes live on it.
const FETCH_RETRY_MAX: Duration = Duration::from_millis(800);
/// How long the source keeps a watch request before it answers that the
/// move is still under way.
const WATCH_POLL: Duration = Duration::from_secs(5);
/// How long the source may stay unreachable (a cut link, new connections
/// refused for a while) before it counts as lost; meanwhile the app's calls
/// are held. A source that answers that it no longer serves the move (a
/// restarted node) is lost at once.
const WATCH_GIVE_UP: Duration = Duration::from_secs(5);
/// Attempts to get the checkpoint after the source was lost, 500 ms apart.
const CHECKPOINT_ATTEMPTS: u32 = 20;

/// `POST /v1/migrations/ID/postcopy?from_url=URL`: the switch-over frame.
/// The app resumes here before its pages are; the answer acknowledges.
pub(crate) async fn receive_switch(
    node: Arc<Node>,
    id: String,
    source_url: String,
    body: Bytes,
) -> Result<MigrationAck> {
    let s = session(&node, &id)?;
    node.check_generation(&s.app, s.spec.generation)?;
    if !crate::checkpoint::plain_url(&source_url) {
        return Err(NodeError::bad_request("post-copy needs the source's URL"));
    }
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<PageWant>(WANTS_QUEUED);
    let (rt, s2, node2) = (node.runtime.clone(), s.clone(), node.clone());
    let (inst, pager) = tokio::task::spawn_blocking(move || {
        let frame = PostcopyFrame::decode(&body)
            .map_err(|e| NodeError::bad_request(format!("post-copy frame rejected: {e}")))?;
        // After pre-copy rounds (hot, then post-copy) the session holds the
        // pages sent so far: the state goes on top, the rest is remote.
        let precopied = lock(&s2.inst).take();
        let mut inst = match precopied {
            Some(mut inst) => {
                inst.apply_state(&frame.state).map_err(|e| {
                    NodeError::bad_request(format!("the state does not apply: {e}"))
                })?;
                inst
            }
            None => {
                let opts = restore_options(&node2, &s2.spec, &frame.state, &s2.logs, false, false)?;
                Instance::restore(&rt, &frame.state, Some(s2.module.clone()), opts).map_err(
                    |e| NodeError::bad_request(format!("the state does not restore: {e}")),
                )?
            }
        };
        // The fault thread is no async task: a blocking send waits for
        // room in the queue without holding up a runtime worker.
        let want = Box::new(move |w: PageWant| tx.blocking_send(w).is_ok());
        let pager = inst
            .start_postcopy(&frame.remote, want)
            .map_err(|e| NodeError::internal(format!("cannot page post-copy here: {e}")))?;
        Ok::<_, NodeError>((inst, pager))
    })
    .await??;
    let incoming = Arc::new(Incoming::new(pager.clone(), s.clone()));
    {
        let mut g = lock(&node.postcopy.incoming);
        // Entries of moves long done, kept to answer late pushes, go.
        g.retain(|_, i| !(i.pager.is_finished() && i.opened.elapsed() > Duration::from_secs(600)));
        g.insert(s.app.clone(), incoming.clone());
    }
    tokio::spawn(fetch_loop(
        node.clone(),
        s.clone(),
        source_url.clone(),
        incoming.clone(),
        rx,
    ));
    // The restore hook may touch pages: the fetch loop runs already.
    let inst = match crate::migrate::run_restore_hook(inst).await {
        Ok(i) => i,
        Err(e) => {
            pager.fail("the switch failed on the target");
            lock(&node.postcopy.incoming).remove(&s.app);
            return Err(e);
        }
    };
    delete_session(&node, &id);
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        s.module.clone(),
        s.spec.clone(),
        node.data_dir().clone(),
        Some((inst, s.logs.clone())),
    )?;
    handle.set_pager(pager);
    node.install(handle);
    tokio::spawn(watch_source(node.clone(), s.clone(), source_url, incoming));
    Ok(MigrationAck {
        generation: s.spec.generation,
        resume_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// Asks the source for the pages the app faults on (each with neighbours),
/// one request at a time, until every page is in; gives the app up to its
/// checkpoint if the source stops answering.
async fn fetch_loop(
    node: Arc<Node>,
    s: Arc<TargetSession>,
    source_url: String,
    incoming: Arc<Incoming>,
    mut rx: mpsc::Receiver<PageWant>,
) {
    let pager = incoming.pager.clone();
    let url = format!("{source_url}/v1/postcopy/{}/fetch", s.app);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let want = tokio::select! {
            w = rx.recv() => match w {
                Some(w) => w,
                None => break,
            },
            _ = tick.tick() => {
                if pager.is_finished() {
                    break;
                }
                if lock(&incoming.last_progress).elapsed() > STALL {
                    let why = format!("the source sent no page for {} s", STALL.as_secs());
                    return source_lost(&node, &s, &incoming, why).await;
                }
                continue;
            }
        };
        let pages = pager.claim(want.memory, want.page, FETCH_PAGES);
        if pages.is_empty() {
            continue;
        }
        let body = Bytes::from(
            PageRequest {
                memory: want.memory,
                pages,
            }
            .encode(),
        );
        let url = format!("{url}?memory={}", want.memory);
        let mut pause = Duration::from_millis(50);
        let mut damaged = 0;
        let chunk = loop {
            match node.client.post_bytes(&url, body.clone()).await {
                Ok(b) => {
                    if pause > Duration::from_millis(50) {
                        incoming.trust(&node, &s.app, s.spec.generation);
                    }
                    // An answer damaged on the way (a plain link) is asked
                    // for again, as a damaged push is sent again, rather
                    // than taken for the source's loss (the pager checks
                    // it again as it places it: a few microseconds).
                    if let Err(e) = PageChunkRef::decode(&b) {
                        damaged += 1;
                        if damaged < super::MAX_REJECTED_PUSHES {
                            continue;
                        }
                        break Err(format!("{damaged} answers arrived damaged, the last: {e}"));
                    }
                    break Ok(b);
                }
                Err(e) if e.status().is_some() => break Err(e.to_string()),
                Err(e) => {
                    if pager.is_finished() {
                        // The pushes brought every page meanwhile, or the
                        // watch gave the source up.
                        return;
                    }
                    incoming.doubt(&node, &s.app, s.spec.generation, &e.to_string());
                    if lock(&incoming.last_progress).elapsed() > STALL {
                        break Err(format!("{e} (and no page for {} s)", STALL.as_secs()));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(FETCH_RETRY_MAX);
                }
            }
        };
        let placed = match chunk {
            Ok(b) => {
                let p = pager.clone();
                tokio::task::spawn_blocking(move || p.deliver(&b))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            }
            Err(e) => Err(e),
        };
        match placed {
            Ok(_) => incoming.touch(),
            // The pushes brought every page while this fetch was out, and
            // the source, done, dropped its copy: nothing is missing.
            Err(_) if pager.is_finished() && pager.failure().is_none() => break,
            Err(e) => {
                let why = format!(
                    "fetching page {} of memory {} failed: {e}",
                    want.page, want.memory
                );
                return source_lost(&node, &s, &incoming, why).await;
            }
        }
    }
}

/// Watches the source while pages are still there: a request it answers
/// when the move ends, or after [`WATCH_POLL`] to say it still serves it.
/// When the source dies its connection breaks at once: from then the
/// app's calls are held, not acknowledged (what it did since the source
/// died would be lost with the restart from the checkpoint), while the
/// source is asked again (a link cut drops the connection of a live
/// source too); if it answers the calls run; if it says it no longer
/// serves the move, or stays silent for [`WATCH_GIVE_UP`], it is lost.
async fn watch_source(
    node: Arc<Node>,
    s: Arc<TargetSession>,
    source_url: String,
    incoming: Arc<Incoming>,
) {
    let url = format!(
        "{source_url}/v1/postcopy/{}/watch?wait_ms={}",
        s.app,
        WATCH_POLL.as_millis()
    );
    let client = node.client.clone().with_timeout(WATCH_POLL * 3);
    let (app, generation) = (s.app.as_str(), s.spec.generation);
    // Since when the source has not answered (`None`: it answers).
    let mut silent: Option<Instant> = None;
    let mut pause = Duration::from_millis(50);
    loop {
        if incoming.pager.is_finished() {
            if incoming.pager.failure().is_none() {
                incoming.trust(&node, app, generation);
            }
            return;
        }
        match client.get_json::<serde_json::Value>(&url).await {
            Ok(answer) if answer["under_way"] == true => {
                silent = None;
                pause = Duration::from_millis(50);
                incoming.trust(&node, app, generation);
            }
            // Every page came in while the request was out, or the source
            // no longer serves the move (a restarted node, or it resumed
            // the app itself): the pages still missing will never come.
            answer => {
                if incoming.pager.is_finished() {
                    continue;
                }
                let why = match answer {
                    Err(e) if e.status().is_none() => {
                        incoming.doubt(&node, app, generation, &e.to_string());
                        let since = *silent.get_or_insert_with(Instant::now);
                        if since.elapsed() < WATCH_GIVE_UP {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_millis(500));
                            continue;
                        }
                        format!(
                            "the source did not answer for {} s: {e}",
                            WATCH_GIVE_UP.as_secs()
                        )
                    }
                    Err(e) => format!("the source no longer serves the move: {e}"),
                    Ok(_) => "the source ended the move".to_string(),
                };
                return source_lost(&node, &s, &incoming, why).await;
            }
        }
    }
}

/// The source is lost with pages still there: the pager fails (the app's
/// call is cut off; its incomplete memory is never used again), and the
/// app restarts here from its last checkpoint, or is failed. The restart
/// is lazy where it can be (the checkpoint is on the control plane and
/// this node pages): the app runs once its state is in, its pages read
/// by ranges from the control plane (`crate::lazy`); else the checkpoint
/// is fetched whole first. Its
/// calls are held from now until then. Once per move.
async fn source_lost(
    node: &Arc<Node>,
    s: &Arc<TargetSession>,
    incoming: &Arc<Incoming>,
    why: String,
) {
    if !incoming.give_up(node, &s.app, s.spec.generation) {
        return;
    }
    let missing = incoming.pager.remaining();
    incoming.pager.fail(&why);
    let lost = format!(
        "post-copy from {} lost its source with {missing} pages still there ({why})",
        s.from
    );
    tracing::warn!(app = %s.app, "{lost}");
    let lazily = match &s.checkpoint {
        Some((digest, Some(_))) if crate::lazy::paging(node) => lazy_restart(node, s, digest).await,
        _ => None,
    };
    let replacement = match (lazily, &s.checkpoint) {
        (Some(lazy), _) => Ok(lazy),
        (None, None) => Err("it has no checkpoint to restart from".to_string()),
        (None, Some((digest, url))) => match checkpoint(node, &s.app, digest, url.as_deref()).await
        {
            Err(e) => Err(format!("its checkpoint cannot be had: {e}")),
            Ok(snap) => {
                let (rt, node2, s2) = (node.runtime.clone(), node.clone(), s.clone());
                tokio::task::spawn_blocking(move || {
                    let opts = restore_options(&node2, &s2.spec, &snap, &s2.logs, true, true)
                        .map_err(|e| e.to_string())?;
                    Instance::restore(&rt, &snap, Some(s2.module.clone()), opts)
                        .map_err(|e| format!("its checkpoint does not restore: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        },
    };
    let (why, replacement) = match replacement {
        Ok(inst) => {
            let how = if inst.pager().is_some() {
                " (lazily: its pages follow from the control plane)"
            } else {
                ""
            };
            (
                format!("{lost}: restarted from its last checkpoint{how}; what it did since that checkpoint is lost"),
                Some(Box::new(inst)),
            )
        }
        Err(e) => (format!("{lost}: stopped, and {e}"), None),
    };
    match node.local(&s.app) {
        Some(h) if h.spec().generation == s.spec.generation => {
            let pager = replacement.as_ref().and_then(|i| i.pager().cloned());
            if let Some(p) = &pager {
                h.set_pager(p.clone());
            }
            let _ = h.send(Cmd::PostcopyLost { why, replacement });
            // A lazy restart whose pull failed before the app had it: the
            // pull's own word may have come first; this one comes last.
            if let Some(failure) = pager.and_then(|p| p.failure()) {
                let _ = h.send(Cmd::PostcopyLost {
                    why: format!("lazy restart failed: {failure}"),
                    replacement: None,
                });
            }
        }
        _ => {
            // The app moved on meanwhile: a lazy restart's pull stops too.
            if let Some(p) = replacement.as_ref().and_then(|i| i.pager()) {
                p.fail("the app is no longer here at this generation");
            }
            release(replacement)
        }
    }
}

/// The app restarted here from its checkpoint on the control plane,
/// lazily (it runs once its state is in; its pages follow). Asked a few
/// times, like a whole checkpoint: the control plane lets this node pin
/// the checkpoint once it knows the node runs the app. `None`: the whole
/// file is fetched instead.
async fn lazy_restart(node: &Arc<Node>, s: &Arc<TargetSession>, digest: &str) -> Option<Instance> {
    let mut attempt = 0;
    loop {
        match crate::lazy::restore_for_postcopy(node, &s.module, &s.spec, &s.logs, digest).await {
            Ok((inst, _)) => return Some(inst),
            Err(e) if attempt >= CHECKPOINT_ATTEMPTS => {
                tracing::warn!(app = %s.app, "no lazy restart from checkpoint {digest} ({e}): fetching it whole");
                return None;
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The app's checkpoint, asked a few times: the control plane hands it
/// only to the node it knows runs the app, which it learns from this
/// node's next heartbeat when the move's own answer never came.
async fn checkpoint(
    node: &Node,
    app: &str,
    digest: &str,
    url: Option<&str>,
) -> Result<Arc<tern_runtime::Snapshot>> {
    let mut attempt = 0;
    loop {
        match node.checkpoint_for(app, digest, url, None).await {
            Ok((snap, _)) => return Ok(snap),
            Err(e) if attempt >= CHECKPOINT_ATTEMPTS => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The post-copy of `app` arriving here, if it is the move at `generation`
/// (a source names the move it pushes for: a push or a `/done` of an older
/// move of the app must not land in a newer one).
fn arriving(node: &Node, app: &str, generation: Option<u64>) -> Option<Arc<Incoming>> {
    lock(&node.postcopy.incoming)
        .get(app)
        .filter(|i| generation.is_none_or(|g| g == i.session.spec.generation))
        .cloned()
}

/// The post-copy of `app` at `generation` arriving here, for a push: 404
/// when none arrives here (the source then knows this node lost it), 409
/// when it failed here or a newer move of the app arrives (the source
/// drops its copy).
fn push_target(node: &Node, app: &str, generation: Option<u64>) -> Result<Arc<Incoming>> {
    let Some(incoming) = arriving(node, app, generation) else {
        // A newer move of the app arrives here: the older one's source
        // must drop its copy (409), not resume the app (404).
        if lock(&node.postcopy.incoming).contains_key(app) {
            return Err(NodeError::conflict(format!(
                "the post-copy of {app} at generation {generation:?} is superseded here"
            )));
        }
        return Err(NodeError::not_found(format!(
            "no post-copy of {app} arrives here"
        )));
    };
    if let Some(why) = incoming.pager.failure() {
        return Err(NodeError::conflict(format!(
            "the post-copy of {app} failed here: {why}"
        )));
    }
    Ok(incoming)
}

/// `POST /v1/postcopy/APP/pages?generation=G`: a push from the source, as
/// one page chunk. Answers how many pages are still missing (errors: see
/// [`push_target`]).
pub(crate) async fn receive_push(
    node: Arc<Node>,
    app: String,
    generation: Option<u64>,
    body: Bytes,
) -> Result<serde_json::Value> {
    let incoming = push_target(&node, &app, generation)?;
    let pager = incoming.pager.clone();
    let placed = tokio::task::spawn_blocking(move || pager.deliver(&body)).await?;
    placed_or_given_up(&node, &app, &incoming, placed)
}

/// What a push's placement comes to: the pages still missing, or, when
/// pages of it could not be placed here (a push the pager refuses as
/// malformed, or the kernel refusing to place them), the end of the move
/// here. The source, answered 409, drops its copy; so the app cannot wait
/// on pages that will never come, and restarts here from its checkpoint,
/// as when the source is lost.
fn placed_or_given_up(
    node: &Arc<Node>,
    app: &str,
    incoming: &Arc<Incoming>,
    placed: Result<u64, String>,
) -> Result<serde_json::Value> {
    match placed {
        Ok(left) => {
            incoming.touch();
            Ok(serde_json::json!({ "remaining": left }))
        }
        Err(e) => Err(end_here(
            node,
            app,
            incoming,
            format!("pages pushed could not be placed: {e}"),
        )),
    }
}

/// Ends the move here because of `why` (restart from the checkpoint, as
/// when the source is lost) and answers the source 409: it drops its copy.
fn end_here(node: &Arc<Node>, app: &str, incoming: &Arc<Incoming>, why: String) -> NodeError {
    let conflict = NodeError::conflict(format!("the post-copy of {app} failed here: {why}"));
    let (node, s, inc) = (node.clone(), incoming.session.clone(), incoming.clone());
    tokio::spawn(async move { source_lost(&node, &s, &inc, why).await });
    conflict
}

/// A push whose bytes did not check out (nothing of it was staged): 422,
/// and the source sends it again, unless this move refused
/// [`MAX_REJECTED_PUSHES`](super::MAX_REJECTED_PUSHES) pushes already:
/// then the link cannot carry the pages, and the move ends here as when
/// a push cannot be placed (409; the app restarts from its checkpoint).
/// A refusal the source took as the move's end would leave this node
/// running on, waiting for pages that never come.
fn rejected(
    node: &Arc<Node>,
    app: &str,
    incoming: &Arc<Incoming>,
    e: impl std::fmt::Display,
) -> NodeError {
    use std::sync::atomic::Ordering;
    let n = incoming.rejected.fetch_add(1, Ordering::Relaxed) + 1;
    if n < super::MAX_REJECTED_PUSHES {
        return NodeError::damaged(format!("push rejected, send it again: {e}"));
    }
    end_here(
        node,
        app,
        incoming,
        format!("{n} pushes arrived damaged, the last: {e}"),
    )
}

/// `POST /v1/postcopy/APP/pages?generation=G&format=slice`: a push as a
/// page slice, checked and staged in resident memory as its bytes come,
/// then moved into the app's memory (`tern_runtime::postcopy::PushReceiver`).
/// Answers as [`receive_push`].
pub(crate) async fn receive_push_slice(
    node: Arc<Node>,
    app: String,
    generation: Option<u64>,
    mut body: hyper::body::Incoming,
) -> Result<serde_json::Value> {
    use http_body_util::BodyExt as _;
    let incoming = match push_target(&node, &app, generation) {
        Ok(incoming) => incoming,
        Err(e) => return Err(drained(&mut body, e).await),
    };
    let mut push = PushReceiver::new(super::MAX_PUSH_BYTES);
    while let Some(frame) = body.frame().await {
        // A connection cut midway: the source, which sees it cut too,
        // sends the push again.
        let frame =
            frame.map_err(|e| NodeError::bad_request(format!("cannot read the pages: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if let Err(e) = push.feed(&data) {
                let e = rejected(&node, &app, &incoming, e);
                return Err(drained(&mut body, e).await);
            }
        }
    }
    let push = match push.finish() {
        Ok(push) => push,
        Err(e) => return Err(rejected(&node, &app, &incoming, e)),
    };
    let pager = incoming.pager.clone();
    let placed = tokio::task::spawn_blocking(move || pager.place_staged(push)).await?;
    placed_or_given_up(&node, &app, &incoming, placed)
}

/// `refusal`, once the rest of the push it refuses is read (as much as a
/// push may be): a server that answers before it read a body closes the
/// connection, and the source would see a cut link, not the refusal —
/// for a refusal that ends the move (409), a source that takes the cut
/// for the target's loss resumes the app beside the target's restart.
async fn drained(body: &mut hyper::body::Incoming, refusal: NodeError) -> NodeError {
    use http_body_util::BodyExt as _;
    let mut left = super::MAX_PUSH_BYTES;
    while let Some(Ok(frame)) = body.frame().await {
        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
        if n > left {
            break;
        }
        left -= n;
    }
    refusal
}

/// `POST /v1/postcopy/APP/done?generation=G`: the source sent every page
/// and dropped its copy.
pub(crate) fn receive_done(
    node: &Arc<Node>,
    app: &str,
    generation: Option<u64>,
) -> serde_json::Value {
    let Some(incoming) = arriving(node, app, generation) else {
        return serde_json::json!({ "remaining": 0 });
    };
    lock(&node.postcopy.incoming).remove(app);
    let left = incoming.pager.remaining();
    let (moved, copied) = (incoming.pager.pages_moved(), incoming.pager.pages_copied());
    if left > 0 {
        // Never the case when every push landed; if it were, those pages
        // will never come: the app must not run on without them, and goes
        // on from its checkpoint as when the source is lost.
        let why = format!("the source finished with {left} pages never delivered");
        let (node, s) = (node.clone(), incoming.session.clone());
        tokio::spawn(async move { source_lost(&node, &s, &incoming, why).await });
    }
    serde_json::json!({
        "remaining": left,
        "moved": moved,
        "copied": copied,
    })
}
