//! Auto start: the pure decision of whether and where to restart an app
//! after it stopped, by its [`RestartPolicy`] (declared with the app, in
//! [`crate::cluster`]; this module depends on the cluster model, never the
//! other way round).

use serde::{Deserialize, Serialize};

pub use crate::cluster::RestartPolicy;
use crate::cluster::{AppSpec, Cluster};
use crate::placement::{place, Decision, PlacementContext, Policy};
use crate::ScheduleError;

/// How an app's last run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Exit {
    /// The app finished on its own (`_start` returned, exit code 0).
    Ok,
    /// The app trapped, exited non-zero, ran out of fuel or memory.
    Crashed {
        /// What the runtime reported.
        message: String,
    },
    /// The node running it stopped sending heartbeats or restarted.
    NodeLost,
    /// An operator stopped it (`tern stop`, `tern rm`): never restarted.
    Stopped,
}

/// Whether and where to restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum RestartDecision {
    /// Leave the app stopped.
    Stay {
        /// Why (for `tern ps` / logs).
        reason: String,
    },
    /// Start it again from its latest checkpoint.
    Restart {
        /// Node to start it on.
        node: String,
        /// Back-off before the start, milliseconds (doubles per recent restart).
        delay_ms: u64,
        /// How the node was chosen (`None` when the app stays on its node).
        decision: Option<Box<Decision>>,
    },
}

/// Back-off before the `n`-th consecutive restart: 0 for the first, then
/// 500 ms doubling up to 5 minutes (crash loops must not spin).
pub fn backoff_ms(recent_restarts: u32) -> u64 {
    if recent_restarts == 0 {
        return 0;
    }
    let exp = (recent_restarts - 1).min(20);
    (500u64 << exp).min(300_000)
}

/// Decides whether `app` (bound or last bound to `last_node`) restarts after
/// `exit`, and where.
///
/// `never` restarts nothing; `on-failure` restarts after a crash or a lost
/// node; `always` also after a clean exit. An operator's stop is never
/// undone. The app stays on its node when that node is still schedulable;
/// otherwise (node lost, not ready or draining) `policy` picks a healthy
/// node, ignoring `last_node`. `recent_restarts` counts restarts in the
/// current crash loop and sets the back-off.
pub fn decide_restart(
    cluster: &Cluster,
    app: &AppSpec,
    last_node: &str,
    exit: &Exit,
    recent_restarts: u32,
    policy: Policy,
    ctx: &PlacementContext,
) -> Result<RestartDecision, ScheduleError> {
    let restart = match (&app.restart, exit) {
        (_, Exit::Stopped) => {
            return Ok(RestartDecision::Stay {
                reason: "stopped by an operator".into(),
            })
        }
        (RestartPolicy::Never, _) => false,
        (RestartPolicy::OnFailure, Exit::Ok) => false,
        (RestartPolicy::OnFailure, _) => true,
        (RestartPolicy::Always, _) => true,
    };
    if !restart {
        return Ok(RestartDecision::Stay {
            reason: format!(
                "restart policy `{}` does not restart after {}",
                app.restart,
                exit_word(exit)
            ),
        });
    }
    let delay_ms = backoff_ms(recent_restarts);
    let node_ok = !matches!(exit, Exit::NodeLost)
        && cluster
            .node(last_node)
            .is_some_and(|n| n.schedulable() && n.matches(&app.node_selector));
    if node_ok {
        return Ok(RestartDecision::Restart {
            node: last_node.to_string(),
            delay_ms,
            decision: None,
        });
    }
    // Choose elsewhere: the app no longer holds resources on its old node,
    // and that node is not a candidate.
    let mut view = cluster.clone();
    view.unbind(&app.name);
    if let Some(n) = view.node_mut(last_node) {
        n.ready = false;
    }
    let decision = place(&view, app, policy, ctx)?;
    Ok(RestartDecision::Restart {
        node: decision.node.clone(),
        delay_ms,
        decision: Some(Box::new(decision)),
    })
}

fn exit_word(exit: &Exit) -> &'static str {
    match exit {
        Exit::Ok => "a clean exit",
        Exit::Crashed { .. } => "a crash",
        Exit::NodeLost => "losing its node",
        Exit::Stopped => "an operator's stop",
    }
}
