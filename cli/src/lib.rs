//! The `tern` command as a library: [`run`] parses a command line and runs
//! it; the binary only turns its result into an exit status.
//!
//! `app` holds the clap definition and the dispatch; `commands` one module
//! per subcommand; `client` what the cluster client commands share
//! (finding the control plane and token, choosing the leader, errors that
//! say what to do); `util` small helpers. `up`, `demo` and `node_cmd` are
//! the commands that start cluster processes.

mod app;
mod client;
mod commands;
mod demo;
mod node_cmd;
mod up;
mod util;

pub use app::run;
pub use util::one_line;
