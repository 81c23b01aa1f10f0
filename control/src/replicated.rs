//! Several control planes on one etcd store. Each serves HTTP from the
//! start; one leads (loads the records, answers the API, runs the
//! scheduler loop), the others stand by and answer 503 naming the leader,
//! watching the leader key until it goes, then ask for the leadership
//! again. A leader that cannot renew its lease, or finds a write refused
//! because another leads, steps down to standby: its state is dropped and
//! its scheduler loop stopped.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::{Method, StatusCode};
use tern_api::server;

use crate::state::Shared;
use crate::store::{Campaign, EtcdUrl, Leadership, Store};
use crate::{http, tick, ControlConfig};

/// What this control plane is right now.
#[derive(Clone)]
enum Role {
    /// Another leads (at this URL, when known).
    Standby(Option<String>),
    Leader(Arc<Shared>),
}

use crate::metrics::Metrics;
use crate::AbortOnDrop;

pub async fn run(
    listener: tokio::net::TcpListener,
    config: ControlConfig,
    url: EtcdUrl,
    advertise: String,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The layout and the token are checked before anything is served.
    let token = config.token.clone();
    let check = url.clone();
    tokio::task::spawn_blocking(move || {
        crate::etcd_token(&check, Some(&token), || Ok(token.clone()))
    })
    .await??;
    let role = Arc::new(RwLock::new(Role::Standby(None)));
    let handler: tern_api::server::Handler = {
        let role = role.clone();
        let token = config.token.clone();
        let metrics = metrics.clone();
        Arc::new(move |req| {
            let current = role.read().unwrap_or_else(|e| e.into_inner()).clone();
            let token = token.clone();
            let metrics = metrics.clone();
            Box::pin(async move {
                match current {
                    Role::Leader(sh) => http::handle(sh, req).await,
                    Role::Standby(leader) => standby_answer(&token, &metrics, leader, req),
                }
            })
        })
    };
    tracing::info!(addr = %advertise, store = %url, "control plane listening (standby until it leads)");
    let opts = config.serve_options()?;
    let elect = tokio::spawn(elect(role.clone(), config, url, advertise, metrics));
    server::serve(listener, opts, handler, shutdown).await;
    elect.abort();
    let _ = elect.await;
    let last = std::mem::replace(
        &mut *role.write().unwrap_or_else(|e| e.into_inner()),
        Role::Standby(None),
    );
    if let Role::Leader(sh) = last {
        // Resign at once: a standby need not wait for the lease to expire.
        tokio::task::spawn_blocking(move || sh.store.close()).await?;
    }
    Ok(())
}

fn set(role: &RwLock<Role>, r: Role) {
    *role.write().unwrap_or_else(|e| e.into_inner()) = r;
}

/// Campaigns, leads while it can, stands by otherwise; until aborted.
async fn elect(
    role: Arc<RwLock<Role>>,
    cfg: ControlConfig,
    url: EtcdUrl,
    me: String,
    metrics: Arc<Metrics>,
) {
    let ttl = cfg.lease_ttl.max(Duration::from_secs(1));
    loop {
        let (u, m) = (url.clone(), me.clone());
        let outcome = tokio::task::spawn_blocking(move || Leadership::campaign(&u, &m, ttl)).await;
        match outcome {
            Ok(Ok(Campaign::Won(leadership))) => {
                lead(&role, &cfg, Arc::new(leadership), &me, ttl, &metrics).await;
                set(&role, Role::Standby(None));
            }
            Ok(Ok(Campaign::Lost { leader, revision })) => {
                set(&role, Role::Standby(Some(leader.clone())));
                let u = url.clone();
                let mut vacancy = tokio::task::spawn_blocking(move || {
                    Leadership::wait_for_vacancy(&u, revision, ttl * 2)
                });
                // Meanwhile the leader's checkpoint files are copied here,
                // so that they outlive it (`mirror`); dropped the moment
                // the leadership may be vacant.
                tokio::select! {
                    _ = &mut vacancy => {}
                    () = crate::mirror::run(cfg.clone(), url.clone(), leader) => {
                        let _ = vacancy.await;
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("cannot ask {url} for the leadership: {e:#}");
                set(&role, Role::Standby(None));
                tokio::time::sleep(ttl / 2).await;
            }
            Err(e) => {
                tracing::warn!("the leadership campaign failed: {e}");
                tokio::time::sleep(ttl / 2).await;
            }
        }
    }
}

/// Leads until the leadership is lost.
async fn lead(
    role: &RwLock<Role>,
    cfg: &ControlConfig,
    leadership: Arc<Leadership>,
    me: &str,
    ttl: Duration,
    metrics: &Arc<Metrics>,
) {
    let dir = cfg.data_dir.clone();
    let l = leadership.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let store = Store::etcd(&dir, l)?;
        let loaded = store.load()?;
        Ok::<_, anyhow::Error>((store, loaded))
    })
    .await;
    let (store, loaded) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!("cannot load the records from {}: {e:#}", leadership.url());
            leadership.resign();
            tokio::time::sleep(ttl / 2).await;
            return;
        }
        Err(e) => {
            tracing::warn!("loading the records failed: {e}");
            leadership.resign();
            return;
        }
    };
    let sh = match Shared::new(cfg.clone(), store, loaded, me.to_string(), metrics.clone()) {
        Ok(sh) => Arc::new(sh),
        Err(e) => {
            tracing::warn!("cannot lead: {e:#}");
            leadership.resign();
            tokio::time::sleep(ttl / 2).await;
            return;
        }
    };
    let _ticker = AbortOnDrop(tokio::spawn(tick::run(sh.clone())));
    // Checkpoint blobs stay with the control plane that received them: ask
    // the nodes for fresh ones of the apps this one has none of.
    let _refresh = AbortOnDrop(tokio::spawn({
        let sh = sh.clone();
        async move { crate::ops::refresh_missing_checkpoints(&sh).await }
    }));
    metrics.attach(&sh);
    set(role, Role::Leader(sh));
    tracing::info!(store = %leadership.url(), "this control plane leads");
    loop {
        tokio::time::sleep(ttl / 3).await;
        let l = leadership.clone();
        let alive = tokio::task::spawn_blocking(move || l.keepalive())
            .await
            .unwrap_or(false);
        if !alive {
            tracing::warn!(store = %leadership.url(), "this control plane lost the leadership: standing by");
            return;
        }
    }
}

/// A standby's answer: 503 naming the leader (`x-tern-leader`), except its
/// health, which says it stands by.
fn standby_answer(
    token: &str,
    metrics: &Metrics,
    leader: Option<String>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<server::Body> {
    // The page itself holds no data: it loads here too, and says what the
    // data endpoint answers.
    if req.method() == Method::GET {
        if let Some(page) = crate::dashboard::asset(req.uri().path()) {
            return page;
        }
    }
    // A node (its certificate) learns that this one stands by, and moves on.
    if !server::authorized(&req, token) && server::peer(&req).is_none() {
        return server::unauthorized();
    }
    // Its metrics say it stands by (`tern_control_leading 0`).
    if req.method() == Method::GET && req.uri().path() == "/metrics" {
        return tern_api::metrics::answer(&metrics.registry);
    }
    if req.method() == Method::GET && req.uri().path() == "/v1/health" {
        return server::json(
            StatusCode::OK,
            &serde_json::json!({"ok": true, "role": "standby", "leader": leader, "version": env!("CARGO_PKG_VERSION")}),
        );
    }
    let msg = match &leader {
        Some(l) => {
            format!("this control plane stands by; the leader is {l}: send the request there")
        }
        None => {
            "this control plane stands by and no leader is known yet: try again in a few seconds"
                .to_string()
        }
    };
    let mut resp = crate::ApiError::unavailable(msg).into_response();
    if let Some(l) = leader.and_then(|l| hyper::header::HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert("x-tern-leader", l);
    }
    resp
}
