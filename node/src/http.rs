//! The node API's HTTP edge: each route parses its request, calls one
//! operation (`ops.rs`, `migrate/`) and maps the [`NodeError`] to a status.
//! App ingress (`/apps/...`) is `ingress.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tern_api::server::{
    self, error, json, query_param, read_body, read_json, segments, unauthorized, Body,
};
use tern_api::types::{
    AppState, InvokeRequest, MigrateRequest, MigrationExpect, MigrationOpen, StartApp,
};

use crate::auth::Caller;
use crate::error::{NodeError, Result};
use crate::node::Node;
use crate::{ingress, migrate, ops};

type Resp = Response<Body>;

/// The answer for a failed operation.
fn failure(e: NodeError) -> Resp {
    let busy = e.kind == crate::ErrorKind::Busy;
    let mut resp = error(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        e.message,
    );
    if busy {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(crate::app::RETRY_AFTER_SECS),
        );
    }
    resp
}

fn ok<T: Serialize>(status: StatusCode, value: Result<T>) -> Resp {
    match value {
        Ok(v) => json(status, &v),
        Err(e) => failure(e),
    }
}

fn blob(value: Result<Bytes>) -> Resp {
    match value {
        Ok(b) => server::bytes(StatusCode::OK, "application/octet-stream", b),
        Err(e) => failure(e),
    }
}

/// Handles one request.
pub(crate) async fn route(node: Arc<Node>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if path == "/apps" || path.starts_with("/apps/") {
        return ingress::ingress(node, req).await;
    }
    let caller = node
        .auth
        .caller(server::peer(&req), server::bearer(&req), &node.config.token);
    let peer = match caller {
        Caller::Operator => None,
        Caller::Node(n) => Some(n),
        Caller::Nobody(why) if server::peer(&req).is_some() => {
            return error(StatusCode::FORBIDDEN, format!("refused: {why}"));
        }
        Caller::Nobody(_) => return unauthorized(),
    };
    match api(node, req, peer).await {
        Ok(r) | Err(r) => r,
    }
}

/// What another node (`peer`) may call here: only its part of a
/// migration announced to this node (see `auth.rs`). `Err`: the refusal.
#[allow(clippy::result_large_err)] // the refusal is the answer itself
fn node_may(
    node: &Node,
    peer: &str,
    method: &Method,
    seg: &[&str],
) -> std::result::Result<(), Resp> {
    let allowed = match (method, seg) {
        // Opening is checked against the announcement with its body.
        (&Method::POST, ["v1", "migrations"]) => true,
        (_, ["v1", "migrations", id, ..]) => node.auth.owns_session(peer, id),
        (&Method::HEAD | &Method::PUT, ["v1", "modules", _]) => node.auth.is_expected_source(peer),
        // After a handover: did the target take over, and the calls held
        // during the pause, replayed.
        (&Method::GET, ["v1", "apps", app])
        | (&Method::POST, ["v1", "apps", app, "invoke" | "snapshot"]) => {
            node.auth.is_source_of(peer, app)
        }
        // A hybrid move's target fetches the checkpoint from its source.
        (&Method::GET, ["v1", "checkpoints", app]) => node.auth.is_target_of(peer, app),
        // Post-copy: the target fetches pages of the frozen copy here; the
        // source pushes pages to the target.
        (&Method::POST, ["v1", "postcopy", app, "fetch"])
        | (&Method::GET, ["v1", "postcopy", app, "watch"]) => node.postcopy.is_target(peer, app),
        (&Method::POST, ["v1", "postcopy", app, "pages" | "done"]) => {
            node.auth.is_source_of(peer, app)
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "node {peer} may not call {method} /{} on node {}: a node's certificate is good for the migrations the control plane asked for, nothing else",
                seg.join("/"),
                node.name()
            ),
        ))
    }
}

/// The node API. `Err` is an answer made before an operation ran (a body
/// that could not be read).
async fn api(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: Option<String>,
) -> std::result::Result<Resp, Resp> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = |name: &str| query_param(query.as_deref(), name).map(str::to_string);
    let seg = segments(&path);
    let empty = serde_json::json!({});
    if let Some(p) = &peer {
        node_may(&node, p, &method, &seg)?;
    }
    Ok(match (method.clone(), seg.as_slice()) {
        (Method::GET, ["v1", "health"]) => json(StatusCode::OK, &node.info()),
        (Method::GET, ["metrics"]) => tern_api::metrics::answer(&node.metrics.registry),
        (Method::GET, ["v1", "status"]) => json(StatusCode::OK, &node.heartbeat()),
        (Method::HEAD, ["v1", "modules", sha]) => {
            match tern_api::names::parse_sha256(sha).filter(|h| node.has_module(h)) {
                Some(_) => json(StatusCode::OK, &empty),
                None => error(StatusCode::NOT_FOUND, "no such module"),
            }
        }
        (Method::PUT, ["v1", "modules", sha]) => {
            let want = tern_api::names::parse_sha256(sha)
                .ok_or_else(|| error(StatusCode::BAD_REQUEST, "bad sha256 in path"))?;
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            let stored = node.put_module(want, body).await;
            ok(
                StatusCode::CREATED,
                stored.map(|()| serde_json::json!({ "sha256": sha })),
            )
        }
        (Method::POST, ["v1", "apps"]) => {
            let spec: StartApp = read_json(req.into_body()).await?;
            ok(StatusCode::CREATED, ops::start_app(&node, spec).await)
        }
        (Method::GET, ["v1", "apps"]) => json(StatusCode::OK, &node.heartbeat().apps),
        (Method::GET, ["v1", "apps", name]) => {
            // While a move of the app is under way here it says so, from
            // the move's start (a control plane that lost the move's answer
            // waits for its end: `control::ops::migrate`).
            let status = node.local_or_404(name).map(|h| {
                let mut st = h.status();
                if node.auth.is_moving_out(name) && st.state == AppState::Running {
                    st.state = AppState::Migrating;
                }
                st
            });
            ok(StatusCode::OK, status)
        }
        (Method::POST, ["v1", "apps", name, "invoke"]) => {
            let inv: InvokeRequest = read_json(req.into_body()).await?;
            ok(StatusCode::OK, ops::invoke(&node, name, inv).await)
        }
        (Method::POST, ["v1", "apps", name, verb @ ("stop" | "start")]) => ok(
            StatusCode::OK,
            ops::stop_or_start(&node, name, *verb == "stop").await,
        ),
        (Method::DELETE, ["v1", "apps", name]) => {
            let at_most = q("generation").and_then(|g| g.parse::<u64>().ok());
            let removed = ops::remove_app(&node, name, at_most);
            ok(
                StatusCode::OK,
                removed.map(|()| serde_json::json!({ "deleted": name })),
            )
        }
        (Method::GET, ["v1", "apps", name, "logs"]) => {
            let from = q("from").and_then(|v| v.parse().ok()).unwrap_or(0);
            let wait = q("wait_ms").and_then(|v| v.parse().ok()).unwrap_or(0u64);
            let logs = ops::logs(&node, name, from, Duration::from_millis(wait)).await;
            ok(StatusCode::OK, logs)
        }
        (Method::POST, ["v1", "apps", name, "snapshot"]) => blob(ops::snapshot(&node, name).await),
        (Method::POST, ["v1", "apps", name, "checkpoint"]) => {
            ok(StatusCode::OK, ops::checkpoint_now(&node, name).await)
        }
        (Method::POST, ["v1", "apps", name, "migrate"]) => {
            let m: MigrateRequest = read_json(req.into_body()).await?;
            node.auth.moving_out(name, &m.to_name);
            let mode = m.mode.to_string();
            // On a task of its own: a caller that goes away (a control
            // plane that dies mid-move) must not cancel the move between
            // the app's pause and its handover or resume, which would
            // leave it paused here for good.
            let task = tokio::spawn({
                let (node, name) = (node.clone(), name.to_string());
                async move {
                    let report = migrate::migrate_out(node.clone(), name.clone(), m).await;
                    node.auth.moved_out(&name);
                    report
                }
            });
            let report = task.await.unwrap_or_else(|e| {
                Err(crate::error::NodeError::internal(format!(
                    "the move of {name} ended abnormally: {e}"
                )))
            });
            node.metrics.moved(&mode, report.as_ref().map_err(|_| ()));
            ok(StatusCode::OK, report)
        }
        (Method::GET, ["v1", "checkpoints", name]) => match q("digest") {
            Some(d) => blob(ops::checkpoint_by_digest(&node, name, &d)),
            None => blob(ops::latest_checkpoint(&node, name)),
        },
        (Method::POST, ["v1", "restore"]) => {
            let name =
                q("name").ok_or_else(|| error(StatusCode::BAD_REQUEST, "restore needs ?name="))?;
            let generation = q("generation").and_then(|g| g.parse().ok()).unwrap_or(1);
            let restart = q("restart").unwrap_or_else(|| "never".to_string());
            let foreign = matches!(q("foreign").as_deref(), Some("1" | "true"));
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            let restored = ops::restore_app(&node, name, generation, restart, foreign, body).await;
            ok(StatusCode::CREATED, restored)
        }
        (Method::POST, ["v1", "restore", "lazy"]) => {
            let name =
                q("name").ok_or_else(|| error(StatusCode::BAD_REQUEST, "restore needs ?name="))?;
            let generation = q("generation").and_then(|g| g.parse().ok()).unwrap_or(1);
            let restart = q("restart").unwrap_or_else(|| "never".to_string());
            let foreign = matches!(q("foreign").as_deref(), Some("1" | "true"));
            let from: tern_api::types::LazyRestore = read_json(req.into_body()).await?;
            // On a task of its own: a caller that goes away must not cancel
            // a restore half done (its pages keep coming in either way).
            let node = node.clone();
            let task = tokio::spawn(async move {
                crate::lazy::restore_lazy(&node, name, generation, restart, foreign, from).await
            });
            let done = task.await.unwrap_or_else(|e| {
                Err(crate::error::NodeError::internal(format!(
                    "the restore ended abnormally: {e}"
                )))
            });
            ok(StatusCode::CREATED, done)
        }
        (Method::POST, ["v1", "migrations", "expect"]) => {
            let e: MigrationExpect = read_json(req.into_body()).await?;
            if let Err(bad) = tern_api::names::check_app_name(&e.app)
                .and_then(|()| tern_api::names::check_node_name(&e.from))
            {
                return Err(error(StatusCode::BAD_REQUEST, bad.to_string()));
            }
            node.auth.expect(e);
            json(StatusCode::OK, &empty)
        }
        (Method::POST, ["v1", "migrations"]) => {
            let open: MigrationOpen = read_json(req.into_body()).await?;
            if let Some(p) = &peer {
                if open.from != *p {
                    return Err(error(
                        StatusCode::FORBIDDEN,
                        format!(
                            "node {p} cannot open a migration in the name of node {}",
                            open.from
                        ),
                    ));
                }
                if let Err(why) = node.auth.may_open(p, &open.app, open.spec.generation) {
                    return Err(error(
                        StatusCode::FORBIDDEN,
                        format!("migration refused: {why}"),
                    ));
                }
            }
            let (app, from) = (open.app.clone(), open.from.clone());
            let opened = migrate::open_session(node.clone(), open).await;
            if let Ok(o) = &opened {
                node.auth.opened(&o.id, &app, &from);
            }
            ok(StatusCode::CREATED, opened)
        }
        (Method::POST, ["v1", "migrations", id, "postcopy"]) => {
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            let from = q("from_url").unwrap_or_default();
            let ack = migrate::postcopy::receive_switch(node.clone(), id.to_string(), from, body);
            ok(StatusCode::OK, ack.await)
        }
        (Method::POST, ["v1", "postcopy", app, "fetch"]) => {
            let memory = q("memory").and_then(|m| m.parse().ok()).unwrap_or(0);
            let limit = tern_runtime::snapshot::MAX_REQUEST_BYTES;
            let body = read_body(req.into_body(), limit).await?;
            blob(migrate::postcopy::serve_fetch(node.clone(), app.to_string(), memory, body).await)
        }
        (Method::GET, ["v1", "postcopy", app, "watch"]) => {
            let wait = q("wait_ms").and_then(|m| m.parse().ok()).unwrap_or(0);
            let under_way = migrate::postcopy::serve_watch(&node, app, wait).await;
            json(
                StatusCode::OK,
                &serde_json::json!({ "under_way": under_way }),
            )
        }
        (Method::POST, ["v1", "postcopy", app, "pages"])
            if q("format").as_deref() == Some("slice") =>
        {
            let generation = q("generation").and_then(|g| g.parse().ok());
            let (node, app) = (node.clone(), app.to_string());
            let pushed =
                migrate::postcopy::receive_push_slice(node, app, generation, req.into_body());
            ok(StatusCode::OK, pushed.await)
        }
        (Method::POST, ["v1", "postcopy", app, "pages"]) => {
            let body =
                read_body(req.into_body(), migrate::postcopy::MAX_PUSH_BYTES as usize).await?;
            let generation = q("generation").and_then(|g| g.parse().ok());
            ok(
                StatusCode::OK,
                migrate::postcopy::receive_push(node.clone(), app.to_string(), generation, body)
                    .await,
            )
        }
        (Method::POST, ["v1", "postcopy", app, "done"]) => {
            let generation = q("generation").and_then(|g| g.parse().ok());
            json(
                StatusCode::OK,
                &migrate::postcopy::receive_done(&node, app, generation),
            )
        }
        (Method::POST, ["v1", "migrations", id, "pages"]) => {
            // Page slices are written into the arriving copy's memory as
            // their bytes come, with no buffer in between.
            let (node, id) = (node.clone(), id.to_string());
            ok(
                StatusCode::OK,
                migrate::receive_pages(node, id, req.into_body())
                    .await
                    .map(|()| empty),
            )
        }
        (Method::POST, ["v1", "migrations", id, step @ ("base" | "commit" | "cold")]) => {
            let body = read_body(req.into_body(), tern_api::MAX_BLOB_BODY).await?;
            let (node, id) = (node.clone(), id.to_string());
            match *step {
                "base" => ok(
                    StatusCode::OK,
                    migrate::receive_base(node, id, body).await.map(|()| empty),
                ),
                // On a task of its own, like the source's side: a source
                // that goes away must not cancel a restore half done.
                step => {
                    let cold = step == "cold";
                    let task = tokio::spawn(migrate::receive_final(node, id, body, cold));
                    let done = task.await.unwrap_or_else(|e| {
                        Err(crate::error::NodeError::internal(format!(
                            "the handover ended abnormally: {e}"
                        )))
                    });
                    ok(StatusCode::OK, done)
                }
            }
        }
        (Method::DELETE, ["v1", "migrations", id]) => {
            migrate::delete_session(&node, id);
            node.auth.session_ended(id);
            json(StatusCode::OK, &empty)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        ),
    })
}
