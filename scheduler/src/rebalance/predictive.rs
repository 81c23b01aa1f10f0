//! The predictive rebalancer: moves apps before a forecast overload, and
//! triages when the forecast says the cluster cannot hold everything
//! ([`plan_predictive`]); and the capacity the forecast asks for
//! ([`capacity_advice`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use super::error_shape::{
    ErrorShape, ERROR_SHAPE_MIN, ERROR_SHAPE_PERIODS, MAX_STANDARD_ERROR,
};
use super::{Move, MoveReason};
use crate::cluster::{Cluster, Resources};
use crate::cost::{migration_cost, CostWeights, MigrationInput};

/// An app's forecast for the next interval, as the predictive rebalancer
/// takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppForecast {
    /// Expected CPU demand, thousandths of a core.
    pub cpu_mean: f64,
    /// Variance of the CPU demand (thousandths of a core, squared).
    pub cpu_var: f64,
    /// Memory the app will hold, bytes.
    pub memory_bytes: u64,
}

impl AppForecast {
    /// A forecast without spread (a known demand).
    pub fn exact(demand: Resources) -> Self {
        AppForecast {
            cpu_mean: demand.cpu_milli as f64,
            cpu_var: 0.0,
            memory_bytes: demand.memory_bytes,
        }
    }
}

/// Tunables of the predictive rebalancer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictiveConfig {
    /// At most this many moves per call (a swap is two).
    pub max_moves: usize,
    /// At most this many seconds of migration time per call (each move at
    /// the migration cost's T); `None`: no limit besides `max_moves`.
    pub max_move_seconds: Option<f64>,
    /// An app moved at `t` is not moved again before `t + cooldown`.
    pub cooldown: u64,
    /// What an overloaded node-interval weighs against unserved CPU, as a
    /// share of the node's CPU capacity: with 0.1, overloading a node of
    /// 4 cores is as bad as leaving 400 millicores of demand unserved.
    pub overload_weight: f64,
    /// Whether targets must also fit the apps' declared requests.
    pub check_requests: bool,
    /// Migration cost weights (the cost and time of each move).
    pub weights: CostWeights,
    /// Seconds the forecast interval lasts: a move's copying keeps a core
    /// busy at both ends for T, which is `T / interval_seconds` of a core
    /// over the interval (the simulator's minute: 60).
    pub interval_seconds: f64,
}

impl Default for PredictiveConfig {
    fn default() -> Self {
        PredictiveConfig {
            max_moves: 20,
            max_move_seconds: None,
            cooldown: 2,
            overload_weight: 0.1,
            check_requests: true,
            weights: CostWeights::default(),
            interval_seconds: 60.0,
        }
    }
}

/// What changes from one call to the next.
#[derive(Clone, Copy, Debug)]
pub struct PredictiveInput<'a> {
    /// Every app's forecast; an app missing here counts with its
    /// `expected` demand in the cluster and no spread.
    pub forecast: &'a BTreeMap<String, AppForecast>,
    /// Bytes of state of each app (what a migration sends); missing: its
    /// forecast memory.
    pub state_bytes: &'a BTreeMap<String, u64>,
    /// When each app was last moved.
    pub last_moved: &'a BTreeMap<String, u64>,
    /// The current time.
    pub now: u64,
    /// How the forecasts' errors at node level have been distributed
    /// (see [`ErrorShape`]); `None`: normal.
    pub error_shape: Option<&'a ErrorShape>,
}

/// `Q(k) = P(Z > k)` for a standard normal `Z` (erfc by Chebyshev fit,
/// relative error below 1.2e-7; Numerical Recipes' `erfcc`).
fn normal_tail(k: f64) -> f64 {
    let x = k / std::f64::consts::SQRT_2;
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
    erfc / 2.0
}

/// Expected cost of a node whose CPU demand is normal with `mean` and
/// `var` against `capacity`: `weight · P(overload) + E[unserved]`, in
/// millicores. Memory over capacity counts as certain overload with the
/// whole node unserved.
fn node_cost(
    mean: f64,
    var: f64,
    capacity: f64,
    weight: f64,
    memory_over: bool,
    shape: Option<&ErrorShape>,
) -> f64 {
    if memory_over {
        return weight + capacity + mean.max(0.0);
    }
    let gap = capacity - mean;
    if var <= 1e-9 {
        return if gap < -1e-6 { weight - gap } else { 0.0 };
    }
    let sd = var.sqrt();
    let k = gap / sd;
    if let Some(shape) = shape.filter(|s| !s.is_empty()) {
        let (tail, excess) = shape.tail(k);
        return weight * tail + sd * excess;
    }
    if k > 8.0 {
        // P(overload) below 1e-15.
        return 0.0;
    }
    let tail = normal_tail(k);
    let density = (-0.5 * k * k).exp() / (2.0 * std::f64::consts::PI).sqrt();
    weight * tail + (sd * density - gap * tail).max(0.0)
}

struct Node {
    capacity: f64,
    memory_capacity: u64,
    mean: f64,
    var: f64,
    memory: u64,
    requested: Resources,
    /// Per group (by index), the sum of its apps' standard deviations here.
    group_sd: Vec<f64>,
}

struct App<'a> {
    name: &'a str,
    node: usize,
    forecast: AppForecast,
    sd: f64,
    /// Replicas of one group share its load, so their errors are one: the
    /// group's standard deviations add up on a node (not their variances).
    /// `None`: the app errs on its own.
    group: Option<usize>,
    requests: Resources,
    seconds: f64,
    cost: crate::cost::Cost,
    /// The CPU its move takes at each end (a core for T, spread over the
    /// interval), millicores: added to the load of both nodes a move touches.
    copy: f64,
    /// The CPU its move takes (both ends copy for T), in the objective's units.
    price: f64,
    /// Whether its cool-down is over.
    cooled: bool,
    /// Whether it moved in this plan.
    moved: bool,
    /// The nodes that are schedulable and carry the labels it needs.
    eligible: Vec<bool>,
}

/// A change to the assignment: one app moved, or two swapped.
#[derive(Clone, Copy)]
enum Step {
    Move {
        app: usize,
        to: usize,
    },
    Swap {
        a: usize,
        b: usize,
    },
    /// `a` moves to `to`, and `b` takes its place on `a`'s node.
    Chain {
        a: usize,
        to: usize,
        b: usize,
    },
}

struct Plan<'a> {
    cluster: &'a Cluster,
    cfg: &'a PredictiveConfig,
    nodes: Vec<Node>,
    apps: Vec<App<'a>>,
    on: Vec<Vec<usize>>,
    seconds: f64,
    moves: Vec<Move>,
    shape: Option<&'a ErrorShape>,
}

impl<'a> Plan<'a> {
    fn new(
        cluster: &'a Cluster,
        input: &PredictiveInput<'a>,
        cfg: &'a PredictiveConfig,
    ) -> Plan<'a> {
        let index: HashMap<&str, usize> = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut nodes: Vec<Node> = cluster
            .nodes
            .iter()
            .map(|n| Node {
                capacity: n.capacity.cpu_milli as f64,
                memory_capacity: n.capacity.memory_bytes,
                mean: 0.0,
                var: 0.0,
                memory: 0,
                requested: n.requested,
                group_sd: Vec::new(),
            })
            .collect();
        let mut groups: HashMap<&str, usize> = HashMap::new();
        for placed in cluster.apps.values() {
            if let Some(g) = &placed.spec.group {
                let next = groups.len();
                groups.entry(g.as_str()).or_insert(next);
            }
        }
        for n in &mut nodes {
            n.group_sd = vec![0.0; groups.len()];
        }
        let mut apps = Vec::with_capacity(cluster.apps.len());
        let mut on = vec![Vec::new(); nodes.len()];
        for (name, placed) in &cluster.apps {
            let Some(&node) = index.get(placed.node.as_str()) else {
                continue;
            };
            let forecast = input
                .forecast
                .get(name)
                .copied()
                .unwrap_or_else(|| AppForecast::exact(placed.expected));
            let sd = forecast.cpu_var.max(0.0).sqrt();
            let group = placed.spec.group.as_deref().map(|g| groups[g]);
            let n = &mut nodes[node];
            match group {
                None => n.var += sd * sd,
                Some(g) => {
                    let s = n.group_sd[g];
                    n.var += (s + sd) * (s + sd) - s * s;
                    n.group_sd[g] = s + sd;
                }
            }
            n.mean += forecast.cpu_mean;
            n.memory += forecast.memory_bytes;
            let state = MigrationInput {
                state_bytes: input
                    .state_bytes
                    .get(name)
                    .copied()
                    .unwrap_or(forecast.memory_bytes),
                dirty_bytes_per_s: 0.0,
            };
            let cost = migration_cost(&cfg.weights.migration, &state);
            let seconds = cost.terms["T_s"];
            let copy = seconds * 1000.0 / cfg.interval_seconds.max(1e-3);
            on[node].push(apps.len());
            let cooled = input
                .last_moved
                .get(name)
                .is_none_or(|t| input.now >= t.saturating_add(cfg.cooldown));
            apps.push(App {
                name: name.as_str(),
                node,
                forecast,
                sd,
                group,
                requests: placed.spec.requests,
                seconds,
                copy,
                price: 2.0 * copy,
                cost,
                cooled,
                moved: false,
                eligible: cluster
                    .nodes
                    .iter()
                    .map(|n| n.schedulable() && n.matches(&placed.spec.node_selector))
                    .collect(),
            });
        }
        Plan {
            cluster,
            cfg,
            nodes,
            apps,
            on,
            seconds: 0.0,
            moves: Vec::new(),
            shape: input.error_shape,
        }
    }

    fn weight(&self, i: usize) -> f64 {
        self.cfg.overload_weight * self.nodes[i].capacity
    }

    /// Node `i`'s variance with app `add` added and `remove` taken away.
    fn var_with(&self, i: usize, add: Option<usize>, remove: Option<usize>) -> f64 {
        let n = &self.nodes[i];
        let mut var = n.var;
        // (group, its sd here) of a changed group, to see both changes.
        let mut touched: Option<(usize, f64)> = None;
        for (app, sign) in [(remove, -1.0), (add, 1.0)] {
            let Some(a) = app else {
                continue;
            };
            let sd = self.apps[a].sd;
            match self.apps[a].group {
                None => var += sign * sd * sd,
                Some(g) => {
                    let s = match touched {
                        Some((tg, ts)) if tg == g => ts,
                        _ => n.group_sd[g],
                    };
                    let after = (s + sign * sd).max(0.0);
                    var += after * after - s * s;
                    touched = Some((g, after));
                }
            }
        }
        var.max(0.0)
    }

    /// The node's cost with app `add` moved in and `remove` moved out; each
    /// of those moves also loads the node with its copying.
    fn cost_with(&self, i: usize, add: Option<usize>, remove: Option<usize>) -> f64 {
        let n = &self.nodes[i];
        let mut mean = n.mean;
        let mut mem = n.memory as i128;
        if let Some(a) = add {
            mean += self.apps[a].forecast.cpu_mean + self.apps[a].copy;
            mem += self.apps[a].forecast.memory_bytes as i128;
        }
        if let Some(r) = remove {
            mean -= self.apps[r].forecast.cpu_mean - self.apps[r].copy;
            mem -= self.apps[r].forecast.memory_bytes as i128;
        }
        node_cost(
            mean,
            self.var_with(i, add, remove),
            n.capacity,
            self.weight(i),
            mem > n.memory_capacity as i128,
            self.shape,
        )
    }

    fn cost(&self, i: usize) -> f64 {
        self.cost_with(i, None, None)
    }

    fn moves_left(&self) -> usize {
        self.cfg.max_moves.saturating_sub(self.moves.len())
    }

    fn movable(&self, a: usize, extra_seconds: f64) -> bool {
        let app = &self.apps[a];
        app.cooled
            && !app.moved
            && self
                .cfg
                .max_move_seconds
                .is_none_or(|b| self.seconds + app.seconds + extra_seconds <= b + 1e-12)
    }

    /// Whether node `j` may hold app `a` in place of `instead` (labels,
    /// health, memory, declared requests).
    fn may_take(&self, j: usize, a: usize, instead: Option<usize>) -> bool {
        let app = &self.apps[a];
        let n = &self.nodes[j];
        let (freed_mem, freed_req) = instead.map_or((0, Resources::ZERO), |b| {
            (self.apps[b].forecast.memory_bytes, self.apps[b].requests)
        });
        j != app.node
            && app.eligible[j]
            && n.memory.saturating_sub(freed_mem) + app.forecast.memory_bytes <= n.memory_capacity
            && (!self.cfg.check_requests
                || (n.requested.saturating_sub(&freed_req) + app.requests)
                    .fits_in(&self.cluster.nodes[j].capacity))
    }

    /// The step that lowers the cluster's cost the most net of its price.
    fn best_step(&self) -> Option<Step> {
        let n = self.nodes.len();
        let costs: Vec<f64> = (0..n).map(|i| self.cost(i)).collect();
        let cheapest = self
            .apps
            .iter()
            .map(|a| a.price)
            .fold(f64::INFINITY, f64::min);
        let mut best: Option<(Step, f64)> = None;
        let better = |best: &Option<(Step, f64)>, gain: f64| {
            gain > 1e-9 && best.is_none_or(|(_, g)| gain > g)
        };
        for i in 0..n {
            // A step off node `i` gains at most what `i` costs.
            if costs[i] <= cheapest {
                continue;
            }
            let memory_over = self.nodes[i].memory > self.nodes[i].memory_capacity;
            for &a in &self.on[i] {
                let app = &self.apps[a];
                if !self.movable(a, 0.0) || costs[i] <= app.price {
                    continue;
                }
                let without = self.cost_with(i, None, Some(a));
                for j in 0..n {
                    if j == i || !app.eligible[j] {
                        continue;
                    }
                    if self.may_take(j, a, None) {
                        let cj = self.cost_with(j, Some(a), None);
                        let gain = costs[i] + costs[j] - without - cj - app.price;
                        if better(&best, gain) {
                            best = Some((Step::Move { app: a, to: j }, gain));
                        }
                        if self.moves_left() >= 2 {
                            let floor = best.as_ref().map_or(1e-9, |b| b.1);
                            if let Some((step, g)) =
                                self.best_chain(a, j, &costs, without, cj, cheapest, floor)
                            {
                                if better(&best, g) {
                                    best = Some((step, g));
                                }
                            }
                        }
                    }
                    if self.moves_left() < 2 {
                        continue;
                    }
                    // A swap leaves `i` at `without` or more and `j` at no
                    // less than nothing: skip `j` when that cannot win.
                    let bound = costs[i] - without + costs[j] - app.price - cheapest;
                    if !better(&best, bound) {
                        continue;
                    }
                    for &b in &self.on[j] {
                        let other = &self.apps[b];
                        // Swapping in something at least as big does not help.
                        if (!memory_over && other.forecast.cpu_mean >= app.forecast.cpu_mean)
                            || (memory_over
                                && other.forecast.memory_bytes >= app.forecast.memory_bytes)
                            || !self.movable(b, app.seconds)
                            || !self.may_take(j, a, Some(b))
                            || !self.may_take(i, b, Some(a))
                            // One of the two moves must fit before the
                            // other leaves: a swap of two apps that each
                            // need the other's room cannot be carried out.
                            || !(self.may_take(j, a, None) || self.may_take(i, b, None))
                        {
                            continue;
                        }
                        let gain = costs[i] + costs[j]
                            - self.cost_with(i, Some(b), Some(a))
                            - self.cost_with(j, Some(a), Some(b))
                            - app.price
                            - other.price;
                        if better(&best, gain) {
                            best = Some((Step::Swap { a, b }, gain));
                        }
                    }
                }
            }
        }
        best.map(|(step, _)| step)
    }

    /// The best chain that moves `a` to `j` and refills `a`'s node with an
    /// app from a third node that costs something, and its gain, if it
    /// gains more than `floor`.
    #[allow(clippy::too_many_arguments)]
    fn best_chain(
        &self,
        a: usize,
        j: usize,
        costs: &[f64],
        without: f64,
        cj: f64,
        cheapest: f64,
        floor: f64,
    ) -> Option<(Step, f64)> {
        let app = &self.apps[a];
        let i = app.node;
        let head = costs[i] - without + costs[j] - cj - app.price;
        let mut best: Option<(Step, f64)> = None;
        for k in 0..self.nodes.len() {
            if k == i || k == j || costs[k] <= cheapest {
                continue;
            }
            // `i` ends at `without` or more, `k` at no less than nothing.
            if head + costs[k] - cheapest <= best.as_ref().map_or(floor, |b| b.1) {
                continue;
            }
            for &b in &self.on[k] {
                let other = &self.apps[b];
                if other.forecast.cpu_mean <= 0.0
                    || other.forecast.cpu_mean >= app.forecast.cpu_mean
                    || !self.movable(b, app.seconds)
                    || !self.may_take(i, b, Some(a))
                {
                    continue;
                }
                let gain = costs[i] + costs[j] + costs[k]
                    - self.cost_with(i, Some(b), Some(a))
                    - cj
                    - self.cost_with(k, None, Some(b))
                    - app.price
                    - other.price;
                if gain > floor && best.as_ref().is_none_or(|x| gain > x.1) {
                    best = Some((Step::Chain { a, to: j, b }, gain));
                }
            }
        }
        best
    }

    fn apply(&mut self, a: usize, to: usize, reason: MoveReason) {
        let from = self.apps[a].node;
        let f = self.apps[a].forecast;
        let (sd, group) = (self.apps[a].sd, self.apps[a].group);
        let req = self.apps[a].requests;
        for (i, sign) in [(from, -1.0), (to, 1.0)] {
            let n = &mut self.nodes[i];
            match group {
                None => n.var += sign * sd * sd,
                Some(g) => {
                    let s = n.group_sd[g];
                    let after = (s + sign * sd).max(0.0);
                    n.var += after * after - s * s;
                    n.group_sd[g] = after;
                }
            }
            n.var = n.var.max(0.0);
            // The app's demand leaves one node for the other; the copying
            // loads both for this interval.
            n.mean += sign * f.cpu_mean + self.apps[a].copy;
        }
        {
            let n = &mut self.nodes[from];
            n.memory = n.memory.saturating_sub(f.memory_bytes);
            n.requested = n.requested.saturating_sub(&req);
        }
        {
            let n = &mut self.nodes[to];
            n.memory += f.memory_bytes;
            n.requested += req;
        }
        self.on[from].retain(|&x| x != a);
        self.on[to].push(a);
        self.apps[a].node = to;
        self.apps[a].moved = true;
        self.seconds += self.apps[a].seconds;
        let cost = self.apps[a].cost.clone();
        self.moves.push(Move {
            app: self.apps[a].name.to_string(),
            from: self.cluster.nodes[from].name.clone(),
            to: self.cluster.nodes[to].name.clone(),
            cost: cost.value,
            terms: cost.terms,
            reason,
        });
    }

    fn reason(&self, i: usize) -> MoveReason {
        let n = &self.nodes[i];
        let expected = n.mean.max(0.0).round() as u64;
        let demand: f64 = self.nodes.iter().map(|m| m.mean).sum();
        let capacity: f64 = self.nodes.iter().map(|m| m.capacity).sum();
        if n.mean > n.capacity && demand > capacity {
            MoveReason::Triage {
                expected_cpu_milli: expected,
                capacity_cpu_milli: n.capacity as u64,
            }
        } else {
            MoveReason::Overload {
                expected_cpu_milli: expected,
                capacity_cpu_milli: n.capacity as u64,
                expected_memory_bytes: n.memory,
                capacity_memory_bytes: n.memory_capacity,
            }
        }
    }
}

/// Plans moves from forecasts with their spread.
///
/// Each node's CPU demand is taken as normal, with the sum of its apps'
/// expected demands as mean; apps' errors are taken as independent, except
/// that replicas of one group (which share its load) err together, so the
/// variance is the sum over groups of the square of their standard
/// deviations summed. With exact forecasts it is the demand itself. Given
/// an [`ErrorShape`] (`input.error_shape`), a node's demand is instead its
/// mean plus its standard deviation times an error drawn from that shape,
/// so that forecasts that have erred by bursts are weighed as they erred.
/// A node costs `overload_weight × capacity × P(overload)` plus its
/// expected unserved CPU. A move's copying loads both its nodes for the
/// interval (a core for the move's T), and the plan counts that load as the
/// simulator charges it. Step by step, the planner takes the step off a
/// node that costs something that lowers the cluster's cost the most, net
/// of the CPU the migrations themselves take, until no step gains or the
/// limits are reached. A step is the move of one app, the swap of two, or
/// a chain: one app moved and another, from a third node that costs
/// something, moved into the room it leaves (what triage needs when the
/// app that should leave a node is bigger than that node's excess: moved
/// alone, it would waste the rest of the room it frees).
///
/// This keeps room where forecasts are uncertain, packs what is certain,
/// and triages: when the forecast says the cluster cannot hold everything,
/// spreading the overflow over many nodes costs an overload on each, so
/// the overflow is gathered on as few nodes as the unserved CPU allows.
///
/// Every move respects the same limits as [`super::plan_rebalance`]: at
/// most `max_moves` moves and `max_move_seconds` of migration time, no
/// app moved again within `cooldown`, only to schedulable nodes with the
/// labels it needs and the memory, and, with `check_requests`, never
/// beyond a node's capacity in declared requests.
pub fn plan_predictive(
    cluster: &Cluster,
    input: &PredictiveInput<'_>,
    cfg: &PredictiveConfig,
) -> Vec<Move> {
    let mut plan = Plan::new(cluster, input, cfg);

    while plan.moves_left() > 0 {
        let Some(step) = plan.best_step() else {
            break;
        };
        match step {
            Step::Move { app, to } => {
                let reason = plan.reason(plan.apps[app].node);
                plan.apply(app, to, reason);
            }
            Step::Swap { a, b } => {
                // The move that fits before the other leaves goes first,
                // so that no node holds more than it can at any point of
                // the plan (`best_step` only offers swaps where one does).
                let (i, j) = (plan.apps[a].node, plan.apps[b].node);
                let reason = plan.reason(i);
                if plan.may_take(j, a, None) {
                    plan.apply(a, j, reason);
                    plan.apply(b, i, MoveReason::Swap);
                } else {
                    plan.apply(b, i, MoveReason::Swap);
                    plan.apply(a, j, reason);
                }
            }
            Step::Chain { a, to, b } => {
                let (i, k) = (plan.apps[a].node, plan.apps[b].node);
                let reason = plan.reason(i);
                plan.apply(a, to, reason);
                let reason = plan.reason(k);
                plan.apply(b, i, reason);
            }
        }
    }
    plan.moves
}

/// The cluster's cost as [`plan_predictive`] weighs it: over the nodes,
/// `overload_weight × capacity × P(overload)` plus the expected unserved
/// CPU (millicores), from the forecasts in `input`. A plan never raises it.
pub fn expected_cost(
    cluster: &Cluster,
    input: &PredictiveInput<'_>,
    cfg: &PredictiveConfig,
) -> f64 {
    let plan = Plan::new(cluster, input, cfg);
    (0..plan.nodes.len()).map(|i| plan.cost(i)).sum()
}

/// Each node's expected CPU demand and its variance as [`plan_predictive`]
/// reckons them from `input`'s forecasts, in the cluster's node order.
pub fn node_forecasts(
    cluster: &Cluster,
    input: &PredictiveInput<'_>,
    cfg: &PredictiveConfig,
) -> Vec<(f64, f64)> {
    let plan = Plan::new(cluster, input, cfg);
    plan.nodes.iter().map(|n| (n.mean, n.var)).collect()
}

/// Whether the cluster needs more nodes, by the forecast: what an operator
/// or an autoscaler hook can act on before the demand arrives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityAdvice {
    /// The cluster's upper forecast of CPU demand: the sum of expected
    /// demands plus `z` standard deviations of the sum.
    pub forecast_cpu_milli: f64,
    /// CPU of the schedulable nodes.
    pub capacity_cpu_milli: u64,
    /// Nodes of the median schedulable node's size to add so that the upper
    /// forecast fits (0: it fits).
    pub extra_nodes: usize,
}

/// Compares the cluster's upper forecast with its schedulable CPU (the
/// replicas of a group err together, as in [`plan_predictive`]).
pub fn capacity_advice(
    cluster: &Cluster,
    forecast: &BTreeMap<String, AppForecast>,
    z: f64,
) -> CapacityAdvice {
    let mut mean = 0.0;
    let mut var = 0.0;
    let mut group_sd: HashMap<&str, f64> = HashMap::new();
    for (name, placed) in &cluster.apps {
        let f = forecast
            .get(name)
            .copied()
            .unwrap_or_else(|| AppForecast::exact(placed.expected));
        mean += f.cpu_mean;
        match &placed.spec.group {
            Some(g) => *group_sd.entry(g.as_str()).or_insert(0.0) += f.cpu_var.max(0.0).sqrt(),
            None => var += f.cpu_var.max(0.0),
        }
    }
    var += group_sd.values().map(|s| s * s).sum::<f64>();
    let upper = mean + z * var.max(0.0).sqrt();
    let mut sizes: Vec<u64> = cluster
        .nodes
        .iter()
        .filter(|n| n.schedulable())
        .map(|n| n.capacity.cpu_milli)
        .collect();
    sizes.sort_unstable();
    let capacity: u64 = sizes.iter().sum();
    let typical = sizes.get(sizes.len() / 2).copied().unwrap_or(0).max(1);
    let short = upper - capacity as f64;
    CapacityAdvice {
        forecast_cpu_milli: upper,
        capacity_cpu_milli: capacity,
        extra_nodes: if short > 0.0 {
            (short / typical as f64).ceil() as usize
        } else {
            0
        },
    }
}
