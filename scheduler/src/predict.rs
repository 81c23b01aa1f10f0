//! Demand prediction: a linfa linear model per app on lagged usage, window
//! statistics and time of day, always measured against naive baselines.
//!
//! The target is `log1p(usage)` one interval ahead (usage is heavy-tailed:
//! an app idles at 0 and bursts to thousands). Each model is fitted by
//! least absolute deviations (iteratively reweighted least squares, every
//! step a `linfa_linear` OLS fit with a small ridge), because the figure we
//! report and the rebalancer cares about is the absolute error; a squared
//! loss lets rare bursts pull every prediction towards the mean.
//!
//! Features for the value at interval `t`, from the history before `t`:
//! lags `y[t-1] … y[t-lags]`, the mean, median, min and max of recent
//! windows, a longer mean, and `sin`/`cos` of the minute of day. An app
//! with at least `min_history` samples gets its own model; others share a
//! pooled model fitted on every app; an app with too little history for
//! the features is predicted by its last value.
//!
//! The model gives the conditional median; its errors turn it into a
//! predictive distribution (Duan's smearing) — its recent one-step errors
//! measured as samples arrive, or its training residuals until there are
//! enough of those — from which a
//! [`Forecast`] also reports the mean (what an app adds to its node's load
//! on average, bursts counted with their probability — what the `learned`
//! policy uses), the spread and an upper quantile.

use std::collections::BTreeMap;

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::cluster::Resources;
use crate::trace::MINUTES_PER_DAY;

/// How the predictor builds features and fits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictorConfig {
    /// Lagged values used as features (`y[t-1] … y[t-lags]`).
    pub lags: usize,
    /// Window of the mean, min and max features.
    pub window: usize,
    /// Window of the median feature (robust to a single outlier).
    pub median_window: usize,
    /// Window of the long mean feature (the app's recent level).
    pub long_window: usize,
    /// Samples an app needs before it gets a model of its own.
    pub min_history: usize,
    /// Samples kept per app (older ones are dropped).
    pub max_history: usize,
    /// IRLS steps of the quantile fits (0 = plain OLS).
    pub irls_iterations: usize,
    /// Quantile reported as a forecast's `upper` value.
    pub upper_quantile: f64,
    /// One-step errors kept per app for the forecast's spread.
    pub error_window: usize,
    /// Ridge strength relative to the total sample weight (keeps the fit
    /// defined when features are collinear, e.g. a constant series).
    pub ridge: f64,
    /// Window of the moving-average baseline.
    pub baseline_window: usize,
    /// Intervals between refits when backtesting or simulating.
    pub refit_every: usize,
    /// Longest period (in intervals) looked for in an app's history; the
    /// value one period ago is a feature, and a candidate forecast.
    pub max_period: usize,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig {
            lags: 10,
            window: 10,
            median_window: 5,
            long_window: 60,
            min_history: 120,
            max_history: 2 * MINUTES_PER_DAY as usize,
            irls_iterations: 8,
            upper_quantile: 0.9,
            error_window: 240,
            ridge: 1e-4,
            baseline_window: 5,
            refit_every: 60,
            max_period: 240,
        }
    }
}

impl PredictorConfig {
    /// Samples needed before features can be built.
    pub fn warmup(&self) -> usize {
        self.lags.max(self.window).max(self.median_window).max(1)
    }

    fn n_features(&self) -> usize {
        // intercept, lags, mean, median, min, max, long mean, one period
        // ago, sin, cos
        1 + self.lags + 4 + 1 + 1 + 2
    }

    /// A one-line description of the model, for reports.
    pub fn describe(&self) -> String {
        format!(
            "linfa OLS (IRLS median) per app on log1p(usage): lags 1..{}, mean/min/max {}, median {}, mean {}, the value one detected period ago, time of day; per app, the model, the last value or the value one period ago, whichever erred least in millicores recently; spread from that forecast's recent errors",
            self.lags, self.window, self.median_window, self.long_window
        )
    }
}

/// A fitted linear model: `ŷ = w · features`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LinearModel {
    weights: Vec<f64>,
}

impl LinearModel {
    fn predict(&self, x: &[f64]) -> f64 {
        self.weights.iter().zip(x).map(|(w, x)| w * x).sum()
    }
}

/// An app's model: the conditional median in log space and the sorted
/// quantiles of its training residuals, which turn the median into a
/// predictive distribution (Duan's smearing: the value is
/// `expm1(median + r)` for a residual `r` drawn from training).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AppModel {
    median: LinearModel,
    residuals: Vec<f64>,
}

/// Residual quantiles kept per model.
const RESIDUAL_QUANTILES: usize = 101;

/// Out-of-sample errors needed before they replace training residuals.
const MIN_ERRORS: usize = 30;

fn fit_model(cfg: &PredictorConfig, x: &Array2<f64>, y: &Array1<f64>) -> Option<AppModel> {
    let median = fit_lad(cfg, x, y)?;
    let mut r: Vec<f64> = (0..y.len())
        .filter_map(|i| Some(y[i] - median.predict(x.row(i).as_slice()?)))
        .collect();
    r.sort_by(f64::total_cmp);
    let residuals = if r.is_empty() {
        vec![0.0]
    } else {
        (0..RESIDUAL_QUANTILES)
            .map(|q| r[q * (r.len() - 1) / (RESIDUAL_QUANTILES - 1)])
            .collect()
    };
    Some(AppModel { median, residuals })
}

/// One app's forecast for the next interval, in the observed units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// The most likely value (conditional median).
    pub median: f64,
    /// The expected value (mean of the predictive distribution): what the
    /// app adds to its node's load on average, bursts included.
    pub mean: f64,
    /// Standard deviation of the predictive distribution.
    pub std_dev: f64,
    /// The value exceeded only with probability `1 - upper_quantile`.
    pub upper: f64,
}

impl Forecast {
    /// A forecast without spread (no model yet: the last value).
    pub fn point(v: f64) -> Self {
        Forecast {
            median: v,
            mean: v,
            std_dev: 0.0,
            upper: v,
        }
    }
}

/// Features for the value at `t` (minute-of-day `minute`) from `hist[..t]`
/// (already log1p'd). `out` receives `n_features` values, intercept first.
fn features(cfg: &PredictorConfig, hist: &[f64], period: usize, minute: u64, out: &mut Vec<f64>) {
    let t = hist.len();
    out.clear();
    out.push(1.0);
    for k in 1..=cfg.lags {
        out.push(hist[t - k]);
    }
    let win = &hist[t - cfg.window..];
    let mean = win.iter().sum::<f64>() / win.len() as f64;
    let min = win.iter().copied().fold(f64::INFINITY, f64::min);
    let max = win.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut med: Vec<f64> = hist[t - cfg.median_window..].to_vec();
    med.sort_by(f64::total_cmp);
    let median = if med.len() % 2 == 1 {
        med[med.len() / 2]
    } else {
        (med[med.len() / 2 - 1] + med[med.len() / 2]) / 2.0
    };
    let long = &hist[t.saturating_sub(cfg.long_window.max(1))..];
    let long_mean = long.iter().sum::<f64>() / long.len() as f64;
    out.extend([mean, median, min, max, long_mean]);
    out.push(hist[t.saturating_sub(period.max(1))]);
    let angle =
        2.0 * std::f64::consts::PI * (minute % MINUTES_PER_DAY) as f64 / MINUTES_PER_DAY as f64;
    out.extend([angle.sin(), angle.cos()]);
}

/// Least absolute deviations (the conditional median) by IRLS: each step
/// is a linfa OLS fit on rows scaled by `sqrt(1 / |residual|)`, plus ridge
/// rows. Step 0 is plain (ridge) OLS.
fn fit_lad(cfg: &PredictorConfig, x: &Array2<f64>, y: &Array1<f64>) -> Option<LinearModel> {
    let (n, p) = x.dim();
    if n < p {
        return None;
    }
    let mut w = vec![1.0; n];
    let mut model: Option<LinearModel> = None;
    for step in 0..=cfg.irls_iterations {
        if step > 0 {
            let m = model.as_ref()?;
            for i in 0..n {
                let r = y[i] - m.predict(x.row(i).as_slice()?);
                w[i] = 1.0 / r.abs().max(0.01);
            }
        }
        let total: f64 = w.iter().sum();
        let lambda = (cfg.ridge * total).max(1e-9).sqrt();
        let mut xa = Array2::<f64>::zeros((n + p, p));
        let mut ya = Array1::<f64>::zeros(n + p);
        for i in 0..n {
            let s = w[i].sqrt();
            for j in 0..p {
                xa[[i, j]] = x[[i, j]] * s;
            }
            ya[i] = y[i] * s;
        }
        for j in 0..p {
            xa[[n + j, j]] = lambda;
        }
        let ds = DatasetBase::new(xa, ya);
        let fitted = LinearRegression::new()
            .with_intercept(false)
            .fit(&ds)
            .ok()?;
        let weights: Vec<f64> = fitted.params().to_vec();
        if weights.iter().any(|v| !v.is_finite()) {
            return model;
        }
        model = Some(LinearModel { weights });
    }
    model
}

/// One app's recent history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Series {
    /// Minute of the last sample.
    last_minute: u64,
    /// `log1p` of the samples, oldest first, one per minute.
    values: Vec<f64>,
    /// Largest `log1p` sample seen.
    max: f64,
    /// The model's recent one-step errors (`actual − median forecast`, log
    /// space), measured as samples arrive: out-of-sample residuals.
    errors: std::collections::VecDeque<f64>,
    /// The last value's errors on the same samples.
    last_errors: std::collections::VecDeque<f64>,
    /// The seasonal forecast's (one period ago) errors on the same samples.
    season_errors: std::collections::VecDeque<f64>,
    /// The period detected at the last fit (1: none).
    period: usize,
    /// The absolute errors, in the metric's own units, of the model's
    /// median, the last value and the seasonal forecast on the same samples:
    /// what chooses among them (placement adds demands up in those units).
    raw_errors: [std::collections::VecDeque<f64>; 3],
}

/// Which forecast of an app is used: the one whose recent errors are lowest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Model,
    LastValue,
    Seasonal,
}

fn push_window(q: &mut std::collections::VecDeque<f64>, v: f64, window: usize) {
    q.push_back(v);
    while q.len() > window {
        q.pop_front();
    }
}

fn mean_abs(q: &std::collections::VecDeque<f64>) -> f64 {
    q.iter().map(|e| e.abs()).sum::<f64>() / q.len().max(1) as f64
}

/// The period (in samples, from 2 up to `max`) whose value one period ago
/// forecast `values` (log space) clearly better than the last value, on the
/// same points; 1 when none does.
fn detect_period_log(values: &[f64], max: usize) -> usize {
    let max = (values.len() / 3).min(max);
    if max < 2 {
        return 1;
    }
    let err = |p: usize| {
        (max..values.len())
            .map(|t| (values[t] - values[t - p]).abs())
            .sum::<f64>()
    };
    let last_value = err(1);
    let mut best = (1, last_value);
    for p in 2..=max {
        let e = err(p);
        if e < best.1 && e < 0.9 * last_value {
            best = (p, e);
        }
    }
    best.0
}

/// Online predictor of one metric (e.g. CPU) for many apps.
///
/// Feed it one sample per app and interval with [`Predictor::observe`],
/// call [`Predictor::fit`] now and then (e.g. hourly: cheap), and ask
/// [`Predictor::predict`] for each app's next interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predictor {
    config: PredictorConfig,
    series: BTreeMap<String, Series>,
    models: BTreeMap<String, AppModel>,
    pooled: Option<AppModel>,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor::new(PredictorConfig::default())
    }
}

impl Predictor {
    /// An empty predictor.
    pub fn new(config: PredictorConfig) -> Self {
        Predictor {
            config,
            series: BTreeMap::new(),
            models: BTreeMap::new(),
            pooled: None,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &PredictorConfig {
        &self.config
    }

    /// Records `app`'s usage in interval `minute`. Missing intervals are
    /// filled with the last value; a sample for the last interval replaces
    /// it; older samples are ignored.
    pub fn observe(&mut self, app: &str, minute: u64, value: f64) {
        let v = value.max(0.0).ln_1p();
        if !self.series.contains_key(app) {
            self.series.insert(app.to_string(), Series::default());
        }
        // Score the forecast this sample answers, before it joins the history.
        let s = &self.series[app];
        if !s.values.is_empty() && minute == s.last_minute + 1 {
            if let Some(m) = self.median_log(app, s) {
                let window = self.config.error_window;
                let last = *s.values.last().expect("non-empty");
                let season = s.values[s.values.len().saturating_sub(s.period.max(1))];
                let s = self.series.get_mut(app).expect("inserted above");
                push_window(&mut s.errors, v - m, window);
                push_window(&mut s.last_errors, v - last, window);
                push_window(&mut s.season_errors, v - season, window);
                let x = v.exp_m1();
                push_window(&mut s.raw_errors[0], (x - m.exp_m1()).abs(), window);
                push_window(&mut s.raw_errors[1], (x - last.exp_m1()).abs(), window);
                push_window(&mut s.raw_errors[2], (x - season.exp_m1()).abs(), window);
            }
        }
        let s = self.series.get_mut(app).expect("inserted above");
        s.max = s.max.max(v);
        if s.values.is_empty() {
            s.values.push(v);
            s.last_minute = minute;
        } else if minute == s.last_minute {
            *s.values.last_mut().expect("non-empty") = v;
        } else if minute > s.last_minute {
            let gap = (minute - s.last_minute - 1).min(self.config.max_history as u64) as usize;
            let last = *s.values.last().expect("non-empty");
            s.values.extend(std::iter::repeat_n(last, gap));
            s.values.push(v);
            s.last_minute = minute;
        }
        let excess = s.values.len().saturating_sub(self.config.max_history);
        if excess > 0 {
            s.values.drain(..excess);
        }
    }

    /// Forgets an app (it was removed).
    pub fn forget(&mut self, app: &str) {
        self.series.remove(app);
        self.models.remove(app);
    }

    /// Samples held for `app`.
    pub fn history_len(&self, app: &str) -> usize {
        self.series.get(app).map_or(0, |s| s.values.len())
    }

    fn training_rows(&self, s: &Series, x: &mut Vec<f64>, y: &mut Vec<f64>) -> usize {
        let cfg = &self.config;
        let w = cfg.warmup();
        let n = s.values.len();
        let first_minute = (s.last_minute + 1).saturating_sub(n as u64);
        let mut f = Vec::with_capacity(cfg.n_features());
        let mut rows = 0;
        for t in w..n {
            features(
                cfg,
                &s.values[..t],
                s.period,
                first_minute + t as u64,
                &mut f,
            );
            x.extend_from_slice(&f);
            y.push(s.values[t]);
            rows += 1;
        }
        rows
    }

    /// Refits every model from the history kept so far: one per app with
    /// at least `min_history` samples, and a pooled one if any app has less.
    /// Returns the number of models fitted.
    pub fn fit(&mut self) -> usize {
        let max_period = self.config.max_period;
        for s in self.series.values_mut() {
            s.period = detect_period_log(&s.values, max_period);
        }
        let cfg = &self.config;
        let p = cfg.n_features();
        let own = cfg.min_history.max(cfg.warmup() + p);
        let needs_pooled = self.series.values().any(|s| s.values.len() < own);
        let mut models = BTreeMap::new();
        let (mut px, mut py) = (Vec::new(), Vec::new());
        for (app, s) in &self.series {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            let rows = self.training_rows(s, &mut x, &mut y);
            if needs_pooled {
                // At most a day per app keeps the pooled fit cheap.
                let keep = rows.min(MINUTES_PER_DAY as usize);
                px.extend_from_slice(&x[(rows - keep) * p..]);
                py.extend_from_slice(&y[rows - keep..]);
            }
            if s.values.len() >= own {
                let xa = Array2::from_shape_vec((rows, p), x).expect("rows × features");
                if let Some(m) = fit_model(cfg, &xa, &Array1::from(y)) {
                    models.insert(app.clone(), m);
                }
            }
        }
        let pooled = if needs_pooled && py.len() >= p {
            let xa = Array2::from_shape_vec((py.len(), p), px).expect("rows × features");
            fit_model(cfg, &xa, &Array1::from(py))
        } else {
            None
        };
        let fitted = models.len() + usize::from(pooled.is_some());
        self.models = models;
        self.pooled = pooled;
        fitted
    }

    /// Forecast of `app` for the interval after its last sample, in the
    /// units it was observed in; `None` without any history. Without a
    /// model yet (too little history) both values are the last sample.
    pub fn forecast(&self, app: &str) -> Option<Forecast> {
        let s = self.series.get(app)?;
        let last = *s.values.last()?;
        let (Some(m), Some(model)) = (self.median_log(app, s), self.model_of(app)) else {
            return Some(Forecast::point(last.exp_m1()));
        };
        // The model, the last value or the value one period ago: whichever
        // erred least on the recent samples, in the metric's own units (all
        // three are scored on the same ones). Its spread: its own recent
        // errors (log space) once there are enough of them, the model's
        // training residuals before.
        let source = if s.errors.len() >= MIN_ERRORS {
            let scores = [
                (Source::Model, mean_abs(&s.raw_errors[0])),
                (Source::LastValue, mean_abs(&s.raw_errors[1])),
                (Source::Seasonal, mean_abs(&s.raw_errors[2])),
            ];
            scores
                .into_iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(Source::Model, |(src, _)| src)
        } else {
            Source::Model
        };
        let (m, errors) = match source {
            Source::Model => (m, &s.errors),
            Source::LastValue => (last, &s.last_errors),
            Source::Seasonal => (
                s.values[s.values.len().saturating_sub(s.period.max(1))],
                &s.season_errors,
            ),
        };
        let residuals: Vec<f64> = if errors.len() >= MIN_ERRORS {
            let mut r: Vec<f64> = errors.iter().copied().collect();
            r.sort_by(f64::total_cmp);
            r
        } else {
            model.residuals.clone()
        };
        let hi = s.max + 1.0;
        let value = |r: f64| (m + r).clamp(0.0, hi).exp_m1();
        let n = residuals.len() as f64;
        let mean = residuals.iter().map(|r| value(*r)).sum::<f64>() / n;
        let var = residuals
            .iter()
            .map(|r| (value(*r) - mean).powi(2))
            .sum::<f64>()
            / n;
        let q = self.config.upper_quantile.clamp(0.0, 1.0);
        let upper = value(residuals[((residuals.len() - 1) as f64 * q).round() as usize]);
        Some(Forecast {
            median: m.exp_m1(),
            mean,
            std_dev: var.sqrt(),
            upper: upper.max(m.exp_m1()),
        })
    }

    fn model_of(&self, app: &str) -> Option<&AppModel> {
        self.models.get(app).or(self.pooled.as_ref())
    }

    /// The model's median for the interval after `s`'s last sample, in log
    /// space; `None` without a model or enough history for the features.
    fn median_log(&self, app: &str, s: &Series) -> Option<f64> {
        let model = self.model_of(app)?;
        if s.values.len() < self.config.warmup() {
            return None;
        }
        let mut f = Vec::with_capacity(self.config.n_features());
        features(&self.config, &s.values, s.period, s.last_minute + 1, &mut f);
        // Never forecast far outside what the app has shown (a linear model
        // can extrapolate wildly on an unusual window).
        Some(model.median.predict(&f).clamp(0.0, s.max + 1.0))
    }

    /// Whether `app`'s forecasts come from a fitted model (its own or the
    /// pooled one) rather than repeating its last value.
    pub fn has_model(&self, app: &str) -> bool {
        self.series
            .get(app)
            .is_some_and(|s| self.median_log(app, s).is_some())
    }

    /// The median forecast of `app` (see [`Predictor::forecast`]).
    pub fn predict(&self, app: &str) -> Option<f64> {
        self.forecast(app).map(|f| f.median)
    }

    /// `app`'s last observed value.
    pub fn last(&self, app: &str) -> Option<f64> {
        self.series.get(app)?.values.last().map(|v| v.exp_m1())
    }
}

/// An app's demand forecast for the next interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemandForecast {
    /// The most likely demand.
    pub median: Resources,
    /// The expected demand, bursts counted with their probability.
    pub mean: Resources,
    /// The demand to place and rebalance by (what `learned` uses in the
    /// simulator): the expected demand, `mean`.
    pub plan: Resources,
    /// The demand exceeded only with probability `1 - upper_quantile`.
    pub upper: Resources,
}

/// Predicts CPU and memory of every app (two [`Predictor`]s).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandPredictor {
    /// CPU, thousandths of a core.
    pub cpu: Predictor,
    /// Memory, bytes.
    pub memory: Predictor,
}

impl DemandPredictor {
    /// An empty predictor for both metrics.
    pub fn new(config: PredictorConfig) -> Self {
        DemandPredictor {
            cpu: Predictor::new(config.clone()),
            memory: Predictor::new(config),
        }
    }

    /// Records an app's usage (e.g. from a heartbeat) in interval `minute`.
    pub fn observe(&mut self, app: &str, minute: u64, usage: Resources) {
        self.cpu.observe(app, minute, usage.cpu_milli as f64);
        self.memory.observe(app, minute, usage.memory_bytes as f64);
    }

    /// Refits both metrics' models; returns the number of models fitted.
    pub fn fit(&mut self) -> usize {
        self.cpu.fit() + self.memory.fit()
    }

    /// Demand of `app` in the next interval; `None` without history. Place
    /// and rebalance by `plan`.
    pub fn predict(&self, app: &str) -> Option<DemandForecast> {
        let cpu = self.cpu.forecast(app)?;
        let mem = self.memory.forecast(app)?;
        let r = |c: f64, m: f64| Resources::new(c.round() as u64, m.round() as u64);
        Some(DemandForecast {
            median: r(cpu.median, mem.median),
            mean: r(cpu.mean, mem.mean),
            plan: r(cpu.mean, mem.mean),
            upper: r(cpu.upper, mem.upper),
        })
    }

    /// Forgets an app.
    pub fn forget(&mut self, app: &str) {
        self.cpu.forget(app);
        self.memory.forget(app);
    }
}

/// The naive forecasts the model is judged against, each of one series'
/// value at `t` from its values before `t`.
///
/// - last value: `y[t-1]`;
/// - moving average: the mean of the last `baseline_window` values;
/// - seasonal: `y[t-p]`, with the period `p` that forecast the history best
///   (searched up to a third of the history, at most `max_period`; `p = 1`
///   is the last value, so seasonal is never worse than it on the history);
/// - exponential smoothing: `ŷ[t] = α·y[t-1] + (1-α)·ŷ[t-1]`, with the `α`
///   that forecast the history best.
///
/// Periods and `α` are chosen on the history before the split only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// Each series' detected period, minutes.
    pub periods: Vec<usize>,
    /// Each series' smoothing factor.
    pub alphas: Vec<f64>,
}

/// The names of the baselines, in report order.
pub const BASELINES: [&str; 4] = [
    "last value",
    "moving average",
    "seasonal",
    "exponential smoothing",
];

/// Longest period the seasonal baseline looks for (a day).
const MAX_PERIOD: usize = MINUTES_PER_DAY as usize;

fn log_mae(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut e, mut n) = (0.0, 0usize);
    for (f, a) in pairs {
        e += (f.max(0.0).ln_1p() - a.max(0.0).ln_1p()).abs();
        n += 1;
    }
    if n == 0 {
        f64::INFINITY
    } else {
        e / n as f64
    }
}

fn detect_period(hist: &[f64]) -> usize {
    let max = (hist.len() / 3).min(MAX_PERIOD);
    if max < 2 {
        return 1;
    }
    // Every period is scored on the same points, from `max` on.
    let last_value = log_mae((max..hist.len()).map(|t| (hist[t - 1], hist[t])));
    let mut best = (1, last_value);
    for p in 2..=max {
        let e = log_mae((max..hist.len()).map(|t| (hist[t - p], hist[t])));
        // A period must clearly beat the last value.
        if e < best.1 && e < 0.9 * last_value {
            best = (p, e);
        }
    }
    best.0
}

fn smooth(series: &[f64], alpha: f64, upto: usize, mut on: impl FnMut(usize, f64)) {
    let Some(&first) = series.first() else {
        return;
    };
    let mut level = first;
    for (t, &v) in series.iter().enumerate().take(upto).skip(1) {
        on(t, level);
        level = alpha * v + (1.0 - alpha) * level;
    }
}

fn fit_alpha(hist: &[f64]) -> f64 {
    let mut best = (1.0, f64::INFINITY);
    for k in 1..=20 {
        let alpha = k as f64 * 0.05;
        let (mut e, mut n) = (0.0, 0usize);
        smooth(hist, alpha, hist.len(), |t, f| {
            e += (f.max(0.0).ln_1p() - hist[t].max(0.0).ln_1p()).abs();
            n += 1;
        });
        let e = if n == 0 { f64::INFINITY } else { e / n as f64 };
        if e < best.1 {
            best = (alpha, e);
        }
    }
    best.0
}

impl Baselines {
    /// Detects each series' period and smoothing factor on `series[..split]`.
    pub fn fit(series: &[Vec<f64>], split: usize) -> Self {
        fn hist(s: &[f64], split: usize) -> &[f64] {
            &s[..split.min(s.len())]
        }
        Baselines {
            periods: series
                .iter()
                .map(|s| detect_period(hist(s, split)))
                .collect(),
            alphas: series.iter().map(|s| fit_alpha(hist(s, split))).collect(),
        }
    }

    /// Every baseline's forecast of `series[i][t]` for `t` in `from..to`,
    /// in [`BASELINES`] order: `out[b][t - from]`.
    pub fn forecasts(
        &self,
        config: &PredictorConfig,
        i: usize,
        series: &[f64],
        from: usize,
        to: usize,
    ) -> [Vec<f64>; 4] {
        let bw = config.baseline_window.max(1);
        let p = self.periods[i];
        let mut out: [Vec<f64>; 4] = Default::default();
        for t in from..to {
            let window = &series[t.saturating_sub(bw)..t];
            out[0].push(series[t - 1]);
            out[1].push(window.iter().sum::<f64>() / window.len() as f64);
            out[2].push(series[t.saturating_sub(p)]);
        }
        let mut es = vec![0.0; to - from];
        smooth(series, self.alphas[i], to, |t, f| {
            if t >= from {
                es[t - from] = f;
            }
        });
        out[3] = es;
        out
    }
}

/// How the model did against the naive baselines on the same held-out points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorReport {
    /// What the model is.
    pub model: String,
    /// What was predicted and in which units the MAEs are.
    pub target: String,
    /// Held-out (app, interval) points evaluated.
    pub points: usize,
    /// The model's mean absolute error (log1p units).
    pub mae: f64,
    /// Error of "next = last value" (log1p units).
    pub last_value_mae: f64,
    /// Error of "next = mean of the last `baseline_window` values" (log1p units).
    pub moving_average_mae: f64,
    /// Error of "next = the value one detected period ago" (log1p units).
    pub seasonal_mae: f64,
    /// Error of exponential smoothing with a fitted factor (log1p units).
    pub exp_smoothing_mae: f64,
    /// The baseline with the lowest error (log1p units): the one to beat.
    pub best_baseline: String,
    /// Its error (log1p units).
    pub best_baseline_mae: f64,
    /// The model's R² on the held-out points (log1p units).
    pub r2: Option<f64>,
    /// Share of held-out points at or below the upper-quantile forecast
    /// (calibration: close to `upper_quantile` is right).
    pub upper_coverage: f64,
    /// The model's error in the metric's own units (e.g. millicores).
    pub mae_raw: f64,
    /// Last-value error in the metric's own units.
    pub last_value_mae_raw: f64,
    /// Moving-average error in the metric's own units.
    pub moving_average_mae_raw: f64,
    /// Seasonal error in the metric's own units.
    pub seasonal_mae_raw: f64,
    /// Exponential-smoothing error in the metric's own units.
    pub exp_smoothing_mae_raw: f64,
}

/// Result of an online backtest: the report and every prediction made.
#[derive(Clone, Debug, PartialEq)]
pub struct Backtest {
    /// Errors of the model and the baselines.
    pub report: PredictorReport,
    /// `forecasts[i][t - split]`: the model's forecast of series `i` at `t`.
    pub forecasts: Vec<Vec<Forecast>>,
}

/// Online one-step-ahead forecasts of `series` (one value per minute,
/// `series[i][t]` at minute `first_minute + t`) for every `t` from `split`
/// on: the model sees only values before `split` when first fitted, is
/// refitted every `refit_every` minutes on everything before the refit
/// point, and each forecast of `t` uses values before `t` only.
pub fn forecast_online(
    config: &PredictorConfig,
    series: &[Vec<f64>],
    first_minute: u64,
    split: usize,
) -> Vec<Vec<Forecast>> {
    let len = series.iter().map(Vec::len).min().unwrap_or(0);
    let split = split.clamp(1, len.max(1));
    let mut p = Predictor::new(config.clone());
    let names: Vec<String> = (0..series.len()).map(|i| format!("s{i}")).collect();
    for (i, s) in series.iter().enumerate() {
        for (t, v) in s[..split].iter().enumerate() {
            p.observe(&names[i], first_minute + t as u64, *v);
        }
    }
    let mut forecasts = vec![Vec::with_capacity(len - split); series.len()];
    for t in split..len {
        if (t - split) % config.refit_every.max(1) == 0 {
            p.fit();
        }
        for (i, s) in series.iter().enumerate() {
            forecasts[i].push(p.forecast(&names[i]).unwrap_or(Forecast::point(0.0)));
            p.observe(&names[i], first_minute + t as u64, s[t]);
        }
    }
    forecasts
}

/// Measures `forecasts` (`forecasts[i][t - split]` of `series[i][t]`)
/// against the [`Baselines`] on the same points, from `split` on.
pub fn evaluate(
    config: &PredictorConfig,
    series: &[Vec<f64>],
    forecasts: &[Vec<Forecast>],
    split: usize,
    target: &str,
) -> PredictorReport {
    let len = series.iter().map(Vec::len).min().unwrap_or(0);
    let split = split.clamp(1, len.max(1));
    let baselines = Baselines::fit(series, split);
    let mut e_m = 0.0;
    let mut r_m = 0.0;
    let mut e_b = [0.0; 4];
    let mut r_b = [0.0; 4];
    let mut covered = 0usize;
    let mut actual_log = Vec::new();
    let mut sq_res = 0.0;
    for (i, s) in series.iter().enumerate() {
        let base = baselines.forecasts(config, i, s, split, len);
        for t in split..len {
            let fc = forecasts[i][t - split];
            let actual = s[t].max(0.0);
            let a = actual.ln_1p();
            e_m += (fc.median.max(0.0).ln_1p() - a).abs();
            r_m += (fc.median - actual).abs();
            sq_res += (fc.median.max(0.0).ln_1p() - a).powi(2);
            for b in 0..4 {
                let f = base[b][t - split].max(0.0);
                e_b[b] += (f.ln_1p() - a).abs();
                r_b[b] += (f - actual).abs();
            }
            actual_log.push(a);
            covered += usize::from(actual <= fc.upper * (1.0 + 1e-9) + 1e-9);
        }
    }
    let n = actual_log.len().max(1) as f64;
    let mean = actual_log.iter().sum::<f64>() / n;
    let ss_tot: f64 = actual_log.iter().map(|a| (a - mean).powi(2)).sum();
    let r2 = (ss_tot > 0.0).then(|| 1.0 - sq_res / ss_tot);
    let e_b = e_b.map(|e| e / n);
    let best = (0..4)
        .min_by(|&a, &b| e_b[a].total_cmp(&e_b[b]))
        .unwrap_or(0);
    PredictorReport {
        model: config.describe(),
        target: format!(
            "{target}; MAE in log1p units; baselines: last value, mean of last {}, seasonal (period detected on the history), exponential smoothing (factor fitted on the history)",
            config.baseline_window.max(1)
        ),
        points: actual_log.len(),
        mae: e_m / n,
        last_value_mae: e_b[0],
        moving_average_mae: e_b[1],
        seasonal_mae: e_b[2],
        exp_smoothing_mae: e_b[3],
        best_baseline: BASELINES[best].to_string(),
        best_baseline_mae: e_b[best],
        r2,
        upper_coverage: covered as f64 / n,
        mae_raw: r_m / n,
        last_value_mae_raw: r_b[0] / n,
        moving_average_mae_raw: r_b[1] / n,
        seasonal_mae_raw: r_b[2] / n,
        exp_smoothing_mae_raw: r_b[3] / n,
    }
}

/// Online one-step-ahead backtest on `series` ([`forecast_online`]),
/// measured against the baselines on the same points ([`evaluate`]).
pub fn backtest(
    config: &PredictorConfig,
    series: &[Vec<f64>],
    first_minute: u64,
    split: usize,
) -> Backtest {
    let forecasts = forecast_online(config, series, first_minute, split);
    let report = evaluate(config, series, &forecasts, split, "next-minute value");
    Backtest { report, forecasts }
}
