//! The replay: one policy, one seed, minute by minute; then the means and
//! ranges over seeds.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::cluster::{Cluster, Resources};
use crate::cost::LatencyTable;
use crate::placement::{place, PlacementContext};
use crate::rebalance::predictive::{
    capacity_advice, node_forecasts, plan_predictive, AppForecast, ErrorShape, PredictiveConfig,
    PredictiveInput,
};
use crate::rebalance::{plan_rebalance, Move, RebalanceConfig, RebalanceInput};

use super::world::{Fleet, TraceData};
use super::{
    CapacityCheck, Comparison, Gain, PolicyResult, PolicyRun, Ranges, RuleAudit, Rules, SimConfig,
    SimPolicy, SimSetup,
};

/// Minutes of node-level forecast errors a planning policy weighs its
/// risks by, and how many it needs first (the live control plane's too).
use crate::rebalance::predictive::{
    ERROR_SHAPE_MIN as SHAPE_MIN_ERRORS, ERROR_SHAPE_PERIODS as SHAPE_MINUTES,
};

pub(crate) fn compare(data: &TraceData, policies: &[SimPolicy], config: &SimConfig) -> Comparison {
    let fleet = Fleet::new(data, config);
    let seeds: Vec<u64> = (0..config.seeds.max(1) as u64)
        .map(|k| config.seed.wrapping_add(k))
        .collect();
    let results: Vec<PolicyResult> = policies
        .iter()
        .map(|&p| {
            let runs = seeds
                .iter()
                .map(|&s| run_policy(data, &fleet, p, s, config))
                .collect();
            aggregate(p, runs)
        })
        .collect();
    let n_nodes = fleet.nodes.len();
    let total_cap = fleet.capacity.cpu_milli as f64 * n_nodes as f64;
    let replayed = data.minutes - data.history;
    let totals: Vec<f64> = (data.history..data.minutes)
        .map(|t| data.demand.iter().map(|s| s[t]).sum::<f64>())
        .collect();
    let setup = SimSetup {
        functions: data.functions,
        apps: fleet.replicas.len(),
        minutes: data.minutes,
        history_minutes: data.history,
        replayed_minutes: replayed,
        nodes: n_nodes,
        node_capacity: fleet.capacity,
        fill: config.fill,
        demand_to_capacity: totals.iter().sum::<f64>()
            / replayed.max(1) as f64
            / total_cap.max(1.0),
        short_minutes: totals.iter().filter(|&&d| d > total_cap).count(),
        seeds,
        rules: Rules {
            max_moves_per_minute: config.max_moves_per_minute,
            move_seconds_per_minute: config.move_seconds_per_minute,
            cooldown_minutes: config.cooldown_minutes,
            requests_within_capacity: true,
        },
    };
    let find = |p: SimPolicy| results.iter().find(|r| r.policy == p);
    let gain = match (
        find(SimPolicy::Requests),
        find(SimPolicy::Learned),
        find(SimPolicy::Oracle),
    ) {
        (Some(r), Some(l), Some(o)) => {
            let reduction = |base: f64, x: f64| if base > 0.0 { 1.0 - x / base } else { 0.0 };
            let share = |base: f64, x: f64, best: f64| {
                (base - best > 1e-9).then(|| (base - x) / (base - best))
            };
            Some(Gain {
                overload_reduction: reduction(r.overload_minutes, l.overload_minutes),
                unserved_reduction: reduction(r.unserved_cpu, l.unserved_cpu),
                oracle_share_overload: share(
                    r.overload_minutes,
                    l.overload_minutes,
                    o.overload_minutes,
                ),
                oracle_share_unserved: share(r.unserved_cpu, l.unserved_cpu, o.unserved_cpu),
            })
        }
        _ => None,
    };
    Comparison {
        setup,
        policies: results,
        gain,
        predictor: data.report.clone(),
    }
}

fn aggregate(policy: SimPolicy, runs: Vec<PolicyRun>) -> PolicyResult {
    let n = runs.len().max(1) as f64;
    let mean = |f: &dyn Fn(&PolicyRun) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let range = |f: &dyn Fn(&PolicyRun) -> f64| {
        let lo = runs.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = runs.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if runs.is_empty() {
            [0.0, 0.0]
        } else {
            [lo, hi]
        }
    };
    PolicyResult {
        policy,
        overload_minutes: mean(&|r| r.overload_minutes as f64),
        unserved_cpu: mean(&|r| r.unserved_cpu),
        slo_misses: mean(&|r| r.slo_misses as f64),
        migrations: mean(&|r| r.migrations as f64),
        migration_cost: mean(&|r| r.migration_cost),
        migration_seconds: mean(&|r| r.migration_seconds),
        mean_utilization: mean(&|r| r.mean_utilization),
        nodes_used: mean(&|r| r.nodes_used as f64),
        unplaced_app_minutes: mean(&|r| r.unplaced_app_minutes as f64),
        mean_latency_ms: mean(&|r| r.mean_latency_ms),
        node_estimate_mae: mean(&|r| r.node_estimate_mae),
        range: Ranges {
            overload_minutes: range(&|r| r.overload_minutes as f64),
            unserved_cpu: range(&|r| r.unserved_cpu),
            slo_misses: range(&|r| r.slo_misses as f64),
            migrations: range(&|r| r.migrations as f64),
            migration_cost: range(&|r| r.migration_cost),
            mean_utilization: range(&|r| r.mean_utilization),
        },
        runs,
    }
}

/// One replay of `policy` with `seed`.
fn run_policy(
    data: &TraceData,
    fleet: &Fleet,
    policy: SimPolicy,
    seed: u64,
    config: &SimConfig,
) -> PolicyRun {
    let (specs, arrival) = fleet.seeded(data, seed, config.zones);
    let reps = &fleet.replicas;
    let mut cluster = Cluster::new(fleet.nodes.clone());
    let latency = LatencyTable::default();
    let mut ctx = PlacementContext {
        weights: config.weights.clone(),
        latency: latency.clone(),
        predicted_demand: None,
        explain_top: 1,
        check_requests: true,
    };
    let reactive = RebalanceConfig {
        max_moves: config.max_moves_per_minute,
        max_move_seconds: Some(config.move_seconds_per_minute),
        cooldown: config.cooldown_minutes,
        target_utilization: config.target_utilization,
        check_requests: true,
        latency_gain_ms: f64::INFINITY,
        weights: config.weights.clone(),
        latency: latency.clone(),
    };
    let predictive = PredictiveConfig {
        max_moves: config.max_moves_per_minute,
        max_move_seconds: Some(config.move_seconds_per_minute),
        cooldown: config.cooldown_minutes,
        overload_weight: config.overload_weight,
        check_requests: true,
        weights: config.weights.clone(),
        interval_seconds: 60.0,
    };
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let state_bytes: BTreeMap<String, u64> = specs
        .iter()
        .map(|s| (s.name.clone(), s.requests.memory_bytes))
        .collect();
    let actual = |ri: usize, t: usize| data.demand[reps[ri].function][t] * reps[ri].share;
    let memory = |ri: usize| specs[ri].requests.memory_bytes;
    // What the policy believes app `ri` will need in minute `t` (its mean).
    let forecast = |ri: usize, t: usize| -> AppForecast {
        match policy {
            SimPolicy::Requests | SimPolicy::Cost => AppForecast {
                cpu_mean: actual(ri, t - 1),
                cpu_var: 0.0,
                memory_bytes: memory(ri),
            },
            SimPolicy::Learned => {
                let f = data.forecast[reps[ri].function][t - data.history];
                let share = reps[ri].share;
                AppForecast {
                    cpu_mean: f.mean * share,
                    cpu_var: (f.std_dev * share).powi(2),
                    memory_bytes: memory(ri),
                }
            }
            SimPolicy::Oracle => AppForecast {
                cpu_mean: actual(ri, t),
                cpu_var: 0.0,
                memory_bytes: memory(ri),
            },
            SimPolicy::Observed => {
                let f = data.last[reps[ri].function][t - data.history];
                let share = reps[ri].share;
                AppForecast {
                    cpu_mean: f.mean * share,
                    cpu_var: (f.std_dev * share).powi(2),
                    memory_bytes: memory(ri),
                }
            }
        }
    };
    let as_resources = |f: &AppForecast| Resources::new(f.cpu_mean.round() as u64, f.memory_bytes);

    let n_nodes = cluster.nodes.len();
    let total_cap: f64 = cluster
        .nodes
        .iter()
        .map(|n| n.capacity.cpu_milli as f64)
        .sum();
    let mut last_moved: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending: Vec<usize> = arrival;
    let mut res = PolicyRun {
        seed,
        overload_minutes: 0,
        unserved_cpu: 0.0,
        slo_misses: 0,
        migrations: 0,
        migration_cost: 0.0,
        migration_seconds: 0.0,
        mean_utilization: 0.0,
        nodes_used: 0,
        unplaced_app_minutes: 0,
        mean_latency_ms: 0.0,
        node_estimate_mae: 0.0,
        audit: RuleAudit::default(),
        capacity: matches!(
            policy,
            SimPolicy::Learned | SimPolicy::Oracle | SimPolicy::Observed
        )
        .then(CapacityCheck::default),
        node_load: vec![Vec::with_capacity(data.minutes - data.history); n_nodes],
    };
    let (mut util_sum, mut lat_sum, mut lat_n) = (0.0, 0.0, 0u64);
    let (mut est_err, mut est_n) = (0.0, 0u64);
    // A planning policy's past errors at node level, each over the spread
    // it gave the node (known once the minute has landed).
    let mut errors: VecDeque<f64> = VecDeque::new();
    let plans = matches!(
        policy,
        SimPolicy::Learned | SimPolicy::Oracle | SimPolicy::Observed
    );
    for t in data.history..data.minutes {
        let beliefs: Vec<AppForecast> = (0..specs.len()).map(|ri| forecast(ri, t)).collect();

        // Arrivals (and apps that could not be placed before).
        let mut still = Vec::new();
        for &ri in &pending {
            let spec = &specs[ri];
            ctx.predicted_demand = matches!(
                policy,
                SimPolicy::Learned | SimPolicy::Oracle | SimPolicy::Observed
            )
            .then(|| as_resources(&beliefs[ri]));
            // An app whose forecast fits no node is placed by its requests
            // (the rebalancer takes it from there).
            let decision = place(&cluster, spec, policy.placement(), &ctx)
                .or_else(|_| place(&cluster, spec, crate::placement::Policy::Requests, &ctx));
            match decision {
                Ok(d) => {
                    cluster
                        .bind(spec.clone(), &d.node)
                        .expect("placed on a known node");
                    if let Some(p) = ctx.predicted_demand {
                        cluster.set_expected(&spec.name, p).expect("just bound");
                    }
                }
                Err(_) => still.push(ri),
            }
        }
        pending = still;

        // The policy's rebalancer, on its beliefs about this minute.
        let moves: Vec<Move> = match policy {
            SimPolicy::Requests | SimPolicy::Cost => {
                let demand: BTreeMap<String, Resources> = cluster
                    .apps
                    .keys()
                    .map(|a| (a.clone(), as_resources(&beliefs[index[a.as_str()]])))
                    .collect();
                let input = RebalanceInput {
                    demand: &demand,
                    state_bytes: &state_bytes,
                    last_moved: &last_moved,
                    now: t as u64,
                };
                plan_rebalance(&cluster, &input, &reactive)
            }
            SimPolicy::Learned | SimPolicy::Oracle | SimPolicy::Observed => {
                let fc: BTreeMap<String, AppForecast> = cluster
                    .apps
                    .keys()
                    .map(|a| (a.clone(), beliefs[index[a.as_str()]]))
                    .collect();
                if let Some(check) = res.capacity.as_mut() {
                    let advice = capacity_advice(&cluster, &fc, config.capacity_z);
                    let demand: f64 = (0..specs.len()).map(|ri| actual(ri, t)).sum();
                    let short = demand > total_cap;
                    let alert = advice.extra_nodes > 0;
                    check.short_minutes += u64::from(short);
                    check.alerts += u64::from(alert);
                    check.announced += u64::from(short && alert);
                    check.false_alarms += u64::from(alert && !short);
                    check.max_extra_nodes = check.max_extra_nodes.max(advice.extra_nodes);
                }
                let shape = (errors.len() >= SHAPE_MIN_ERRORS)
                    .then(|| ErrorShape::new(errors.iter().copied()));
                let input = PredictiveInput {
                    forecast: &fc,
                    state_bytes: &state_bytes,
                    last_moved: &last_moved,
                    now: t as u64,
                    error_shape: shape.as_ref(),
                };
                plan_predictive(&cluster, &input, &predictive)
            }
        };
        // Carry the moves out; each costs its source and target a core for
        // its duration.
        let mut overhead = vec![0.0; n_nodes];
        let mut seconds = 0.0;
        for m in &moves {
            let from = node_index(&cluster, &m.from);
            let to = node_index(&cluster, &m.to);
            cluster
                .move_app(&m.app, &m.to)
                .expect("planned on known nodes");
            let secs = m.terms.get("T_s").copied().unwrap_or(0.0);
            overhead[from] += secs * 1000.0 / 60.0;
            overhead[to] += secs * 1000.0 / 60.0;
            seconds += secs;
            res.migration_cost += m.cost;
            if last_moved
                .get(&m.app)
                .is_some_and(|&at| (t as u64) < at + config.cooldown_minutes)
            {
                res.audit.moves_within_cooldown += 1;
            }
            last_moved.insert(m.app.clone(), t as u64);
        }
        res.migrations += moves.len() as u64;
        res.migration_seconds += seconds;
        res.audit.max_moves_in_a_minute = res.audit.max_moves_in_a_minute.max(moves.len());
        res.audit.max_move_seconds_in_a_minute =
            res.audit.max_move_seconds_in_a_minute.max(seconds);

        // What a planning policy expects of each node after its moves.
        let expected = plans.then(|| {
            let fc: BTreeMap<String, AppForecast> = cluster
                .apps
                .keys()
                .map(|a| (a.clone(), beliefs[index[a.as_str()]]))
                .collect();
            let input = PredictiveInput {
                forecast: &fc,
                state_bytes: &state_bytes,
                last_moved: &last_moved,
                now: t as u64,
                error_shape: None,
            };
            node_forecasts(&cluster, &input, &predictive)
        });
        // The minute's real demand.
        let mut used_cap = 0.0;
        let mut served = 0.0;
        let mut used = 0;
        for (i, node) in cluster.nodes.iter().enumerate() {
            res.audit.max_requested_share = res
                .audit
                .max_requested_share
                .max(node.requested.dominant_share(&node.capacity));
            let (mut cpu, mut mem, mut believed) = (overhead[i], 0u64, 0.0);
            for a in &node.apps {
                let ri = index[a.as_str()];
                cpu += actual(ri, t);
                mem += memory(ri);
                believed += beliefs[ri].cpu_mean;
            }
            let cap = node.capacity.cpu_milli as f64;
            res.node_load[i].push(cpu / cap.max(1.0));
            if node.apps.is_empty() {
                continue;
            }
            est_err += (believed - (cpu - overhead[i])).abs();
            if let Some((mean, var)) = expected.as_ref().map(|e| e[i]) {
                if var > 1e-6 {
                    errors.push_back((cpu - overhead[i] - mean) / var.sqrt());
                    if errors.len() > SHAPE_MINUTES * n_nodes {
                        errors.pop_front();
                    }
                }
            }
            est_n += 1;
            used += 1;
            used_cap += cap;
            served += cpu.min(cap);
            if cpu > cap || mem > node.capacity.memory_bytes {
                res.overload_minutes += 1;
                res.unserved_cpu += (cpu - cap).max(0.0) / 1000.0;
                res.slo_misses += node
                    .apps
                    .iter()
                    .filter(|a| actual(index[a.as_str()], t) > 0.0)
                    .count() as u64;
            }
            for a in &node.apps {
                if let Some(loc) = &specs[index[a.as_str()]].user_location {
                    lat_sum += latency.latency_ms(loc, node);
                    lat_n += 1;
                }
            }
        }
        for &ri in &pending {
            res.unserved_cpu += actual(ri, t) / 1000.0;
        }
        res.unplaced_app_minutes += pending.len() as u64;
        res.slo_misses += pending.len() as u64;
        res.nodes_used = res.nodes_used.max(used);
        if used_cap > 0.0 {
            util_sum += served / used_cap;
        }
    }
    let replayed = (data.minutes - data.history).max(1) as f64;
    res.mean_utilization = util_sum / replayed;
    res.mean_latency_ms = if lat_n > 0 {
        lat_sum / lat_n as f64
    } else {
        0.0
    };
    res.node_estimate_mae = if est_n > 0 {
        est_err / est_n as f64
    } else {
        0.0
    };
    res
}

fn node_index(cluster: &Cluster, name: &str) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.name == name)
        .expect("a move names known nodes")
}
