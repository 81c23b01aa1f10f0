//! Routing and the handlers of the control API (the table is in `tern_api`).

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tern_api::server::{self, query_param, read_body, read_json, segments, Body};
use tern_api::types::{DeployRequest, Heartbeat, InvokeRequest, Mode, NodeInfo, TokenCreate};

use crate::error::ApiError;
use crate::state::{now_ms, valid_sha256, Shared};
use crate::store::write_atomic;
use crate::{auth, dashboard, heartbeat, ops};

type Reply = Result<Response<Body>, Fail>;

/// Why a request failed: an error to answer, or an answer already made
/// (by the body readers of `tern_api::server`).
enum Fail {
    Api(ApiError),
    Ready(Box<Response<Body>>),
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail::Api(e)
    }
}

impl From<Response<Body>> for Fail {
    fn from(r: Response<Body>) -> Fail {
        Fail::Ready(Box::new(r))
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Api(e.into())
    }
}

pub async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if method == Method::GET {
        if let Some(page) = dashboard::asset(&path) {
            return page;
        }
    }
    let segs = segments(&path);
    let who = match auth::caller(&sh, &req) {
        Ok(who) => who,
        // Anyone may fetch the CA (a joining node checks it against its
        // token's pin) and ask to join (the token is in the body).
        Err(_)
            if matches!(
                (&method, segs.as_slice()),
                (&Method::GET, ["v1", "ca"]) | (&Method::POST, ["v1", "join"])
            ) =>
        {
            auth::Caller::Anonymous
        }
        Err(refusal) => return *refusal,
    };
    if let Err(e) = auth::permit(&sh, &who, &method, &segs) {
        return e.into_response();
    }
    let result = match who {
        auth::Caller::Node(ref n) => node_route(&sh, n, req).await,
        auth::Caller::Anonymous => anonymous_route(&sh, req).await,
        auth::Caller::Operator | auth::Caller::Reader => route(&sh, req).await,
    };
    match result {
        Ok(r) => r,
        Err(Fail::Ready(r)) => *r,
        Err(Fail::Api(e)) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, %path, "{}", e.message);
            }
            e.into_response()
        }
    }
}

async fn route(sh: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = |name: &str| query_param(query.as_deref(), name).map(percent_decode);
    let segs = segments(&path);
    match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "dashboard"]) => ok(&dashboard::view(sh)),
        (&Method::GET, ["metrics"]) => Ok(tern_api::metrics::answer(&sh.metrics.registry)),
        (&Method::GET, ["v1", "health"]) => {
            ok(&serde_json::json!({"ok": true, "role": "control", "version": env!("CARGO_PKG_VERSION")}))
        }
        // Nodes.
        (&Method::POST, ["v1", "nodes"]) => {
            let info: NodeInfo = read_json(req.into_body()).await?;
            heartbeat::register(sh, info)?;
            ok(&registered(sh))
        }
        (&Method::GET, ["v1", "nodes"]) => {
            let now = now_ms();
            let st = sh.lock();
            let views: Vec<_> = sh.sorted_nodes(&st).into_iter().map(|n| sh.node_view(&st, n, now)).collect();
            ok(&views)
        }
        (&Method::GET, ["v1", "nodes", name]) => {
            let st = sh.lock();
            let n = st.nodes.get(*name).ok_or_else(|| ApiError::no_node(name))?;
            ok(&sh.node_view(&st, n, now_ms()))
        }
        (&Method::POST, ["v1", "nodes", name, "heartbeat"]) => {
            let name = name.to_string();
            let hb: Heartbeat = read_json(req.into_body()).await?;
            heartbeat::heartbeat(sh, &name, hb)?;
            ok(&registered(sh))
        }
        (&Method::POST, ["v1", "nodes", name, "drain"]) => {
            #[derive(Deserialize)]
            struct Drain {
                #[serde(default = "yes")]
                drain: bool,
            }
            fn yes() -> bool {
                true
            }
            let name = name.to_string();
            let body = read_body(req.into_body(), tern_api::MAX_JSON_BODY).await?;
            let d: Drain = if body.iter().all(u8::is_ascii_whitespace) {
                Drain { drain: true }
            } else {
                serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
            };
            let mut st = sh.lock();
            let n = st.nodes.get_mut(&name).ok_or_else(|| ApiError::no_node(&name))?;
            n.draining = d.drain;
            let n = n.clone();
            sh.store.put_node(&n, true)?;
            ok(&sh.node_view(&st, &n, now_ms()))
        }
        // Modules.
        (&Method::PUT, ["v1", "modules", sha]) => put_module(sh, sha, req.into_body()).await,
        (&Method::HEAD, ["v1", "modules", sha]) => {
            if sh.lock().modules.contains_key(*sha) {
                Ok(server::bytes(StatusCode::OK, "application/wasm", Bytes::new()))
            } else {
                Err(ApiError::not_found(format!("no module {sha}")).into())
            }
        }
        (&Method::GET, ["v1", "modules", sha]) => {
            let Some(size) = sh.lock().modules.get(*sha).copied() else {
                return Err(ApiError::not_found(format!("no module {sha}: upload it with PUT /v1/modules/{sha}")).into());
            };
            let bytes = sh.store.module_bytes(sha, size).map_err(|e| ApiError::internal(format!("{e:#}")))?;
            Ok(server::bytes(StatusCode::OK, "application/wasm", bytes))
        }
        // Apps.
        (&Method::POST, ["v1", "apps"]) => {
            let dry_run = matches!(q("dry_run").as_deref(), Some("1" | "true" | ""));
            let d: DeployRequest = read_json(req.into_body()).await?;
            let (app, decision) = ops::deploy(sh, d, dry_run).await?;
            let decision = decision.map(|d| serde_json::to_value(&d).unwrap_or(serde_json::Value::Null));
            let status = if dry_run { StatusCode::OK } else { StatusCode::CREATED };
            Ok(server::json(status, &serde_json::json!({"app": app, "decision": decision})))
        }
        (&Method::GET, ["v1", "apps"]) => {
            let now = now_ms();
            let st = sh.lock();
            let views: Vec<_> = st.apps.values().map(|a| sh.app_view(&st, a, now)).collect();
            ok(&views)
        }
        (&Method::GET, ["v1", "apps", name]) => {
            let st = sh.lock();
            let a = st.apps.get(*name).ok_or_else(|| ApiError::no_app(name))?;
            ok(&sh.app_view(&st, a, now_ms()))
        }
        (&Method::DELETE, ["v1", "apps", name]) => {
            ops::remove(sh, name).await?;
            Ok(server::bytes(StatusCode::NO_CONTENT, "application/json", Bytes::new()))
        }
        (&Method::POST, ["v1", "apps", name, "invoke"]) => {
            let name = name.to_string();
            let r: InvokeRequest = read_json(req.into_body()).await?;
            ok(&ops::invoke(sh, &name, r).await?)
        }
        (&Method::POST, ["v1", "apps", name, "call"]) => {
            let name = name.to_string();
            let call_method = match q("method") {
                Some(m) if !m.is_empty() => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| ApiError::bad_request(format!("`{m}` is not an HTTP method")))?,
                _ => Method::POST,
            };
            let call_path = q("path").unwrap_or_else(|| "/".into());
            let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = read_body(req.into_body(), sh.cfg.max_blob_bytes).await?;
            let r = ops::call(sh, &name, call_method, &call_path, content_type.as_deref(), body).await?;
            let mut resp = server::bytes(r.status, r.content_type.as_deref().unwrap_or("application/octet-stream"), r.body);
            resp.headers_mut().insert("x-tern-app-response", hyper::header::HeaderValue::from_static("1"));
            Ok(resp)
        }
        (&Method::POST, ["v1", "apps", name, "migrate"]) => {
            #[derive(Deserialize)]
            struct MigrateBody {
                to: String,
                mode: Option<Mode>,
                #[serde(default)]
                postcopy_after_rounds: Option<u32>,
            }
            let name = name.to_string();
            let m: MigrateBody = read_json(req.into_body()).await?;
            let mode = m.mode.unwrap_or(Mode::Hot);
            let after = m.postcopy_after_rounds;
            ok(&ops::migrate_with(sh, &name, &m.to, mode, after, "operator").await?)
        }
        (&Method::POST, ["v1", "apps", name, "snapshot"]) => {
            let bytes = ops::snapshot(sh, name).await?;
            // The tag that lets this cluster trust the file when it comes back.
            let mac = auth::snapshot_mac(sh, &bytes).await?;
            let mut resp = server::bytes(StatusCode::OK, "application/octet-stream", bytes);
            resp.headers_mut().insert(auth::SNAPSHOT_MAC_HEADER, hyper::header::HeaderValue::from_str(&mac).expect("hex"));
            Ok(resp)
        }
        (&Method::POST, ["v1", "apps", name, verb @ ("stop" | "start")]) => ok(&ops::stop_or_start(sh, name, *verb == "stop").await?),
        (&Method::GET, ["v1", "apps", name, "logs"]) => {
            let from = q("from").map(|v| v.parse::<u64>()).transpose().map_err(|_| ApiError::bad_request("from must be a number"))?;
            let wait = q("wait_ms").map(|v| v.parse::<u64>()).transpose().map_err(|_| ApiError::bad_request("wait_ms must be a number"))?;
            ok(&ops::logs(sh, name, from.unwrap_or(0), wait.unwrap_or(0)).await?)
        }
        (&Method::POST, ["v1", "restore"]) => {
            let name = q("name").ok_or_else(|| ApiError::bad_request("restore needs ?name=APP"))?;
            let node = q("node").filter(|n| !n.is_empty());
            let restart = q("restart").filter(|n| !n.is_empty());
            let module = q("module").filter(|n| !n.is_empty());
            let foreign = matches!(q("foreign").as_deref(), Some("1" | "true"));
            let mac = req.headers().get(auth::SNAPSHOT_MAC_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = read_body(req.into_body(), sh.cfg.max_blob_bytes).await?;
            // An empty body is refused as such (below), before its tag is.
            if !foreign && !body.is_empty() {
                auth::check_snapshot_mac(sh, &body, mac.as_deref()).await?;
            }
            let view = ops::restore(sh, &name, node.as_deref(), restart.as_deref(), module.as_deref(), foreign, body).await?;
            Ok(server::json(StatusCode::CREATED, &view))
        }
        // Checkpoints.
        (&Method::PUT, ["v1", "checkpoints", name]) => {
            let name = name.to_string();
            let generation = q("generation")
                .ok_or_else(|| ApiError::bad_request("a checkpoint needs ?generation=G"))?
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("generation must be a number"))?;
            let body = read_body(req.into_body(), sh.cfg.max_blob_bytes).await?;
            if body.is_empty() {
                return Err(ApiError::bad_request("the checkpoint is empty").into());
            }
            let current = sh.lock().apps.get(&name).map(|a| a.generation).ok_or_else(|| ApiError::no_app(&name))?;
            if generation > current {
                return Err(ApiError::conflict(format!(
                    "checkpoint of {name} at generation {generation}, but the app is at generation {current}"
                )).into());
            }
            if !sh.save_checkpoint(&name, generation, &body, crate::ops::CheckpointFrom::Node).await? {
                let kept = sh.lock().checkpoints.get(&name).map_or(0, |c| c.generation);
                return Err(ApiError::conflict(format!(
                    "a newer checkpoint of {name} is kept (generation {kept} > {generation})"
                )).into());
            }
            Ok(server::json(StatusCode::CREATED, &serde_json::json!({"app": name, "generation": generation, "bytes": body.len()})))
        }
        (&Method::GET, ["v1", "checkpoints", name]) if q("digest").is_some() => {
            let digest = q("digest").unwrap_or_default();
            let num = |k: &str| {
                q(k).and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| ApiError::bad_request(format!("a range of a checkpoint needs ?{k}=N")))
            };
            let bytes = ops::pinned::read_range(sh, name, &digest, num("offset")?, num("len")?).await?;
            Ok(server::bytes(StatusCode::OK, "application/octet-stream", bytes))
        }
        (&Method::GET, ["v1", "checkpoints", name]) => {
            let (c, mut file) = ops::pinned::open_latest(sh, name).await?;
            let mut bytes = Vec::with_capacity(c.bytes.min(sh.cfg.max_blob_bytes as u64) as usize);
            tokio::io::AsyncReadExt::read_to_end(&mut file, &mut bytes)
                .await
                .map_err(|e| ApiError::internal(format!("cannot read the checkpoint of {name}: {e}")))?;
            let mut resp = server::bytes(StatusCode::OK, "application/octet-stream", bytes);
            resp.headers_mut().insert("x-tern-generation", c.generation.into());
            Ok(resp)
        }
        (&Method::GET, ["v1", "migrations"]) => {
            let st = sh.lock();
            let v: Vec<_> = st.migrations.iter().map(|(_, r)| r).collect();
            ok(&v)
        }
        (&Method::GET, ["v1", "routes", name]) => ok(&route_of(sh, name)?),
        (&Method::GET, ["v1", "ca"]) => ca_answer(sh),
        (&Method::POST, ["v1", "join"]) => join(sh, req).await,
        (&Method::POST, ["v1", "tokens"]) => {
            let t: TokenCreate = read_json(req.into_body()).await?;
            Ok(server::json(StatusCode::CREATED, &auth::create_token(sh, t)?))
        }
        (&Method::GET, ["v1", "tokens"]) => ok(&sh.creds().list(now_ms())),
        (&Method::DELETE, ["v1", "tokens", ..]) => {
            let id = segs[2..].join("/");
            let revoked = sh.update_creds(|c| c.revoke(&id).map(|r| (r, true)))?;
            tracing::info!(?revoked, "credentials revoked");
            ok(&serde_json::json!({"revoked": revoked}))
        }
        (_, ["v1", ..]) => Err(ApiError::not_found(format!(
            "no endpoint {method} {path} on the control plane (is the client the same tern version?)"
        )).into()),
        _ => Err(ApiError::not_found(format!("no endpoint {method} {path}: the API is under /v1/")).into()),
    }
}

/// What a node's certificate may ask of the control plane (`auth.rs`
/// says which routes; here the checks that need the body or the state).
async fn node_route(sh: &Arc<Shared>, me: &str, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let segs = segments(&path);
    match (&method, segs.as_slice()) {
        (&Method::POST, ["v1", "nodes"]) => {
            let info: NodeInfo = read_json(req.into_body()).await?;
            if info.name != me {
                return Err(ApiError::forbidden(format!(
                    "node {me} cannot register as node {}",
                    info.name
                ))
                .into());
            }
            heartbeat::register(sh, info)?;
            ok(&registered(sh))
        }
        (&Method::PUT, ["v1", "checkpoints", name]) => {
            if sh.lock().apps.get(*name).and_then(|a| a.node.as_deref()) != Some(me) {
                return Err(ApiError::forbidden(format!(
                    "node {me} does not run {name}: it cannot send its checkpoint"
                ))
                .into());
            }
            route(sh, req).await
        }
        (&Method::GET, ["v1", "checkpoints", name]) => {
            let allowed = {
                let st = sh.lock();
                st.apps.get(*name).and_then(|a| a.node.as_deref()) == Some(me)
                    || st.in_flight.get(*name).is_some_and(|m| m.to == me)
                    // The node restarting the app, for the pinned copy
                    // it was named (and nothing newer) while it runs elsewhere.
                    || (st.restoring.get(*name).is_some_and(|n| n == me)
                        && query_param(query.as_deref(), "digest").is_some())
            };
            if !allowed {
                return Err(ApiError::forbidden(format!(
                    "node {me} neither runs {name} nor receives it"
                ))
                .into());
            }
            route(sh, req).await
        }
        (&Method::POST, ["v1", "checkpoints", name, "pin"]) => {
            let allowed = {
                let st = sh.lock();
                st.apps.get(*name).and_then(|a| a.node.as_deref()) == Some(me)
                    || st.in_flight.get(*name).is_some_and(|m| m.to == me)
            };
            if !allowed {
                return Err(ApiError::forbidden(format!(
                    "node {me} neither runs {name} nor receives it"
                ))
                .into());
            }
            let digest = query_param(query.as_deref(), "digest").unwrap_or_default();
            let bytes = ops::pinned::pin_for(sh, name, digest, me).await?;
            ok(&serde_json::json!({"app": name, "digest": digest, "bytes": bytes}))
        }
        (&Method::GET | &Method::HEAD, ["v1", "modules", sha]) => {
            let allowed = {
                let st = sh.lock();
                st.apps.values().any(|a| {
                    a.module_sha256 == *sha
                        && (a.node.as_deref() == Some(me)
                            || st.in_flight.get(&a.name).is_some_and(|m| m.to == me))
                })
            };
            if !allowed {
                return Err(
                    ApiError::forbidden(format!("node {me} runs no app of module {sha}")).into(),
                );
            }
            route(sh, req).await
        }
        _ => {
            let _ = query;
            route(sh, req).await
        }
    }
}

/// The routes anyone may call: the CA, and joining (with a join token).
async fn anonymous_route(sh: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    route(sh, req).await
}

/// `GET /v1/ca`: the cluster's CA certificate (public).
fn ca_answer(sh: &Shared) -> Reply {
    match &sh.cfg.tls {
        Some(t) => Ok(server::bytes(
            StatusCode::OK,
            "application/x-pem-file",
            t.tls.ca_pem.clone(),
        )),
        None => Err(ApiError::not_found(
            "this control plane serves plain HTTP (--insecure-plain-http): it has no CA",
        )
        .into()),
    }
}

/// `POST /v1/join`: a node with a join token gets a certificate naming it.
async fn join(sh: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let j: tern_api::types::JoinRequest = read_json(req.into_body()).await?;
    let cert_pem = auth::join(sh, &j)?;
    let ca_pem = sh
        .cfg
        .tls
        .as_ref()
        .map(|t| t.tls.ca_pem.clone())
        .unwrap_or_default();
    Ok(server::json(
        StatusCode::OK,
        &tern_api::types::JoinResponse { cert_pem, ca_pem },
    ))
}

/// `GET /v1/routes/NAME`: where an app runs (what a node's ingress needs
/// to forward a request, and nothing more).
fn route_of(sh: &Shared, name: &str) -> Result<serde_json::Value, ApiError> {
    let st = sh.lock();
    let a = st.apps.get(name).ok_or_else(|| ApiError::no_app(name))?;
    let node = a
        .node
        .clone()
        .ok_or_else(|| ApiError::conflict(format!("app {name} has no node right now")))?;
    let url = st
        .nodes
        .get(&node)
        .map(|n| n.info.url.clone())
        .ok_or_else(|| ApiError::no_node(&node))?;
    Ok(serde_json::json!({"app": name, "node": node, "url": url}))
}

fn ok<T: serde::Serialize>(v: &T) -> Reply {
    Ok(server::json(StatusCode::OK, v))
}

/// The answer to a registration or a heartbeat.
fn registered(sh: &Shared) -> serde_json::Value {
    let revoked = sh.creds().revoked_serials();
    serde_json::json!({"ok": true, "heartbeat_timeout_ms": sh.cfg.heartbeat_timeout.as_millis() as u64, "revoked": revoked})
}

async fn put_module(sh: &Shared, sha: &str, body: Incoming) -> Reply {
    if !valid_sha256(sha) {
        return Err(ApiError::bad_request(format!(
            "`{sha}` is not a sha256: use the module's sha256 as 64 lowercase hex digits"
        ))
        .into());
    }
    let bytes = read_body(body, sh.cfg.max_blob_bytes).await?;
    if !bytes.starts_with(b"\0asm") {
        return Err(ApiError::bad_request(
            "the body is not a WebAssembly module (no \\0asm magic): upload the .wasm file",
        )
        .into());
    }
    let (bytes, actual) = tokio::task::spawn_blocking(move || {
        let h = hex::encode(Sha256::digest(&bytes));
        (bytes, h)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    if actual != sha {
        return Err(ApiError::bad_request(format!("the uploaded bytes hash to {actual}, not {sha}: upload the module under its own sha256")).into());
    }
    if sh.lock().modules.contains_key(sha) {
        return Ok(server::json(
            StatusCode::OK,
            &serde_json::json!({"sha256": sha, "bytes": bytes.len()}),
        ));
    }
    let path = sh.store.module_path(sha);
    let len = bytes.len() as u64;
    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot store module {sha}: {e}")))?;
    sh.store.put_module(sha, len)?;
    sh.lock().modules.insert(sha.to_string(), len);
    Ok(server::json(
        StatusCode::CREATED,
        &serde_json::json!({"sha256": sha, "bytes": len}),
    ))
}

/// Decodes `%XX` escapes (and leaves everything else as it is).
pub fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("/a%20b%2Fc"), "/a b/c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("x%41"), "xA");
    }
}
