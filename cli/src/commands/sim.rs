//! `tern sim`: replay a usage trace against placement policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use tern_scheduler::{compare, parse_azure, plot_svg, render_table, Policy, SimConfig};

use crate::output::{out, outln};

#[derive(Args)]
pub struct SimArgs {
    /// The trace: a prefix in the Azure Functions 2019 layout (`.../100` for
    /// `100_invocations.csv`, `100_durations.csv`, `100_memory.csv`).
    #[arg(long, value_name = "FILE")]
    trace: PathBuf,
    /// A policy to compare (repeatable): requests, cost, learned. Default: all three.
    #[arg(long = "policy", value_name = "POLICY")]
    policies: Vec<String>,
    /// Nodes in the simulated cluster.
    #[arg(long)]
    nodes: Option<usize>,
    /// Seed for every random choice (same seed, same result).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write a plot of per-node load over time for each policy.
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
            p.parse::<Policy>()
                .map_err(|e| anyhow::anyhow!("--policy {p}: {e}"))?,
        );
    }
    if policies.is_empty() {
        policies = vec![Policy::Requests, Policy::Cost, Policy::Learned];
    }
    let mut config = SimConfig {
        seed: a.seed,
        ..SimConfig::default()
    };
    if let Some(n) = a.nodes {
        if n == 0 {
            bail!("--nodes must be at least 1");
        }
        config.nodes = n;
    }
    let result = compare(&trace, &policies, &config);
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
