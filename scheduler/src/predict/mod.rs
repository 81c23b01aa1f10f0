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

mod evaluate;

pub use evaluate::{backtest, evaluate, forecast_online, Backtest, Baselines, PredictorReport};

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
