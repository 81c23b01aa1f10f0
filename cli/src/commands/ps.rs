//! `tern ps`: the apps, their node, state, generation, memory, requests,
//! limits, and what went wrong last (an error, or a failed checkpoint).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tern_api::types::AppView;

use super::ok;
use crate::client::{runtime, Conn};
use crate::output::{out, outln};
use crate::util::{human_bytes, print_json, table};

#[derive(Args)]
pub struct PsArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn ps(a: PsArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let apps: Vec<AppView> = runtime()?.block_on(ctl.get("/v1/apps"))?;
    if a.conn.json {
        print_json(&apps)?;
        return ok();
    }
    if apps.is_empty() {
        outln!("no apps: deploy one with `tern deploy FILE.wasm --name NAME`")?;
        return ok();
    }
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.node.clone().unwrap_or_else(|| "-".into()),
                a.state.clone(),
                a.generation.to_string(),
                human_bytes(a.memory_bytes),
                a.requests_served.to_string(),
                a.restart.clone(),
                limits(&a.limits),
                problem(a),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "NAME",
                "NODE",
                "STATE",
                "GEN",
                "MEMORY",
                "REQUESTS",
                "RESTART",
                "LIMITS",
                "LAST ERROR"
            ],
            rows
        )
    )?;
    ok()
}

/// `1.0 GiB · 30 s` (memory, time per call; fuel when set), `-` for none.
fn limits(l: &tern_api::types::AppLimits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = l.memory_bytes {
        parts.push(human_bytes(m));
    }
    if let Some(t) = l.timeout_ms {
        parts.push(if t % 1000 == 0 {
            format!("{} s", t / 1000)
        } else {
            format!("{t} ms")
        });
    }
    if let Some(f) = l.fuel {
        parts.push(format!("{f} fuel"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" · ")
    }
}

/// The app's last error, else a failed checkpoint (a restart would start
/// from an older state).
fn problem(a: &AppView) -> String {
    match (
        &a.last_error,
        a.checkpoint.as_ref().and_then(|c| c.error.as_ref()),
    ) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) => format!("checkpoint failed: {e}"),
        (None, None) => String::new(),
    }
}
