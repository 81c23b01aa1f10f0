//! Operations that talk to nodes: deploy, the proxied commands, migrate,
//! restore and restart. Each checks and reserves under the lock, talks to
//! nodes without it, then records the outcome under the lock again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode};
use tern_api::types::{
    AppState, AppStatus, AppView, DeployRequest, InvokeRequest, InvokeResponse, LogsResponse,
    MigrateRequest, MigrationReport, Mode, StartApp,
};
use tern_scheduler::{place, Decision, Policy, RestartPolicy};

use crate::error::ApiError;
use crate::state::{
    now_ms, spec_of, valid_name, valid_sha256, AppRec, BusyGuard, CheckpointRec, InFlight, Shared,
    State,
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

/// An HTTP client that hands back any status, headers and body as they
/// came (app ingress is passed through, not interpreted).
pub struct RawClient {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// An app's answer, passed through.
pub struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl RawClient {
    pub fn new() -> RawClient {
        let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(3)));
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(c);
        RawClient { inner }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> std::result::Result<RawResponse, String> {
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                let mut reason = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    reason = s.to_string();
                    src = s.source();
                }
                reason
            })?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("connection lost: {e}"))?
                .to_bytes();
            Ok(RawResponse {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
    }
}

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
        let g = st.generations.get(name).copied().unwrap_or(0).max(current) + 1;
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

    /// Stores `bytes` as `app`'s checkpoint unless a newer one is kept.
    pub async fn save_checkpoint(&self, app: &str, generation: u64, bytes: &Bytes) -> Result<bool> {
        {
            let st = self.lock();
            if !st.apps.contains_key(app) {
                return Err(ApiError::no_app(app));
            }
            if let Some(c) = st.checkpoints.get(app) {
                if c.generation > generation {
                    return Ok(false);
                }
            }
        }
        let path = self.store.checkpoint_path(app);
        let data = bytes.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &data))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                ApiError::internal(format!("cannot write the checkpoint of {app}: {e}"))
            })?;
        let mut st = self.lock();
        if st
            .checkpoints
            .get(app)
            .is_some_and(|c| c.generation > generation)
            || !st.apps.contains_key(app)
        {
            return Ok(false);
        }
        let rec = CheckpointRec {
            generation,
            bytes: bytes.len() as u64,
            unix_ms: now_ms(),
        };
        self.store.put_checkpoint(app, &rec)?;
        st.checkpoints.insert(app.to_string(), rec);
        Ok(true)
    }
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
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "`{}` is not a valid app name: use 1 to 63 letters, digits, `.`, `_` or `-`",
            req.name
        )));
    }
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
    let mut rec = AppRec {
        name: name.clone(),
        module_sha256: req.module_sha256.clone(),
        state: "deploying".into(),
        memory_limit: req.memory_limit,
        timeout_ms: req.timeout_ms,
        fuel: req.fuel,
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
                let d = place(&cluster, &spec_of(&rec), policy, &ctx)?;
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
            memory_limit: req.memory_limit,
            timeout_ms: req.timeout_ms,
            fuel: req.fuel,
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

/// `POST /v1/apps/NAME/invoke`.
pub async fn invoke(sh: &Shared, name: &str, req: InvokeRequest) -> Result<InvokeResponse> {
    let (_, node) = sh.app_and_node(&sh.lock(), name)?;
    sh.client
        .post_json(&node.url(&format!("/v1/apps/{name}/invoke")), &req)
        .await
        .map_err(|e| node.err(e))
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
        .send(method, &url, content_type, body, Duration::from_secs(120))
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
    st.predictor.forget(name);
    drop(st);
    let _ = std::fs::remove_file(sh.store.checkpoint_path(name));
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

/// `POST /v1/apps/NAME/migrate`, and every move the rebalancer plans.
pub async fn migrate(
    sh: &Arc<Shared>,
    name: &str,
    to: &str,
    mode: Mode,
    reason: &str,
) -> Result<MigrationReport> {
    let now = now_ms();
    let (app, from, target, generation, guard) = {
        let mut st = sh.lock();
        let app = idle_app(&st, name)?;
        let from_name = app.node.clone().ok_or_else(|| {
            ApiError::conflict(format!("app {name} has no node right now: see `tern ps`"))
        })?;
        if from_name == to {
            return Err(ApiError::bad_request(format!(
                "app {name} already runs on {to}: choose another node (`tern nodes`)"
            )));
        }
        let target = sh.live_node(&st, to, now)?;
        if st.nodes[to].draining {
            return Err(ApiError::conflict(format!(
                "node {to} is draining: choose another node (`tern nodes`)"
            )));
        }
        let from = sh.live_node(&st, &from_name, now).map_err(|e| {
            ApiError::new(e.status, format!("cannot migrate {name}: its node {from_name} is down; `tern restore` it from a snapshot instead"))
        })?;
        if app.state != "running" {
            return Err(ApiError::conflict(format!(
                "app {name} is {}, not running: only a running app migrates (`tern start {name}` first)",
                app.state
            )));
        }
        if mode == Mode::Hybrid && !st.checkpoints.contains_key(name) {
            return Err(ApiError::conflict(format!(
                "app {name} has no checkpoint yet (its node sends one every few seconds while it runs): wait a moment, or use --mode hot"
            )));
        }
        let generation = sh.next_generation(&mut st, name)?;
        let guard = BusyGuard::take(sh, &mut st, name);
        if let Some(a) = st.apps.get_mut(name) {
            a.state = "migrating".into();
        }
        st.in_flight.insert(
            name.to_string(),
            InFlight {
                app: name.to_string(),
                from: from_name.clone(),
                to: to.to_string(),
                mode: mode.to_string(),
                generation,
                started_unix_ms: now,
                reason: reason.to_string(),
            },
        );
        (app, from, target, generation, guard)
    };

    let result = async {
        sh.ensure_module(&target, &app.module_sha256).await?;
        let checkpoint_url =
            (mode == Mode::Hybrid).then(|| format!("{}/v1/checkpoints/{name}", sh.advertise_url));
        let req = MigrateRequest {
            to_name: target.name.clone(),
            to_url: target.url.clone(),
            mode,
            generation,
            checkpoint_url,
        };
        sh.long_client
            .post_json::<_, MigrationReport>(&from.url(&format!("/v1/apps/{name}/migrate")), &req)
            .await
            .map_err(|e| from.err(e))
    }
    .await;

    let mut st = sh.lock();
    match result {
        Ok(mut report) => {
            let done = now_ms();
            if report.app.is_empty() {
                report.app = name.to_string();
            }
            if report.from.is_empty() {
                report.from = from.name.clone();
            }
            if report.to.is_empty() {
                report.to = target.name.clone();
            }
            if report.mode.is_empty() {
                report.mode = mode.to_string();
            }
            if report.generation == 0 {
                report.generation = generation;
            }
            report.reason = Some(reason.to_string());
            if let Some(a) = st.apps.get_mut(name) {
                a.node = Some(target.name.clone());
                a.generation = generation;
                a.state = "running".into();
                a.placed_unix_ms = done;
                a.last_moved_unix_ms = Some(done);
                let a = a.clone();
                sh.store.put_app(&a)?;
            }
            st.cpu_prev.remove(name);
            let seq = st.migrations.back().map_or(0, |(s, _)| s + 1);
            sh.store
                .push_migration(seq, &report, sh.cfg.max_migrations)?;
            st.migrations.push_back((seq, report.clone()));
            while st.migrations.len() > sh.cfg.max_migrations {
                st.migrations.pop_front();
            }
            drop(st);
            drop(guard);
            tracing::info!(app = %name, from = %from.name, to = %target.name, %mode, downtime_ms = report.downtime_ms, "migrated");
            Ok(report)
        }
        Err(e) => {
            // The source resumes the app itself when a move fails; its next
            // heartbeat says where the app really is.
            if let Some(a) = st.apps.get_mut(name) {
                if a.state == "migrating" {
                    a.state = app.state.clone();
                }
            }
            drop(st);
            drop(guard);
            Err(e)
        }
    }
}

/// `POST /v1/restore?name=N&node=NODE[&restart=R][&module=SHA256]`.
pub async fn restore(
    sh: &Arc<Shared>,
    name: &str,
    node: Option<&str>,
    restart: Option<&str>,
    module: Option<&str>,
    bytes: Bytes,
) -> Result<AppView> {
    if !valid_name(name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a valid app name: use 1 to 63 letters, digits, `.`, `_` or `-`"
        )));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the snapshot is empty: send the snapshot file's bytes as the body",
        ));
    }
    let restart = match restart {
        Some(r) => Some(r.parse::<RestartPolicy>()?.to_string()),
        None => None,
    };
    if let Some(m) = module {
        if !valid_sha256(m) {
            return Err(ApiError::bad_request(
                "module must be 64 lowercase hex digits",
            ));
        }
    }
    let now = now_ms();
    let (existing, old_node, target, generation, guard) = {
        let mut st = sh.lock();
        if st.busy.contains(name) {
            return Err(ApiError::busy(name));
        }
        let existing = st.apps.get(name).cloned();
        let old_node = existing
            .as_ref()
            .and_then(|a| a.node.as_deref())
            .and_then(|n| sh.node_ref(&st, n).ok());
        let target = match node {
            Some(n) => sh.live_node(&st, n, now)?,
            None => match old_node.as_ref().filter(|n| {
                st.nodes
                    .get(&n.name)
                    .is_some_and(|r| !sh.is_down(r, now) && !r.draining)
            }) {
                Some(n) => n.clone(),
                None => {
                    let mut rec = existing.clone().unwrap_or_else(|| AppRec {
                        name: name.to_string(),
                        ..AppRec::default()
                    });
                    if existing.is_none() {
                        rec.requests = sh.cfg.default_requests;
                    }
                    let mut cluster = sh.cluster_view(&st, now);
                    cluster.unbind(name);
                    let policy = rec
                        .policy
                        .as_deref()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(sh.cfg.policy);
                    let d = place(
                        &cluster,
                        &spec_of(&rec),
                        policy,
                        &sh.placement_ctx(&st, name),
                    )?;
                    sh.node_ref(&st, &d.node)?
                }
            },
        };
        let generation = sh.next_generation(&mut st, name)?;
        let guard = BusyGuard::take(sh, &mut st, name);
        (existing, old_node, target, generation, guard)
    };

    // On another node, the old copy goes first (on the same node, the
    // restored copy replaces it).
    if let (Some(old), Some(app)) = (
        old_node.as_ref().filter(|o| o.name != target.name),
        &existing,
    ) {
        let url = old.url(&format!("/v1/apps/{name}?generation={}", app.generation));
        match sh.short_client.delete(&url).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(404) || e.is_unreachable() => {}
            Err(e) => return Err(old.err(e)),
        }
    }
    let module = existing
        .as_ref()
        .map(|a| a.module_sha256.clone())
        .or(module.map(str::to_string));
    if let Some(m) = &module {
        if sh.lock().modules.contains_key(m) {
            sh.ensure_module(&target, m).await?;
        }
    }
    let restart_word = restart
        .clone()
        .or(existing.as_ref().map(|a| a.restart.clone()))
        .unwrap_or_else(|| "never".into());
    let url = target.url(&format!(
        "/v1/restore?name={name}&generation={generation}&restart={restart_word}"
    ));
    let result = sh
        .long_client
        .post_bytes(&url, bytes.clone())
        .await
        .map_err(|e| target.err(e));
    let status: AppStatus = match result {
        Ok(body) => serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "node {} answered a restore with something else than an app status: {e}",
                    target.name
                ),
            )
        })?,
        Err(e) => {
            if existing.is_some() {
                let mut st = sh.lock();
                if let Some(a) = st.apps.get_mut(name) {
                    a.state = "lost".into();
                    a.last_error = Some(format!("restore failed: {}", e.message));
                }
            }
            return Err(e);
        }
    };
    let done = now_ms();
    let view = {
        let mut st = sh.lock();
        let mut a = existing.clone().unwrap_or_else(|| AppRec {
            name: name.to_string(),
            module_sha256: status.module_sha256.clone(),
            requests: sh.cfg.default_requests,
            created_unix_ms: done,
            ..AppRec::default()
        });
        a.node = Some(target.name.clone());
        a.generation = generation;
        a.restart = restart_word;
        a.placed_unix_ms = done;
        a.operator_stopped = false;
        a.restarts = 0;
        if !status.module_sha256.is_empty() {
            a.module_sha256 = status.module_sha256.clone();
        }
        Shared::apply_status(&mut a, &status);
        sh.store.put_app(&a)?;
        st.apps.insert(name.to_string(), a.clone());
        st.cpu_prev.remove(name);
        sh.app_view(&st, &a, done)
    };
    drop(guard);
    if let Err(e) = sh.save_checkpoint(name, generation, &bytes).await {
        tracing::warn!(app = %name, "restored snapshot not kept as checkpoint: {e}");
    }
    tracing::info!(app = %name, node = %target.name, generation, "restored");
    Ok(view)
}

/// Starts `name` again on `to` after its node was lost: from its latest
/// checkpoint if there is one, else afresh; one generation up, so a copy
/// left on the lost node is fenced when it comes back.
pub async fn restart(sh: &Arc<Shared>, name: &str, to: &str, why: &str) -> Result<()> {
    let now = now_ms();
    let (app, target, generation, checkpoint, guard) = {
        let mut st = sh.lock();
        let app = idle_app(&st, name)?;
        let target = sh.live_node(&st, to, now)?;
        let checkpoint = st.checkpoints.get(name).copied();
        let generation = sh.next_generation(&mut st, name)?;
        let guard = BusyGuard::take(sh, &mut st, name);
        if let Some(a) = st.apps.get_mut(name) {
            a.state = "restoring".into();
        }
        (app, target, generation, checkpoint, guard)
    };
    let result: Result<(AppStatus, String)> = async {
        sh.ensure_module(&target, &app.module_sha256).await?;
        match checkpoint {
            Some(c) => {
                let path = sh.store.checkpoint_path(name);
                let bytes = tokio::fs::read(&path).await.map_err(|e| ApiError::internal(format!("cannot read {}: {e}", path.display())))?;
                let url = target.url(&format!("/v1/restore?name={name}&generation={generation}&restart={}", app.restart));
                let body = sh.long_client.post_bytes(&url, bytes.into()).await.map_err(|e| target.err(e))?;
                let status: AppStatus = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("node {} answered a restore with something else than an app status: {e}", target.name)))?;
                Ok((status, format!("from its checkpoint of generation {}", c.generation)))
            }
            None => {
                let start = StartApp {
                    name: name.to_string(),
                    module_sha256: app.module_sha256.clone(),
                    generation,
                    env: app.env.clone(),
                    args: app.args.clone(),
                    memory_limit: app.memory_limit,
                    timeout_ms: app.timeout_ms,
                    fuel: app.fuel,
                    restart: app.restart.clone(),
                    start_at_unix_ms: app.start_at_unix_ms.filter(|t| *t > now_ms()),
                };
                let status: AppStatus = sh.client.post_json(&target.url("/v1/apps"), &start).await.map_err(|e| target.err(e))?;
                Ok((status, "afresh (it has no checkpoint)".to_string()))
            }
        }
    }
    .await;
    let mut st = sh.lock();
    let out = match result {
        Ok((status, how)) => {
            if let Some(a) = st.apps.get_mut(name) {
                a.node = Some(target.name.clone());
                a.generation = generation;
                a.placed_unix_ms = now_ms();
                a.restarts = 0;
                Shared::apply_status(a, &status);
                let a = a.clone();
                sh.store.put_app(&a)?;
            }
            st.cpu_prev.remove(name);
            st.restart_not_before.remove(name);
            tracing::info!(app = %name, node = %target.name, generation, "restarted {how} ({why})");
            Ok(())
        }
        Err(e) => {
            if let Some(a) = st.apps.get_mut(name) {
                a.state = "lost".into();
                a.restarts = a.restarts.saturating_add(1);
                a.last_error = Some(format!("restart on {} failed: {}", target.name, e.message));
                let backoff = tern_scheduler::backoff_ms(a.restarts).max(1000);
                st.restart_not_before
                    .insert(name.to_string(), now_ms() + backoff);
            }
            Err(e)
        }
    };
    drop(st);
    drop(guard);
    out
}

/// Asks the node of every running app this control plane holds no
/// checkpoint of to take one now (it arrives through the usual upload), so
/// that a control plane that just took over can restart those apps from
/// their state soon rather than after the nodes' next periodic checkpoint.
pub async fn refresh_missing_checkpoints(sh: &Arc<Shared>) {
    let targets: Vec<(String, NodeRef)> = {
        let st = sh.lock();
        st.apps
            .values()
            .filter(|a| a.state == "running" && !st.checkpoints.contains_key(&a.name))
            .filter_map(|a| {
                let node = a.node.as_deref()?;
                Some((a.name.clone(), sh.node_ref(&st, node).ok()?))
            })
            .collect()
    };
    for (app, node) in targets {
        let url = node.url(&format!("/v1/apps/{app}/checkpoint"));
        if let Err(e) = sh
            .short_client
            .post_json::<_, serde_json::Value>(&url, &serde_json::json!({}))
            .await
        {
            tracing::warn!(%app, node = %node.name, "no fresh checkpoint: {}", node.err(e).message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::uri_safe;

    #[test]
    fn paths_keep_their_query_and_lose_what_a_uri_cannot_hold() {
        assert_eq!(uri_safe("/kv/a b?x=1&y=%20"), "/kv/a%20b?x=1&y=%20");
        assert_eq!(uri_safe("/é\"#"), "/%C3%A9%22%23");
    }
}
