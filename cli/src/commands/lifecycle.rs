//! `tern stop`, `tern start`, `tern rm`: an app's life in the cluster.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tern_api::types::AppView;

use super::ok;
use crate::client::{runtime, seg, Conn};
use crate::output::outln;
use crate::util::print_json;

#[derive(Args)]
pub struct AppArgs {
    /// The app.
    name: String,
    #[command(flatten)]
    conn: Conn,
}

fn stop_or_start(a: AppArgs, verb: &str) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let view: AppView = runtime()?.block_on(ctl.post(
        &format!("/v1/apps/{}/{verb}", seg(&a.name)),
        &serde_json::json!({}),
    ))?;
    if a.conn.json {
        print_json(&view)?;
    } else {
        let done = if verb == "stop" { "stopped" } else { "started" };
        outln!(
            "{done} {} on {} ({})",
            view.name,
            view.node.as_deref().unwrap_or("?"),
            view.state
        )?;
    }
    ok()
}

pub fn stop(a: AppArgs) -> Result<ExitCode> {
    stop_or_start(a, "stop")
}

pub fn start(a: AppArgs) -> Result<ExitCode> {
    stop_or_start(a, "start")
}

pub fn rm(a: AppArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    runtime()?.block_on(async {
        ctl.client
            .delete(&ctl.url(&format!("/v1/apps/{}", seg(&a.name))))
            .await
            .map_err(|e| ctl.err(e))
    })?;
    if a.conn.json {
        print_json(&serde_json::json!({"removed": a.name}))?;
    } else {
        outln!("removed {}", a.name)?;
    }
    ok()
}
