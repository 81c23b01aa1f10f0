//! tern's scheduler: where apps run, where they move, and why.
//!
//! This crate is pure: no wasmtime, no files, no network, no clock (time is
//! always a parameter), and deterministic for a given input and seed. The
//! control plane feeds it the cluster it sees (node heartbeats, app specs,
//! usage history) and executes what it decides.
//!
//! # Modules
//! - [`cluster`]: [`Resources`], [`NodeState`], [`AppSpec`] (with its
//!   [`RestartPolicy`]) and the [`Cluster`] that binds apps to nodes and
//!   keeps per-node totals.
//! - [`placement`]: the three [`Policy`]s (`requests`, `cost`, `learned`)
//!   and [`place`], which filters nodes, scores them and returns a
//!   [`Decision`] listing every candidate with its verdict and score, the
//!   best ones with the terms of their score; [`PlacementIndex`] makes the
//!   same choices for many apps at once without scoring every node.
//! - [`cost`]: the cost models with their weights ([`CostWeights`]):
//!   scheduling `C = α·T + β·R`, migration `C = α·S + β·B + γ·T`, start
//!   delay `D = α·S + β·R + γ·T`; each returns its value and terms.
//! - [`predict`]: the demand [`Predictor`] (linfa linear models on lagged
//!   usage, the value one detected period ago and time of day, fitted
//!   online; per app it forecasts with the model, the last value or the
//!   seasonal value, whichever erred least recently; [`DemandPredictor`]
//!   pairs one for CPU and one for memory) and [`backtest`] / [`evaluate`],
//!   which measure forecasts against last-value, moving-average, seasonal
//!   and exponential-smoothing [`Baselines`] on held-out data.
//! - [`rebalance`]: [`plan_rebalance`] picks the cheapest migrations when a
//!   node would overload, drains, or an edge app's users moved, within a
//!   move limit (a count and seconds of migration time) and a cool-down;
//!   [`plan_predictive`] plans from forecasts with their spread and triages
//!   an overflow the cluster cannot avoid; [`capacity_advice`] says when
//!   the forecast needs more nodes.
//! - [`restart`]: [`decide_restart`] (auto start) by an app's [`RestartPolicy`].
//! - [`trace`]: [`trace::parse_azure`] reads the Azure Functions 2019 trace
//!   layout from text; a function's CPU demand is spread over the minutes
//!   its invocations run in ([`trace::spread_kernel`]).
//! - [`sim`]: [`sim::compare`] replays a trace against policies (and an
//!   oracle) on identical clusters under identical rules, over several
//!   seeds; [`sim::sweep`] does it at several fills; [`sim::render_table`],
//!   [`sim::plot_svg`], [`sim::render_sweep`] and [`sim::plot_sweep_svg`]
//!   show them.
//!
//! # Invariants
//! - The scheduler never links wasmtime and does no IO.
//! - The `requests` policy never over-commits declared requests.
//! - Neither rebalancer plans more moves or more seconds of migration than
//!   its limits, or moves an app again within the cool-down.
//! - The simulator holds every policy to the same rules (move limits,
//!   cool-down, declared requests within capacity) and the oracle too.

#![warn(missing_docs)]

pub mod cluster;
pub mod cost;
mod error;
pub mod placement;
pub mod predict;
pub mod rebalance;
pub mod restart;
pub mod rng;
pub mod sim;
pub mod trace;

pub use cluster::{AppSpec, Cluster, NodeState, PlacedApp, Resources, RestartPolicy};
pub use cost::{
    migration_cost, migration_seconds, scheduling_cost, start_delay, Cost, CostWeights,
    LatencyTable, MigrationInput, MigrationWeights, SchedulingWeights, StartDelayWeights,
    StartInput, Terms,
};
pub use error::ScheduleError;
pub use placement::{place, Candidate, Choice, Decision, PlacementContext, PlacementIndex, Policy};
pub use predict::{
    backtest, evaluate, forecast_online, Backtest, Baselines, DemandForecast, DemandPredictor,
    Forecast, Predictor, PredictorConfig, PredictorReport,
};
pub use rebalance::predictive::{
    capacity_advice, node_forecasts, plan_predictive, AppForecast, CapacityAdvice, ErrorShape,
    PredictiveConfig, PredictiveInput, ERROR_SHAPE_MIN, ERROR_SHAPE_PERIODS, MAX_STANDARD_ERROR,
};
pub use rebalance::{plan_rebalance, Move, MoveReason, RebalanceConfig, RebalanceInput};
pub use restart::{backoff_ms, decide_restart, Exit, RestartDecision};
pub use sim::{
    compare, plot_svg, plot_sweep_svg, render_sweep, render_table, sweep, Comparison, PolicyResult,
    PolicyRun, SimConfig, SimPolicy, Sweep,
};
pub use trace::{parse_azure, Trace, TraceError};
