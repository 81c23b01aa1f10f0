//! The `learned` policy on the live cluster, as the simulator replays it
//! (`tern_scheduler::sim`): each app's forecast for the next sample period
//! with its spread; the moves `plan_predictive` makes of them within the
//! rebalancer's rules (moves and seconds of migration per interval, the
//! cool-down, declared requests within capacity), after those that empty
//! draining nodes; and the capacity that forecast asks for, for the
//! operator.
//!
//! Only the forecast's input differs from the simulator's: there, a
//! minute's demand is the work already running plus the forecast of the
//! work that starts in it (the trace says what runs on); here, it is the
//! demand predictor's forecast of the app's next CPU sample (the usage its
//! node reports), its mean and the spread of its recent errors.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;
use tern_scheduler::{
    capacity_advice, node_forecasts, plan_predictive, plan_rebalance, AppForecast, CapacityAdvice,
    Cluster, ErrorShape, Move, MoveReason, PredictiveConfig, PredictiveInput, RebalanceConfig,
    RebalanceInput, Resources, ERROR_SHAPE_MIN, ERROR_SHAPE_PERIODS,
};

use crate::state::State;
use crate::ControlConfig;

/// The capacity the forecast asks for (`GET /v1/dashboard`'s `capacity`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capacity {
    /// When it was computed (the last rebalance).
    pub unix_ms: u64,
    /// Standard deviations of the forecast above its mean that must fit.
    pub z: f64,
    /// `forecast_cpu_milli` (the apps' expected CPU plus `z` standard
    /// deviations), `capacity_cpu_milli` (of the schedulable nodes) and
    /// `extra_nodes` (of the median node's size; 0 when it fits).
    #[serde(flatten)]
    pub advice: CapacityAdvice,
}

/// Every app's forecast for the next sample period, by the demand
/// predictor: its CPU's mean and variance, and the memory it holds (or is
/// expected to, if more). An app stopped, exited or failed uses no CPU; an
/// app without any sample yet is left out (the planner counts its declared
/// requests).
pub fn forecasts(st: &State, cluster: &Cluster) -> BTreeMap<String, AppForecast> {
    let mut out = BTreeMap::new();
    for name in cluster.apps.keys() {
        let Some(a) = st.apps.get(name) else {
            continue;
        };
        let memory_bytes = st
            .predictor
            .memory
            .forecast(name)
            .map_or(0, |f| f.mean.max(0.0).round() as u64)
            .max(a.memory_bytes);
        let idle =
            a.operator_stopped || matches!(a.state.as_str(), "stopped" | "exited" | "failed");
        let forecast = if idle {
            AppForecast {
                cpu_mean: 0.0,
                cpu_var: 0.0,
                memory_bytes,
            }
        } else if let Some(cpu) = st.predictor.cpu.forecast(name) {
            AppForecast {
                cpu_mean: cpu.mean,
                cpu_var: cpu.std_dev * cpu.std_dev,
                memory_bytes,
            }
        } else {
            continue;
        };
        out.insert(name.clone(), forecast);
    }
    out
}

/// The node-level errors of the last plan, as the simulator keeps them:
/// for each node the plan expected something of (`expect`: mean and
/// variance of its CPU) and that still holds apps, the CPU its apps used
/// since (`usage`), less the mean, over the standard deviation.
pub fn node_errors(
    expect: &BTreeMap<String, (f64, f64)>,
    cluster: &Cluster,
    usage: &std::collections::HashMap<String, Resources>,
) -> Vec<f64> {
    cluster
        .nodes
        .iter()
        .filter(|n| !n.apps.is_empty())
        .filter_map(|n| {
            let &(mean, var) = expect.get(&n.name)?;
            let used: f64 = n
                .apps
                .iter()
                .filter_map(|a| usage.get(a))
                .map(|u| u.cpu_milli as f64)
                .sum();
            (var > 1e-6).then(|| (used - mean) / var.sqrt())
        })
        .collect()
}

/// Adds a plan's node-level errors to those kept (the last
/// [`ERROR_SHAPE_PERIODS`] periods of `nodes` nodes), and the shape they
/// give once there are [`ERROR_SHAPE_MIN`].
pub fn error_shape(
    kept: &mut std::collections::VecDeque<f64>,
    new: Vec<f64>,
    nodes: usize,
) -> Option<ErrorShape> {
    kept.extend(new);
    let keep = ERROR_SHAPE_PERIODS * nodes.max(1);
    while kept.len() > keep {
        kept.pop_front();
    }
    (kept.len() >= ERROR_SHAPE_MIN).then(|| ErrorShape::new(kept.iter().copied()))
}

/// The `learned` policy's moves: apps on draining nodes first (the reactive
/// rebalancer's first step), then `plan_predictive` on the cluster they
/// leave, with what is left of the interval's budget, its risks weighed by
/// `shape` (its past node-level errors) when there is one, as in the
/// simulator; and what it expects of each node once they are made.
/// `input` and `rules` are the reactive rebalancer's (its demand: the
/// forecasts' means).
pub fn learned(
    config: &ControlConfig,
    cluster: &Cluster,
    forecast: &BTreeMap<String, AppForecast>,
    input: &RebalanceInput<'_>,
    rules: &RebalanceConfig,
    shape: Option<&ErrorShape>,
) -> (Vec<Move>, BTreeMap<String, (f64, f64)>) {
    let drains: Vec<Move> = if cluster.nodes.iter().any(|n| n.draining) {
        plan_rebalance(cluster, input, rules)
            .into_iter()
            .take_while(|m| m.reason == MoveReason::Draining)
            .collect()
    } else {
        Vec::new()
    };
    let mut after = cluster.clone();
    let mut last_moved = input.last_moved.clone();
    let mut seconds = 0.0;
    for m in &drains {
        let _ = after.move_app(&m.app, &m.to);
        last_moved.insert(m.app.clone(), input.now);
        seconds += m.terms.get("T_s").copied().unwrap_or(0.0);
    }
    let cfg = PredictiveConfig {
        max_moves: rules.max_moves.saturating_sub(drains.len()),
        max_move_seconds: rules.max_move_seconds.map(|b| (b - seconds).max(0.0)),
        cooldown: rules.cooldown,
        overload_weight: config.overload_weight,
        check_requests: rules.check_requests,
        weights: rules.weights.clone(),
        interval_seconds: config.sample_period.as_secs_f64(),
    };
    let predictive = PredictiveInput {
        forecast,
        state_bytes: input.state_bytes,
        last_moved: &last_moved,
        now: input.now,
        error_shape: shape,
    };
    let planned = plan_predictive(&after, &predictive, &cfg);
    for m in &planned {
        let _ = after.move_app(&m.app, &m.to);
    }
    let expect = after
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .zip(node_forecasts(&after, &predictive, &cfg))
        .collect();
    let mut moves = drains;
    moves.extend(planned);
    (moves, expect)
}

/// Why the `learned` policy makes a move, for the migration's record and
/// the log: the planner's reason, then the moved app's forecast.
pub fn reason(
    config: &ControlConfig,
    st: &State,
    m: &Move,
    forecast: &BTreeMap<String, AppForecast>,
) -> String {
    let mut why = format!("rebalance: {}", m.reason);
    if let (false, Some(f)) = (m.reason == MoveReason::Draining, forecast.get(&m.app)) {
        let basis = if st.predictor.cpu.has_model(&m.app) {
            "fitted model"
        } else {
            "last value, no model yet"
        };
        let _ = write!(
            why,
            "; forecast for the next {}: {} at {:.0}m ± {:.0}m CPU ({basis})",
            human(config.sample_period),
            m.app,
            f.cpu_mean,
            f.cpu_var.max(0.0).sqrt()
        );
    }
    why
}

/// Recomputes the capacity advice and says so in the log when it changes.
pub fn advise(
    config: &ControlConfig,
    st: &mut State,
    cluster: &Cluster,
    forecast: &BTreeMap<String, AppForecast>,
    now: u64,
) {
    let z = config.capacity_z;
    let advice = capacity_advice(cluster, forecast, z);
    let before = st.capacity.as_ref().map_or(0, |c| c.advice.extra_nodes);
    if advice.extra_nodes != before {
        let (need, have) = (advice.forecast_cpu_milli, advice.capacity_cpu_milli);
        if advice.extra_nodes > 0 {
            tracing::warn!(
                extra_nodes = advice.extra_nodes,
                forecast_cpu_milli = need.round(),
                capacity_cpu_milli = have,
                "capacity: the forecast for the next {} ({need:.0}m CPU, {z} standard deviations up) exceeds the schedulable nodes' {have}m: add {} node(s) of the usual size",
                human(config.sample_period),
                advice.extra_nodes
            );
        } else {
            tracing::info!(
                forecast_cpu_milli = need.round(),
                capacity_cpu_milli = have,
                "capacity: the forecast fits the schedulable nodes again ({need:.0}m of {have}m CPU)"
            );
        }
    }
    st.capacity = Some(Capacity {
        unix_ms: now,
        z,
        advice,
    });
}

/// `60 s`, `1.5 s`, `500 ms`.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_scheduler::{AppSpec, NodeState, Resources};

    const GIB: u64 = 1 << 30;

    /// `old` drains, `hot` is too small for its app's forecast, `big` has room.
    fn cluster() -> Cluster {
        let mut old = NodeState::new("old", Resources::new(1000, 4 * GIB));
        old.draining = true;
        let hot = NodeState::new("hot", Resources::new(500, 4 * GIB));
        let big = NodeState::new("big", Resources::new(8000, 16 * GIB));
        let mut c = Cluster::new(vec![old, hot, big]);
        for (app, node) in [("leaving", "old"), ("wave", "hot")] {
            c.bind(AppSpec::new(app, Resources::new(50, 64 << 20)), node)
                .unwrap();
        }
        c
    }

    fn forecast() -> BTreeMap<String, AppForecast> {
        let f = |cpu_mean: f64, sd: f64| AppForecast {
            cpu_mean,
            cpu_var: sd * sd,
            memory_bytes: 64 << 20,
        };
        BTreeMap::from([
            ("leaving".into(), f(10.0, 0.0)),
            ("wave".into(), f(900.0, 100.0)),
        ])
    }

    fn plan(max_moves: usize, last_moved: &[(&str, u64)]) -> Vec<(String, String, String)> {
        let config = ControlConfig::new("unused", "token");
        let forecast = forecast();
        let demand = forecast
            .iter()
            .map(|(a, f)| {
                let cpu = f.cpu_mean as u64;
                (
                    a.clone(),
                    tern_scheduler::Resources::new(cpu, f.memory_bytes),
                )
            })
            .collect();
        let last_moved = last_moved
            .iter()
            .map(|(a, t)| (a.to_string(), *t))
            .collect();
        let input = RebalanceInput {
            demand: &demand,
            state_bytes: &BTreeMap::new(),
            last_moved: &last_moved,
            now: 1000,
        };
        let rules = RebalanceConfig {
            max_moves,
            cooldown: 300,
            ..RebalanceConfig::default()
        };
        learned(&config, &cluster(), &forecast, &input, &rules, None)
            .0
            .into_iter()
            .map(|m| (m.app, m.to, m.reason.to_string()))
            .collect()
    }

    #[test]
    fn drains_come_first_and_share_the_budget_with_the_forecast() {
        let drain = (
            "leaving".to_string(),
            "big".to_string(),
            "source node is draining".to_string(),
        );
        assert_eq!(plan(1, &[]), std::slice::from_ref(&drain));
        let both = plan(2, &[]);
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[0], drain);
        assert_eq!((both[1].0.as_str(), both[1].1.as_str()), ("wave", "big"));
        assert!(
            both[1]
                .2
                .starts_with("overload: source expected at 900m of 500m CPU"),
            "{both:?}"
        );
        // Moved 10 s ago, within the 300 s cool-down: only the drain.
        assert_eq!(plan(2, &[("wave", 990)]), [drain]);
    }

    /// The live planner keeps its node-level errors as the simulator does:
    /// what each node used against what the last plan expected of it, over
    /// its spread; and weighs its risks by them once there are enough.
    #[test]
    fn the_live_planner_learns_the_shape_of_its_errors() {
        let config = ControlConfig::new("unused", "token");
        let forecast = forecast();
        let demand = BTreeMap::new();
        let input = RebalanceInput {
            demand: &demand,
            state_bytes: &BTreeMap::new(),
            last_moved: &BTreeMap::new(),
            now: 0,
        };
        let rules = RebalanceConfig::default();
        let (moves, expect) = learned(&config, &cluster(), &forecast, &input, &rules, None);
        // After its moves, every app is on `big`: it expects their sum there.
        assert!(moves.iter().all(|m| m.to == "big"), "{moves:?}");
        let (mean, var) = expect["big"];
        assert!(
            (mean - 910.0).abs() < 1e-6 && (var - 10_000.0).abs() < 1e-6,
            "{expect:?}"
        );
        let mut after = cluster();
        for m in &moves {
            after.move_app(&m.app, &m.to).unwrap();
        }
        // `big` then used 1,110m: two standard deviations over.
        let usage = std::collections::HashMap::from([
            ("leaving".to_string(), Resources::new(10, 0)),
            ("wave".to_string(), Resources::new(1100, 0)),
        ]);
        let errors = node_errors(&expect, &after, &usage);
        assert_eq!(errors, [2.0]);
        // No shape before ERROR_SHAPE_MIN errors; one after, and the kept
        // errors are bounded by the periods times the nodes.
        let mut kept = std::collections::VecDeque::new();
        for _ in 1..ERROR_SHAPE_MIN {
            assert!(error_shape(&mut kept, errors.clone(), 1).is_none());
        }
        let shape = error_shape(&mut kept, errors.clone(), 1).expect("enough errors");
        assert_eq!(shape.len(), ERROR_SHAPE_MIN);
        for _ in 0..2 * ERROR_SHAPE_PERIODS {
            error_shape(&mut kept, vec![0.0, 1.0], 2);
        }
        assert_eq!(kept.len(), 2 * ERROR_SHAPE_PERIODS);
        // Given it, the planner plans (here the same moves: `big` has room
        // whatever the tail).
        let (with_shape, _) = learned(&config, &cluster(), &forecast, &input, &rules, Some(&shape));
        assert_eq!(with_shape.len(), moves.len());
    }

    /// A forecast that was sure of itself and wrong (a spread of a
    /// hundredth of a millicore, a miss of a core) gives an error of 10⁵
    /// spreads. Read as it came, such an error made a node holding only an
    /// idle app (next to no spread either) look at risk, and the planner
    /// moved the app off its quiet node for nothing (seen on a live
    /// cluster: the idle app moved after the busy one). Errors count at
    /// most `tern_scheduler::MAX_STANDARD_ERROR` spreads.
    #[test]
    fn an_idle_app_on_a_quiet_node_stays_put() {
        let mut config = ControlConfig::new("unused", "token");
        config.sample_period = Duration::from_secs(2);
        let small = NodeState::new("small", Resources::new(500, 4 * GIB));
        let big = NodeState::new("big", Resources::new(8000, 16 * GIB));
        let mut cluster = Cluster::new(vec![small, big]);
        for (app, node) in [("calm", "small"), ("wave", "big")] {
            cluster
                .bind(AppSpec::new(app, Resources::new(50, 64 << 20)), node)
                .unwrap();
        }
        // One period in ten, `wave` was forecast idle with no doubt and
        // used a core; otherwise as forecast, give or take half a spread.
        let mut kept = std::collections::VecDeque::new();
        let mut shape = None;
        for period in 0..ERROR_SHAPE_MIN as u64 {
            let (mean, used) = if period % 10 == 0 {
                (0.0, 1000)
            } else {
                (1000.0, 1000 + period % 2 * 50)
            };
            let expect = BTreeMap::from([
                ("big".to_string(), (mean, 1e-4)),
                ("small".to_string(), (0.0, 100.0)),
            ]);
            let usage = std::collections::HashMap::from([
                ("calm".to_string(), Resources::new(0, 0)),
                ("wave".to_string(), Resources::new(used, 0)),
            ]);
            let errors = node_errors(&expect, &cluster, &usage);
            shape = error_shape(&mut kept, errors, 1);
        }
        let shape = shape.expect("enough errors");
        let f = |cpu_mean: f64, sd: f64| AppForecast {
            cpu_mean,
            cpu_var: sd * sd,
            memory_bytes: 1 << 20,
        };
        let forecast = BTreeMap::from([
            ("calm".to_string(), f(0.0, 0.01)),
            ("wave".to_string(), f(2625.0, 795.0)),
        ]);
        let demand = BTreeMap::new();
        let input = RebalanceInput {
            demand: &demand,
            state_bytes: &BTreeMap::new(),
            last_moved: &BTreeMap::new(),
            now: 1000,
        };
        let rules = RebalanceConfig::default();
        let (moves, _) = learned(&config, &cluster, &forecast, &input, &rules, Some(&shape));
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn a_move_on_the_forecast_says_what_was_forecast() {
        let config = ControlConfig::new("unused", "token");
        let st = State::default();
        let forecast = forecast();
        let moves = {
            let demand = BTreeMap::new();
            let input = RebalanceInput {
                demand: &demand,
                state_bytes: &BTreeMap::new(),
                last_moved: &BTreeMap::new(),
                now: 0,
            };
            learned(
                &config,
                &cluster(),
                &forecast,
                &input,
                &RebalanceConfig::default(),
                None,
            )
            .0
        };
        let why: Vec<String> = moves
            .iter()
            .map(|m| reason(&config, &st, m, &forecast))
            .collect();
        assert_eq!(
            why,
            [
                "rebalance: source node is draining",
                "rebalance: overload: source expected at 900m of 500m CPU, 64 of 4096 MiB; forecast for the next 60 s: wave at 900m ± 100m CPU (last value, no model yet)",
            ]
        );
    }

    #[test]
    fn the_capacity_advice_counts_schedulable_nodes_only() {
        let config = ControlConfig::new("unused", "token");
        let mut st = State::default();
        let mut small = cluster();
        small.nodes.retain(|n| n.name != "big");
        advise(&config, &mut st, &small, &forecast(), 7);
        let c = st.capacity.clone().unwrap();
        // 910m expected plus one standard deviation (100m) against `hot`'s
        // 500m (`old` drains): 510m short, two more nodes of 500m.
        assert_eq!((c.unix_ms, c.advice.capacity_cpu_milli), (7, 500));
        assert_eq!(c.advice.extra_nodes, 2);
        assert!((c.advice.forecast_cpu_milli - 1010.0).abs() < 1e-6, "{c:?}");
        advise(&config, &mut st, &cluster(), &forecast(), 8);
        assert_eq!(st.capacity.unwrap().advice.extra_nodes, 0);
    }

    #[test]
    fn periods_read_as_people_write_them() {
        assert_eq!(human(Duration::from_secs(60)), "60 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_millis(500)), "500 ms");
    }
}
