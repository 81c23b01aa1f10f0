//! `tern ps`: the apps, their node, state, generation, memory and requests.

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
                a.last_error.clone().unwrap_or_default(),
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
                "LAST ERROR"
            ],
            rows
        )
    )?;
    ok()
}
