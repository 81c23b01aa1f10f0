//! The rebalancer: which apps to move, where, and why, before a node
//! overloads, while a node drains, or when an edge app's users moved.
//!
//! It only plans; the control plane executes each [`Move`] as a hot
//! migration and records the time of the move, which it passes back as
//! `last_moved` so that an app is not moved again within the cool-down.
//!
//! Two planners share the [`Move`] they return and the limits they obey
//! (a number of moves, seconds of migration time, a cool-down, declared
//! requests never over-committed when asked): [`plan_rebalance`] acts on
//! one expected demand per app (observed or predicted) and evens load out;
//! [`predictive::plan_predictive`] acts on a forecast with its spread,
//! moves and swaps apps to lower each node's chance of overload and its
//! expected unserved CPU and, when the cluster cannot hold the forecast,
//! gathers the overflow on as few nodes as it can.

pub mod error_shape;
pub mod predictive;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, NodeState, Resources};
use crate::cost::{
    migration_cost, migration_seconds, CostWeights, LatencyTable, MigrationInput, Terms,
};

/// Rebalancer tunables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RebalanceConfig {
    /// At most this many moves per call (per interval).
    pub max_moves: usize,
    /// At most this many seconds of migration time per call, each move
    /// counted at its estimated time (the migration cost's T); `None`: no
    /// limit besides `max_moves`.
    pub max_move_seconds: Option<f64>,
    /// An app moved at time `t` is not moved again before `t + cooldown`
    /// (same unit as [`RebalanceInput::now`]).
    pub cooldown: u64,
    /// A node counts as overloaded when its expected demand exceeds this
    /// fraction of its capacity; targets are filled up to it (or, when no
    /// node has room, up to their capacity while staying below the source).
    pub target_utilization: f64,
    /// Whether targets must also fit the apps' declared requests (the
    /// `requests` and `cost` policies never over-commit them).
    pub check_requests: bool,
    /// Move an edge app when a node at least this many ms closer to its
    /// users can take it.
    pub latency_gain_ms: f64,
    /// Cost weights (migration cost chooses the apps, scheduling cost the targets).
    pub weights: CostWeights,
    /// Latency between user locations and nodes.
    pub latency: LatencyTable,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            max_moves: 2,
            max_move_seconds: None,
            cooldown: 10,
            target_utilization: 0.9,
            check_requests: true,
            latency_gain_ms: 10.0,
            weights: CostWeights::default(),
            latency: LatencyTable::default(),
        }
    }
}

/// What changes from one call to the next.
#[derive(Clone, Copy, Debug)]
pub struct RebalanceInput<'a> {
    /// Expected demand of each app in the next interval (predicted, or last
    /// observed); an app missing here counts with its `expected` in the cluster.
    pub demand: &'a BTreeMap<String, Resources>,
    /// Bytes of state of each app (what a migration sends); missing: its
    /// memory demand.
    pub state_bytes: &'a BTreeMap<String, u64>,
    /// When each app was last moved.
    pub last_moved: &'a BTreeMap<String, u64>,
    /// The current time.
    pub now: u64,
}

/// Why an app is moved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum MoveReason {
    /// Expected demand on the source node exceeds its target utilisation.
    Overload {
        /// Expected CPU demand on the source before the move, thousandths of a core.
        expected_cpu_milli: u64,
        /// The source's CPU capacity.
        capacity_cpu_milli: u64,
        /// Expected memory demand on the source before the move, bytes.
        expected_memory_bytes: u64,
        /// The source's memory capacity.
        capacity_memory_bytes: u64,
    },
    /// The forecast says the cluster cannot hold its demand: the overflow
    /// is gathered on as few nodes as possible instead of slowing them all.
    Triage {
        /// Expected CPU demand on the source before the move.
        expected_cpu_milli: u64,
        /// The source's CPU capacity.
        capacity_cpu_milli: u64,
    },
    /// The other half of a swap: moved to make room for the app that took
    /// its place.
    Swap,
    /// The source node is draining.
    Draining,
    /// The app's users are much closer to the target.
    UsersMoved {
        /// Where the users are.
        location: String,
        /// Latency from the source, ms.
        from_ms: f64,
        /// Latency from the target, ms.
        to_ms: f64,
    },
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveReason::Overload {
                expected_cpu_milli,
                capacity_cpu_milli,
                expected_memory_bytes,
                capacity_memory_bytes,
            } => {
                write!(
                    f,
                    "overload: source expected at {expected_cpu_milli}m of {capacity_cpu_milli}m CPU, {} of {} MiB",
                    expected_memory_bytes >> 20,
                    capacity_memory_bytes >> 20
                )
            }
            MoveReason::Triage {
                expected_cpu_milli,
                capacity_cpu_milli,
            } => write!(
                f,
                "triage: source expected at {expected_cpu_milli}m of {capacity_cpu_milli}m CPU and the cluster cannot hold the forecast; the overflow is gathered on few nodes"
            ),
            MoveReason::Swap => f.write_str("swap: makes room for the app taking its place"),
            MoveReason::Draining => f.write_str("source node is draining"),
            MoveReason::UsersMoved {
                location,
                from_ms,
                to_ms,
            } => {
                write!(
                    f,
                    "users at {location}: {from_ms:.0} ms from source, {to_ms:.0} ms from target"
                )
            }
        }
    }
}

/// One planned migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// The app to move.
    pub app: String,
    /// Its current node.
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// Migration cost `C = α·S + β·B + γ·T`.
    pub cost: f64,
    /// The migration cost's terms, plus the target's scheduling cost `target_C`.
    pub terms: Terms,
    /// Why.
    pub reason: MoveReason,
}

struct Plan<'a> {
    cluster: &'a Cluster,
    input: &'a RebalanceInput<'a>,
    cfg: &'a RebalanceConfig,
    /// Expected demand on each node as moves are planned.
    load: Vec<Resources>,
    /// Declared requests on each node as moves are planned.
    requested: Vec<Resources>,
    where_now: BTreeMap<&'a str, usize>,
    moves: Vec<Move>,
    /// Migration seconds of the moves planned so far.
    seconds: f64,
}

/// How much room a target must have.
#[derive(Clone, Copy, PartialEq)]
enum Room {
    /// Stay within `target_utilization`.
    UnderTarget,
    /// Stay within capacity and below the source's current share (evens
    /// out load when every node is above the target).
    BelowSource(f64),
}

impl<'a> Plan<'a> {
    fn demand(&self, app: &str) -> Resources {
        self.input
            .demand
            .get(app)
            .copied()
            .or_else(|| self.cluster.apps.get(app).map(|p| p.expected))
            .unwrap_or_default()
    }

    fn movable(&self, app: &str) -> bool {
        let cooled = self
            .input
            .last_moved
            .get(app)
            .is_none_or(|t| self.input.now >= t.saturating_add(self.cfg.cooldown));
        cooled
            && !self.moves.iter().any(|m| m.app == app)
            && self.cfg.max_move_seconds.is_none_or(|budget| {
                self.seconds + migration_seconds(&self.cfg.weights.migration, &self.state(app))
                    <= budget
            })
    }

    fn limit(&self, node: &NodeState) -> Resources {
        node.capacity.scale(self.cfg.target_utilization)
    }

    fn share(&self, i: usize) -> f64 {
        self.load[i].dominant_share(&self.cluster.nodes[i].capacity)
    }

    fn over(&self, i: usize) -> bool {
        !self.load[i].fits_in(&self.limit(&self.cluster.nodes[i]))
    }

    /// Cheapest target for `app` (scheduling cost `α·T + β·R`), excluding
    /// `from`, with the room asked for; also its scheduling cost.
    fn target(&self, app: &str, from: usize, room: Room) -> Option<(usize, f64)> {
        let spec = &self.cluster.apps[app].spec;
        let demand = self.demand(app);
        let mut best: Option<(usize, f64)> = None;
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            if i == from || !n.schedulable() || !n.matches(&spec.node_selector) {
                continue;
            }
            let after = self.load[i] + demand;
            let ok = match room {
                Room::UnderTarget => after.fits_in(&self.limit(n)),
                Room::BelowSource(source) => {
                    after.fits_in(&n.capacity) && after.dominant_share(&n.capacity) < source
                }
            };
            if !ok
                || (self.cfg.check_requests
                    && !(self.requested[i] + spec.requests).fits_in(&n.capacity))
            {
                continue;
            }
            let t = spec
                .user_location
                .as_deref()
                .map_or(0.0, |l| self.cfg.latency.latency_ms(l, n));
            let c = self
                .cfg
                .weights
                .scheduling
                .cost(t, n.price * after.dominant_share(&n.capacity));
            if best.is_none_or(|(_, bc)| c < bc) {
                best = Some((i, c));
            }
        }
        best
    }

    fn state(&self, app: &str) -> MigrationInput {
        let state = self
            .input
            .state_bytes
            .get(app)
            .copied()
            .unwrap_or(self.demand(app).memory_bytes);
        MigrationInput {
            state_bytes: state,
            dirty_bytes_per_s: 0.0,
        }
    }

    fn migration(&self, app: &str) -> crate::cost::Cost {
        migration_cost(&self.cfg.weights.migration, &self.state(app))
    }

    fn apply(&mut self, app: &'a str, from: usize, to: usize, target_c: f64, reason: MoveReason) {
        let d = self.demand(app);
        let spec = &self.cluster.apps[app].spec;
        self.load[from] = self.load[from].saturating_sub(&d);
        self.load[to] += d;
        self.requested[from] = self.requested[from].saturating_sub(&spec.requests);
        self.requested[to] += spec.requests;
        self.where_now.insert(app, to);
        let cost = self.migration(app);
        self.seconds += cost.terms["T_s"];
        let mut terms = cost.terms;
        terms.insert("target_C".into(), target_c);
        self.moves.push(Move {
            app: app.to_string(),
            from: self.cluster.nodes[from].name.clone(),
            to: self.cluster.nodes[to].name.clone(),
            cost: cost.value,
            terms,
            reason,
        });
    }

    fn apps_on(&self, i: usize) -> Vec<&'a str> {
        self.where_now
            .iter()
            .filter(|(_, n)| **n == i)
            .map(|(a, _)| *a)
            .collect()
    }

    fn full(&self) -> bool {
        self.moves.len() >= self.cfg.max_moves
            || self.cfg.max_move_seconds.is_some_and(|b| self.seconds >= b)
    }

    /// One move off overloaded node `i`, if any helps: the cheapest move
    /// that brings it under the target; else the biggest app that fits
    /// somewhere under the target; else (every node is busy) the biggest
    /// app that fits on a node that stays below this one.
    fn relieve(&self, i: usize) -> Option<(&'a str, usize, f64)> {
        let limit = self.limit(&self.cluster.nodes[i]);
        let source = self.share(i);
        let mut best: Option<(&'a str, usize, f64, f64, u64, bool)> = None;
        for room in [Room::UnderTarget, Room::BelowSource(source)] {
            for app in self.apps_on(i) {
                let d = self.demand(app);
                if d == Resources::ZERO || !self.movable(app) {
                    continue;
                }
                let Some((to, tc)) = self.target(app, i, room) else {
                    continue;
                };
                let mc = self.migration(app).value;
                let fixes = self.load[i].saturating_sub(&d).fits_in(&limit);
                let better = match &best {
                    None => true,
                    Some((_, _, _, bmc, bcpu, bfix)) => match (fixes, *bfix) {
                        (true, false) => true,
                        (false, true) => false,
                        (true, true) => mc < *bmc,
                        (false, false) => {
                            d.cpu_milli > *bcpu || (d.cpu_milli == *bcpu && mc < *bmc)
                        }
                    },
                };
                if better {
                    best = Some((app, to, tc, mc, d.cpu_milli, fixes));
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.map(|(app, to, tc, ..)| (app, to, tc))
    }
}

/// Plans at most `cfg.max_moves` migrations taking at most
/// `cfg.max_move_seconds` in all.
///
/// In order: apps on draining nodes; then, node by node from the most
/// loaded, moves off every node whose expected demand exceeds
/// `target_utilization` — the cheapest move (migration cost) that brings
/// it back under, or else the biggest app that fits elsewhere under the
/// target, or, when every node is that busy, on a node that stays below the
/// source; then edge apps whose users are `latency_gain_ms` closer to
/// another node. Targets must fit declared requests when `check_requests`.
/// Apps moved within the cool-down are left alone.
pub fn plan_rebalance(
    cluster: &Cluster,
    input: &RebalanceInput<'_>,
    cfg: &RebalanceConfig,
) -> Vec<Move> {
    let index: HashMap<&str, usize> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let where_now: BTreeMap<&str, usize> = cluster
        .apps
        .iter()
        .filter_map(|(a, p)| index.get(p.node.as_str()).map(|i| (a.as_str(), *i)))
        .collect();
    let mut plan = Plan {
        cluster,
        input,
        cfg,
        load: vec![Resources::ZERO; cluster.nodes.len()],
        requested: cluster.nodes.iter().map(|n| n.requested).collect(),
        where_now,
        moves: Vec::new(),
        seconds: 0.0,
    };
    let entries: Vec<(&str, usize)> = plan.where_now.iter().map(|(a, i)| (*a, *i)).collect();
    for (app, i) in entries {
        let d = plan.demand(app);
        plan.load[i] += d;
    }
    if cfg.max_moves == 0 {
        return plan.moves;
    }

    // 1. Draining nodes.
    for i in 0..cluster.nodes.len() {
        if !cluster.nodes[i].draining {
            continue;
        }
        for app in plan.apps_on(i) {
            if plan.full() {
                return plan.moves;
            }
            if !plan.movable(app) {
                continue;
            }
            let found = plan
                .target(app, i, Room::UnderTarget)
                .or_else(|| plan.target(app, i, Room::BelowSource(f64::INFINITY)));
            if let Some((to, c)) = found {
                plan.apply(app, i, to, c, MoveReason::Draining);
            }
        }
    }

    // 2. Overloaded nodes, most loaded first.
    let mut order: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| plan.over(i)).collect();
    order.sort_by(|&a, &b| plan.share(b).total_cmp(&plan.share(a)).then(a.cmp(&b)));
    for i in order {
        let node = &cluster.nodes[i];
        while plan.over(i) && !plan.full() {
            let before = plan.load[i];
            let Some((app, to, tc)) = plan.relieve(i) else {
                break;
            };
            let reason = MoveReason::Overload {
                expected_cpu_milli: before.cpu_milli,
                capacity_cpu_milli: node.capacity.cpu_milli,
                expected_memory_bytes: before.memory_bytes,
                capacity_memory_bytes: node.capacity.memory_bytes,
            };
            plan.apply(app, i, to, tc, reason);
        }
    }

    // 3. Edge apps whose users are elsewhere.
    for (name, placed) in &cluster.apps {
        if plan.full() {
            break;
        }
        let Some(loc) = placed.spec.user_location.as_deref() else {
            continue;
        };
        let Some(&from) = plan.where_now.get(name.as_str()) else {
            continue;
        };
        if !plan.movable(name) {
            continue;
        }
        let from_ms = cfg.latency.latency_ms(loc, &cluster.nodes[from]);
        let d = plan.demand(name);
        let mut best: Option<(usize, f64, f64)> = None;
        for (i, n) in cluster.nodes.iter().enumerate() {
            if i == from || !n.schedulable() || !n.matches(&placed.spec.node_selector) {
                continue;
            }
            let after = plan.load[i] + d;
            if !after.fits_in(&plan.limit(n)) {
                continue;
            }
            if cfg.check_requests
                && !(plan.requested[i] + placed.spec.requests).fits_in(&n.capacity)
            {
                continue;
            }
            let ms = cfg.latency.latency_ms(loc, n);
            if best.is_none_or(|(_, bms, _)| ms < bms) {
                let c = cfg
                    .weights
                    .scheduling
                    .cost(ms, n.price * after.dominant_share(&n.capacity));
                best = Some((i, ms, c));
            }
        }
        if let Some((to, to_ms, c)) = best {
            if from_ms - to_ms >= cfg.latency_gain_ms {
                let reason = MoveReason::UsersMoved {
                    location: loc.to_string(),
                    from_ms,
                    to_ms,
                };
                plan.apply(name, from, to, c, reason);
            }
        }
    }
    plan.moves
}
