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
    let raw = runtime()?.block_on(async {
        ctl.client
            .send_raw(
                hyper::Method::POST,
                &ctl.url(&format!("/v1/apps/{}/snapshot", seg(&a.name))),
                Some("application/octet-stream"),
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| ctl.err(e))
    })?;
    if !raw.status.is_success() {
        let msg = serde_json::from_slice::<tern_api::types::ErrorBody>(&raw.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| format!("the control plane answered {}", raw.status));
        return Err(anyhow!("{msg}"));
    }
    // The cluster's tag goes into the file, so that `tern restore` can
    // tell this file, unchanged, from anything else.
    let tag = raw
        .headers
        .get(SNAPSHOT_MAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| hex::decode(h).ok())
        .and_then(|t| <[u8; 32]>::try_from(t).ok())
        .ok_or_else(|| {
            anyhow!(
                "the control plane sent the snapshot without its tag: is it the same tern version?"
            )
        })?;
    let bytes = tern_runtime::snapshot::auth::seal(&raw.body, &tag);
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
    /// Restore a snapshot this cluster did not make (no tag, or a tag that
    /// does not check out). It still gets no more than a snapshot of this
    /// cluster: the app's own directory, the limits of the cluster.
    #[arg(long)]
    accept_foreign: bool,
    #[command(flatten)]
    conn: Conn,
}

/// The header carrying a snapshot's tag.
const SNAPSHOT_MAC_HEADER: &str = "x-tern-snapshot-mac";

pub fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let file =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let (body, tag) = tern_runtime::snapshot::auth::unseal(&file);
    if tag.is_none() && !a.accept_foreign {
        return Err(anyhow!(
            "{} carries no tag of a tern cluster (it was not written by `tern snapshot -o`, or was changed): restore it with --accept-foreign if you trust where it came from",
            a.file.display()
        ));
    }
    let bytes = body.to_vec();
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
        if a.accept_foreign {
            q.push_str("&foreign=1");
        }
        let mut client = ctl.client.clone();
        if let Some(t) = tag {
            client = client.with_header(SNAPSHOT_MAC_HEADER, &hex::encode(t));
        }
        let (_, answer) = client
            .send(
                hyper::Method::POST,
                &ctl.url(&q),
                "application/octet-stream",
                bytes.into(),
            )
            .await
            .map_err(|e| ctl.err(e))?;
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
