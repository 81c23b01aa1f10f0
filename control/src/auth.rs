//! Who calls the control plane, and what each credential may do.
//!
//! | caller | how it proves it | may |
//! |---|---|---|
//! | operator | the cluster token, or an `operator` token | everything |
//! | dashboard | a `dashboard` token | read the cluster's state (`GET` of the dashboard, nodes, apps, migrations, health, `/metrics`) |
//! | node | its certificate (mutual TLS), not revoked | register itself, report, send its own apps' checkpoints, fetch the modules and checkpoints of apps it runs or receives, ask where an app runs |
//! | anyone | — | the dashboard's page, `GET /v1/ca`, `POST /v1/join` with a join token |

use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use sha2::Sha256;
use tern_api::server::{self, Body};
use tern_api::tls::Role;
use tern_api::types::{JoinRequest, Scope, TokenCreate, TokenCreated};

use crate::credentials::TokenCheck;
use crate::error::ApiError;
use crate::state::{now_ms, Shared};

/// The header carrying a snapshot's tag (hex HMAC-SHA256 keyed by the cluster).
pub const SNAPSHOT_MAC_HEADER: &str = "x-tern-snapshot-mac";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    /// A `dashboard` token: reads only.
    Reader,
    Node(String),
    /// No credential (only where none is needed).
    Anonymous,
}

/// Who a request comes from; `Err`: the refusal to answer.
pub fn caller(sh: &Shared, req: &Request<Incoming>) -> Result<Caller, Box<Response<Body>>> {
    if let Some(peer) = server::peer(req) {
        if sh.creds().is_revoked(&peer.serial) {
            return Err(ApiError::forbidden(format!(
                "the certificate {} was revoked: join the node again with a new join token",
                peer.serial
            ))
            .into_response()
            .into());
        }
        if let Some(Role::Node(name)) = &peer.role {
            let (serial, name) = (peer.serial.clone(), name.clone());
            let _ = sh.update_creds(|c| Ok(((), c.see_cert(&serial, &name, "seen", now_ms()))));
            return Ok(Caller::Node(name));
        }
    }
    let Some(token) = server::bearer(req) else {
        return Err(server::unauthorized().into());
    };
    if !sh.creds().cluster_token_revoked
        && server::constant_time_eq(token.as_bytes(), sh.cfg.token.as_bytes())
    {
        return Ok(Caller::Operator);
    }
    match sh.creds().check(token, now_ms()) {
        TokenCheck::Valid(Scope::Operator, _) => Ok(Caller::Operator),
        TokenCheck::Valid(Scope::Dashboard, _) => Ok(Caller::Reader),
        TokenCheck::Valid(Scope::Join, _) => Err(ApiError::forbidden(
            "a join token only lets a node join (`tern node --join TOKEN`): use an operator token for client commands",
        )
        .into_response()
        .into()),
        TokenCheck::Refused(why) => Err(ApiError::unauthorized(format!(
            "{why}: ask the operator for a new one (`tern token create`)"
        ))
        .into_response()
        .into()),
        TokenCheck::Unknown => Err(server::unauthorized().into()),
    }
}

/// Whether `who` may call `method` on the path `segs` at all (finer
/// checks that need the body or the state are in the routes).
pub fn permit(_sh: &Shared, who: &Caller, method: &Method, segs: &[&str]) -> Result<(), ApiError> {
    let ok = match who {
        Caller::Operator => true,
        Caller::Reader => {
            *method == Method::GET
                && matches!(
                    segs,
                    [
                        "v1",
                        "dashboard" | "health" | "nodes" | "apps" | "migrations" | "ca"
                    ] | ["v1", "nodes" | "apps", _]
                        | ["metrics"]
                )
        }
        Caller::Node(_) => {
            matches!(
                (method, segs),
                (&Method::GET, ["v1", "health" | "ca"])
                    | (&Method::POST, ["v1", "nodes"])
                    | (&Method::GET, ["v1", "routes", _])
                    | (&Method::PUT | &Method::GET, ["v1", "checkpoints", _])
                    | (&Method::POST, ["v1", "checkpoints", _, "pin"])
                    | (&Method::GET | &Method::HEAD, ["v1", "modules", _])
            ) || matches!((method, segs), (&Method::POST, ["v1", "nodes", n, "heartbeat"]) if Caller::Node(n.to_string()) == *who)
        }
        Caller::Anonymous => matches!(
            (method, segs),
            (&Method::GET, ["v1", "ca"]) | (&Method::POST, ["v1", "join"])
        ),
    };
    if ok {
        return Ok(());
    }
    let what = format!("{method} /{}", segs.join("/"));
    Err(match who {
        Caller::Reader => ApiError::forbidden(format!(
            "a dashboard token only reads: {what} needs an operator token"
        )),
        Caller::Node(n) => ApiError::forbidden(format!(
            "node {n}'s certificate may not call {what}: a node may only register, report and fetch what its own apps need"
        )),
        _ => ApiError::unauthorized("missing or wrong cluster token: pass --token, set TERN_TOKEN, or use the token file that `tern up` wrote"),
    })
}

/// `POST /v1/tokens`.
pub fn create_token(sh: &Shared, t: TokenCreate) -> Result<TokenCreated, ApiError> {
    let pin = match (t.scope, &sh.cfg.tls) {
        (Scope::Join, Some(tls)) if tls.ca.is_some() => tern_api::tls::fingerprint(&tls.tls.ca_der()?),
        (Scope::Join, _) => {
            return Err(ApiError::conflict(
                "this control plane cannot sign node certificates (it serves plain HTTP, or was given a certificate without the CA key): nodes cannot join through it",
            ))
        }
        _ => String::new(),
    };
    let now = now_ms();
    let (id, token, expires) = sh.update_creds(|c| {
        let (id, token) = c.create(t.scope, t.ttl_secs, t.note.clone(), now);
        let expires = c.tokens[&id].expires_unix_ms;
        Ok(((id, token, expires), true))
    })?;
    // A join token pins the CA, so that the joining node can check the
    // control plane before it trusts it (as kubeadm and k3s do).
    let token = if t.scope == Scope::Join {
        format!("K10{pin}::{token}")
    } else {
        token
    };
    Ok(TokenCreated {
        id,
        scope: t.scope,
        token,
        expires_unix_ms: expires,
    })
}

/// `POST /v1/join`: checks the token (join scope, unexpired, unused: it is
/// used from now on) and signs the node's request. Returns the certificate.
pub fn join(sh: &Shared, j: &JoinRequest) -> Result<String, ApiError> {
    tern_api::names::check_node_name(&j.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tls = sh.cfg.tls.as_ref().ok_or_else(|| {
        ApiError::conflict("this control plane serves plain HTTP: nodes cannot join through it")
    })?;
    let ca = tls.ca.clone().ok_or_else(|| {
        ApiError::conflict("this control plane was given a certificate without the CA key (--tls-cert): it cannot sign node certificates; start it with --ca-cert/--ca-key")
    })?;
    let (pin, cred) = tern_node_token(&j.token)?;
    if pin != ca.fingerprint() {
        return Err(ApiError::forbidden(
            "the join token pins another CA: it was made by another cluster",
        ));
    }
    let now = now_ms();
    // Used (durably) before the certificate exists: a token lets one node in, once.
    sh.update_creds(|c| match c.check(&cred, now) {
        TokenCheck::Valid(Scope::Join, id) => {
            if let Some(t) = c.tokens.get_mut(&id) {
                t.used = true;
            }
            Ok(((), true))
        }
        TokenCheck::Valid(..) => {
            Err("this is not a join token: make one with `tern token create --scope join`".into())
        }
        TokenCheck::Refused(why) => Err(why),
        TokenCheck::Unknown => Err("unknown join token".into()),
    })
    .map_err(|e| ApiError::forbidden(e.message))?;
    let host = tern_api::tls::url_host(&j.url)
        .ok_or_else(|| ApiError::bad_request(format!("`{}` names no host", j.url)))?;
    let cert = ca
        .sign_request(&j.csr_pem, &Role::Node(j.name.clone()), &[host])
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let info = tern_api::tls::cert_info(&tern_api::tls::first_cert_der(&cert)?)?;
    sh.update_creds(|c| Ok(((), c.see_cert(&info.serial, &j.name, "join", now))))?;
    tracing::info!(node = %j.name, serial = %info.serial, "node joined");
    Ok(cert)
}

/// A join token's (pinned CA fingerprint, credential).
fn tern_node_token(token: &str) -> Result<(String, String), ApiError> {
    let bad = || {
        ApiError::forbidden(
            "this is not a join token: make one with `tern token create --scope join`",
        )
    };
    let rest = token.trim().strip_prefix("K10").ok_or_else(bad)?;
    let (pin, cred) = rest.split_once("::").ok_or_else(bad)?;
    Ok((pin.to_ascii_lowercase(), cred.to_string()))
}

/// The tag of a snapshot that leaves the cluster: HMAC-SHA256 of its bytes
/// under the cluster's snapshot key, hex. The bytes are not parsed.
pub async fn snapshot_mac(sh: &Shared, bytes: &Bytes) -> Result<String, ApiError> {
    let key = sh.creds().snapshot_key();
    let mac = mac_off_thread(key, bytes.clone()).await?;
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// The HMAC of a snapshot's bytes, taken on a blocking thread: hundreds of
/// MiB take a good part of a second, which must not hold up the requests
/// (heartbeats among them) that share the control plane's runtime threads.
async fn mac_off_thread(key: Vec<u8>, bytes: Bytes) -> Result<Hmac<Sha256>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&bytes);
        mac
    })
    .await
    .map_err(|e| ApiError::internal(format!("the snapshot's tag: {e}")))
}

/// Checks a snapshot's tag before the snapshot is used.
pub async fn check_snapshot_mac(
    sh: &Shared,
    bytes: &Bytes,
    tag: Option<&str>,
) -> Result<(), ApiError> {
    let Some(tag) = tag else {
        return Err(ApiError::forbidden(
            "this snapshot carries no tag of this cluster: it was not taken here (or was stripped); restore it with --accept-foreign if you trust it",
        ));
    };
    let tag = hex::decode(tag.trim())
        .map_err(|_| ApiError::bad_request("the snapshot tag is not hex"))?;
    let key = sh.creds().snapshot_key();
    let mac = mac_off_thread(key, bytes.clone()).await?;
    mac.verify_slice(&tag).map_err(|_| {
        ApiError::forbidden(
            "the snapshot's tag does not match its bytes under this cluster's key: it was changed after it was taken, or comes from another cluster; restore it with --accept-foreign only if you trust it",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The tag of a large snapshot is taken while the runtime's thread goes
    /// on serving: on a single-threaded runtime, a ticker keeps ticking
    /// through it (taken on the runtime's thread, it would not tick once).
    #[test]
    fn a_large_snapshot_is_tagged_off_the_runtime_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let t = ticks.clone();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let ticker = tokio::spawn(async move {
                let mut started_tx = Some(started_tx);
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(());
                    }
                }
            });
            // Once the ticker runs.
            started_rx.await.unwrap();
            let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = Bytes::from(vec![7u8; 256 << 20]);
            let started = std::time::Instant::now();
            let mac = mac_off_thread(b"key".to_vec(), bytes.clone())
                .await
                .unwrap();
            let took = started.elapsed();
            let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
            ticker.abort();
            // The same tag as taken in one go.
            let mut direct = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
            direct.update(&bytes);
            assert_eq!(mac.finalize().into_bytes(), direct.finalize().into_bytes());
            assert!(
                during >= 5,
                "the runtime's thread ticked {during} times in the {took:?} the tag took"
            );
        });
    }
}
