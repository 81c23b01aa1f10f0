//! Operations that talk to nodes: deploy and the proxied commands here,
//! moves in `migrate.rs`, restores and restarts in `restore.rs`. Each checks
//! and reserves under the lock, talks to nodes without it, then records the
//! outcome under the lock again.

mod migrate;
pub mod pinned;
mod restore;

pub use migrate::{migrate, migrate_with};
pub use restore::{refresh_missing_checkpoints, restart, restore};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tern_api::types::{
    AppState, AppStatus, AppView, DeployRequest, InvokeRequest, InvokeResponse, LogsResponse,
    StartApp,
};
use tern_scheduler::{place, Decision, Policy, RestartPolicy};

use crate::error::ApiError;
use crate::state::{
    now_ms, spec_of, valid_sha256, AppRec, BusyGuard, CheckpointRec, Shared, State,
};
use crate::store::write_atomic;

type Result<T> = std::result::Result<T, ApiError>;

/// A node an operation talks to.
#[derive(Debug, Clone)]
pub struct NodeRef {
    pub name: String,
    pub url: String,
}

impl NodeRef {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), path)
    }

    fn err(&self, e: tern_api::client::ClientError) -> ApiError {
        ApiError::from_node(&self.name, &self.url, e)
    }
}

pub use tern_api::client::RawResponse;

impl Shared {
    fn node_ref(&self, st: &State, name: &str) -> Result<NodeRef> {
        let n = st.nodes.get(name).ok_or_else(|| ApiError::no_node(name))?;
        Ok(NodeRef {
            name: name.to_string(),
            url: n.info.url.clone(),
        })
    }

    /// A node that can take work now (registered, not down).
    fn live_node(&self, st: &State, name: &str, now: u64) -> Result<NodeRef> {
        let n = st.nodes.get(name).ok_or_else(|| ApiError::no_node(name))?;
        if self.is_down(n, now) {
            return Err(ApiError::unavailable(format!(
                "node {name} is down (no heartbeat for {} s): choose another node, see `tern nodes`",
                now.saturating_sub(self.last_seen(n)) / 1000
            )));
        }
        self.node_ref(st, name)
    }

    /// The app and the node that runs it.
    fn app_and_node(&self, st: &State, name: &str) -> Result<(AppRec, NodeRef)> {
        let app = st.apps.get(name).ok_or_else(|| ApiError::no_app(name))?;
        let node = app.node.as_deref().ok_or_else(|| {
            ApiError::conflict(format!(
                "app {name} has no node right now (state {}): see `tern ps`",
                app.state
            ))
        })?;
        Ok((app.clone(), self.node_ref(st, node)?))
    }

    /// Hands out the next generation of `name`, durably recorded first.
    fn next_generation(&self, st: &mut State, name: &str) -> Result<u64> {
        let current = st.apps.get(name).map_or(0, |a| a.generation);
        let g = st
            .generations
            .get(name)
            .copied()
            .unwrap_or(0)
            .max(current)
            .checked_add(1)
            .ok_or_else(|| {
                ApiError::conflict(format!(
                    "app {name} has used every generation: remove it and deploy it again"
                ))
            })?;
        self.store.put_generation(name, g)?;
        st.generations.insert(name.to_string(), g);
        Ok(g)
    }

    /// Makes sure `node` holds module `sha256`, uploading it if not.
    async fn ensure_module(&self, node: &NodeRef, sha256: &str) -> Result<()> {
        let url = node.url(&format!("/v1/modules/{sha256}"));
        if self.client.exists(&url).await.map_err(|e| node.err(e))? {
            return Ok(());
        }
        let size = self.lock().modules.get(sha256).copied().ok_or_else(|| {
            ApiError::not_found(format!(
                "no module {sha256}: upload it again (`tern deploy` does)"
            ))
        })?;
        let bytes = self
            .store
            .module_bytes(sha256, size)
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        self.long_client
            .put_bytes(&url, bytes.into())
            .await
            .map_err(|e| node.err(e))?;
        Ok(())
    }

    /// Records a node's report of an app after an operation.
    fn apply_status(a: &mut AppRec, s: &AppStatus) {
        a.state = state_word(s.state);
        a.memory_bytes = s.memory_bytes;
        a.requests_served = a.requests_served.max(s.requests_served);
        a.cpu_ms = s.cpu_ms;
        a.last_error = s.last_error.clone();
        a.start_at_unix_ms = s.start_at_unix_ms;
    }

    /// Stores `bytes` as `app`'s checkpoint unless a newer one is kept
    /// (see [`CheckpointFrom`]).
    ///
    /// The file is named by its digest and written whole before the record
    /// names it; the app's checkpoint turn keeps the file and the record
    /// changing together, so the record never names other bytes. The file
    /// of the checkpoint it replaces goes after (a restore reading it holds
    /// a pin of its own: `pinned`).
    pub async fn save_checkpoint(
        &self,
        app: &str,
        generation: u64,
        bytes: &Bytes,
        from: CheckpointFrom,
    ) -> Result<bool> {
        let turn = self.checkpoint_turn(app);
        let _turn = turn.lock().await;
        let foreign = from == CheckpointFrom::Restore { foreign: true };
        let refused = |st: &State| {
            !st.apps.contains_key(app)
                || st.checkpoints.get(app).is_some_and(|c| match from {
                    CheckpointFrom::Node => c.generation > generation,
                    CheckpointFrom::Restore { .. } => c.generation >= generation,
                })
        };
        {
            let st = self.lock();
            if !st.apps.contains_key(app) {
                return Err(ApiError::no_app(app));
            }
            if refused(&st) {
                return Ok(false);
            }
        }
        let dir = self.store.checkpoints_dir();
        let (data, name) = (bytes.clone(), app.to_string());
        let (digest, path) = tokio::task::spawn_blocking(move || {
            let digest = crate::store::checkpoint_digest(&data);
            let path = dir.join(format!("{name}@{digest}.snap"));
            write_atomic(&path, &data).map(|()| (digest, path))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot write the checkpoint of {app}: {e}")))?;
        let mut st = self.lock();
        let previous = st.checkpoints.get(app).cloned();
        let same_file = |c: &Option<CheckpointRec>| {
            c.as_ref()
                .is_some_and(|c| c.digest.as_deref() == Some(digest.as_str()))
        };
        if refused(&st) {
            if !same_file(&previous) {
                let _ = std::fs::remove_file(&path);
            }
            return Ok(false);
        }
        let rec = CheckpointRec {
            generation,
            bytes: bytes.len() as u64,
            unix_ms: now_ms(),
            digest: Some(digest.clone()),
            foreign,
        };
        if let Err(e) = self.store.put_checkpoint(app, &rec) {
            if !same_file(&previous) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e.into());
        }
        st.checkpoints.insert(app.to_string(), rec);
        drop(st);
        if let Some(old) = previous.filter(|c| c.digest.as_deref() != Some(digest.as_str())) {
            let _ = std::fs::remove_file(self.store.checkpoint_path(app, old.digest.as_deref()));
        }
        Ok(true)
    }
}

/// Where a checkpoint comes from, and so what it may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFrom {
    /// The app's node: it replaces any checkpoint of its generation or
    /// older (the node checkpoints the same generation again and again).
    Node,
    /// An operator's restore, recorded once the node runs the app
    /// (`foreign`: a file the cluster did not tag). It replaces only older
    /// generations: a checkpoint of the restored app's own generation
    /// kept already came from its node since, and is newer than the file.
    Restore { foreign: bool },
}

/// A copy of the app's record, if no other operation holds it.
fn idle_app(st: &State, name: &str) -> Result<AppRec> {
    let app = st.apps.get(name).ok_or_else(|| ApiError::no_app(name))?;
    if st.busy.contains(name) {
        return Err(ApiError::busy(name));
    }
    Ok(app.clone())
}

/// A path and query as typed, with the characters a URI cannot hold
/// (spaces, quotes, non-ASCII...) percent-encoded; `%`, `?`, `&`, `=`
/// and `/` keep their meaning.
pub fn uri_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | b'#'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The control plane's word for a node's `AppState`.
pub fn state_word(s: AppState) -> String {
    s.to_string()
}

/// `POST /v1/apps` (`dry_run`: only say where the app would go).
pub async fn deploy(
    sh: &Arc<Shared>,
    req: DeployRequest,
    dry_run: bool,
) -> Result<(Option<AppView>, Option<Decision>)> {
    tern_api::names::check_app_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !valid_sha256(&req.module_sha256) {
        return Err(ApiError::bad_request(
            "module_sha256 must be 64 lowercase hex digits",
        ));
    }
    let restart: RestartPolicy = req.restart.as_deref().unwrap_or("never").parse()?;
    let policy: Policy = match req.policy.as_deref() {
        Some(p) => p.parse()?,
        None => sh.cfg.policy,
    };
    let name = req.name.clone();
    let now = now_ms();
    let requests = tern_api::types::Resources {
        cpu_milli: req.cpu_milli.unwrap_or(sh.cfg.default_requests.cpu_milli),
        memory_bytes: req
            .memory_limit
            .unwrap_or(sh.cfg.default_requests.memory_bytes),
    };
    let limits = tern_api::types::AppLimits {
        memory_bytes: req.memory_limit,
        timeout_ms: req.timeout_ms,
        fuel: req.fuel,
    }
    .or(sh.cfg.default_limits);
    let mut rec = AppRec {
        name: name.clone(),
        module_sha256: req.module_sha256.clone(),
        state: "deploying".into(),
        memory_limit: limits.memory_bytes,
        timeout_ms: limits.timeout_ms,
        fuel: limits.fuel,
        env: req.env.clone(),
        args: req.args.clone(),
        restart: restart.to_string(),
        requests,
        labels: req.labels.clone(),
        policy: req.policy.clone(),
        user_location: req.user_location.clone(),
        start_at_unix_ms: req.start_at_unix_ms,
        created_unix_ms: now,
        placed_unix_ms: now,
        ..AppRec::default()
    };

    let (node, decision, guard) = {
        let mut st = sh.lock();
        if !st.modules.contains_key(&req.module_sha256) {
            return Err(ApiError::bad_request(format!(
                "module {} has not been uploaded: PUT /v1/modules/{} first (`tern deploy FILE.wasm` does it)",
                req.module_sha256, req.module_sha256
            )));
        }
        if st.apps.contains_key(&name) || st.busy.contains(&name) {
            return Err(ApiError::conflict(format!(
                "an app named {name} already exists: remove it first (`tern rm {name}`) or choose another name"
            )));
        }
        let (node, decision) = match &req.node {
            Some(n) => (sh.live_node(&st, n, now)?, None),
            None => {
                let cluster = sh.cluster_view(&st, now);
                let ctx = sh.placement_ctx(&st, &name);
                let d = place(&cluster, &spec_of(&rec), policy, &ctx);
                sh.metrics.decided(&policy.to_string(), d.is_ok());
                let d = d?;
                (sh.node_ref(&st, &d.node)?, Some(d))
            }
        };
        if dry_run {
            return Ok((None, decision));
        }
        rec.generation = sh.next_generation(&mut st, &name)?;
        rec.node = Some(node.name.clone());
        let guard = BusyGuard::take(sh, &mut st, &name);
        st.apps.insert(name.clone(), rec.clone());
        (node, decision, guard)
    };

    let started = async {
        sh.ensure_module(&node, &req.module_sha256).await?;
        let start = StartApp {
            name: name.clone(),
            module_sha256: req.module_sha256.clone(),
            generation: rec.generation,
            env: req.env.clone(),
            args: req.args.clone(),
            memory_limit: rec.memory_limit,
            timeout_ms: rec.timeout_ms,
            fuel: rec.fuel,
            restart: rec.restart.clone(),
            start_at_unix_ms: req.start_at_unix_ms,
        };
        sh.client
            .post_json::<_, AppStatus>(&node.url("/v1/apps"), &start)
            .await
            .map_err(|e| node.err(e))
    }
    .await;

    let mut st = sh.lock();
    match started {
        Ok(status) => {
            let a = st
                .apps
                .get_mut(&name)
                .expect("a busy app stays in the table");
            Shared::apply_status(a, &status);
            a.placed_unix_ms = now_ms();
            let a = a.clone();
            sh.store.put_app(&a)?;
            tracing::info!(app = %name, node = %node.name, generation = a.generation, "deployed");
            let view = sh.app_view(&st, &a, now_ms());
            drop(st);
            drop(guard);
            Ok((Some(view), decision))
        }
        Err(e) => {
            st.apps.remove(&name);
            drop(st);
            drop(guard);
            Err(e)
        }
    }
}

/// `POST /v1/apps/NAME/invoke`. A node that answers it did not run the
/// call and asks for it again later (503 with `Retry-After`: its calls
/// queue is full, or its lease ran out while control planes change leader)
/// is asked again, for up to half the heartbeat timeout, before the client
/// hears of it.
pub async fn invoke(sh: &Shared, name: &str, req: InvokeRequest) -> Result<InvokeResponse> {
    let give_up = tokio::time::Instant::now() + sh.cfg.heartbeat_timeout / 2;
    let mut pause = Duration::from_millis(50);
    loop {
        let (_, node) = sh.app_and_node(&sh.lock(), name)?;
        let e = match sh
            .client
            .post_json(&node.url(&format!("/v1/apps/{name}/invoke")), &req)
            .await
        {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        match e.retry_after() {
            Some(wait) if tokio::time::Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(wait).max(Duration::from_millis(50));
            }
            _ => return Err(node.err(e)),
        }
    }
}

/// `POST /v1/apps/NAME/call?path=/P&method=M`: the app's answer as it came.
pub async fn call(
    sh: &Shared,
    name: &str,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<RawResponse> {
    let (_, node) = sh.app_and_node(&sh.lock(), name)?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = node.url(&format!("/apps/{name}{}", uri_safe(&path)));
    sh.raw
        .send_raw(method, &url, content_type, body)
        .await
        .map_err(|reason| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "node {} at {} does not answer: is it running? ({reason})",
                    node.name, node.url
                ),
            )
        })
}

/// `POST /v1/apps/NAME/snapshot`: the bytes. They are not kept as the
/// app's checkpoint: that is the one its node took and sent (a hybrid move
/// checks the target fetches exactly the source's latest checkpoint).
pub async fn snapshot(sh: &Shared, name: &str) -> Result<Bytes> {
    let (_, node) = sh.app_and_node(&sh.lock(), name)?;
    sh.long_client
        .post_bytes(
            &node.url(&format!("/v1/apps/{name}/snapshot")),
            Bytes::new(),
        )
        .await
        .map_err(|e| node.err(e))
}

/// `POST /v1/apps/NAME/stop` and `.../start`.
pub async fn stop_or_start(sh: &Shared, name: &str, stop: bool) -> Result<AppView> {
    let (app, node) = sh.app_and_node(&sh.lock(), name)?;
    let verb = if stop { "stop" } else { "start" };
    let status: AppStatus = sh
        .client
        .post_json(
            &node.url(&format!("/v1/apps/{name}/{verb}")),
            &serde_json::json!({}),
        )
        .await
        .map_err(|e| node.err(e))?;
    let mut st = sh.lock();
    let Some(a) = st.apps.get_mut(name) else {
        return Err(ApiError::no_app(name));
    };
    if a.generation == app.generation && a.node == app.node {
        Shared::apply_status(a, &status);
        a.operator_stopped = stop;
        let a = a.clone();
        sh.store.put_app(&a)?;
    }
    let a = st.apps[name].clone();
    Ok(sh.app_view(&st, &a, now_ms()))
}

/// `DELETE /v1/apps/NAME`.
pub async fn remove(sh: &Arc<Shared>, name: &str) -> Result<()> {
    let now = now_ms();
    let (app, node, node_down, guard) = {
        let mut st = sh.lock();
        let app = idle_app(&st, name)?;
        let node = app.node.as_deref().and_then(|n| sh.node_ref(&st, n).ok());
        let node_down = app
            .node
            .as_deref()
            .and_then(|n| st.nodes.get(n))
            .is_none_or(|n| sh.is_down(n, now));
        let guard = BusyGuard::take(sh, &mut st, name);
        (app, node, node_down, guard)
    };
    if let Some(node) = &node {
        let url = node.url(&format!("/v1/apps/{name}?generation={}", app.generation));
        match sh.short_client.delete(&url).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) => {}
            // A node that is down keeps a stale copy; its generation is
            // fenced when the node comes back.
            Err(e) if e.is_unreachable() && node_down => {}
            Err(e) => return Err(node.err(e)),
        }
    }
    let mut st = sh.lock();
    sh.store.remove_app(name)?;
    st.apps.remove(name);
    st.checkpoints.remove(name);
    st.usage.remove(name);
    st.cpu_prev.remove(name);
    st.restart_not_before.remove(name);
    st.restoring.remove(name);
    st.predictor.forget(name);
    drop(st);
    pinned::remove_files(sh, name);
    sh.drop_checkpoint_turn(name);
    drop(guard);
    tracing::info!(app = %name, "removed");
    Ok(())
}

/// `GET /v1/apps/NAME/logs?from=N&wait_ms=M`.
pub async fn logs(sh: &Shared, name: &str, from: u64, wait_ms: u64) -> Result<LogsResponse> {
    let (_, node) = sh.app_and_node(&sh.lock(), name)?;
    let wait_ms = wait_ms.min(60_000);
    let client = sh
        .client
        .clone()
        .with_timeout(Duration::from_millis(wait_ms + 30_000));
    client
        .get_json(&node.url(&format!(
            "/v1/apps/{name}/logs?from={from}&wait_ms={wait_ms}"
        )))
        .await
        .map_err(|e| node.err(e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::{uri_safe, CheckpointFrom};

    /// The file of an operator's restore is recorded after the node runs
    /// the app: a checkpoint the node sent meanwhile, of the same
    /// generation, is newer and stays; an older generation's is replaced.
    /// The node's own checkpoints replace their generation's as before.
    #[tokio::test]
    async fn a_restored_file_never_replaces_its_apps_newer_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sh = crate::heartbeat::tests::leader(dir.path(), Duration::ZERO);
        let digest = |sh: &super::Shared| sh.lock().checkpoints["counter"].digest.clone();
        let (node, file) = (
            Bytes::from_static(b"the node's"),
            Bytes::from_static(b"the file"),
        );
        let restore = CheckpointFrom::Restore { foreign: true };
        assert!(sh
            .save_checkpoint("counter", 3, &node, CheckpointFrom::Node)
            .await
            .unwrap());
        let kept = digest(&sh);
        assert!(!sh
            .save_checkpoint("counter", 3, &file, restore)
            .await
            .unwrap());
        assert_eq!(
            digest(&sh),
            kept,
            "the node's checkpoint of generation 3 stays"
        );
        assert!(!sh.lock().checkpoints["counter"].foreign);
        assert!(sh
            .save_checkpoint("counter", 4, &file, restore)
            .await
            .unwrap());
        assert!(sh.lock().checkpoints["counter"].foreign);
        assert!(sh
            .save_checkpoint("counter", 4, &node, CheckpointFrom::Node)
            .await
            .unwrap());
        assert!(
            !sh.lock().checkpoints["counter"].foreign,
            "the node's own replaces it"
        );
    }

    #[test]
    fn paths_keep_their_query_and_lose_what_a_uri_cannot_hold() {
        assert_eq!(uri_safe("/kv/a b?x=1&y=%20"), "/kv/a%20b?x=1&y=%20");
        assert_eq!(uri_safe("/é\"#"), "/%C3%A9%22%23");
    }
}
