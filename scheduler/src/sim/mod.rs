//! The trace simulator: replays a usage trace minute by minute against each
//! policy on identical clusters, under identical rules, over several seeds,
//! and reports what happened.
//!
//! # The demand
//! - A function's CPU demand in a minute is the CPU its invocations run in
//!   that minute: each invocation keeps a core busy for the function's
//!   average duration from a random moment of the minute it started in, so
//!   a long run is spread over the minutes it runs in
//!   ([`crate::trace::spread_kernel`]). Its memory is its average
//!   allocated memory.
//! - The trace is split in time: the first `train_fraction` of the minutes
//!   is history (the predictor trains on it; requests and the cluster are
//!   sized from it), the rest is replayed and measured.
//!
//! # The cluster and the apps
//! - `nodes` nodes; unless `node_capacity` is given their CPU is sized so
//!   that the history's mean demand fills `fill` of the cluster (rounded up
//!   to 10 millicores per node), so that policies are compared at equal
//!   utilisation; their memory at twice what the apps hold. Node `i` is in
//!   zone `i mod zones`.
//! - A function whose demand peaked above `replica_cpu_milli` (default a
//!   quarter of a node) during the history runs as
//!   `⌈peak / replica_cpu_milli⌉` replicas sharing its load evenly; the
//!   replicas of one function form a group (placement spreads them).
//! - Declared requests: the function's mean CPU over the history (split
//!   among replicas) and its memory.
//! - Each seed draws where every function's users are (a zone) and the
//!   order in which the apps arrive; results are the mean (and range) over
//!   `seeds` seeds.
//!
//! # The rules (the same for every policy)
//! - At the first replayed minute every app arrives and is placed by the
//!   policy; no node ever holds more declared requests than its capacity,
//!   whatever the policy (placement and every move).
//! - Before each minute the policy's rebalancer may move apps: at most
//!   `max_moves_per_minute` moves taking at most `move_seconds_per_minute`
//!   of migration time in all (each move at its estimated time, the T of
//!   the migration cost `C = α·S + β·B + γ·T` with S the app's memory and
//!   the weights set to measured hot moves), and no app again within
//!   `cooldown_minutes`. A move pauses the app for under a millisecond; its
//!   copying costs the source and the target one core for T (charged to
//!   their load in that minute), and its cost `C` is summed.
//! - Then the minute's real demand lands. A node whose CPU or memory
//!   demand exceeds its capacity is overloaded for that minute; the CPU
//!   beyond its capacity is not served.
//!
//! # The policies (what differs)
//! - `requests` and `cost` place by declared requests (least allocated, or
//!   the objective `α·T + β·R`) and rebalance reactively on the usage
//!   observed in the minute before ([`crate::plan_rebalance`]: act above
//!   `target_utilization`, even load out when every node is that busy).
//! - `learned` places by the predictor's expected demand and rebalances on
//!   its forecast ([`crate::plan_predictive`]: moves, swaps and chains (a
//!   move and the move that fills the room it leaves) that lower each
//!   node's chance of overload, weighed by `overload_weight`, plus its
//!   expected unserved CPU, counting the copying of its own moves as the
//!   rules charge it; when the forecast cannot fit, the overflow is
//!   gathered on few nodes). The forecast of a minute is the CPU of the
//!   invocations already running (known: they started before it) plus the
//!   predictor's forecast of the work that starts in it; its spread is at
//!   least the root mean square of its errors over the last hour. Once it
//!   has 100 of them, the planner weighs each node's chance of overload and
//!   unserved CPU by the policy's own past errors at node level (the last
//!   240 minutes, each over the spread the node was given:
//!   [`crate::ErrorShape`]) instead of by the normal. An app whose
//!   forecast fits no node is placed by its requests.
//! - `oracle` is `learned` told the exact demand of the next minute (no
//!   spread): it bounds what any predictor can buy this policy.
//! - `observed` (on request) is `learned` fed the usage of the minute
//!   before, with the spread of that guess's recent errors: between it and
//!   `learned` lies what the predictor itself adds.
//!
//! # What is reported, per policy (mean and range over seeds)
//! `overload_minutes` (node-minutes overloaded), `unserved_cpu` (core-
//! minutes of demand beyond capacity, or of apps that could not be
//! placed), `slo_misses` (app-minutes with demand on an overloaded node,
//! or not placed), `migrations`, `migration_cost` (sum of `C`),
//! `migration_seconds`, `mean_utilization` (served CPU over the CPU of the
//! nodes that host apps, averaged over minutes), `nodes_used`,
//! `mean_latency_ms` (from apps' users to their node) and
//! `node_estimate_mae` (how far the policy's estimate of each node's load
//! was from what landed); per seed, the run's figures and an audit of the
//! rules. Beside them: the predictor's errors against its baselines on the
//! replayed minutes, learned's gain over requests and its share of the
//! oracle's, and how often the forecast said a minute ahead that the
//! cluster needed more nodes ([`crate::capacity_advice`], `capacity_z`).

mod report;
mod run;
mod world;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use report::{plot_svg, plot_sweep_svg, render_sweep, render_table};

use crate::cluster::Resources;
use crate::cost::CostWeights;
use crate::placement::Policy;
use crate::predict::{PredictorConfig, PredictorReport};
use crate::trace::Trace;
use crate::ScheduleError;

/// A policy the simulator replays: the three placement policies and the
/// oracle that bounds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimPolicy {
    /// Place by declared requests, rebalance on observed usage.
    Requests,
    /// Place by the cost objective, rebalance on observed usage.
    Cost,
    /// Place and rebalance by the predictor's forecast.
    Learned,
    /// `learned` with the exact next minute instead of a forecast.
    Oracle,
    /// `learned` fed the usage observed in the minute before instead of the
    /// predictor's forecast (its spread: the last hour's errors of that):
    /// what the predictor adds to the planner. Not in [`SimPolicy::ALL`].
    Observed,
}

impl SimPolicy {
    /// Every policy, in display order.
    pub const ALL: [SimPolicy; 4] = [
        SimPolicy::Requests,
        SimPolicy::Cost,
        SimPolicy::Learned,
        SimPolicy::Oracle,
    ];

    /// The name as the CLI spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SimPolicy::Requests => "requests",
            SimPolicy::Cost => "cost",
            SimPolicy::Learned => "learned",
            SimPolicy::Oracle => "oracle",
            SimPolicy::Observed => "observed",
        }
    }

    /// The placement policy it places with.
    pub fn placement(&self) -> Policy {
        match self {
            SimPolicy::Requests => Policy::Requests,
            SimPolicy::Cost => Policy::Cost,
            SimPolicy::Learned | SimPolicy::Oracle | SimPolicy::Observed => Policy::Learned,
        }
    }
}

impl From<Policy> for SimPolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Requests => SimPolicy::Requests,
            Policy::Cost => SimPolicy::Cost,
            Policy::Learned => SimPolicy::Learned,
        }
    }
}

impl fmt::Display for SimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SimPolicy {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "oracle" => Ok(SimPolicy::Oracle),
            "observed" => Ok(SimPolicy::Observed),
            other => other
                .parse::<Policy>()
                .map(SimPolicy::from)
                .map_err(|_| ScheduleError::UnknownSimPolicy(s.to_string())),
        }
    }
}

/// How to simulate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Capacity of every node; `None` sizes the nodes from the history: the
    /// CPU so that the mean demand fills `fill` of the cluster, the memory
    /// at twice what the apps hold.
    pub node_capacity: Option<Resources>,
    /// Share of the cluster's CPU the history's mean demand fills when the
    /// capacity is automatic.
    pub fill: f64,
    /// Zones the nodes are spread over (node `i` is in `zone-(i mod zones)`).
    pub zones: usize,
    /// The first seed (of user locations and arrival order).
    pub seed: u64,
    /// Seeds replayed: `seed`, `seed + 1`, ...; results are their mean.
    pub seeds: usize,
    /// Fraction of the trace used as history (the rest is replayed).
    pub train_fraction: f64,
    /// Largest CPU demand one replica is meant to carry, thousandths of a core.
    /// `None`: a quarter of a node.
    pub replica_cpu_milli: Option<u64>,
    /// Rule: moves per minute at most, every policy.
    pub max_moves_per_minute: usize,
    /// Rule: seconds of migration time per minute at most, every policy
    /// (moves are executed one after another).
    pub move_seconds_per_minute: f64,
    /// Rule: minutes before a moved app may move again, every policy.
    pub cooldown_minutes: u64,
    /// `requests` and `cost`: rebalance when observed demand exceeds this
    /// share of a node.
    pub target_utilization: f64,
    /// `learned` and `oracle`: what an overloaded node-minute weighs
    /// against unserved CPU, as a share of the node's capacity
    /// ([`crate::PredictiveConfig::overload_weight`]).
    pub overload_weight: f64,
    /// `learned`: the capacity advice asks for more nodes when the cluster's
    /// expected demand plus this many standard deviations exceeds its CPU.
    pub capacity_z: f64,
    /// Predictor settings.
    pub predictor: PredictorConfig,
    /// Cost-model weights (placement objective, migration cost and time).
    pub weights: CostWeights,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 8,
            node_capacity: None,
            fill: 0.8,
            zones: 3,
            seed: 1,
            seeds: 5,
            train_fraction: 0.5,
            replica_cpu_milli: None,
            max_moves_per_minute: 60,
            move_seconds_per_minute: 10.0,
            cooldown_minutes: 2,
            target_utilization: 0.9,
            overload_weight: 0.1,
            capacity_z: 1.0,
            predictor: PredictorConfig::default(),
            weights: CostWeights::default(),
        }
    }
}

/// What one policy did with one seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRun {
    /// The seed.
    pub seed: u64,
    /// Node-minutes in which a node's demand exceeded its capacity.
    pub overload_minutes: u64,
    /// Core-minutes of CPU demand not served (beyond capacity, or of apps
    /// not placed).
    pub unserved_cpu: f64,
    /// App-minutes with demand on an overloaded node, or not placed.
    pub slo_misses: u64,
    /// Migrations performed.
    pub migrations: u64,
    /// Sum of the migrations' cost `C = α·S + β·B + γ·T`.
    pub migration_cost: f64,
    /// Sum of the migrations' estimated times, seconds.
    pub migration_seconds: f64,
    /// Served CPU / CPU capacity of the nodes hosting apps, mean over minutes.
    pub mean_utilization: f64,
    /// Most nodes hosting at least one app at the same time.
    pub nodes_used: usize,
    /// App-minutes spent unplaced (no node could take the app).
    pub unplaced_app_minutes: u64,
    /// Mean latency from apps' users to their node, ms.
    pub mean_latency_ms: f64,
    /// Mean absolute error of the policy's estimate of each node's CPU
    /// demand (after its moves) against the demand that landed, millicores.
    pub node_estimate_mae: f64,
    /// What the rules allowed and what the run used.
    pub audit: RuleAudit,
    /// How the forecast foresaw minutes when the cluster was short of CPU
    /// (`learned` and `oracle`).
    pub capacity: Option<CapacityCheck>,
    /// CPU demand of each node per replayed minute, as a share of its
    /// capacity (for [`plot_svg`]; not serialized).
    #[serde(skip)]
    pub node_load: Vec<Vec<f64>>,
}

/// The most a run took of what the rules allow, to check that every policy
/// kept to them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleAudit {
    /// Most moves in one minute.
    pub max_moves_in_a_minute: usize,
    /// Most migration seconds in one minute.
    pub max_move_seconds_in_a_minute: f64,
    /// Largest share of a node's capacity (CPU or memory) held by declared
    /// requests, at any minute.
    pub max_requested_share: f64,
    /// Moves of an app that had moved less than the cool-down before.
    pub moves_within_cooldown: u64,
}

/// The forecast's advice on capacity against what came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityCheck {
    /// Minutes whose demand exceeded the cluster's CPU.
    pub short_minutes: u64,
    /// Minutes for which the forecast asked for more nodes beforehand.
    pub alerts: u64,
    /// Short minutes that were announced.
    pub announced: u64,
    /// Alerts for minutes that were not short.
    pub false_alarms: u64,
    /// The most extra nodes asked for at once.
    pub max_extra_nodes: usize,
}

/// Lowest and highest value over the seeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    /// Of `overload_minutes`.
    pub overload_minutes: [f64; 2],
    /// Of `unserved_cpu`.
    pub unserved_cpu: [f64; 2],
    /// Of `slo_misses`.
    pub slo_misses: [f64; 2],
    /// Of `migrations`.
    pub migrations: [f64; 2],
    /// Of `migration_cost`.
    pub migration_cost: [f64; 2],
    /// Of `mean_utilization`.
    pub mean_utilization: [f64; 2],
}

/// One policy's results: means over the seeds, their ranges, every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: SimPolicy,
    /// Node-minutes overloaded (mean over seeds).
    pub overload_minutes: f64,
    /// Core-minutes of CPU demand not served (mean over seeds).
    pub unserved_cpu: f64,
    /// App-minutes with demand on an overloaded node or not placed (mean).
    pub slo_misses: f64,
    /// Migrations (mean).
    pub migrations: f64,
    /// Sum of migration costs `C` (mean).
    pub migration_cost: f64,
    /// Migration seconds (mean).
    pub migration_seconds: f64,
    /// Served CPU over the capacity of nodes hosting apps (mean).
    pub mean_utilization: f64,
    /// Most nodes hosting apps at once (mean).
    pub nodes_used: f64,
    /// App-minutes unplaced (mean).
    pub unplaced_app_minutes: f64,
    /// Latency from apps' users to their node, ms (mean).
    pub mean_latency_ms: f64,
    /// Error of the policy's estimate of node loads, millicores (mean).
    pub node_estimate_mae: f64,
    /// Lowest and highest value over the seeds.
    pub range: Ranges,
    /// Every seed's run.
    pub runs: Vec<PolicyRun>,
}

/// What was simulated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimSetup {
    /// Functions in the trace.
    pub functions: usize,
    /// Apps (function replicas) placed.
    pub apps: usize,
    /// Minutes in the trace.
    pub minutes: usize,
    /// Minutes used as history.
    pub history_minutes: usize,
    /// Minutes replayed and measured.
    pub replayed_minutes: usize,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Capacity of each node.
    pub node_capacity: Resources,
    /// The fill asked for (history's mean demand / CPU capacity).
    pub fill: f64,
    /// Mean CPU demand over the replayed minutes / total CPU capacity.
    pub demand_to_capacity: f64,
    /// Replayed minutes whose demand exceeded the cluster's CPU.
    pub short_minutes: usize,
    /// The seeds replayed.
    pub seeds: Vec<u64>,
    /// The rules every policy kept to.
    pub rules: Rules,
}

/// The rules of a simulation, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Moves per minute at most.
    pub max_moves_per_minute: usize,
    /// Migration seconds per minute at most.
    pub move_seconds_per_minute: f64,
    /// Minutes before a moved app may move again.
    pub cooldown_minutes: u64,
    /// Declared requests on a node never exceed its capacity.
    pub requests_within_capacity: bool,
}

/// `learned` against `requests` and `oracle` (present when all three ran).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gain {
    /// `1 - learned / requests` of overload node-minutes.
    pub overload_reduction: f64,
    /// `1 - learned / requests` of unserved CPU.
    pub unserved_reduction: f64,
    /// `(requests - learned) / (requests - oracle)` of overload node-minutes
    /// (`None` when the oracle gains nothing).
    pub oracle_share_overload: Option<f64>,
    /// The same for unserved CPU.
    pub oracle_share_unserved: Option<f64>,
}

/// The comparison of policies on one trace (`tern sim --json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// What was simulated.
    pub setup: SimSetup,
    /// One entry per policy, in the order asked.
    pub policies: Vec<PolicyResult>,
    /// `learned` against `requests` and `oracle`.
    pub gain: Option<Gain>,
    /// The predictor's forecasts of every function's next-minute demand
    /// against its baselines on the replayed minutes.
    pub predictor: PredictorReport,
}

/// A comparison at several fills (`tern sim --sweep`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    /// One comparison per fill, in the order asked.
    pub points: Vec<Comparison>,
}

/// The work of a simulation that depends on the trace only (the demand
/// series and the predictor's forecasts), shared by every fill and seed.
pub struct Prepared {
    world: world::TraceData,
}

/// Reads the demand and computes the forecasts once.
pub fn prepare(trace: &Trace, config: &SimConfig) -> Prepared {
    Prepared {
        world: world::TraceData::new(trace, config),
    }
}

/// Replays a prepared trace for every policy and seed at `config`'s fill.
pub fn run(prepared: &Prepared, policies: &[SimPolicy], config: &SimConfig) -> Comparison {
    run::compare(&prepared.world, policies, config)
}

/// Replays `trace` for every policy and seed (see the module doc).
pub fn compare(trace: &Trace, policies: &[SimPolicy], config: &SimConfig) -> Comparison {
    run(&prepare(trace, config), policies, config)
}

/// [`compare`] at each of `fills`, the trace prepared once.
pub fn sweep(trace: &Trace, policies: &[SimPolicy], fills: &[f64], config: &SimConfig) -> Sweep {
    let prepared = prepare(trace, config);
    Sweep {
        points: fills
            .iter()
            .map(|&fill| {
                run(
                    &prepared,
                    policies,
                    &SimConfig {
                        fill,
                        ..config.clone()
                    },
                )
            })
            .collect(),
    }
}
