//! Judging the predictor: the naive baselines it must beat (last value,
//! moving average, seasonal, exponential smoothing), and backtests that
//! measure it against the best of them on the same held-out data.

use super::*;

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
