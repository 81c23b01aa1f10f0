//! Lazy restore: an app restarted from a checkpoint the control plane
//! holds starts as soon as its state is here, before its pages are.
//!
//! `POST /v1/restore/lazy` names the file (its digest and length); the node
//! reads it by ranges from its own control plane. It reads its head and body (checked as a
//! whole file's are), restores the app with every stored page missing and
//! starts the post-copy pager on its memories; the app runs at once. A
//! page the app touches brings its segment (`tern_runtime::snapshot::lazy`)
//! in; meanwhile the background pull reads the image in order and places
//! every page the app has not touched yet. When the pull reaches the end
//! the whole file's digest is checked: a file that is not the one named
//! fails the app, whose state can no longer be trusted. If the holder stops
//! answering for [`STALL`], the pager fails and so does the app (its
//! incomplete memory is never used again); the control plane restarts it.
//!
//! Where userfaultfd is unavailable, or the file is of format 1 (which
//! keeps a hash per page and is checked whole), the file is fetched whole
//! first. An operator's `tern restore FILE` goes the same way: the control
//! plane keeps the bytes it was sent and names them to the node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_api::types::{AppStatus, LazyRestore, StartApp};
use tern_runtime::engine::LoadedModule;
use tern_runtime::instance::Instance;
use tern_runtime::postcopy::{PageWant, Pager};
use tern_runtime::snapshot::lazy::{body_range, FileDigest, LazySnapshot, Segment, HEAD_LEN};
use tern_runtime::wasi::LogBuffer;
use tokio::sync::{mpsc, Semaphore};

use crate::app::{AppHandle, Cmd};
use crate::checkpoint::checkpoint_digest;
use crate::error::{NodeError, Result};
use crate::migrate::restore_options;
use crate::node::Node;
use crate::ops::{module_of, restore_app, restored_spec};

/// The longest a lazily restored file may be (all a 32-bit memory holds,
/// plus its state).
const MAX_FILE_BYTES: u64 = 5 << 30;
/// Bytes the background pull asks for at once.
const PULL_BYTES: u64 = 4 << 20;
/// Bytes asked for at once when a file is read whole (the control plane
/// answers at most 1 GiB per request).
const WHOLE_PIECE: u64 = 256 << 20;
/// Faulted segments fetched at once, at most.
const FETCHES_IN_FLIGHT: usize = 4;
/// Faults waiting to be fetched, at most (one per page).
const WANTS_QUEUED: usize = 1024;
/// With pages missing and no byte from the holder for this long, the
/// restore fails.
const STALL: Duration = Duration::from_secs(10);

/// `POST /v1/restore/lazy?name=N&generation=G&restart=R[&foreign=1]`:
/// a restart from a checkpoint, or an operator's restore of a snapshot the
/// control plane was sent (`foreign`: one the cluster did not tag, which
/// keeps none of the environment or arguments it carries). A file that
/// cannot be paged (this node cannot page, or it is of format 1) is read
/// whole first.
pub(crate) async fn restore_lazy(
    node: &Arc<Node>,
    name: String,
    generation: u64,
    restart: String,
    foreign: bool,
    from: LazyRestore,
) -> Result<AppStatus> {
    tern_api::names::check_app_name(&name)?;
    if from.digest.len() != 32 || !from.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NodeError::bad_request(format!(
            "`{}` is not a checkpoint digest",
            from.digest
        )));
    }
    if from.bytes == 0 || from.bytes > MAX_FILE_BYTES {
        return Err(NodeError::bad_request(format!(
            "a snapshot of {} bytes cannot be restored",
            from.bytes
        )));
    }
    node.check_generation(&name, generation)?;
    if node.control_count() == 0 {
        return Err(NodeError::bad_request(
            "a lazy restore reads from the control plane, and this node has none",
        ));
    }
    let reader = Reader::new(node, &name, &from.digest);
    let head = match from.bytes >= HEAD_LEN && paging(node) {
        true => Some(reader.read(0, HEAD_LEN).await?),
        false => None,
    };
    let pageable = head
        .as_ref()
        .is_some_and(|h| tern_runtime::snapshot::lazy::pageable(h, from.bytes).unwrap_or(false));
    let Some(head) = head.filter(|_| pageable) else {
        // Read whole, the file is held in memory as a restore posted to
        // this node would be, and bounded as that is.
        if from.bytes > tern_api::MAX_BLOB_BODY as u64 {
            return Err(NodeError::bad_request(format!(
                "the checkpoint is {} bytes; this node cannot page it in as the app runs, and reads at most {} bytes whole",
                from.bytes,
                tern_api::MAX_BLOB_BODY
            )));
        }
        let bytes = reader.read_all(from.bytes).await?;
        if checkpoint_digest(&bytes) != from.digest.to_ascii_lowercase() {
            return Err(NodeError::conflict(format!(
                "the file read is not the one named {}",
                from.digest
            )));
        }
        return restore_app(node, name, generation, restart, foreign, bytes).await;
    };
    let opened = Opened::read(reader, head, &from.digest, from.bytes).await?;
    let module = module_of(node, &opened.lazy.state.body).await?;
    node.admit_generation(&name, generation)?;
    let spec = restored_spec(node, name, &module, generation, restart);
    let logs = LogBuffer::new();
    let (inst, pager) = opened.start(node, &module, &spec, &logs, foreign).await?;
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        module,
        spec,
        node.data_dir().clone(),
        Some((inst, logs)),
    )?;
    handle.set_pager(pager);
    node.install(handle.clone());
    Ok(handle.status())
}

/// Whether this node restores lazily (userfaultfd allowed, post-copy on).
pub(crate) fn paging(node: &Node) -> bool {
    node.config.postcopy && tern_runtime::postcopy::available().is_ok()
}

/// `app` restored from its checkpoint `digest` on the control plane,
/// lazily: for a post-copy target whose source was lost. The control
/// plane pins the checkpoint for this node first (it must still be the
/// app's latest there). Returns the instance, running its pages in (its
/// restore hook run), and its pager.
pub(crate) async fn restore_for_postcopy(
    node: &Arc<Node>,
    module: &Arc<LoadedModule>,
    spec: &StartApp,
    logs: &Arc<LogBuffer>,
    digest: &str,
) -> Result<(Instance, Arc<Pager>)> {
    let control = node
        .control()
        .ok_or_else(|| NodeError::unavailable("this node has no control plane"))?;
    let pinned: serde_json::Value = node
        .client
        .post_json(
            &format!("{control}/v1/checkpoints/{}/pin?digest={digest}", spec.name),
            &serde_json::json!({}),
        )
        .await
        .map_err(|e| NodeError::peer("pinning the checkpoint", e))?;
    let bytes = pinned["bytes"]
        .as_u64()
        .filter(|b| (HEAD_LEN..=MAX_FILE_BYTES).contains(b))
        .ok_or_else(|| {
            NodeError::conflict(format!("the control plane pinned no usable file: {pinned}"))
        })?;
    let reader = Reader::new(node, &spec.name, digest);
    let head = reader.read(0, HEAD_LEN).await?;
    let opened = Opened::read(reader, head, digest, bytes).await?;
    opened.start(node, module, spec, logs, false).await
}

/// A checkpoint's head and body, read and checked, its pages still away.
struct Opened {
    reader: Reader,
    digest: String,
    head: Bytes,
    body: Bytes,
    lazy: Arc<LazySnapshot>,
}

impl Opened {
    /// `head`: the file's first [`HEAD_LEN`] bytes, read already.
    async fn read(reader: Reader, head: Bytes, digest: &str, len: u64) -> Result<Opened> {
        let (body_at, body_len) =
            body_range(&head, len).map_err(|e| NodeError::bad_request(e.to_string()))?;
        let body = reader.read(body_at, body_len).await?;
        let (head2, body2) = (head.clone(), body.clone());
        let lazy = tokio::task::spawn_blocking(move || LazySnapshot::new(&head2, &body2, len))
            .await?
            .map_err(|e| NodeError::bad_request(e.to_string()))?;
        Ok(Opened {
            reader,
            digest: digest.to_ascii_lowercase(),
            head,
            body,
            lazy: Arc::new(lazy),
        })
    }

    /// Restores the state with every stored page missing, starts the
    /// pager and the pull, then runs the app's restore hook (it may touch
    /// pages).
    async fn start(
        self,
        node: &Arc<Node>,
        module: &Arc<LoadedModule>,
        spec: &StartApp,
        logs: &Arc<LogBuffer>,
        foreign: bool,
    ) -> Result<(Instance, Arc<Pager>)> {
        let mut opts = restore_options(node, spec, &self.lazy.state, logs, false, false)?;
        if foreign {
            crate::ops::distrust(&mut opts, spec);
        }
        let (tx, rx) = mpsc::channel::<PageWant>(WANTS_QUEUED);
        let (rt, m, l) = (node.runtime.clone(), module.clone(), self.lazy.clone());
        let (inst, pager) = tokio::task::spawn_blocking(move || {
            let mut inst = Instance::restore(&rt, &l.state, Some(m), opts)
                .map_err(|e| NodeError::bad_request(format!("the state does not restore: {e}")))?;
            let want = Box::new(move |w: PageWant| tx.blocking_send(w).is_ok());
            let pager = inst
                .start_postcopy(&l.remote, want)
                .map_err(|e| NodeError::internal(format!("cannot page here: {e}")))?;
            Ok::<_, NodeError>((inst, pager))
        })
        .await??;
        let pull = Pull {
            node: node.clone(),
            app: spec.name.clone(),
            generation: spec.generation,
            reader: self.reader,
            lazy: self.lazy,
            pager: pager.clone(),
            digest: self.digest,
            progress: std::sync::Mutex::new(Instant::now()),
            settled: Default::default(),
        };
        tokio::spawn(Arc::new(pull).run(self.head, self.body, rx));
        match crate::migrate::run_restore_hook(inst).await {
            Ok(i) => Ok((i, pager)),
            Err(e) => {
                pager.fail("the restore failed");
                Err(e)
            }
        }
    }
}

/// Reads byte ranges of the file from the node's control plane (the one
/// leading now).
#[derive(Clone)]
struct Reader {
    node: Arc<Node>,
    path: String,
}

impl Reader {
    fn new(node: &Arc<Node>, app: &str, digest: &str) -> Reader {
        Reader {
            node: node.clone(),
            path: format!("/v1/checkpoints/{app}?digest={digest}"),
        }
    }

    /// The whole file of `len` bytes, read in pieces of at most
    /// [`WHOLE_PIECE`] bytes.
    async fn read_all(&self, len: u64) -> Result<Bytes> {
        if len <= WHOLE_PIECE {
            return self.read(0, len).await;
        }
        let mut all = Vec::with_capacity(len as usize);
        while (all.len() as u64) < len {
            let at = all.len() as u64;
            all.extend_from_slice(&self.read(at, (len - at).min(WHOLE_PIECE)).await?);
        }
        Ok(Bytes::from(all))
    }

    /// Bytes `[offset, offset + len)` of the file, exactly.
    async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let control = self
            .node
            .control()
            .ok_or_else(|| NodeError::unavailable("this node has no control plane"))?;
        let url = format!("{control}{}&offset={offset}&len={len}", self.path);
        let (_, bytes) = self
            .node
            .client
            .send(
                hyper::Method::GET,
                &url,
                "application/octet-stream",
                Bytes::new(),
            )
            .await
            .map_err(|e| NodeError::peer("reading the checkpoint", e))?;
        if bytes.len() as u64 != len {
            return Err(NodeError::conflict(format!(
                "asked for {len} bytes of the checkpoint at {offset}, got {}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// The pages of one lazy restore on their way in.
struct Pull {
    node: Arc<Node>,
    app: String,
    generation: u64,
    reader: Reader,
    lazy: Arc<LazySnapshot>,
    pager: Arc<Pager>,
    digest: String,
    /// When a byte last came in.
    progress: std::sync::Mutex<Instant>,
    /// The restore ended: failed, or every page is in and the file
    /// checked (a fetch still under way that fails then changes nothing).
    settled: std::sync::atomic::AtomicBool,
}

impl Pull {
    /// Serves faults and pulls the image in order until every page is in
    /// and the file is checked, or the restore fails.
    async fn run(self: Arc<Self>, head: Bytes, body: Bytes, wants: mpsc::Receiver<PageWant>) {
        let t0 = Instant::now();
        let faults = tokio::spawn(self.clone().serve_faults(wants));
        let outcome = self.pull_all(&head, &body).await;
        faults.abort();
        match outcome {
            Ok(()) if self.pager.failure().is_none() => {
                self.settled
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(
                app = %self.app,
                generation = self.generation,
                "lazy restore complete: {} bytes of checkpoint {} in and checked, {} ms after the app started",
                self.lazy.file_len(),
                self.digest,
                t0.elapsed().as_millis()
                )
            }
            Ok(()) => {}
            Err(why) => self.fail(why),
        }
    }

    /// The image in order, then the digests.
    async fn pull_all(&self, head: &[u8], body: &[u8]) -> std::result::Result<(), String> {
        tokio::time::sleep(self.node.config.lazy_pull_after).await;
        let mut digest = FileDigest::new(&self.lazy);
        digest.update(head);
        let (mut at, image_end) = self.lazy.image_range();
        let mut next = 0usize;
        let segments = &self.lazy.segments;
        while at < image_end {
            if self.pager.failure().is_some() {
                return Ok(());
            }
            // Whole segments, up to PULL_BYTES (one larger segment alone),
            // and the padding after the last.
            let mut end = at;
            let first = next;
            while next < segments.len() {
                let s = &segments[next];
                let s_end = s.offset + s.len;
                if next > first && s_end - at > PULL_BYTES {
                    break;
                }
                end = s_end;
                next += 1;
            }
            if next == segments.len() {
                end = image_end;
            }
            let bytes = self.read_retrying(at, end - at).await?;
            digest.update(&bytes);
            for s in &segments[first..next] {
                let stored = &bytes[(s.offset - at) as usize..(s.offset - at + s.len) as usize];
                self.place(s, stored).await?;
            }
            at = end;
        }
        digest.update(body);
        let (file, image) = digest.finish();
        if file != self.digest || !self.lazy.image_matches(image) {
            return Err(format!(
                "the checkpoint it restarted from is not the one named {} (its bytes hash to {file}): its state cannot be trusted",
                self.digest
            ));
        }
        Ok(())
    }

    /// Fetches the segment of each page the app touches, a few at once.
    async fn serve_faults(self: Arc<Self>, mut wants: mpsc::Receiver<PageWant>) {
        let slots = Arc::new(Semaphore::new(FETCHES_IN_FLIGHT));
        while let Some(w) = wants.recv().await {
            let Some(s) = self.lazy.segment_of(w.memory, w.page).cloned() else {
                continue;
            };
            // Its other pages are asked for by this fetch.
            self.pager.claim(s.memory, s.first_page, s.pages as usize);
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let got = match me.read_retrying(s.offset, s.len).await {
                    Ok(bytes) => me.place(&s, &bytes).await,
                    Err(e) => Err(e),
                };
                if let Err(why) = got {
                    me.fail(why);
                }
            });
        }
    }

    /// Places a segment's pages (those still missing).
    async fn place(&self, s: &Segment, stored: &[u8]) -> std::result::Result<(), String> {
        let pager = self.pager.clone();
        let (s, stored) = (s.clone(), stored.to_vec());
        tokio::task::spawn_blocking(move || {
            let pages = s.pages_from(&stored).map_err(|e| e.to_string())?;
            pager.deliver_run(s.memory, s.first_page, &pages)
        })
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
    }

    /// A range, asked again until it comes or nothing came for [`STALL`].
    async fn read_retrying(&self, offset: u64, len: u64) -> std::result::Result<Bytes, String> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.reader.read(offset, len).await {
                Ok(b) => {
                    *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    return Ok(b);
                }
                Err(e) => {
                    let since = *self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    if since.elapsed() >= STALL {
                        return Err(format!("its checkpoint cannot be read any more: {e}"));
                    }
                    if self.pager.failure().is_some() {
                        return Err(e.to_string());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The restore failed: the memory is incomplete or untrusted, the app
    /// is failed (never run on from it). Once, and never after the restore
    /// completed.
    fn fail(&self, why: String) {
        if self.settled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        // Failed from outside (its app moved on or was replaced): the
        // errors that follow are that failure's, not the file's.
        if self.pager.failure().is_some() {
            return;
        }
        self.pager.fail(&why);
        tracing::warn!(app = %self.app, "lazy restore failed: {why}");
        if let Some(h) = self.node.local(&self.app) {
            if h.spec().generation == self.generation {
                let _ = h.send(Cmd::PostcopyLost {
                    why: format!("lazy restore failed: {why}"),
                    replacement: None,
                });
            }
        }
    }
}
