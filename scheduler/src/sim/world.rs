//! What a simulation replays: the demand and forecasts (from the trace
//! alone), the cluster and its apps (per fill), their users and arrival
//! order (per seed).

use std::collections::VecDeque;

use crate::cluster::{AppSpec, NodeState, Resources};
use crate::predict::{evaluate, forecast_online, Forecast, PredictorReport};
use crate::rng::SplitMix64;
use crate::trace::{spread_kernel, Trace};

use super::SimConfig;

const GIB: u64 = 1 << 30;

/// Minutes of past forecast errors a forecast's spread is taken from.
const ERROR_WINDOW: usize = 60;

fn rms(errors: &VecDeque<f64>) -> f64 {
    if errors.is_empty() {
        0.0
    } else {
        (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt()
    }
}

/// A forecast's spread from the model's `model_sd` and its `recent` errors:
/// their geometric mean (each at least a millicore), or the model's alone
/// before any error is known.
fn spread(model_sd: f64, recent: &VecDeque<f64>) -> f64 {
    if recent.is_empty() {
        model_sd
    } else {
        (model_sd.max(1.0) * rms(recent).max(1.0)).sqrt()
    }
}

fn push_error(errors: &mut VecDeque<f64>, e: f64) {
    errors.push_back(e);
    if errors.len() > ERROR_WINDOW {
        errors.pop_front();
    }
}

/// Everything that depends on the trace only.
pub(crate) struct TraceData {
    pub functions: usize,
    pub minutes: usize,
    pub history: usize,
    pub names: Vec<String>,
    pub memory: Vec<u64>,
    /// `demand[f][t]`: function `f`'s CPU demand in minute `t`, millicores.
    pub demand: Vec<Vec<f64>>,
    /// `forecast[f][t - history]`: the forecast of `demand[f][t]` made
    /// before minute `t`.
    pub forecast: Vec<Vec<Forecast>>,
    /// `last[f][t - history]`: `demand[f][t - 1]`, with the root mean
    /// square of that guess's errors over the last hour as its spread.
    pub last: Vec<Vec<Forecast>>,
    pub report: PredictorReport,
}

impl TraceData {
    pub fn new(trace: &Trace, config: &SimConfig) -> Self {
        let minutes = trace.len();
        let warmup = config.predictor.warmup() + 1;
        let history = ((minutes as f64 * config.train_fraction).round() as usize)
            .clamp(warmup, minutes.saturating_sub(1).max(warmup))
            .min(minutes);
        let demand: Vec<Vec<f64>> = trace.functions.iter().map(|f| f.cpu_series()).collect();
        // The model forecasts the work that starts in a minute; the CPU of
        // invocations already running when the minute begins is known.
        let started: Vec<Vec<f64>> = trace
            .functions
            .iter()
            .map(|f| (0..minutes).map(|t| f.cpu_milli(t)).collect())
            .collect();
        let first_minute = trace.minutes.first().copied().unwrap_or(0);
        let started_fc = forecast_online(&config.predictor, &started, first_minute, history);
        let forecast: Vec<Vec<Forecast>> = trace
            .functions
            .iter()
            .enumerate()
            .map(|(fi, f)| {
                let w = spread_kernel(f.avg_duration_ms);
                let d = f.avg_duration_ms / 60_000.0;
                // Share of a minute's started work that lands in that minute.
                let first = if d > 0.0 { w[0] / d } else { 1.0 };
                // The spread: the geometric mean of the model's and of the
                // root mean square of the forecast's last errors (in
                // millicores, known by then), two estimates of how far
                // this function's forecast errs of which neither
                // dominates; the planner scales them by how its nodes'
                // forecasts have erred (`ErrorShape`).
                let mut recent: VecDeque<f64> = VecDeque::new();
                let mut out = Vec::with_capacity(minutes - history);
                for t in history..minutes {
                    let running: f64 = (1..w.len().min(t + 1))
                        .map(|k| f.invocations[t - k] as f64 * w[k] * 1000.0)
                        .sum();
                    let s = started_fc[fi][t - history];
                    let fc = Forecast {
                        median: running + first * s.median,
                        mean: running + first * s.mean,
                        std_dev: spread(first * s.std_dev, &recent),
                        upper: running + first * s.upper,
                    };
                    push_error(&mut recent, demand[fi][t] - fc.mean);
                    out.push(fc);
                }
                out
            })
            .collect();
        let last = demand
            .iter()
            .map(|d| {
                let mut recent: VecDeque<f64> = VecDeque::new();
                (history..minutes)
                    .map(|t| {
                        let fc = Forecast {
                            std_dev: rms(&recent),
                            ..Forecast::point(d[t - 1])
                        };
                        push_error(&mut recent, d[t] - d[t - 1]);
                        fc
                    })
                    .collect()
            })
            .collect();
        let report = evaluate(
            &config.predictor,
            &demand,
            &forecast,
            history,
            "each function's CPU demand in the next minute (millicores); the model forecasts the work that starts in the minute and adds the CPU of the invocations already running",
        );
        TraceData {
            functions: trace.functions.len(),
            minutes,
            history,
            names: (0..trace.functions.len())
                .map(|i| trace.app_name(i))
                .collect(),
            memory: trace.functions.iter().map(|f| f.memory_bytes()).collect(),
            demand,
            forecast,
            last,
            report,
        }
    }
}

/// One app: a replica of a function, carrying `share` of its demand.
pub(crate) struct Replica {
    pub function: usize,
    pub share: f64,
    pub spec: AppSpec,
}

/// The cluster and its apps at one fill.
pub(crate) struct Fleet {
    pub capacity: Resources,
    pub nodes: Vec<NodeState>,
    pub replicas: Vec<Replica>,
}

impl Fleet {
    pub fn new(data: &TraceData, config: &SimConfig) -> Self {
        let h = data.history;
        let zones = config.zones.max(1);
        let n_nodes = config.nodes.max(1);
        let stats: Vec<(f64, f64)> = data
            .demand
            .iter()
            .map(|s| {
                let hist = &s[..h];
                let peak = hist.iter().copied().fold(0.0, f64::max);
                (peak, hist.iter().sum::<f64>() / hist.len().max(1) as f64)
            })
            .collect();
        let history_mean_total: f64 = stats.iter().map(|(_, m)| m).sum();
        let cpu_capacity = match config.node_capacity {
            Some(c) => c.cpu_milli,
            None => {
                // In steps of 10m: coarser steps on nodes of a core or two
                // would make neighbouring fills the same cluster.
                let per_node = history_mean_total / (n_nodes as f64 * config.fill.clamp(0.05, 1.0));
                ((per_node / 10.0).ceil() as u64 * 10).max(10)
            }
        };
        let replica_cpu = config.replica_cpu_milli.unwrap_or(cpu_capacity / 4).max(1);
        let mut replicas = Vec::new();
        for (fi, &(peak, mean)) in stats.iter().enumerate() {
            let k = ((peak / replica_cpu as f64).ceil() as usize).max(1);
            for r in 0..k {
                let mut spec = AppSpec::new(
                    format!("{}-{r}", data.names[fi]),
                    Resources::new((mean / k as f64).ceil() as u64, data.memory[fi]),
                );
                spec.group = (k > 1).then(|| data.names[fi].clone());
                replicas.push(Replica {
                    function: fi,
                    share: 1.0 / k as f64,
                    spec,
                });
            }
        }
        let capacity = config.node_capacity.unwrap_or_else(|| {
            // Memory is not what this trace stresses: twice what the apps hold.
            let total: u64 = replicas.iter().map(|r| r.spec.requests.memory_bytes).sum();
            let per_node = (2 * total).div_ceil(n_nodes as u64).div_ceil(256 << 20) * (256 << 20);
            Resources::new(cpu_capacity, per_node.max(GIB))
        });
        let nodes = (0..n_nodes)
            .map(|i| {
                NodeState::new(format!("node-{}", i + 1), capacity)
                    .with_label("zone", format!("zone-{}", i % zones))
            })
            .collect();
        Fleet {
            capacity,
            nodes,
            replicas,
        }
    }

    /// Where each app's users are and the order apps arrive in, for `seed`.
    pub fn seeded(&self, data: &TraceData, seed: u64, zones: usize) -> (Vec<AppSpec>, Vec<usize>) {
        let mut rng = SplitMix64::new(seed);
        let location: Vec<String> = (0..data.functions)
            .map(|_| format!("zone-{}", rng.below(zones.max(1) as u64)))
            .collect();
        let specs = self
            .replicas
            .iter()
            .map(|r| {
                let mut spec = r.spec.clone();
                spec.user_location = Some(location[r.function].clone());
                spec
            })
            .collect();
        (specs, rng.permutation(self.replicas.len()))
    }
}
