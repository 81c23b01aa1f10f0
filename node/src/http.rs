//! Routing of the node API and of app ingress.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tern_api::server::{
    self, authorized, error, json, query_param, read_body, read_json, segments, unauthorized, Body,
};
use tern_api::types::{
    AppStatus, InvokeRequest, LogsResponse, MigrateRequest, MigrationOpen, StartApp,
};

use super::app::{AppHandle, Cmd};
use super::{migrate, Node, Slot};
use tern_runtime::instance::Instance;
use tern_runtime::snapshot::Snapshot;

type Resp = Response<Body>;

fn from_err((status, msg): (u16, String)) -> Resp {
    error(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        msg,
    )
}

/// Handles one request.
pub(crate) async fn route(node: Arc<Node>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/apps" || path.starts_with("/apps/") {
        return ingress(node, req).await;
    }
    if !authorized(&req, &node.config.token) {
        return unauthorized();
    }
    match api(node, req).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

async fn api(node: Arc<Node>, req: Request<Incoming>) -> Result<Resp, Resp> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let seg = segments(&path);
    let ok = |v: &dyn erased::Ser| json(StatusCode::OK, &erased::Wrap(v));
    match (method.clone(), seg.as_slice()) {
        (Method::GET, ["v1", "health"]) => Ok(json(StatusCode::OK, &node.info())),
        (Method::GET, ["v1", "status"]) => Ok(json(StatusCode::OK, &node.heartbeat())),
        (Method::HEAD, ["v1", "modules", sha]) => {
            let known = parse_sha(sha).is_some_and(|h| node.runtime.loaded(&h).is_some())
                || node.module_path(sha).exists();
            Ok(if known {
                json(StatusCode::OK, &serde_json::json!({}))
            } else {
                error(StatusCode::NOT_FOUND, "no such module")
            })
        }
        (Method::PUT, ["v1", "modules", sha]) => {
            let want = parse_sha(sha)
                .ok_or_else(|| error(StatusCode::BAD_REQUEST, "bad sha256 in path"))?;
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            if tern_runtime::sha256(&body) != want {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "module bytes do not hash to the sha256 in the path",
                ));
            }
            let rt = node.runtime.clone();
            let bytes = body.to_vec();
            let loaded = tokio::task::spawn_blocking(move || rt.load(bytes))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            loaded.map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
            std::fs::write(node.module_path(sha), &body).map_err(|e| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot store module: {e}"),
                )
            })?;
            Ok(json(
                StatusCode::CREATED,
                &serde_json::json!({ "sha256": sha }),
            ))
        }
        (Method::POST, ["v1", "apps"]) => {
            let spec: StartApp = read_json(req.into_body()).await?;
            start_app(&node, spec)
                .await
                .map(|st| json(StatusCode::CREATED, &st))
        }
        (Method::GET, ["v1", "apps"]) => Ok(json(StatusCode::OK, &node.heartbeat().apps)),
        (Method::GET, ["v1", "apps", name]) => {
            Ok(json(StatusCode::OK, &local(&node, name)?.status()))
        }
        (Method::POST, ["v1", "apps", name, "invoke"]) => {
            let mut inv: InvokeRequest = read_json(req.into_body()).await?;
            if moved_to(&node, name).is_none() {
                let h = local(&node, name)?;
                match h.invoke_here(inv).await {
                    Ok(r) => {
                        let mut r = r.map_err(from_err)?;
                        r.node = node.name().to_string();
                        return Ok(json(StatusCode::OK, &r));
                    }
                    // Handed over between the lookup and the call: the call
                    // did not run here; it follows the app.
                    Err(back) => inv = back,
                }
            }
            let Some(url) = moved_to(&node, name) else {
                return Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no app named {name} on this node"),
                ));
            };
            let r: tern_api::types::InvokeResponse = node
                .client
                .post_json(&format!("{url}/v1/apps/{name}/invoke"), &inv)
                .await
                .map_err(|e| {
                    error(
                        StatusCode::from_u16(e.status().unwrap_or(502))
                            .unwrap_or(StatusCode::BAD_GATEWAY),
                        e.to_string(),
                    )
                })?;
            Ok(json(StatusCode::OK, &r))
        }
        (Method::POST, ["v1", "apps", name, "stop"]) => {
            let h = local(&node, name)?;
            h.ask(Cmd::Stop)
                .await
                .map_err(from_err)?
                .map_err(from_err)?;
            Ok(json(StatusCode::OK, &h.status()))
        }
        (Method::POST, ["v1", "apps", name, "start"]) => {
            let h = local(&node, name)?;
            h.ask(Cmd::Start)
                .await
                .map_err(from_err)?
                .map_err(from_err)?;
            Ok(json(StatusCode::OK, &h.status()))
        }
        (Method::DELETE, ["v1", "apps", name]) => {
            // With ?generation=G, only a copy at generation <= G goes (fencing a stale copy).
            if let Some(g) =
                query_param(query.as_deref(), "generation").and_then(|g| g.parse::<u64>().ok())
            {
                if let Some(h) = node.local(name) {
                    if h.spec().generation > g {
                        return Err(error(
                            StatusCode::CONFLICT,
                            format!(
                                "app {name} runs here at generation {}, newer than {g}",
                                h.spec().generation
                            ),
                        ));
                    }
                }
            }
            let slot = node
                .apps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(*name);
            match slot {
                Some(Slot::Local(h)) => {
                    h.shutdown();
                    node.forget_checkpoint(name);
                    Ok(json(
                        StatusCode::OK,
                        &serde_json::json!({ "deleted": name }),
                    ))
                }
                _ => Err(error(
                    StatusCode::NOT_FOUND,
                    format!("no app named {name} on this node"),
                )),
            }
        }
        (Method::GET, ["v1", "apps", name, "logs"]) => {
            let h = local(&node, name)?;
            let from = query_param(query.as_deref(), "from")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = query_param(query.as_deref(), "wait_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0u64)
                .min(30_000);
            let logs = h.logs().clone();
            let (next, lines) = tokio::task::spawn_blocking(move || {
                logs.wait_since(from, std::time::Duration::from_millis(wait))
            })
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(json(StatusCode::OK, &LogsResponse { next, lines }))
        }
        (Method::POST, ["v1", "apps", name, "snapshot"]) => {
            let h = local(&node, name)?;
            let snap = h
                .ask(Cmd::Snapshot)
                .await
                .map_err(from_err)?
                .map_err(from_err)?;
            Ok(server::bytes(
                StatusCode::OK,
                "application/octet-stream",
                snap.as_bytes().to_vec(),
            ))
        }
        (Method::POST, ["v1", "apps", name, "checkpoint"]) => {
            let h = local(&node, name)?;
            let (digest, bytes) = node.checkpoint(&h).await.map_err(from_err)?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "digest": digest, "bytes": bytes, "generation": h.spec().generation }),
            ))
        }
        (Method::POST, ["v1", "apps", name, "migrate"]) => {
            let m: MigrateRequest = read_json(req.into_body()).await?;
            let report = migrate::migrate_out(node.clone(), name.to_string(), m)
                .await
                .map_err(from_err)?;
            Ok(json(StatusCode::OK, &report))
        }
        (Method::GET, ["v1", "checkpoints", name]) => {
            let (_, snap) = node.latest_checkpoint(name).ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    format!("no checkpoint of {name} on this node"),
                )
            })?;
            Ok(server::bytes(
                StatusCode::OK,
                "application/octet-stream",
                snap.as_bytes().to_vec(),
            ))
        }
        (Method::POST, ["v1", "restore"]) => {
            let name = query_param(query.as_deref(), "name")
                .ok_or_else(|| error(StatusCode::BAD_REQUEST, "restore needs ?name="))?
                .to_string();
            let generation = query_param(query.as_deref(), "generation")
                .and_then(|g| g.parse().ok())
                .unwrap_or(1);
            let restart = query_param(query.as_deref(), "restart")
                .unwrap_or("never")
                .to_string();
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            restore_app(&node, name, generation, restart, body)
                .await
                .map(|st| json(StatusCode::CREATED, &st))
        }
        (Method::POST, ["v1", "migrations"]) => {
            let open: MigrationOpen = read_json(req.into_body()).await?;
            let opened = migrate::open_session(node.clone(), open)
                .await
                .map_err(from_err)?;
            Ok(json(StatusCode::CREATED, &opened))
        }
        (Method::POST, ["v1", "migrations", id, step @ ("base" | "pages" | "commit" | "cold")]) => {
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            let (id, step) = (id.to_string(), step.to_string());
            match step.as_str() {
                "base" => migrate::receive_base(node.clone(), id, body)
                    .await
                    .map(|_| ok(&serde_json::json!({})))
                    .map_err(from_err),
                "pages" => migrate::receive_pages(node.clone(), id, body)
                    .await
                    .map(|_| ok(&serde_json::json!({})))
                    .map_err(from_err),
                _ => migrate::receive_final(node.clone(), id, body, step == "cold")
                    .await
                    .map(|a| json(StatusCode::OK, &a))
                    .map_err(from_err),
            }
        }
        (Method::DELETE, ["v1", "migrations", id]) => {
            node.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(*id);
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        )),
    }
}

mod erased {
    //! Lets the match arms above share one JSON helper for any value.
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
    pub struct Wrap<'a>(pub &'a dyn Ser);
    impl serde::Serialize for Wrap<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.to_value().serialize(s)
        }
    }
}

fn moved_to(node: &Node, name: &str) -> Option<String> {
    match node
        .apps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        Some(Slot::Moved { url }) => Some(url.clone()),
        _ => None,
    }
}

fn parse_sha(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

// The error is the response itself, built once where the lookup fails.
#[allow(clippy::result_large_err)]
fn local(node: &Node, name: &str) -> Result<AppHandle, Resp> {
    node.local(name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no app named {name} on node {}", node.name()),
        )
    })
}

async fn start_app(node: &Arc<Node>, spec: StartApp) -> Result<AppStatus, Resp> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "app names are letters, digits, `-` and `_`",
        ));
    }
    if let Some(h) = node.local(&spec.name) {
        if h.spec().generation >= spec.generation {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "app {} already runs here (generation {})",
                    spec.name,
                    h.spec().generation
                ),
            ));
        }
    }
    node.admit_generation(&spec.name, spec.generation)
        .map_err(|m| error(StatusCode::CONFLICT, m))?;
    let sha = parse_sha(&spec.module_sha256)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "bad module sha256"))?;
    let module = node
        .module(&sha)
        .await
        .map_err(|m| error(StatusCode::CONFLICT, m))?;
    let rt = node.runtime.clone();
    let dir = node.config.data_dir.clone();
    let handle = tokio::task::spawn_blocking(move || AppHandle::spawn(rt, module, spec, dir, None))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    node.install(handle.clone());
    // Answer once the first start attempt is over (or the app is pending).
    for _ in 0..200 {
        let st = handle.status();
        if st.state != tern_api::types::AppState::Pending || st.start_at_unix_ms.is_some() {
            return Ok(st);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(handle.status())
}

async fn restore_app(
    node: &Arc<Node>,
    name: String,
    generation: u64,
    restart: String,
    body: Bytes,
) -> Result<AppStatus, Resp> {
    node.admit_generation(&name, generation)
        .map_err(|m| error(StatusCode::CONFLICT, m))?;
    let snap = Snapshot::from_bytes(body.to_vec())
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let module = match node.module(&snap.body.meta.module_sha256).await {
        Ok(m) => m,
        Err(_) => {
            let bytes = snap.body.module.clone().ok_or_else(|| {
                error(StatusCode::CONFLICT, "the snapshot does not carry its module and this node does not have it: upload the module first")
            })?;
            let rt = node.runtime.clone();
            tokio::task::spawn_blocking(move || rt.load(bytes))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?
        }
    };
    let _ = std::fs::write(
        node.module_path(&module.hash_hex()),
        module.original.as_slice(),
    );
    let logs = tern_runtime::wasi::LogBuffer::new();
    let opts = migrate::restore_options(node, &name, &snap, &logs, true, false);
    let rt = node.runtime.clone();
    let m = module.clone();
    let inst = tokio::task::spawn_blocking(move || Instance::restore(&rt, &snap, Some(m), opts))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let spec = StartApp {
        name: name.clone(),
        module_sha256: module.hash_hex(),
        generation,
        restart,
        ..Default::default()
    };
    let handle = AppHandle::spawn(
        node.runtime.clone(),
        module,
        spec,
        node.config.data_dir.clone(),
        Some((inst, logs)),
    );
    node.install(handle.clone());
    Ok(handle.status())
}

/// App ingress: `/apps/NAME/REST` goes to the app's handler here, or to the
/// node that runs it.
async fn ingress(node: Arc<Node>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let rest = path.strip_prefix("/apps/").unwrap_or("");
    let (name, sub) = match rest.split_once('/') {
        Some((n, s)) => (n.to_string(), format!("/{s}")),
        None => (rest.to_string(), "/".to_string()),
    };
    if name.is_empty() {
        return error(StatusCode::NOT_FOUND, "ingress paths are /apps/NAME/...");
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match read_body(req.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let app_req = tern_sdk::Request {
        method,
        path: sub,
        query,
        headers,
        body: body.to_vec(),
    };
    let slot = node
        .apps
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned();
    let resp = match slot {
        Some(Slot::Local(h)) => match h.request_here(app_req).await {
            Ok(r) => r,
            // The app was handed over (or deleted) between the lookup and
            // the call: the request did not run; follow the app.
            Err(app_req) => match moved_to(&node, &name) {
                Some(url) => forward_request(&node, &url, &name, app_req).await,
                None => tern_sdk::Response::text(404, format!("no app named {name}\n")),
            },
        },
        Some(Slot::Moved { url }) => forward_request(&node, &url, &name, app_req).await,
        None => match resolve(&node, &name).await {
            Some(url) if url != node.url => forward_request(&node, &url, &name, app_req).await,
            _ => tern_sdk::Response::text(404, format!("no app named {name}\n")),
        },
    };
    to_http(resp)
}

fn to_http(resp: tern_sdk::Response) -> Resp {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (k, v) in &resp.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            b = b.header(k, v);
        }
    }
    b.body(server::full(resp.body))
        .unwrap_or_else(|_| error(StatusCode::BAD_GATEWAY, "app answered an invalid response"))
}

/// Asks the control plane where an app runs.
async fn resolve(node: &Node, app: &str) -> Option<String> {
    if let Some(u) = node
        .routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(app)
        .cloned()
    {
        return Some(u);
    }
    let control = node.control()?;
    let view: tern_api::types::AppView = match node
        .client
        .get_json(&format!("{control}/v1/apps/{app}"))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            node.control_failed(&control, &e);
            return None;
        }
    };
    let owner: tern_api::types::NodeView = node
        .client
        .get_json(&format!("{control}/v1/nodes/{}", view.node?))
        .await
        .ok()?;
    let url = owner.url;
    node.routes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(app.to_string(), url.clone());
    Some(url)
}

/// Sends an app request to another node's ingress.
pub(crate) async fn forward_request(
    node: &Node,
    url: &str,
    app: &str,
    req: tern_sdk::Request,
) -> tern_sdk::Response {
    let mut target = format!("{url}/apps/{app}{}", req.path);
    if !req.query.is_empty() {
        target.push('?');
        target.push_str(&req.query);
    }
    let method = Method::from_bytes(req.method.as_bytes()).unwrap_or(Method::GET);
    let ct = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or("application/octet-stream");
    match node
        .client
        .send(method, &target, ct, Bytes::from(req.body))
        .await
    {
        Ok((status, body)) => tern_sdk::Response::bytes(status.as_u16(), body.to_vec()),
        Err(tern_api::client::ClientError::Status { status, message }) => {
            node.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(app);
            tern_sdk::Response::text(status, message)
        }
        Err(e) => {
            node.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(app);
            tern_sdk::Response::text(
                502,
                format!("app {app} is on a node that does not answer: {e}\n"),
            )
        }
    }
}
