//! The `tern` command. `main` only turns `run()` into an exit status; every
//! subcommand lives in a module of its own and renders its text and `--json`
//! output from one value.

mod local;
mod node_cmd;
mod sim;
mod util;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// tern: run WebAssembly apps in a sandbox, snapshot them between two calls,
/// and move them between nodes cold, hot or hybrid.
#[derive(Parser)]
#[command(name = "tern", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a module locally, call its exports, optionally snapshot it.
    ///
    /// Example: tern run counter.wasm --invoke add 5 --invoke get --snapshot-out c.snap
    Run(local::RunArgs),
    /// Resume a snapshot and go on exactly where it stopped.
    ///
    /// Example: tern resume c.snap --invoke add 1 --invoke get
    Resume(local::ResumeArgs),
    /// Show what a snapshot holds and whether its checksums hold.
    ///
    /// Example: tern inspect c.snap --json
    Inspect(local::InspectArgs),
    /// Run a node agent that registers with a control plane.
    ///
    /// Example: tern node --listen 127.0.0.1:7101 --control http://127.0.0.1:7070 --name edge-1 --label zone=eu
    Node(node_cmd::NodeArgs),
    /// Replay a usage trace against placement policies and compare them.
    ///
    /// Example: tern sim --trace scheduler/testdata/azure-functions-2019/100 --policy requests --policy cost --policy learned --plot load.svg
    Sim(sim::SimArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let sub = matches.subcommand().map(|(_, m)| m);
    let result = match cli.command {
        Command::Run(mut a) => {
            a.calls.group(sub.expect("subcommand matches"));
            local::run(a)
        }
        Command::Resume(mut a) => {
            a.calls.group(sub.expect("subcommand matches"));
            local::resume(a)
        }
        Command::Inspect(a) => local::inspect(a),
        Command::Node(a) => node_cmd::node(a),
        Command::Sim(a) => sim::sim(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", util::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
