//! The command line: clap's definition of `tern` (every subcommand, its
//! one-line help and its example) and the dispatch to the module that runs
//! it. [`run`] is all of `tern` but turning its result into an exit status.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::commands::{
    control, deploy, inspect, invoke, lifecycle, logs, migrate, nodes, ps, run, sim, snapshot,
    soak, token,
};
use crate::{demo, node_cmd, up};

/// tern: run WebAssembly apps in a sandbox, snapshot them between two calls,
/// and move them between nodes cold, hot or hybrid.
#[derive(Parser)]
#[command(name = "tern", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a module locally, call its exports, optionally snapshot it.
    ///
    /// The app reads tern's stdin and writes to its stdout and stderr.
    ///
    /// Exit status: 0 when everything ran; the app's own when it exits
    /// (`proc_exit`); 134 when a call traps (unreachable, out of bounds,
    /// stack overflow, or stopped by --timeout or --fuel), as wasmtime
    /// exits; 1 for any other error.
    ///
    /// Example: tern run counter.wasm --invoke add 5 --invoke get --snapshot-out c.snap
    Run(run::RunArgs),
    /// Resume a snapshot and go on exactly where it stopped.
    ///
    /// A snapshot is data, not authority: the app gets only the
    /// directories, variables and arguments this command line gives
    /// (--dir, --env, after --) and runs under its limits (or the
    /// defaults), whatever the file asks for; each request not granted is
    /// named in a warning. Exit status as for `tern run`.
    ///
    /// Example: tern resume c.snap --invoke add 1 --invoke get
    Resume(run::ResumeArgs),
    /// Show what a snapshot holds and whether its checksums hold.
    ///
    /// Its directories, variables and limits are shown as requests: `tern
    /// resume` grants only what its own command line gives.
    ///
    /// Example: tern inspect c.snap --json
    Inspect(inspect::InspectArgs),
    /// Run a node agent that registers with a control plane.
    ///
    /// Example: tern node --listen 127.0.0.1:7101 --control https://127.0.0.1:7070 --join K10…::tok-… --name edge-1 --label zone=eu
    Node(node_cmd::NodeArgs),
    /// Replay a usage trace against placement policies (and an oracle that
    /// knows the next minute) under the same rules, over several seeds.
    ///
    /// Example: tern sim --trace scheduler/testdata/azure-functions-2019/100 --fill 0.9 --plot load.svg
    ///
    /// Example: tern sim --trace scheduler/testdata/azure-functions-2019/100 --sweep --plot sweep.svg
    Sim(sim::SimArgs),
    /// The showcase: a local cluster, example apps under load, moved hot,
    /// cold and hybrid while they serve, placed by the learned scheduler.
    ///
    /// Example: tern demo
    Demo(demo::DemoArgs),
    /// Run a local cluster: a control plane and N nodes on loopback, in the foreground.
    ///
    /// Example: tern up --nodes 3
    Up(up::UpArgs),
    /// Run a control plane (the cluster's state, placement, rebalancing).
    ///
    /// Example: tern control --listen 0.0.0.0:7070 --data-dir /var/lib/tern
    ///
    /// Two control planes sharing an etcd store, one leading:
    ///   tern control --listen 127.0.0.1:7070 --store etcd://127.0.0.1:2379
    ///   tern control --listen 127.0.0.1:7071 --store etcd://127.0.0.1:2379
    Control(control::ControlArgs),
    /// List the nodes: address, labels, capacity, usage, apps, state.
    ///
    /// Example: tern nodes
    Nodes(nodes::NodesArgs),
    /// Upload a module and start it where the scheduler decides (or on --node).
    ///
    /// Example: tern deploy counter.wasm --name counter --memory 64MiB --restart always
    Deploy(deploy::DeployArgs),
    /// List the apps: node, state, generation, memory, requests served.
    ///
    /// Example: tern ps --json
    Ps(ps::PsArgs),
    /// Call an exported function of an app with numeric arguments.
    ///
    /// Example: tern invoke counter add -5
    Invoke(invoke::InvokeArgs),
    /// Send a request to an SDK app's handler and print the response body.
    ///
    /// Example: tern call kv --path /kv/greeting --method PUT --data hello
    Call(invoke::CallArgs),
    /// Move an app to another node: cold, hot (default) or hybrid.
    ///
    /// Example: tern migrate counter --to node-2 --mode hot
    Migrate(migrate::MigrateArgs),
    /// Write a snapshot of a running app to a file (the app goes on).
    ///
    /// Example: tern snapshot counter -o counter.snap
    Snapshot(snapshot::SnapshotArgs),
    /// Start an app from a snapshot file.
    ///
    /// Example: tern restore counter.snap --name counter2 --node node-3
    Restore(snapshot::RestoreArgs),
    /// Stop an app (its state is kept; `tern start` resumes it).
    ///
    /// Example: tern stop counter
    Stop(lifecycle::AppArgs),
    /// Start a stopped app again.
    ///
    /// Example: tern start counter
    Start(lifecycle::AppArgs),
    /// Remove an app from the cluster.
    ///
    /// Example: tern rm counter
    Rm(lifecycle::AppArgs),
    /// Print an app's output (stdout and stderr).
    ///
    /// Example: tern logs counter --follow
    Logs(logs::LogsArgs),
    /// Drain a node: no new apps, and the rebalancer moves its apps away.
    ///
    /// Example: tern drain node-2   (undo: tern drain node-2 --undo)
    Drain(nodes::DrainArgs),
    /// Beat on a cluster: seeded hot, cold and hybrid moves of ledger apps
    /// under continuous calls, with processes killed at random points, and
    /// a check that every acknowledged call was applied exactly once, none
    /// twice, and no two copies of an app served at once.
    ///
    /// It starts its own cluster (a control plane and --nodes nodes, as
    /// processes), restarts what it kills, and exits non-zero if anything
    /// was lost, doubled or split.
    ///
    /// Example: tern soak --migrations 300 --seed 1 --json
    Soak(soak::SoakArgs),
    /// Create, list and revoke credentials (operator, dashboard and join
    /// tokens; node certificates), without a restart.
    ///
    /// Example: tern token create --scope join --ttl 1h
    Token(token::TokenArgs),
}

/// Parses `args` (the program's name first) and runs the subcommand they
/// name. `--help`, `--version` and usage errors are printed here, as clap
/// prints them, and come back as their exit status; a failed command comes
/// back as its error.
pub fn run<I, T>(args: I) -> Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => return Ok(clap_exit(&e)),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return Ok(clap_exit(&e)),
    };
    let sub = matches.subcommand().map(|(_, m)| m);
    match cli.command {
        Command::Run(mut a) => {
            a.calls.group(sub.expect("subcommand matches"));
            run::run(a)
        }
        Command::Resume(mut a) => {
            a.calls.group(sub.expect("subcommand matches"));
            run::resume(a)
        }
        Command::Inspect(a) => inspect::inspect(a),
        Command::Node(a) => node_cmd::node(a),
        Command::Sim(a) => sim::sim(a),
        Command::Demo(a) => demo::demo(a),
        Command::Up(a) => up::up(a),
        Command::Control(a) => control::control(a),
        Command::Nodes(a) => nodes::nodes(a),
        Command::Deploy(a) => deploy::deploy(a),
        Command::Ps(a) => ps::ps(a),
        Command::Invoke(a) => invoke::invoke(a),
        Command::Call(a) => invoke::call(a),
        Command::Migrate(a) => migrate::migrate(a),
        Command::Snapshot(a) => snapshot::snapshot(a),
        Command::Restore(a) => snapshot::restore(a),
        Command::Stop(a) => lifecycle::stop(a),
        Command::Start(a) => lifecycle::start(a),
        Command::Rm(a) => lifecycle::rm(a),
        Command::Logs(a) => logs::logs(a),
        Command::Drain(a) => nodes::drain(a),
        Command::Token(a) => token::token(a),
        Command::Soak(a) => soak::soak(a),
    }
}

/// What `clap::Error::exit` does, without leaving the process: prints the
/// help, version or usage error (a closed stream is ignored, as clap
/// ignores it) and gives its exit status.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}
