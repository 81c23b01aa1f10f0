//! The trace simulator: replays a usage trace minute by minute against each
//! placement policy on identical clusters and reports what happened.
//!
//! # The model (the same for every policy)
//! - The trace is split in time: the first `train_fraction` of the minutes
//!   is history (the predictor trains on it; requests and the cluster are
//!   sized from it), the rest is replayed and measured.
//! - The cluster has `nodes` nodes. Unless `node_capacity` is given, their
//!   CPU is sized so that the history's mean demand fills `fill` of the
//!   cluster (default 80%: busy enough that placement matters on both
//!   shipped samples), and their memory at twice what the apps hold.
//! - A function whose demand peaked above `replica_cpu_milli` (default: a
//!   quarter of a node) during the history runs as
//!   `⌈peak / replica_cpu_milli⌉` replicas sharing its load evenly (FaaS
//!   platforms scale out); each replica is an app, the replicas of one
//!   function form a group (placement spreads them).
//! - Declared requests: the function's mean CPU over the history (split
//!   among replicas) and its average memory — what an operator right-sizing
//!   from the history would declare.
//! - Every app has its users in one of the nodes' zones (seeded), so the
//!   latency term of the cost objective means something.
//! - At the first replayed minute all apps arrive (in one seeded order) and
//!   are placed by the policy: `requests` and `cost` by declared requests,
//!   `learned` by the predictor's expected demand for that minute.
//! - Before each minute the rebalancer runs with the same limits for every
//!   policy (`max_moves_per_minute`, cool-down, target utilisation). Its
//!   demand estimate is the difference: `requests` and `cost` see the usage
//!   observed in the previous minute (heartbeats: they react, and keep
//!   targets within declared requests), `learned` sees the predictor's
//!   expected demand for the coming minute (it acts before).
//! - Then the minute's real demand lands. A node whose CPU or memory demand
//!   exceeds its capacity is overloaded for that minute. Migrations are
//!   instantaneous (hot migration pauses an app for milliseconds).
//!
//! # What is reported, per policy
//! `overload_minutes` (node-minutes overloaded), `slo_misses` (app-minutes
//! with demand on an overloaded node, or not placed), `migrations`,
//! `mean_utilization` (served CPU — demand up to capacity — over the CPU
//! capacity of the nodes that host apps, averaged over minutes),
//! `nodes_used` (most nodes hosting apps at once) and `mean_latency_ms`
//! (from apps' users to their node); plus the predictor's errors against
//! its baselines on the replayed minutes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cluster::{AppSpec, Cluster, NodeState, Resources};
use crate::cost::{CostWeights, LatencyTable};
use crate::placement::{place, PlacementContext, Policy};
use crate::predict::{backtest, Forecast, PredictorConfig, PredictorReport};
use crate::rebalance::{plan_rebalance, RebalanceConfig, RebalanceInput};
use crate::rng::SplitMix64;
use crate::trace::Trace;

const GIB: u64 = 1 << 30;

/// How to simulate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Capacity of every node; `None` sizes the nodes from the history: the CPU so that the mean
    /// demand fills `fill` of the cluster, the memory at twice what the
    /// apps hold.
    pub node_capacity: Option<Resources>,
    /// Share of the cluster's CPU the history's mean demand fills when the
    /// capacity is automatic.
    pub fill: f64,
    /// Zones the nodes are spread over (node `i` is in `zone-(i mod zones)`).
    pub zones: usize,
    /// Seed of user locations and arrival order.
    pub seed: u64,
    /// Fraction of the trace used as history (the rest is replayed).
    pub train_fraction: f64,
    /// Largest CPU demand one replica is meant to carry, thousandths of a core.
    /// `None`: a quarter of a node.
    pub replica_cpu_milli: Option<u64>,
    /// Rebalancer: moves per minute at most.
    pub max_moves_per_minute: usize,
    /// Rebalancer: minutes before a moved app may move again.
    pub cooldown_minutes: u64,
    /// Rebalancer: act when expected demand exceeds this share of a node.
    pub target_utilization: f64,
    /// Predictor settings.
    pub predictor: PredictorConfig,
    /// Cost-model weights.
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
            train_fraction: 0.5,
            replica_cpu_milli: None,
            max_moves_per_minute: 2,
            cooldown_minutes: 10,
            target_utilization: 0.9,
            predictor: PredictorConfig::default(),
            weights: CostWeights::default(),
        }
    }
}

/// One policy's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    /// The policy.
    pub policy: Policy,
    /// Node-minutes in which a node's demand exceeded its capacity.
    pub overload_minutes: u64,
    /// Migrations performed.
    pub migrations: u64,
    /// Served CPU / CPU capacity of the nodes hosting apps, mean over minutes.
    pub mean_utilization: f64,
    /// Most nodes hosting at least one app at the same time.
    pub nodes_used: usize,
    /// App-minutes with demand on an overloaded node, or with the app not placed.
    pub slo_misses: u64,
    /// App-minutes spent unplaced (no node could take the app).
    pub unplaced_app_minutes: u64,
    /// Mean latency from apps' users to their node, ms.
    pub mean_latency_ms: f64,
    /// CPU demand of each node per replayed minute, as a share of its
    /// capacity (for [`plot_svg`]; not serialized).
    #[serde(skip)]
    pub node_load: Vec<Vec<f64>>,
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
    /// Mean CPU demand over the replayed minutes / total CPU capacity.
    pub demand_to_capacity: f64,
    /// The seed used.
    pub seed: u64,
}

/// The comparison of policies on one trace (`tern sim --json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// What was simulated.
    pub setup: SimSetup,
    /// One entry per policy, in the order asked.
    pub policies: Vec<PolicyResult>,
    /// The predictor's errors and its baselines' on the replayed minutes.
    pub predictor: PredictorReport,
}

struct Replica {
    function: usize,
    share: f64,
    spec: AppSpec,
}

/// Replays `trace` once per policy on identical clusters (see the module doc).
pub fn compare(trace: &Trace, policies: &[Policy], config: &SimConfig) -> Comparison {
    let minutes = trace.len();
    let history = ((minutes as f64 * config.train_fraction).round() as usize).clamp(
        config.predictor.warmup() + 1,
        minutes.saturating_sub(1).max(config.predictor.warmup() + 1),
    );
    let history = history.min(minutes);
    let mut rng = SplitMix64::new(config.seed);

    // CPU series per function, millicores.
    let cpu: Vec<Vec<f64>> = trace
        .functions
        .iter()
        .map(|f| (0..minutes).map(|t| f.cpu_milli(t)).collect())
        .collect();

    // Cluster and apps, sized from the history only.
    let zones = config.zones.max(1);
    let n_nodes = config.nodes.max(1);
    let stats: Vec<(f64, f64)> = cpu
        .iter()
        .map(|s| {
            let hist = &s[..history];
            let peak = hist.iter().copied().fold(0.0, f64::max);
            (peak, hist.iter().sum::<f64>() / hist.len().max(1) as f64)
        })
        .collect();
    let history_mean_total: f64 = stats.iter().map(|(_, m)| m).sum();
    let cpu_capacity = match config.node_capacity {
        Some(c) => c.cpu_milli,
        None => {
            let per_node = history_mean_total / (n_nodes as f64 * config.fill.clamp(0.05, 1.0));
            ((per_node / 100.0).ceil() as u64 * 100).max(100)
        }
    };
    let replica_cpu = config.replica_cpu_milli.unwrap_or(cpu_capacity / 4).max(1);
    let mut replicas = Vec::new();
    for (fi, f) in trace.functions.iter().enumerate() {
        let (peak, mean) = stats[fi];
        let k = ((peak / replica_cpu as f64).ceil() as usize).max(1);
        let location = format!("zone-{}", rng.below(zones as u64));
        for r in 0..k {
            let mut spec = AppSpec::new(
                format!("{}-{r}", trace.app_name(fi)),
                Resources::new((mean / k as f64).ceil() as u64, f.memory_bytes()),
            );
            spec.user_location = Some(location.clone());
            spec.group = (k > 1).then(|| trace.app_name(fi));
            replicas.push(Replica {
                function: fi,
                share: 1.0 / k as f64,
                spec,
            });
        }
    }
    let arrival = rng.permutation(replicas.len());
    let capacity = config.node_capacity.unwrap_or_else(|| {
        // Memory is not what this trace stresses: twice what the apps hold.
        let total: u64 = replicas.iter().map(|r| r.spec.requests.memory_bytes).sum();
        let per_node = (2 * total).div_ceil(n_nodes as u64).div_ceil(256 << 20) * (256 << 20);
        Resources::new(cpu_capacity, per_node.max(GIB))
    });
    let nodes: Vec<NodeState> = (0..n_nodes)
        .map(|i| {
            NodeState::new(format!("node-{}", i + 1), capacity)
                .with_label("zone", format!("zone-{}", i % zones))
        })
        .collect();

    // Forecasts of each function's CPU for every replayed minute.
    let bt = backtest(
        &config.predictor,
        &cpu,
        trace.minutes.first().copied().unwrap_or(0),
        history,
    );

    let replayed = minutes - history;
    let total_demand: f64 = (history..minutes)
        .map(|t| cpu.iter().map(|s| s[t]).sum::<f64>())
        .sum();
    let setup = SimSetup {
        functions: trace.functions.len(),
        apps: replicas.len(),
        minutes,
        history_minutes: history,
        replayed_minutes: replayed,
        nodes: n_nodes,
        node_capacity: capacity,
        demand_to_capacity: total_demand
            / replayed.max(1) as f64
            / (capacity.cpu_milli as f64 * n_nodes as f64).max(1.0),
        seed: config.seed,
    };

    let world = World {
        cpu: &cpu,
        forecast: &bt.forecasts,
        replicas: &replicas,
        arrival: &arrival,
        history,
        minutes,
    };
    let policies = policies
        .iter()
        .map(|p| run_policy(&world, *p, &nodes, config))
        .collect();
    Comparison {
        setup,
        policies,
        predictor: bt.report,
    }
}

struct World<'a> {
    cpu: &'a [Vec<f64>],
    forecast: &'a [Vec<Forecast>],
    replicas: &'a [Replica],
    arrival: &'a [usize],
    history: usize,
    minutes: usize,
}

impl World<'_> {
    fn actual(&self, r: &Replica, t: usize) -> Resources {
        Resources::new(
            (self.cpu[r.function][t] * r.share).round() as u64,
            r.spec.requests.memory_bytes,
        )
    }

    /// The predictor's expected demand at `t` (made before `t`): the mean
    /// of its forecast, so bursts count with their probability.
    fn forecast(&self, r: &Replica, t: usize) -> Resources {
        let f = self.forecast[r.function][t - self.history].mean;
        Resources::new((f * r.share).round() as u64, r.spec.requests.memory_bytes)
    }

    /// What the policy believes the app will need at `t`.
    fn estimate(&self, policy: Policy, r: &Replica, t: usize) -> Resources {
        match policy {
            Policy::Learned => self.forecast(r, t),
            Policy::Requests | Policy::Cost => self.actual(r, t - 1),
        }
    }
}

fn run_policy(
    w: &World<'_>,
    policy: Policy,
    nodes: &[NodeState],
    config: &SimConfig,
) -> PolicyResult {
    let mut cluster = Cluster::new(nodes.to_vec());
    let latency = LatencyTable::default();
    let mut ctx = PlacementContext {
        weights: config.weights.clone(),
        latency: latency.clone(),
        predicted_demand: None,
        explain_top: 1,
    };
    let rcfg = RebalanceConfig {
        max_moves: config.max_moves_per_minute,
        cooldown: config.cooldown_minutes,
        target_utilization: config.target_utilization,
        check_requests: policy != Policy::Learned,
        latency_gain_ms: f64::INFINITY,
        weights: config.weights.clone(),
        latency: latency.clone(),
    };
    let by_name: BTreeMap<&str, &Replica> = w
        .replicas
        .iter()
        .map(|r| (r.spec.name.as_str(), r))
        .collect();
    let state_bytes: BTreeMap<String, u64> = w
        .replicas
        .iter()
        .map(|r| (r.spec.name.clone(), r.spec.requests.memory_bytes))
        .collect();
    let mut last_moved: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending: Vec<usize> = w.arrival.to_vec();
    let mut res = PolicyResult {
        policy,
        overload_minutes: 0,
        migrations: 0,
        mean_utilization: 0.0,
        nodes_used: 0,
        slo_misses: 0,
        unplaced_app_minutes: 0,
        mean_latency_ms: 0.0,
        node_load: vec![Vec::with_capacity(w.minutes - w.history); nodes.len()],
    };
    let (mut util_sum, mut lat_sum, mut lat_n) = (0.0, 0.0, 0u64);
    for t in w.history..w.minutes {
        // Arrivals (and apps that could not be placed before).
        let mut still = Vec::new();
        for &ri in &pending {
            let r = &w.replicas[ri];
            ctx.predicted_demand = (policy == Policy::Learned).then(|| w.forecast(r, t));
            match place(&cluster, &r.spec, policy, &ctx) {
                Ok(d) => {
                    cluster
                        .bind(r.spec.clone(), &d.node)
                        .expect("placed on a known node");
                    if let Some(p) = ctx.predicted_demand {
                        cluster.set_expected(&r.spec.name, p).expect("just bound");
                    }
                }
                Err(_) => still.push(ri),
            }
        }
        pending = still;

        // Rebalance on the policy's estimate of this minute.
        let demand: BTreeMap<String, Resources> = cluster
            .apps
            .keys()
            .map(|a| (a.clone(), w.estimate(policy, by_name[a.as_str()], t)))
            .collect();
        if policy == Policy::Learned {
            for (a, d) in &demand {
                cluster.set_expected(a, *d).expect("bound app");
            }
        }
        let input = RebalanceInput {
            demand: &demand,
            state_bytes: &state_bytes,
            last_moved: &last_moved,
            now: t as u64,
        };
        let moves = plan_rebalance(&cluster, &input, &rcfg);
        for m in &moves {
            cluster
                .move_app(&m.app, &m.to)
                .expect("planned on known nodes");
            last_moved.insert(m.app.clone(), t as u64);
        }
        res.migrations += moves.len() as u64;

        // The minute's real demand.
        let mut used_cap = 0u64;
        let mut served = 0.0;
        let mut used = 0;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let load: Resources = node
                .apps
                .iter()
                .map(|a| w.actual(by_name[a.as_str()], t))
                .sum();
            res.node_load[i].push(load.cpu_milli as f64 / node.capacity.cpu_milli.max(1) as f64);
            if node.apps.is_empty() {
                continue;
            }
            used += 1;
            used_cap += node.capacity.cpu_milli;
            served += load.cpu_milli.min(node.capacity.cpu_milli) as f64;
            if !load.fits_in(&node.capacity) {
                res.overload_minutes += 1;
                res.slo_misses += node
                    .apps
                    .iter()
                    .filter(|a| w.actual(by_name[a.as_str()], t).cpu_milli > 0)
                    .count() as u64;
            }
            for a in &node.apps {
                if let Some(loc) = &by_name[a.as_str()].spec.user_location {
                    lat_sum += latency.latency_ms(loc, node);
                    lat_n += 1;
                }
            }
        }
        res.unplaced_app_minutes += pending.len() as u64;
        res.slo_misses += pending.len() as u64;
        res.nodes_used = res.nodes_used.max(used);
        if used_cap > 0 {
            util_sum += served / used_cap as f64;
        }
    }
    let replayed = (w.minutes - w.history).max(1) as f64;
    res.mean_utilization = util_sum / replayed;
    res.mean_latency_ms = if lat_n > 0 {
        lat_sum / lat_n as f64
    } else {
        0.0
    };
    res
}

/// The comparison as an aligned text table (what `tern sim` prints).
pub fn render_table(c: &Comparison) -> String {
    let s = &c.setup;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace: {} functions as {} apps, {} min ({} history, {} replayed); {} nodes x {}m CPU / {} MiB; demand/capacity {:.0}%",
        s.functions,
        s.apps,
        s.minutes,
        s.history_minutes,
        s.replayed_minutes,
        s.nodes,
        s.node_capacity.cpu_milli,
        s.node_capacity.memory_bytes >> 20,
        s.demand_to_capacity * 100.0
    );
    let header = [
        "policy",
        "overload node-min",
        "SLO misses",
        "migrations",
        "mean util",
        "nodes used",
        "latency ms",
    ];
    let rows: Vec<[String; 7]> = c
        .policies
        .iter()
        .map(|p| {
            [
                p.policy.to_string(),
                p.overload_minutes.to_string(),
                p.slo_misses.to_string(),
                p.migrations.to_string(),
                format!("{:.1}%", p.mean_utilization * 100.0),
                p.nodes_used.to_string(),
                format!("{:.1}", p.mean_latency_ms),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            width[i] = width[i].max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(l, "{cell:<w$}", w = width[0]);
            } else {
                let _ = write!(l, "  {cell:>w$}", w = width[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = writeln!(out, "{}", line(&cells));
    }
    let p = &c.predictor;
    let _ = writeln!(
        out,
        "predictor on {} held-out points (log1p MAE): model {:.4}, last value {:.4}, moving average {:.4}{}",
        p.points,
        p.mae,
        p.last_value_mae,
        p.moving_average_mae,
        p.r2.map_or(String::new(), |r| format!(", R² {r:.3}"))
    );
    let _ = writeln!(
        out,
        "  in millicores: model {:.1}, last value {:.1}, moving average {:.1}",
        p.mae_raw, p.last_value_mae_raw, p.moving_average_mae_raw
    );
    let _ = writeln!(out, "  model: {}", p.model);
    out
}

/// A self-contained SVG: one panel per policy with each node's CPU demand
/// (share of capacity) over the replayed minutes and the capacity line.
pub fn plot_svg(c: &Comparison) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 220.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 30.0;
    const COLORS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let panels = c.policies.len().max(1);
    let height = PANEL_H * panels as f64;
    let y_max = c
        .policies
        .iter()
        .flat_map(|p| p.node_load.iter().flatten())
        .copied()
        .fold(1.2f64, f64::max)
        .min(5.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (k, p) in c.policies.iter().enumerate() {
        let y0 = k as f64 * PANEL_H;
        let (px, py, pw, ph) = (LEFT, y0 + TOP, W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
        let n = p.node_load.first().map_or(0, Vec::len).max(2);
        let x = |i: usize| px + pw * i as f64 / (n - 1) as f64;
        let y = |v: f64| py + ph * (1.0 - v.min(y_max) / y_max);
        let _ = writeln!(
            svg,
            r#"<text x="{px}" y="{:.1}" font-weight="bold">{}: {} overload node-min, {} migrations, {:.1}% mean util</text>"#,
            y0 + 18.0,
            p.policy,
            p.overload_minutes,
            p.migrations,
            p.mean_utilization * 100.0
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for tick in [0.0, 0.5, 1.0] {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{:.0}%</text>"##,
                px - 6.0,
                y(tick) + 4.0,
                tick * 100.0
            );
        }
        for (ni, series) in p.node_load.iter().enumerate() {
            let mut pts = String::new();
            for (i, v) in series.iter().enumerate() {
                let _ = write!(pts, "{:.1},{:.1} ", x(i), y(*v));
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1" points="{}"><title>node-{}</title></polyline>"#,
                COLORS[ni % COLORS.len()],
                pts.trim_end(),
                ni + 1
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{px}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#d00" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d00">capacity</text>"##,
            y(1.0),
            px + pw,
            y(1.0),
            px + pw - 4.0,
            y(1.0) - 4.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">replayed minute (0..{})</text>"##,
            px + pw / 2.0,
            py + ph + 20.0,
            n - 1
        );
    }
    svg.push_str("</svg>\n");
    svg
}
