//! The `tern` command as a library: [`run`] parses a command line and runs
//! it; the binary only turns its result into an exit status.
//!
//! `app` holds the clap definition and the dispatch; `commands` one module
//! per subcommand; `client` what the cluster client commands share
//! (finding the control plane and token, choosing the leader, errors that
//! say what to do); `output` stdout, where a reader that stopped reading
//! ends the output quietly; `util` small helpers. `up`, `demo` and
//! `node_cmd` (the commands that run cluster processes in the foreground)
//! sit beside them.

// Stdout goes through `output`, where a closed pipe ends the output
// quietly; `print!`/`println!` would panic on it.
#![warn(clippy::print_stdout)]

mod app;
mod client;
mod commands;
mod demo;
pub mod local_cluster;
mod node_cmd;
mod observe;
mod output;
mod up;
mod util;

pub use app::run;
pub use local_cluster::LocalCluster;
pub use util::one_line;
