//! `tern migrate`: move an app to another node, cold, hot, hybrid or
//! post-copy, and report the downtime, total time, bytes and rounds.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tern_api::types::MigrationReport;

use super::ok;
use crate::client::{runtime, seg, Conn};
use crate::output::outln;
use crate::util::{human_bytes, human_ms, print_json};

#[derive(Args)]
pub struct MigrateArgs {
    /// The app.
    name: String,
    /// The node it moves to.
    #[arg(long, value_name = "NODE")]
    to: String,
    /// cold: stop, copy, restore; hot: live pre-copy while it serves;
    /// hybrid: the target starts from a checkpoint, only the delta moves;
    /// postcopy: the app resumes on the target at once and its pages
    /// follow, fetched on first touch (hot where userfaultfd is missing).
    #[arg(long, value_name = "MODE", default_value = "hot", value_parser = ["cold", "hot", "hybrid", "postcopy"])]
    mode: String,
    /// With --mode hot: if the pre-copy rounds have not converged after N
    /// rounds, switch to post-copy (what is still dirty follows on demand).
    #[arg(long, value_name = "N")]
    postcopy_after_rounds: Option<u32>,
    #[command(flatten)]
    conn: Conn,
}

pub fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?.with_timeout(Duration::from_secs(900));
    let body = serde_json::json!({
        "to": a.to,
        "mode": a.mode,
        "postcopy_after_rounds": a.postcopy_after_rounds,
    });
    let r: MigrationReport =
        runtime()?.block_on(ctl.post(&format!("/v1/apps/{}/migrate", seg(&a.name)), &body))?;
    if a.conn.json {
        print_json(&r)?;
        return ok();
    }
    outln!(
        "migrated {} from {} to {} ({}, generation {})",
        r.app,
        r.from,
        r.to,
        r.mode,
        r.generation
    )?;
    let rows = vec![
        vec!["downtime".into(), human_ms(r.downtime_ms)],
        vec!["total".into(), human_ms(r.total_ms)],
        vec![
            "sent".into(),
            format!("{} ({} pages)", human_bytes(r.bytes_sent), r.pages_sent),
        ],
        vec!["rounds".into(), r.rounds.to_string()],
        vec![
            "held".into(),
            format!("{} requests, replayed on {}", r.requests_held, r.to),
        ],
        vec![
            "dirty pages".into(),
            format!(
                "tracked by {}",
                if r.dirty_tracking.is_empty() {
                    "-"
                } else {
                    &r.dirty_tracking
                }
            ),
        ],
    ];
    for row in rows {
        outln!("  {:<12} {}", row[0], row[1])?;
    }
    ok()
}
