//! `tern snapshot` writes a running app's snapshot to a file; `tern
//! restore` starts an app from one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::Serialize;
use tern_api::types::AppView;

use super::ok;
use crate::client::{percent_encode, runtime, seg, Conn};
use crate::output::outln;
use crate::util::{human_bytes, print_json};

#[derive(Args)]
pub struct SnapshotArgs {
    /// The app (it goes on running).
    name: String,
    /// Where to write the snapshot.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Serialize)]
struct SnapshotOutput {
    app: String,
    file: String,
    bytes: u64,
}

pub fn snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?.with_timeout(Duration::from_secs(600));
    let bytes = runtime()?
        .block_on(ctl.post_bytes(&format!("/v1/apps/{}/snapshot", seg(&a.name)), Vec::new()))?;
    write_file_atomic(&a.output, &bytes)?;
    let out = SnapshotOutput {
        app: a.name.clone(),
        file: a.output.display().to_string(),
        bytes: bytes.len() as u64,
    };
    if a.conn.json {
        print_json(&out)?;
    } else {
        outln!(
            "wrote {} ({}) from {}",
            out.file,
            human_bytes(out.bytes),
            out.app
        )?;
    }
    ok()
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    file: PathBuf,
    /// The app's name in the cluster.
    #[arg(long)]
    name: String,
    /// Restore it on this node (default: where it runs, else where the scheduler decides).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// Restart policy of the restored app.
    #[arg(long, value_name = "POLICY", value_parser = ["never", "on-failure", "always"])]
    restart: Option<String>,
    /// The module, for a snapshot that does not carry it (uploaded first).
    #[arg(long, value_name = "FILE.wasm")]
    module: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

pub fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let ctl = a.conn.connect()?.with_timeout(Duration::from_secs(600));
    let view: AppView = runtime()?.block_on(async {
        let mut q = format!("/v1/restore?name={}", percent_encode(&a.name));
        if let Some(n) = &a.node {
            q.push_str(&format!("&node={}", percent_encode(n)));
        }
        if let Some(r) = &a.restart {
            q.push_str(&format!("&restart={r}"));
        }
        if let Some(m) = &a.module {
            let (sha, _) = ctl.upload_module(m).await?;
            q.push_str(&format!("&module={sha}"));
        }
        let answer = ctl.post_bytes(&q, bytes).await?;
        serde_json::from_slice(&answer).context("unexpected answer to a restore")
    })?;
    if a.conn.json {
        print_json(&view)?;
    } else {
        outln!(
            "restored {} on {} (generation {}, {})",
            view.name,
            view.node.as_deref().unwrap_or("?"),
            view.generation,
            view.state
        )?;
    }
    ok()
}

/// Writes a file atomically and durably (see `tern_util::write_atomic`).
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tern_util::write_atomic(path, bytes)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}
