//! How a comparison reads: aligned tables and self-contained SVG plots.

use std::fmt::Write as _;

use super::{Comparison, PolicyResult, SimPolicy, Sweep};

/// Lines up `rows` under `header`: the first column left, the rest right.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i == 0 {
                l.push_str(cell);
                l.push_str(&" ".repeat(pad));
            } else {
                l.push_str("  ");
                l.push_str(&" ".repeat(pad));
                l.push_str(cell);
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
        out.push('\n');
    }
    out
}

/// `mean (min–max)`, or the mean alone when every seed agreed.
fn spread(mean: f64, range: [f64; 2], decimals: usize) -> String {
    if (range[1] - range[0]).abs() < 1e-9 {
        format!("{mean:.decimals$}")
    } else {
        format!(
            "{mean:.decimals$} ({:.decimals$}–{:.decimals$})",
            range[0], range[1]
        )
    }
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn policy_row(p: &PolicyResult) -> Vec<String> {
    vec![
        p.policy.to_string(),
        spread(p.overload_minutes, p.range.overload_minutes, 1),
        spread(p.unserved_cpu, p.range.unserved_cpu, 1),
        spread(p.slo_misses, p.range.slo_misses, 0),
        spread(p.migrations, p.range.migrations, 0),
        format!("{:.1}", p.migration_cost),
        format!(
            "{} ({}–{})",
            percent(p.mean_utilization),
            percent(p.range.mean_utilization[0]),
            percent(p.range.mean_utilization[1])
        ),
        format!("{:.1}", p.nodes_used),
        format!("{:.1}", p.mean_latency_ms),
        format!("{:.0}", p.node_estimate_mae),
    ]
}

/// The comparison as aligned text (what `tern sim` prints).
pub fn render_table(c: &Comparison) -> String {
    let s = &c.setup;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace: {} functions as {} apps, {} min ({} history, {} replayed); {} nodes x {}m CPU / {} MiB",
        s.functions,
        s.apps,
        s.minutes,
        s.history_minutes,
        s.replayed_minutes,
        s.nodes,
        s.node_capacity.cpu_milli,
        s.node_capacity.memory_bytes >> 20,
    );
    let _ = writeln!(
        out,
        "fill {:.2}: replayed demand/capacity {:.0}%, {} replayed minutes short of CPU; seeds {}",
        s.fill,
        s.demand_to_capacity * 100.0,
        s.short_minutes,
        match (s.seeds.first(), s.seeds.last()) {
            (Some(a), Some(b)) if a != b => format!("{a}..={b} (mean and range)"),
            (Some(a), _) => a.to_string(),
            _ => String::new(),
        }
    );
    let r = &s.rules;
    let _ = writeln!(
        out,
        "rules for every policy: at most {} moves and {:.1} s of migration per minute, {} min cool-down, declared requests within capacity",
        r.max_moves_per_minute, r.move_seconds_per_minute, r.cooldown_minutes
    );
    let header = [
        "policy",
        "overload node-min",
        "unserved core-min",
        "SLO misses",
        "migrations",
        "move cost",
        "mean util",
        "nodes",
        "latency ms",
        "node est. MAE",
    ];
    let rows: Vec<Vec<String>> = c.policies.iter().map(policy_row).collect();
    out.push_str(&table(&header, &rows));
    if let Some(g) = &c.gain {
        let share = |x: Option<f64>| x.map_or("n/a".to_string(), percent);
        let change = |r: f64, less: &str, more: &str| {
            if r >= 0.0 {
                format!("{} {less}", percent(r))
            } else {
                format!("{} {more}", percent(-r))
            }
        };
        let _ = writeln!(
            out,
            "learned vs requests: {} overload node-minutes, {} unserved CPU; share of the oracle's gain: {} (overload), {} (unserved)",
            change(g.overload_reduction, "fewer", "more"),
            change(g.unserved_reduction, "less", "more"),
            share(g.oracle_share_overload),
            share(g.oracle_share_unserved)
        );
    }
    for p in &c.policies {
        if p.policy != SimPolicy::Learned {
            continue;
        }
        if let Some(k) = p.runs.first().and_then(|r| r.capacity) {
            let _ = writeln!(
                out,
                "capacity advice (learned, seed {}): {} of {} short minutes announced a minute ahead, {} false alarms, up to {} extra node(s) asked",
                p.runs[0].seed, k.announced, k.short_minutes, k.false_alarms, k.max_extra_nodes
            );
        }
    }
    let p = &c.predictor;
    let _ = writeln!(
        out,
        "predictor on {} held-out points (log1p MAE): model {:.4}; last value {:.4}, moving average {:.4}, seasonal {:.4}, exp. smoothing {:.4} (best: {}){}",
        p.points,
        p.mae,
        p.last_value_mae,
        p.moving_average_mae,
        p.seasonal_mae,
        p.exp_smoothing_mae,
        p.best_baseline,
        p.r2.map_or(String::new(), |r| format!(", R² {r:.3}"))
    );
    let _ = writeln!(
        out,
        "  in millicores: model {:.1}; last value {:.1}, moving average {:.1}, seasonal {:.1}, exp. smoothing {:.1}",
        p.mae_raw,
        p.last_value_mae_raw,
        p.moving_average_mae_raw,
        p.seasonal_mae_raw,
        p.exp_smoothing_mae_raw
    );
    let _ = writeln!(out, "  target: {}", p.target);
    let _ = writeln!(out, "  model: {}", p.model);
    out
}

/// The sweep as aligned text: one row per fill and policy.
pub fn render_sweep(s: &Sweep) -> String {
    let header = [
        "fill",
        "policy",
        "mean util",
        "overload node-min",
        "unserved core-min",
        "SLO misses",
        "migrations",
    ];
    let mut rows = Vec::new();
    for c in &s.points {
        for p in &c.policies {
            rows.push(vec![
                format!("{:.2}", c.setup.fill),
                p.policy.to_string(),
                percent(p.mean_utilization),
                spread(p.overload_minutes, p.range.overload_minutes, 1),
                spread(p.unserved_cpu, p.range.unserved_cpu, 1),
                format!("{:.0}", p.slo_misses),
                format!("{:.0}", p.migrations),
            ]);
        }
    }
    let mut out = table(&header, &rows);
    for c in &s.points {
        if let Some(g) = &c.gain {
            let share = |x: Option<f64>| x.map_or("n/a".to_string(), percent);
            let _ = writeln!(
                out,
                "fill {:.2}: learned vs requests {:+.1}% overload node-minutes, {:+.1}% unserved CPU; share of the oracle's gain {} (overload), {} (unserved)",
                c.setup.fill,
                -100.0 * g.overload_reduction,
                -100.0 * g.unserved_reduction,
                share(g.oracle_share_overload),
                share(g.oracle_share_unserved)
            );
        }
    }
    out
}

const COLORS: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn policy_color(p: SimPolicy) -> &'static str {
    match p {
        SimPolicy::Requests => COLORS[0],
        SimPolicy::Cost => COLORS[1],
        SimPolicy::Learned => COLORS[2],
        SimPolicy::Oracle => COLORS[7],
        SimPolicy::Observed => COLORS[4],
    }
}

/// A self-contained SVG: one panel per policy with each node's CPU demand
/// (share of capacity) over the replayed minutes of the first seed, and
/// the capacity line.
pub fn plot_svg(c: &Comparison) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 220.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 30.0;
    let panels = c.policies.len().max(1);
    let height = PANEL_H * panels as f64;
    let load = |p: &PolicyResult| {
        p.runs
            .first()
            .map(|r| r.node_load.clone())
            .unwrap_or_default()
    };
    let y_max = c
        .policies
        .iter()
        .flat_map(|p| load(p).into_iter().flatten())
        .fold(1.2f64, f64::max)
        .min(5.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (k, p) in c.policies.iter().enumerate() {
        let node_load = load(p);
        let y0 = k as f64 * PANEL_H;
        let (px, py, pw, ph) = (LEFT, y0 + TOP, W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
        let n = node_load.first().map_or(0, Vec::len).max(2);
        let x = |i: usize| px + pw * i as f64 / (n - 1) as f64;
        let y = |v: f64| py + ph * (1.0 - v.min(y_max) / y_max);
        let seed = p.runs.first().map_or(0, |r| r.seed);
        let _ = writeln!(
            svg,
            r#"<text x="{px}" y="{:.1}" font-weight="bold">{}: {:.1} overload node-min, {:.1} unserved core-min, {:.0} migrations, {:.1}% mean util (mean of {} seeds; lines: seed {seed})</text>"#,
            y0 + 18.0,
            p.policy,
            p.overload_minutes,
            p.unserved_cpu,
            p.migrations,
            p.mean_utilization * 100.0,
            p.runs.len()
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
        for (ni, series) in node_load.iter().enumerate() {
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

/// A self-contained SVG of a sweep: overload node-minutes and unserved
/// CPU (two panels) against mean utilisation, one line per policy, a point
/// per fill.
pub fn plot_sweep_svg(s: &Sweep) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 320.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 130.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 40.0;
    let mut policies: Vec<SimPolicy> = Vec::new();
    for c in &s.points {
        for p in &c.policies {
            if !policies.contains(&p.policy) {
                policies.push(p.policy);
            }
        }
    }
    let all: Vec<&PolicyResult> = s.points.iter().flat_map(|c| &c.policies).collect();
    let (mut u_lo, mut u_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in &all {
        u_lo = u_lo.min(p.mean_utilization);
        u_hi = u_hi.max(p.mean_utilization);
    }
    if !u_lo.is_finite() {
        (u_lo, u_hi) = (0.0, 1.0);
    }
    let pad = ((u_hi - u_lo) * 0.05).max(0.005);
    let (u_lo, u_hi) = (u_lo - pad, u_hi + pad);
    type Metric = (&'static str, fn(&PolicyResult) -> f64);
    let metrics: [Metric; 2] = [
        ("overload node-minutes", |p| p.overload_minutes),
        ("unserved CPU, core-minutes", |p| p.unserved_cpu),
    ];
    let height = PANEL_H * metrics.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (k, (name, metric)) in metrics.iter().enumerate() {
        let y0 = k as f64 * PANEL_H;
        let (px, py, pw, ph) = (LEFT, y0 + TOP, W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
        let v_max = all.iter().map(|p| metric(p)).fold(0.0, f64::max).max(1e-9) * 1.05;
        let x = |u: f64| px + pw * (u - u_lo) / (u_hi - u_lo);
        let y = |v: f64| py + ph * (1.0 - v / v_max);
        let _ = writeln!(
            svg,
            r#"<text x="{px}" y="{:.1}" font-weight="bold">{name} against mean utilisation (mean of the seeds; a point per fill)</text>"#,
            y0 + 18.0
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for i in 0..=4 {
            let v = v_max * i as f64 / 4.0;
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{v:.0}</text>"##,
                px - 6.0,
                y(v) + 4.0
            );
            let u = u_lo + (u_hi - u_lo) * i as f64 / 4.0;
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{:.1}%</text>"##,
                x(u),
                py + ph + 16.0,
                u * 100.0
            );
        }
        for (pi, policy) in policies.iter().enumerate() {
            let pts: Vec<(f64, f64, f64)> = s
                .points
                .iter()
                .filter_map(|c| {
                    c.policies
                        .iter()
                        .find(|p| p.policy == *policy)
                        .map(|p| (p.mean_utilization, metric(p), c.setup.fill))
                })
                .collect();
            let color = policy_color(*policy);
            let line: Vec<String> = pts
                .iter()
                .map(|(u, v, _)| format!("{:.1},{:.1}", x(*u), y(*v)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{policy}</title></polyline>"#,
                line.join(" ")
            );
            for (u, v, fill) in &pts {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{policy}, fill {fill:.2}: {v:.1} at {:.1}% util</title></circle>"#,
                    x(*u),
                    y(*v),
                    u * 100.0
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{color}">{policy}</text>"#,
                px + pw + 12.0,
                py + 16.0 + 16.0 * pi as f64
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
