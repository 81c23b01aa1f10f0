//! The `tern` command. `main` only turns `run()` into an exit status; every
//! subcommand lives in a module of its own and renders its text and `--json`
//! output from one value.

mod cluster;
mod demo;
mod local;
mod node_cmd;
mod sim;
mod up;
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
#[allow(clippy::large_enum_variant)]
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
    Control(cluster::ControlArgs),
    /// List the nodes: address, labels, capacity, usage, apps, state.
    ///
    /// Example: tern nodes
    Nodes(cluster::NodesArgs),
    /// Upload a module and start it where the scheduler decides (or on --node).
    ///
    /// Example: tern deploy counter.wasm --name counter --memory 64MiB --restart always
    Deploy(cluster::DeployArgs),
    /// List the apps: node, state, generation, memory, requests served.
    ///
    /// Example: tern ps --json
    Ps(cluster::PsArgs),
    /// Call an exported function of an app with numeric arguments.
    ///
    /// Example: tern invoke counter add -5
    Invoke(cluster::InvokeArgs),
    /// Send a request to an SDK app's handler and print the response body.
    ///
    /// Example: tern call kv --path /kv/greeting --method PUT --data hello
    Call(cluster::CallArgs),
    /// Move an app to another node: cold, hot (default) or hybrid.
    ///
    /// Example: tern migrate counter --to node-2 --mode hot
    Migrate(cluster::MigrateArgs),
    /// Write a snapshot of a running app to a file (the app goes on).
    ///
    /// Example: tern snapshot counter -o counter.snap
    Snapshot(cluster::SnapshotArgs),
    /// Start an app from a snapshot file.
    ///
    /// Example: tern restore counter.snap --name counter2 --node node-3
    Restore(cluster::RestoreArgs),
    /// Stop an app (its state is kept; `tern start` resumes it).
    ///
    /// Example: tern stop counter
    Stop(cluster::AppArgs),
    /// Start a stopped app again.
    ///
    /// Example: tern start counter
    Start(cluster::AppArgs),
    /// Remove an app from the cluster.
    ///
    /// Example: tern rm counter
    Rm(cluster::AppArgs),
    /// Print an app's output (stdout and stderr).
    ///
    /// Example: tern logs counter --follow
    Logs(cluster::LogsArgs),
    /// Drain a node: no new apps, and the rebalancer moves its apps away.
    ///
    /// Example: tern drain node-2   (undo: tern drain node-2 --undo)
    Drain(cluster::DrainArgs),
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
        Command::Demo(a) => demo::demo(a),
        Command::Up(a) => up::up(a),
        Command::Control(a) => cluster::control(a),
        Command::Nodes(a) => cluster::nodes(a),
        Command::Deploy(a) => cluster::deploy(a),
        Command::Ps(a) => cluster::ps(a),
        Command::Invoke(a) => cluster::invoke(a),
        Command::Call(a) => cluster::call(a),
        Command::Migrate(a) => cluster::migrate(a),
        Command::Snapshot(a) => cluster::snapshot(a),
        Command::Restore(a) => cluster::restore(a),
        Command::Stop(a) => cluster::stop(a),
        Command::Start(a) => cluster::start(a),
        Command::Rm(a) => cluster::rm(a),
        Command::Logs(a) => cluster::logs(a),
        Command::Drain(a) => cluster::drain(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", util::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
