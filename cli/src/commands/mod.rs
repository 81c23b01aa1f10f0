//! One module per subcommand, or per small family of them, as `tern --help`
//! lists them: each holds its clap `Args` and a function that runs it and
//! returns the exit status, rendering text and `--json` from the same value.
//!
//! Local: `run` (run, resume), `inspect`, `sim`. Cluster clients, which
//! reach the control plane through [`crate::client`]: `nodes` (nodes,
//! drain), `deploy`, `ps`, `invoke` (invoke, call), `migrate`, `snapshot`
//! (snapshot, restore), `lifecycle` (stop, start, rm), `logs`. Servers:
//! `control`. `soak` drives a cluster of its own through moves and faults.

use std::process::ExitCode;

use anyhow::Result;

pub mod control;
pub mod deploy;
pub mod inspect;
pub mod invoke;
pub mod lifecycle;
pub mod logs;
pub mod migrate;
pub mod nodes;
pub mod ps;
pub mod run;
pub mod sim;
pub mod snapshot;
pub mod soak;
pub mod token;

fn ok() -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
