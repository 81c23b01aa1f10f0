//! What the node API does, one function per operation: the HTTP edge
//! (`http.rs`) parses a request, calls one of these and maps its error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_api::types::{AppState, AppStatus, InvokeRequest, InvokeResponse, LogsResponse, StartApp};
use tern_runtime::engine::LoadedModule;
use tern_runtime::instance::Instance;
use tern_runtime::snapshot::{Body, Snapshot};
use tern_runtime::wasi::LogBuffer;

use crate::app::{AppHandle, Cmd};
use crate::checkpoint::snapshot_body;
use crate::error::{NodeError, Result};
use crate::migrate::restore_options;
use crate::node::{Node, Slot};

/// How long `POST /v1/apps` waits for the app's first start before it
/// answers with the app still starting.
const START_WAIT: Duration = Duration::from_secs(2);

/// `POST /v1/apps`: starts an app here at its generation.
pub(crate) async fn start_app(node: &Arc<Node>, spec: StartApp) -> Result<AppStatus> {
    tern_api::names::check_app_name(&spec.name)?;
    let spec = spec.with_default_limits(node.config.default_limits);
    if let Some(h) = node.local(&spec.name) {
        if h.spec().generation >= spec.generation {
            return Err(NodeError::conflict(format!(
                "app {} already runs here (generation {})",
                spec.name,
                h.spec().generation
            )));
        }
    }
    let sha = tern_api::names::parse_sha256(&spec.module_sha256)
        .ok_or_else(|| NodeError::bad_request("bad module sha256"))?;
    node.check_generation(&spec.name, spec.generation)?;
    let module = node.module(&sha).await?;
    node.admit_generation(&spec.name, spec.generation)?;
    let rt = node.runtime.clone();
    let dir = node.data_dir().clone();
    let handle = tokio::task::spawn_blocking(move || AppHandle::spawn(rt, module, spec, dir, None))
        .await??;
    node.install(handle.clone());
    // Answer once the first start attempt is over (or the app is pending).
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while tokio::time::Instant::now() < deadline {
        let st = handle.status();
        if st.state != AppState::Pending || st.start_at_unix_ms.is_some() {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(handle.status())
}

/// `POST /v1/restore`: runs an app here from a snapshot, at `generation`.
/// The snapshot is decoded and checked before the generation is admitted,
/// so bytes that are not a snapshot fence nothing. The app gets its own
/// directory and its spec's limits, never the file's; a `foreign` snapshot
/// (one the cluster did not tag) also gets none of the environment or
/// arguments it carries.
pub(crate) async fn restore_app(
    node: &Arc<Node>,
    name: String,
    generation: u64,
    restart: String,
    foreign: bool,
    body: Bytes,
) -> Result<AppStatus> {
    tern_api::names::check_app_name(&name)?;
    let snap = tokio::task::spawn_blocking(move || Snapshot::from_bytes(body.to_vec()))
        .await?
        .map_err(|e| NodeError::bad_request(e.to_string()))?;
    node.check_generation(&name, generation)?;
    let module = module_of(node, &snap.body).await?;
    node.admit_generation(&name, generation)?;
    let spec = restored_spec(node, name, &module, generation, restart);
    let logs = LogBuffer::new();
    let mut opts = restore_options(node, &spec, &snap, &logs, true, false)?;
    if foreign {
        distrust(&mut opts, &spec);
    }
    let rt = node.runtime.clone();
    let m = module.clone();
    let inst = tokio::task::spawn_blocking(move || Instance::restore(&rt, &snap, Some(m), opts))
        .await?
        .map_err(|e| NodeError::bad_request(e.to_string()))?;
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        module,
        spec,
        node.data_dir().clone(),
        Some((inst, logs)),
    )?;
    node.install(handle.clone());
    Ok(handle.status())
}

/// A snapshot the cluster did not tag keeps none of the environment or
/// arguments it carries: the app gets only its name as its argument.
pub(crate) fn distrust(opts: &mut tern_runtime::instance::RestoreOptions, spec: &StartApp) {
    if let Some(w) = opts.wasi_override.as_mut() {
        w.env.clear();
        w.args = vec![spec.name.clone()];
    }
}

/// The module a snapshot names: loaded here already, or the one it
/// carries; kept on this node's disk.
pub(crate) async fn module_of(node: &Arc<Node>, body: &Body) -> Result<Arc<LoadedModule>> {
    let module = match node.module(&body.meta.module_sha256).await {
        Ok(m) => m,
        Err(_) => {
            let bytes = body.module.clone().ok_or_else(|| {
                NodeError::conflict("the snapshot does not carry its module and this node does not have it: upload the module first")
            })?;
            node.load_module(bytes).await?
        }
    };
    let _ = node.keep_module(&module);
    Ok(module)
}

/// How an app restored from a snapshot runs: the node's default limits
/// (a snapshot's own are data, not authority).
pub(crate) fn restored_spec(
    node: &Node,
    name: String,
    module: &LoadedModule,
    generation: u64,
    restart: String,
) -> StartApp {
    StartApp {
        name,
        module_sha256: module.hash_hex(),
        generation,
        restart,
        ..Default::default()
    }
    .with_default_limits(node.config.default_limits)
}

/// `DELETE /v1/apps/NAME[?generation=G]`: stops the app and forgets it.
/// With a generation, only a copy at that generation or older goes
/// (fencing a stale copy without touching a newer one).
pub(crate) fn remove_app(node: &Node, name: &str, at_most: Option<u64>) -> Result<()> {
    if let (Some(g), Some(h)) = (at_most, node.local(name)) {
        if h.spec().generation > g {
            return Err(NodeError::conflict(format!(
                "app {name} runs here at generation {}, newer than {g}",
                h.spec().generation
            )));
        }
    }
    match node.remove_slot(name) {
        Some(Slot::Local(h)) => {
            h.shutdown();
            // A removed app leaves nothing behind: its checkpoints (which
            // hold its memory and environment) and its own directory.
            node.remove_checkpoints(name);
            if let Ok(dir) = crate::app::app_dir(node.data_dir(), name) {
                let _ = std::fs::remove_dir_all(&dir.host);
            }
            Ok(())
        }
        _ => Err(NodeError::not_found(format!(
            "no app named {name} on this node"
        ))),
    }
}

/// `POST /v1/apps/NAME/invoke`: calls an export here, or where the app
/// went (a call that races the app's handover follows it).
pub(crate) async fn invoke(
    node: &Node,
    name: &str,
    mut req: InvokeRequest,
) -> Result<InvokeResponse> {
    if node.moved_to(name).is_none() {
        let h = node.local_or_404(name)?;
        node.lease.check().map_err(NodeError::busy)?;
        match h.invoke_here(req, node.lease.clone()).await {
            Ok(r) => {
                let mut r = r?;
                r.node = node.name().to_string();
                return Ok(r);
            }
            // Handed over between the lookup and the call: the call did
            // not run here; it follows the app.
            Err(back) => req = back,
        }
    }
    let url = node
        .moved_to(name)
        .ok_or_else(|| NodeError::not_found(format!("no app named {name} on this node")))?;
    node.forward_invoke(&url, name, &req).await
}

/// `POST /v1/apps/NAME/stop` or `.../start`.
pub(crate) async fn stop_or_start(node: &Node, name: &str, stop: bool) -> Result<AppStatus> {
    let h = node.local_or_404(name)?;
    if stop {
        // A stop does not wait for a call that may never end.
        h.interrupt_call();
        h.ask(Cmd::Stop).await??;
    } else {
        h.ask(Cmd::Start).await??;
    }
    Ok(h.status())
}

/// `GET /v1/apps/NAME/logs?from=N&wait_ms=M`: lines from `from` on,
/// waiting up to `wait` (at most 30 s) for the first new one.
pub(crate) async fn logs(
    node: &Node,
    name: &str,
    from: u64,
    wait: Duration,
) -> Result<LogsResponse> {
    let h = node.local_or_404(name)?;
    let logs = h.logs().clone();
    let wait = wait.min(Duration::from_secs(30));
    let (next, lines) = tokio::task::spawn_blocking(move || logs.wait_since(from, wait)).await?;
    Ok(LogsResponse { next, lines })
}

/// `POST /v1/apps/NAME/snapshot`: the app's snapshot now (it goes on).
pub(crate) async fn snapshot(node: &Node, name: &str) -> Result<Bytes> {
    let h = node.local_or_404(name)?;
    let snap = h.ask(Cmd::Snapshot).await??;
    Ok(snapshot_body(Arc::new(snap)))
}

/// `GET /v1/checkpoints/NAME`: the app's latest checkpoint held here.
pub(crate) fn latest_checkpoint(node: &Node, name: &str) -> Result<Bytes> {
    let (_, snap) = node
        .latest_checkpoint(name)
        .ok_or_else(|| NodeError::not_found(format!("no checkpoint of {name} on this node")))?;
    Ok(snapshot_body(snap))
}

/// `GET /v1/checkpoints/NAME?digest=D`: that checkpoint, if this node
/// holds it: its latest, or the one a hybrid move leaving here starts from.
pub(crate) fn checkpoint_by_digest(node: &Node, name: &str, digest: &str) -> Result<Bytes> {
    let moving = crate::node::lock(&node.moving_checkpoints)
        .get(name)
        .cloned();
    [moving, node.latest_checkpoint(name)]
        .into_iter()
        .flatten()
        .find(|(d, _)| d == digest)
        .map(|(_, snap)| snapshot_body(snap))
        .ok_or_else(|| {
            NodeError::not_found(format!(
                "this node does not hold checkpoint {digest} of {name}"
            ))
        })
}

/// `POST /v1/apps/NAME/checkpoint`: a checkpoint now; its digest and size.
pub(crate) async fn checkpoint_now(node: &Node, name: &str) -> Result<serde_json::Value> {
    let h = node.local_or_404(name)?;
    let (digest, bytes) = node.checkpoint(&h).await?;
    Ok(serde_json::json!({ "digest": digest, "bytes": bytes, "generation": h.spec().generation }))
}
