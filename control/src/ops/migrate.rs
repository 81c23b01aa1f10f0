//! `tern migrate` and the rebalancer's moves: the control plane picks the
//! generation, asks the source node to drive the move, and records where
//! the app went and what the move took.

use std::sync::Arc;

use std::time::Duration;

use tern_api::types::{
    AppState, AppStatus, MigrateRequest, MigrationExpect, MigrationReport, Mode,
};

use super::{idle_app, Result};
use crate::error::ApiError;
use crate::state::{now_ms, BusyGuard, InFlight, Shared};

/// How long a move whose source never answered is looked into before it
/// counts as failed (see [`settle_lost_answer`]).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/apps/NAME/migrate`, and every move the rebalancer plans.
pub async fn migrate(
    sh: &Arc<Shared>,
    name: &str,
    to: &str,
    mode: Mode,
    reason: &str,
) -> Result<MigrationReport> {
    migrate_with(sh, name, to, mode, None, reason).await
}

/// [`migrate`], and for hot: switch to post-copy after that many rounds
/// if they have not converged.
pub async fn migrate_with(
    sh: &Arc<Shared>,
    name: &str,
    to: &str,
    mode: Mode,
    postcopy_after_rounds: Option<u32>,
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
        // Hybrid on an app with no checkpoint yet: its node takes one
        // first (and sends it here, where the target fetches it).
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

    // Set when the source took the request but its answer never came (a
    // cut link): the move may have happened all the same.
    let mut answer_lost = false;
    let result = async {
        sh.ensure_module(&target, &app.module_sha256).await?;
        // The target accepts this move only from this source, at this
        // generation: it is told before the source is asked.
        let expect = MigrationExpect {
            app: name.to_string(),
            from: from.name.clone(),
            generation,
        };
        sh.client
            .post_json::<_, serde_json::Value>(&target.url("/v1/migrations/expect"), &expect)
            .await
            .map_err(|e| target.err(e))?;
        let checkpoint_url = (matches!(mode, Mode::Hybrid | Mode::Postcopy)
            || postcopy_after_rounds.is_some())
        .then(|| format!("{}/v1/checkpoints/{name}", sh.advertise_url));
        let req = MigrateRequest {
            to_name: target.name.clone(),
            to_url: target.url.clone(),
            mode,
            generation,
            checkpoint_url,
            postcopy_after_rounds,
        };
        sh.long_client
            .post_json::<_, MigrationReport>(&from.url(&format!("/v1/apps/{name}/migrate")), &req)
            .await
            .map_err(|e| {
                answer_lost = e.is_unreachable() && !e.never_delivered();
                from.err(e)
            })
    }
    .await;
    let result = match result {
        Err(e) if answer_lost => {
            match settle_lost_answer(sh, name, &from, &target, generation).await {
                Some(mut report) => {
                    report.mode = mode.to_string();
                    report.started_unix_ms = now;
                    report.note = Some(format!(
                        "the source's answer was lost ({e}); the target runs the app at generation {generation}"
                    ));
                    Ok(report)
                }
                None => Err(e),
            }
        }
        r => r,
    };
    sh.metrics
        .moved(&mode.to_string(), result.as_ref().map_err(|_| ()));

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

/// A move whose source never answered (the link to it was cut while it
/// worked) may have happened all the same: the source carries a move on
/// after its caller is gone. Until one of them says how it ended (at most
/// [`SETTLE_WAIT`]), asks the target whether it runs the app at the move's
/// generation, and the source whether it still does at an older one. A
/// report when the target took over. Without this the table kept the app
/// on the source, which no longer reported it, and restarted it from its
/// checkpoint over the copy that had moved, rolling back what it did
/// since (found by `tern soak`).
async fn settle_lost_answer(
    sh: &Arc<Shared>,
    name: &str,
    from: &super::NodeRef,
    target: &super::NodeRef,
    generation: u64,
) -> Option<MigrationReport> {
    let give_up = tokio::time::Instant::now() + SETTLE_WAIT;
    let path = format!("/v1/apps/{name}");
    let client = sh.client.clone().with_timeout(Duration::from_secs(2));
    while tokio::time::Instant::now() < give_up {
        if let Ok(st) = client.get_json::<AppStatus>(&target.url(&path)).await {
            if st.generation >= generation {
                return Some(MigrationReport {
                    app: name.to_string(),
                    from: from.name.clone(),
                    to: target.name.clone(),
                    generation: st.generation,
                    ..Default::default()
                });
            }
        }
        if let Ok(st) = client.get_json::<AppStatus>(&from.url(&path)).await {
            if st.generation < generation && st.state != AppState::Migrating {
                return None;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
