//! `tern sim`: replay a usage trace against placement policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use tern_scheduler::{
    parse_azure, plot_svg, plot_sweep_svg, render_sweep, render_table, sim, SimConfig, SimPolicy,
};

/// Fills of `--sweep` when none are given.
const SWEEP_FILLS: &str = "0.6,0.7,0.8,0.85,0.9,0.95";

use crate::output::{out, outln};

#[derive(Args)]
pub struct SimArgs {
    /// The trace: a prefix in the Azure Functions 2019 layout (`.../100` for
    /// `100_invocations.csv`, `100_durations.csv`, `100_memory.csv`).
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// A policy to compare (repeatable): requests, cost, learned, oracle
    /// (learned told the next minute exactly), observed (learned fed the
    /// last minute's usage instead of its forecast). Default: the first four.
    #[arg(long = "policy", value_name = "POLICY")]
    policies: Vec<String>,
    /// Nodes in the simulated cluster.
    #[arg(long)]
    nodes: Option<usize>,
    /// The history's mean demand fills this share of the cluster's CPU
    /// (the nodes are sized from it, the same for every policy).
    #[arg(long, value_name = "F", default_value_t = 0.8)]
    fill: f64,
    /// Seeds to replay (user locations and arrival order); results are
    /// their mean and range.
    #[arg(long, value_name = "N", default_value_t = 5)]
    seeds: usize,
    /// The first seed (same seeds, same result).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rule for every policy: moves per minute at most.
    #[arg(long, value_name = "N")]
    max_moves: Option<usize>,
    /// Rule for every policy: seconds of migration per minute at most (each
    /// move counted at its estimated time).
    #[arg(long, value_name = "SECONDS")]
    move_seconds: Option<f64>,
    /// Rule for every policy: minutes before a moved app may move again.
    #[arg(long, value_name = "MINUTES")]
    cooldown: Option<u64>,
    /// Compare at several fills instead of one (comma-separated, default
    /// 0.6,0.7,0.8,0.85,0.9,0.95): overload and unserved CPU against
    /// utilisation, per policy.
    #[arg(long, value_name = "FILLS", num_args = 0..=1, default_missing_value = SWEEP_FILLS)]
    sweep: Option<String>,
    /// Also write a plot: each node's load over time per policy, or with
    /// `--sweep` overload and unserved CPU against utilisation.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

fn read(prefix: &Path, suffix: &str) -> Result<String> {
    let mut name = prefix
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!("_{suffix}.csv"));
    let path = prefix.with_file_name(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (--trace takes a prefix such as traces/azure-functions-2019/100)",
            path.display()
        )
    })
}

fn fill(f: f64, what: &str) -> Result<f64> {
    if f.is_nan() || f <= 0.0 || f > 1.0 {
        bail!("{what} must be a share of the cluster in (0, 1], e.g. 0.8; got {f}");
    }
    Ok(f)
}

pub fn sim(a: SimArgs) -> Result<ExitCode> {
    let trace = parse_azure(
        &read(&a.trace, "invocations")?,
        &read(&a.trace, "durations")?,
        &read(&a.trace, "memory")?,
    )
    .with_context(|| format!("trace {} is malformed", a.trace.display()))?;
    let mut policies = Vec::new();
    for p in &a.policies {
        policies.push(
            p.parse::<SimPolicy>()
                .map_err(|e| anyhow::anyhow!("--policy {p}: {e}"))?,
        );
    }
    if policies.is_empty() {
        policies = SimPolicy::ALL.to_vec();
    }
    if a.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let mut config = SimConfig {
        seed: a.seed,
        seeds: a.seeds,
        fill: fill(a.fill, "--fill")?,
        ..SimConfig::default()
    };
    if let Some(n) = a.nodes {
        if n == 0 {
            bail!("--nodes must be at least 1");
        }
        config.nodes = n;
    }
    if let Some(n) = a.max_moves {
        config.max_moves_per_minute = n;
    }
    if let Some(s) = a.move_seconds {
        if !s.is_finite() || s < 0.0 {
            bail!("--move-seconds must be a number of seconds, 0 or more; got {s}");
        }
        config.move_seconds_per_minute = s;
    }
    if let Some(m) = a.cooldown {
        config.cooldown_minutes = m;
    }

    if let Some(list) = &a.sweep {
        let mut fills = Vec::new();
        for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let v: f64 = f
                .parse()
                .with_context(|| format!("--sweep: `{f}` is not a number"))?;
            fills.push(fill(v, "every --sweep fill")?);
        }
        if fills.is_empty() {
            bail!("--sweep needs at least one fill, e.g. --sweep 0.7,0.8,0.9");
        }
        let result = sim::sweep(&trace, &policies, &fills, &config);
        if let Some(path) = &a.plot {
            std::fs::write(path, plot_sweep_svg(&result))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if a.json {
            crate::util::print_json(&result)?;
        } else {
            crate::output::out!("{}", render_sweep(&result))?;
            if let Some(path) = &a.plot {
                crate::output::outln!("plot: {}", path.display())?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }

    let result = sim::compare(&trace, &policies, &config);
    if let Some(path) = &a.plot {
        std::fs::write(path, plot_svg(&result))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        crate::util::print_json(&result)?;
    } else {
        out!("{}", render_table(&result))?;
        if let Some(path) = &a.plot {
            outln!("plot: {}", path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
