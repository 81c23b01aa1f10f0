//! Restores from a snapshot, and restarts of apps whose node was lost (from
//! their latest checkpoint, one generation up).

use std::sync::Arc;

use bytes::Bytes;
use tern_api::types::{AppStatus, AppView, LazyRestore, StartApp};
use tern_scheduler::{place, RestartPolicy};

use super::{idle_app, CheckpointFrom, NodeRef, Result};
use crate::error::ApiError;
use crate::state::{now_ms, spec_of, valid_sha256, AppRec, BusyGuard, Shared};

/// `POST /v1/restore?name=N&node=NODE[&restart=R][&module=SHA256]`.
pub async fn restore(
    sh: &Arc<Shared>,
    name: &str,
    node: Option<&str>,
    restart: Option<&str>,
    module: Option<&str>,
    foreign: bool,
    bytes: Bytes,
) -> Result<AppView> {
    tern_api::names::check_app_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
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
    // The node reads the snapshot from here by ranges, and runs the app as
    // soon as its state is in (`ops::pinned`): the bytes are kept first.
    let result = async {
        let digest = super::pinned::stage(sh, name, &bytes).await?;
        sh.lock()
            .restoring
            .insert(name.to_string(), target.name.clone());
        let url = target.url(&format!(
            "/v1/restore/lazy?name={name}&generation={generation}&restart={restart_word}{}",
            if foreign { "&foreign=1" } else { "" }
        ));
        let from = LazyRestore {
            digest,
            bytes: bytes.len() as u64,
        };
        sh.long_client
            .post_json::<_, AppStatus>(&url, &from)
            .await
            .map_err(|e| target.err(e))
    }
    .await;
    let status: AppStatus = match result {
        Ok(status) => status,
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
    if let Err(e) = sh
        .save_checkpoint(
            name,
            generation,
            &bytes,
            CheckpointFrom::Restore { foreign },
        )
        .await
    {
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
        let checkpoint = st.checkpoints.contains_key(name);
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
            // The node starts the app once its state is in and reads the
            // pages as they are touched (`ops::pinned`).
            true => {
                let (c, digest, bytes) = super::pinned::pin(sh, name).await?;
                sh.lock()
                    .restoring
                    .insert(name.to_string(), target.name.clone());
                // A foreign snapshot restored by an operator is as
                // untrusted now as it was then.
                let url = target.url(&format!(
                    "/v1/restore/lazy?name={name}&generation={generation}&restart={}{}",
                    app.restart,
                    if c.foreign { "&foreign=1" } else { "" }
                ));
                let status: AppStatus = sh
                    .long_client
                    .post_json(&url, &LazyRestore { digest, bytes })
                    .await
                    .map_err(|e| target.err(e))?;
                Ok((
                    status,
                    format!("from its checkpoint of generation {}", c.generation),
                ))
            }
            false => {
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
                let status: AppStatus = sh
                    .client
                    .post_json(&target.url("/v1/apps"), &start)
                    .await
                    .map_err(|e| target.err(e))?;
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
