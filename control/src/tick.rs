//! The scheduler loop: every tick it restarts the apps of lost nodes
//! (restart policies); it refits the predictor every `refit_interval`; and
//! every `rebalance_interval` it brings the capacity advice up to date and
//! carries out the moves the rebalancer plans, as hot migrations through
//! the same path as `tern migrate`. With the `learned` policy that
//! rebalancer is the simulator's `learned` one (see `plan`): forecasts with
//! their spread, `plan_predictive`, the same rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tern_api::types::Mode;
use tern_scheduler::{
    decide_restart, plan_rebalance, Exit, Move, Policy, RebalanceInput, Resources, RestartDecision,
};

use crate::state::{now_ms, spec_of, Shared};
use crate::{ops, plan};

/// Runs until the task is aborted.
pub async fn run(sh: Arc<Shared>) {
    let tick = (sh.cfg.heartbeat_timeout / 4)
        .min(sh.cfg.rebalance_interval)
        .clamp(Duration::from_millis(20), Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    let mut interval = tokio::time::interval_at(start, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_rebalance, mut last_fit) = (start, start);
    loop {
        // Measured from when ticks were due, not from when this task got
        // to run: a late tick does not push the next rebalance a tick later.
        let due = interval.tick().await;
        restart_lost(&sh).await;
        if due.duration_since(last_fit) >= sh.cfg.refit_interval {
            last_fit = due;
            let models = sh.lock().predictor.fit();
            tracing::debug!(models, "predictor refitted");
        }
        if due.duration_since(last_rebalance) >= sh.cfg.rebalance_interval {
            last_rebalance = due;
            rebalance(&sh).await;
        }
    }
}

/// Restarts, on a healthy node, every app whose node is down (or no longer
/// has it) when its restart policy says so.
pub async fn restart_lost(sh: &Arc<Shared>) {
    let now = now_ms();
    let plans: Vec<(String, String, String)> = {
        let st = sh.lock();
        let mut cluster = None;
        let mut plans = Vec::new();
        for a in st.apps.values() {
            let Some(node) = a.node.as_deref() else {
                continue;
            };
            let node_down = st.nodes.get(node).is_none_or(|n| sh.is_down(n, now));
            if !(node_down || a.state == "lost")
                || a.restart == "never"
                || a.operator_stopped
                || st.busy.contains(&a.name)
                || st.restart_not_before.get(&a.name).is_some_and(|t| now < *t)
            {
                continue;
            }
            let exit = match a.state.as_str() {
                "exited" => Exit::Ok,
                "failed" => Exit::Crashed {
                    message: a.last_error.clone().unwrap_or_default(),
                },
                _ => Exit::NodeLost,
            };
            let cluster = cluster.get_or_insert_with(|| sh.cluster_view(&st, now));
            let policy = a
                .policy
                .as_deref()
                .and_then(|p| p.parse::<Policy>().ok())
                .unwrap_or(sh.cfg.policy);
            let ctx = sh.placement_ctx(&st, &a.name);
            match decide_restart(cluster, &spec_of(a), node, &exit, a.restarts, policy, &ctx) {
                Ok(RestartDecision::Restart { node: to, .. }) => {
                    let why = if node_down {
                        format!("node {node} is down")
                    } else {
                        format!("node {node} no longer has it")
                    };
                    // Later restarts in this tick see the app where it goes.
                    let _ = cluster.move_app(&a.name, &to);
                    plans.push((a.name.clone(), to, why));
                }
                Ok(RestartDecision::Stay { .. }) => {}
                Err(e) => tracing::warn!(app = %a.name, "cannot restart: {e}"),
            }
        }
        plans
    };
    for (app, to, why) in plans {
        let t0 = std::time::Instant::now();
        let restarted = ops::restart(sh, &app, &to, &why).await;
        sh.metrics.restarted(restarted.is_ok(), t0.elapsed());
        if let Err(e) = restarted {
            tracing::warn!(%app, node = %to, "restart failed: {e}");
        }
    }
}

/// Plans moves and carries them out as hot migrations. With the `learned`
/// policy: by each app's forecast with its spread (`plan::learned`);
/// otherwise by its expected demand (`plan_rebalance`). Either way the
/// capacity advice is brought up to date.
pub async fn rebalance(sh: &Arc<Shared>) {
    let now = now_ms();
    let moves: Vec<(Move, String)> = {
        let mut guard = sh.lock();
        let st = &mut *guard;
        let cluster = sh.cluster_view(st, now);
        if cluster.nodes.iter().filter(|n| n.schedulable()).count() == 0 {
            return;
        }
        let forecast = plan::forecasts(st, &cluster);
        plan::advise(&sh.cfg, st, &cluster, &forecast, now);
        if cluster.apps.is_empty() {
            return;
        }
        let now_s = now / 1000;
        let learned = sh.cfg.policy == Policy::Learned;
        let mut demand = BTreeMap::new();
        let mut state_bytes = BTreeMap::new();
        let mut last_moved = BTreeMap::new();
        for (name, placed) in &cluster.apps {
            let a = &st.apps[name];
            if let (true, Some(f)) = (learned, forecast.get(name)) {
                let cpu = f.cpu_mean.max(0.0).round() as u64;
                demand.insert(name.clone(), Resources::new(cpu, f.memory_bytes));
            } else if let Some(f) = st.predictor.predict(name) {
                demand.insert(name.clone(), f.plan);
            } else if let Some(u) = st.usage.get(name) {
                demand.insert(name.clone(), *u);
            }
            state_bytes.insert(name.clone(), a.memory_bytes);
            let node = cluster.node(&placed.node);
            let movable =
                a.state == "running" && node.is_some_and(|n| n.ready) && !st.busy.contains(name);
            let draining = node.is_some_and(|n| n.draining);
            // An app that cannot move now counts as just moved (cool-down);
            // an operator's drain does not wait for the cool-down.
            let t = if !movable {
                Some(now_s)
            } else if draining {
                None
            } else {
                a.last_moved_unix_ms.map(|t| t / 1000)
            };
            if let Some(t) = t {
                last_moved.insert(name.clone(), t);
            }
        }
        let mut cfg = sh.cfg.rebalance.clone();
        cfg.cooldown = cfg.cooldown.max(1);
        cfg.weights = sh.cfg.weights.clone();
        cfg.latency = sh.cfg.latency.clone();
        let input = RebalanceInput {
            demand: &demand,
            state_bytes: &state_bytes,
            last_moved: &last_moved,
            now: now_s,
        };
        if learned {
            // Its last plan's node-level errors, as the simulator keeps them.
            let errors = plan::node_errors(&st.node_expect, &cluster, &st.usage);
            let shape = plan::error_shape(&mut st.node_errors, errors, cluster.nodes.len());
            let (moves, expect) =
                plan::learned(&sh.cfg, &cluster, &forecast, &input, &cfg, shape.as_ref());
            st.node_expect = expect;
            moves
                .into_iter()
                .map(|m| {
                    let why = plan::reason(&sh.cfg, st, &m, &forecast);
                    (m, why)
                })
                .collect()
        } else {
            plan_rebalance(&cluster, &input, &cfg)
                .into_iter()
                .map(|m| {
                    let why = format!("rebalance: {}", m.reason);
                    (m, why)
                })
                .collect()
        }
    };
    for (m, why) in moves {
        tracing::info!(app = %m.app, from = %m.from, to = %m.to, cost = m.cost, "{why}");
        let moved = ops::migrate(sh, &m.app, &m.to, Mode::Hot, &why).await;
        sh.metrics.rebalanced(moved.is_ok());
        if let Err(e) = moved {
            tracing::warn!(app = %m.app, to = %m.to, "planned move failed: {e}");
        }
    }
}
