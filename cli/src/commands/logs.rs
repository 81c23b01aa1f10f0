//! `tern logs`: an app's output (stdout and stderr), once or `--follow`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use tern_api::types::LogsResponse;

use super::ok;
use crate::client::{runtime, seg, Conn};
use crate::output;
use crate::util::{print_json, shutdown_signal};

#[derive(Args)]
pub struct LogsArgs {
    /// The app.
    name: String,
    /// Keep printing new lines as they come (Ctrl-C stops).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Start from this line number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    conn: Conn,
}

pub fn logs(a: LogsArgs) -> Result<ExitCode> {
    if a.follow && a.conn.json {
        bail!("--follow prints lines as they come; use it without --json");
    }
    let ctl = a.conn.connect()?;
    let rt = runtime()?;
    let path =
        |from: u64, wait: u64| format!("/v1/apps/{}/logs?from={from}&wait_ms={wait}", seg(&a.name));
    let first: LogsResponse = rt.block_on(ctl.get(&path(a.from, 0)))?;
    if a.conn.json {
        print_json(&first)?;
        return ok();
    }
    let print = |r: &LogsResponse| -> Result<()> {
        let mut text = String::new();
        for l in &r.lines {
            text.push_str(l);
            text.push('\n');
        }
        output::write(text.as_bytes())
    };
    print(&first)?;
    // Following is only worth it while someone reads.
    if !a.follow || output::closed() {
        return ok();
    }
    let mut next = first.next;
    rt.block_on(async {
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let url = path(next, 20_000);
            tokio::select! {
                _ = &mut stop => return Ok::<_, anyhow::Error>(()),
                r = ctl.get::<LogsResponse>(&url) => {
                    let r = r?;
                    print(&r)?;
                    if output::closed() {
                        return Ok(());
                    }
                    next = r.next;
                }
            }
        }
    })?;
    ok()
}
