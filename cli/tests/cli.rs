//! The `tern` binary as scripts use it: commands, exit codes, `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env(
            "TERN_CACHE_DIR",
            std::env::temp_dir().join("tern-cli-test-cache"),
        )
        .output()
        .expect("run tern")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn counter() -> String {
    root()
        .join("tests/guests/wat/contract_counter.wat")
        .display()
        .to_string()
}

#[path = "cli/metrics.rs"]
mod metrics;
#[path = "cli/soak.rs"]
mod soak;

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "tern failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn run_snapshot_resume_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("c.snap");
    let snap = snap.to_str().unwrap();
    let out = tern(&[
        "run",
        &counter(),
        "--invoke",
        "add",
        "5",
        "--invoke",
        "add",
        "-2",
        "--snapshot-out",
        snap,
        "--json",
    ]);
    let doc = json(&out);
    assert_eq!(doc["calls"][1]["results"][0], 3);
    assert_eq!(doc["calls"][1]["args"][0], -2);
    // Twice in a row: resume, snapshot again, resume again.
    let snap2 = dir.path().join("c2.snap");
    let doc = json(&tern(&[
        "resume",
        snap,
        "--invoke",
        "add",
        "10",
        "--snapshot-out",
        snap2.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(doc["calls"][0]["results"][0], 13);
    let out = tern(&["resume", snap2.to_str().unwrap(), "--invoke", "get"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "13");
    let doc = json(&tern(&["inspect", snap, "--json"]));
    assert_eq!(doc["checksum"], "ok");
    assert_eq!(doc["format_version"], 2);
    assert_eq!(doc["globals"][0]["value"], "i64 3");
}

#[test]
fn a_damaged_snapshot_is_an_error_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("c.snap");
    json(&tern(&[
        "run",
        &counter(),
        "--invoke",
        "add",
        "7",
        "--snapshot-out",
        snap.to_str().unwrap(),
        "--json",
    ]));
    let mut bytes = std::fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    std::fs::write(&snap, &bytes).unwrap();
    let out = tern(&["resume", snap.to_str().unwrap(), "--invoke", "get"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("checksum"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no wrong answer is printed");
    std::fs::write(&snap, &bytes[..n / 2]).unwrap();
    let err =
        String::from_utf8_lossy(&tern(&["inspect", snap.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn guest_faults_are_errors_not_crashes() {
    let m = root().join("tests/guests/wat/misbehave.wat");
    let m = m.to_str().unwrap();
    for (args, needle) in [
        (vec!["run", m, "--invoke", "trap"], "unreachable"),
        (
            vec!["run", m, "--timeout", "50ms", "--invoke", "spin"],
            "time limit",
        ),
        (
            vec!["run", m, "--fuel", "10000", "--invoke", "spin"],
            "fuel",
        ),
        (vec!["run", m, "--invoke", "recurse", "0"], "stack"),
        (vec!["run", m, "--invoke", "div", "1"], "takes 2 argument"),
        (vec!["run", "/no/such/module.wasm"], "cannot"),
    ] {
        let out = tern(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Memory growth past the limit fails inside Wasm: -1, not an error.
    let out = tern(&["run", m, "--memory", "1MiB", "--invoke", "grow", "100"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-1");
}

#[test]
fn sim_compares_the_policies_on_the_shipped_trace() {
    let trace = root().join("scheduler/testdata/azure-functions-2019/10");
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("load.svg");
    let doc = json(&tern(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--policy",
        "requests",
        "--policy",
        "learned",
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]));
    let policies = doc["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for p in policies {
        for field in [
            "policy",
            "overload_minutes",
            "migrations",
            "mean_utilization",
            "nodes_used",
        ] {
            assert!(!p[field].is_null(), "missing {field}");
        }
    }
    for field in ["model", "mae", "last_value_mae", "moving_average_mae"] {
        assert!(
            !doc["predictor"][field].is_null(),
            "missing predictor.{field}"
        );
    }
    assert!(doc["predictor"]["mae"].as_f64() < doc["predictor"]["last_value_mae"].as_f64());
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let help = String::from_utf8_lossy(&tern(&["--help"]).stdout).into_owned();
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{help}");
    for c in commands {
        let out = tern(&[&c, "--help"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example:"),
            "`tern {c} --help` has no example:\n{text}"
        );
    }
}

/// Runs `cmd` with its stdout a pipe whose reader is gone before it starts
/// (as after `| head -0`), and checks that tern ends quietly: exit status
/// 0, no panic, no `error:` line.
fn runs_quietly_into_a_closed_pipe(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let what = format!("{cmd:?}");
    let out = cmd.stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked") && !stderr.contains("error:"),
        "{what} with its stdout closed: {}\n{stderr}",
        out.status
    );
    out
}

/// A reader that stops reading (`tern inspect c.snap | head -1`) ends
/// tern's output, not its work: no panic, no error, and what was asked
/// besides printing (a snapshot) is still done.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("c.snap");
    let snap = snap.to_str().unwrap();
    let trace = root().join("scheduler/testdata/azure-functions-2019/10");
    let trace = trace.to_str().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
        c.args(args).env(
            "TERN_CACHE_DIR",
            std::env::temp_dir().join("tern-cli-test-cache"),
        );
        c
    };
    let calls: Vec<String> = (0..200)
        .flat_map(|_| ["--invoke", "add", "1"].map(String::from))
        .collect();
    let mut run = cmd(&["run", &counter(), "--snapshot-out", snap]);
    run.args(&calls);
    runs_quietly_into_a_closed_pipe(run);
    let doc = json(&tern(&["resume", snap, "--invoke", "get", "--json"]));
    assert_eq!(doc["calls"][0]["results"][0], 200, "every call ran");
    for args in [
        &["inspect", snap][..],
        &["inspect", snap, "--json"],
        &["resume", snap, "--invoke", "get"],
        &["--help"],
        &["inspect", "--help"],
        &["sim", "--trace", trace, "--policy", "requests"],
    ] {
        runs_quietly_into_a_closed_pipe(cmd(args));
    }
}

/// The cluster client commands, too, end quietly when their reader has gone
/// (`tern ps | head -1`), and one that changes the cluster still does.
#[test]
fn cluster_commands_end_quietly_when_stdout_is_closed() {
    let cluster = Cluster::up(1);
    let counter = PathBuf::from(tern_artifacts::COUNTER);
    for args in [&["nodes"][..], &["nodes", "--json"], &["ps"]] {
        runs_quietly_into_a_closed_pipe(cluster.command(args));
    }
    runs_quietly_into_a_closed_pipe(cluster.command(&[
        "deploy",
        counter.to_str().unwrap(),
        "--name",
        "counter",
    ]));
    let doc = json(&cluster.tern(&["invoke", "counter", "add", "2", "--json"]));
    assert_eq!(doc["results"][0], 2, "the deploy happened");
    for args in [
        &["ps"][..],
        &["ps", "--json"],
        &["invoke", "counter", "get"],
        &["logs", "counter"],
        &[
            "deploy",
            counter.to_str().unwrap(),
            "--name",
            "c2",
            "--dry-run",
        ],
    ] {
        runs_quietly_into_a_closed_pipe(cluster.command(args));
    }
}

/// A `tern up` cluster in a child process, stopped (SIGTERM) on drop.
struct Cluster {
    child: std::process::Child,
    dir: tempfile::TempDir,
    control: String,
}

impl Cluster {
    fn up(nodes: u32) -> Cluster {
        Cluster::up_with(nodes, &[])
    }

    /// `tern up` with these flags too.
    fn up_with(nodes: u32, flags: &[&str]) -> Cluster {
        Cluster::start(nodes, flags, false)
    }

    /// [`Cluster::up_with`], its stdout and stderr kept for the test to read
    /// (take them from `child`).
    fn up_capturing(nodes: u32, flags: &[&str]) -> Cluster {
        Cluster::start(nodes, flags, true)
    }

    fn start(nodes: u32, flags: &[&str], capture: bool) -> Cluster {
        let out = || {
            if capture {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let control = format!("https://127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args([
                "up",
                "--nodes",
                &nodes.to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .args(flags)
            .env(
                "TERN_CACHE_DIR",
                std::env::temp_dir().join("tern-cli-test-cache"),
            )
            .stdout(out())
            .stderr(out())
            .spawn()
            .unwrap();
        let c = Cluster {
            child,
            dir,
            control,
        };
        // Wait (bounded) until every node has registered.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = c.tern(&["nodes", "--json"]);
            if out.status.success() {
                let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if doc.as_array().is_some_and(|a| {
                    a.len() == nodes as usize && a.iter().all(|n| n["state"] == "ready")
                }) {
                    return c;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster did not come up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A client thread calling `tern invoke counter add 1` `calls` times,
    /// one after the other; the totals it got back.
    fn counter_writer(&self, calls: usize) -> std::thread::JoinHandle<Vec<i64>> {
        let control = self.control.clone();
        let token = std::fs::read_to_string(self.dir.path().join("token")).unwrap();
        let ca = self.dir.path().join("ca.pem");
        std::thread::spawn(move || {
            (0..calls)
                .map(|_| {
                    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
                        .args(["invoke", "counter", "add", "1", "--json"])
                        .env("TERN_CONTROL", &control)
                        .env("TERN_CA", &ca)
                        .env("TERN_TOKEN", token.trim())
                        .output()
                        .unwrap();
                    json(&out)["results"][0].as_i64().unwrap()
                })
                .collect()
        })
    }

    fn tern(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `tern ARGS` as a client of this cluster, not started yet.
    fn command(&self, args: &[&str]) -> Command {
        let token = std::fs::read_to_string(self.dir.path().join("token")).unwrap_or_default();
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
        c.args(args)
            .env("TERN_CONTROL", &self.control)
            .env("TERN_CA", self.dir.path().join("ca.pem"))
            .env("TERN_TOKEN", token.trim());
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn an_operator_sets_the_limits_of_apps_that_set_none() {
    let cluster = Cluster::up_with(1, &["--default-memory", "64MiB", "--default-timeout", "2s"]);
    let plain = json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "plain",
        "--json",
    ]));
    assert_eq!(
        plain["app"]["limits"]["memory_bytes"],
        64u64 << 20,
        "{plain}"
    );
    assert_eq!(plain["app"]["limits"]["timeout_ms"], 2000, "{plain}");
    // An app's own limits win over the defaults.
    let own = json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "own",
        "--memory",
        "16MiB",
        "--json",
    ]));
    assert_eq!(own["app"]["limits"]["memory_bytes"], 16u64 << 20, "{own}");
    assert_eq!(own["app"]["limits"]["timeout_ms"], 2000, "{own}");

    // Nonsense is refused before anything starts, saying which flag.
    for (flag, value) in [("--default-memory", "0"), ("--default-timeout", "soon")] {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["up", "--nodes", "0", "--listen", "127.0.0.1:0", flag, value])
            .arg("--data-dir")
            .arg(cluster.dir.path().join("refused"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

#[test]
fn a_real_cluster_moves_an_app_while_it_serves() {
    let cluster = Cluster::up(3);
    let counter = PathBuf::from(tern_artifacts::COUNTER);
    let doc = json(&cluster.tern(&[
        "deploy",
        counter.to_str().unwrap(),
        "--name",
        "counter",
        "--node",
        "node-1",
        "--json",
    ]));
    assert_eq!(doc["app"]["node"], "node-1", "{doc}");
    // A writer adds 1 through the cluster while the app moves hot, cold, hot.
    let writer = cluster.counter_writer(60);
    for (to, mode) in [("node-2", "hot"), ("node-3", "cold"), ("node-1", "hot")] {
        let doc =
            json(&cluster.tern(&["migrate", "counter", "--to", to, "--mode", mode, "--json"]));
        for field in [
            "mode",
            "from",
            "to",
            "downtime_ms",
            "total_ms",
            "bytes_sent",
            "rounds",
        ] {
            assert!(!doc[field].is_null(), "migrate --json lacks {field}: {doc}");
        }
        assert_eq!(doc["to"], to);
    }
    let totals = writer.join().unwrap();
    assert_eq!(
        totals,
        (1..=60).collect::<Vec<i64>>(),
        "each call ran exactly once, in order"
    );
    let doc = json(&cluster.tern(&["ps", "--json"]));
    let app = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "counter")
        .unwrap()
        .clone();
    assert_eq!(app["node"], "node-1");
    assert_eq!(app["generation"], 4);
    let doc = json(&cluster.tern(&["invoke", "counter", "get", "--json"]));
    assert_eq!(doc["results"][0], 60);
}

/// A child process killed (SIGKILL, like a machine dying) on drop, unless
/// it has already been waited for (its pid may belong to another by then).
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc_kill(self.0.id() as i32, 9) };
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tern node NAME` on a free port, joining the control plane at `control`
/// with the join token `join` (it gets its certificate that way), its data
/// in `dir`.
fn node_proc(control: &str, name: &str, dir: &Path, join: &str) -> Proc {
    let p = free_port();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["node", "--listen", &format!("127.0.0.1:{p}")])
            .args(["--control", control, "--name", name, "--join", join])
            .arg("--data-dir")
            .arg(dir)
            .env_remove("TERN_TOKEN")
            .env(
                "TERN_CACHE_DIR",
                std::env::temp_dir().join("tern-cli-test-cache"),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A single-use join token from the control plane `tern` talks to.
fn join_token(tern: impl Fn(&[&str]) -> Output) -> String {
    let out = tern(&["token", "create", "--scope", "join", "--json"]);
    json(&out)["token"]
        .as_str()
        .expect("a join token")
        .to_string()
}

/// Polls `check` until it returns Some, for at most `secs` seconds.
fn wait_for<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn an_app_with_restart_always_comes_back_after_its_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let control = format!("https://127.0.0.1:{port}");
    let ca = dir.path().join("control").join("ca.pem");
    let _control = Proc(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args([
                "control",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--heartbeat-timeout",
                "2s",
                "--rebalance-interval",
                "500ms",
                "--data-dir",
            ])
            .arg(dir.path().join("control"))
            .env("TERN_TOKEN", "restart-test-token-0123456789abcdef")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tern = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .env("TERN_CONTROL", &control)
            .env("TERN_CA", &ca)
            .env("TERN_TOKEN", "restart-test-token-0123456789abcdef")
            .output()
            .unwrap()
    };
    wait_for(30, "the control plane", || {
        tern(&["nodes", "--json"]).status.success().then_some(())
    });
    // Each node joins with a token of its own, as an operator would have it.
    let node = |name: &str| node_proc(&control, name, &dir.path().join(name), &join_token(tern));
    let first = node("first");
    let _second = node("second");
    wait_for(60, "two ready nodes", || {
        let out = tern(&["nodes", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (doc.as_array()?
            .iter()
            .filter(|n| n["state"] == "ready")
            .count()
            == 2)
            .then_some(())
    });
    json(&tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "counter",
        "--node",
        "first",
        "--restart",
        "always",
        "--json",
    ]));
    json(&tern(&["invoke", "counter", "add", "41", "--json"]));
    let added = std::time::SystemTime::now();
    // Wait for a checkpoint of that state to reach the control plane (nodes
    // take one every 10 s; one taken before the call, on a loaded machine,
    // does not count), then kill the node the app runs on.
    let checkpoints = dir.path().join("control").join("checkpoints");
    let taken_ms = wait_for(40, "a checkpoint of counter taken after the call", || {
        let doc: serde_json::Value =
            serde_json::from_slice(&tern(&["ps", "--json"]).stdout).ok()?;
        let app = doc.as_array()?.iter().find(|a| a["name"] == "counter")?;
        let taken = app["checkpoint"]["unix_ms"].as_u64()?;
        let after = added
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        (taken > after).then_some(taken)
    });
    let taken = std::time::UNIX_EPOCH + std::time::Duration::from_millis(taken_ms);
    // Each checkpoint is a new file, named by its digest.
    wait_for(40, "that checkpoint at the control plane", || {
        std::fs::read_dir(&checkpoints)
            .ok()?
            .flatten()
            .filter(|e| {
                let f = e.file_name();
                let f = f.to_string_lossy();
                f.starts_with("counter@") && f.ends_with(".snap")
            })
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .any(|written| written >= taken)
            .then_some(())
    });
    drop(first);
    let doc = wait_for(60, "counter to run on the second node", || {
        let out = tern(&["ps", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let app = doc
            .as_array()?
            .iter()
            .find(|a| a["name"] == "counter")?
            .clone();
        (app["node"] == "second" && app["state"] == "running").then_some(app)
    });
    assert!(doc["generation"].as_u64().unwrap() >= 2, "{doc}");
    let out = json(&tern(&["invoke", "counter", "get", "--json"]));
    assert_eq!(
        out["results"][0], 41,
        "the app came back with its checkpointed state"
    );
    assert_eq!(out["node"], "second");
}

/// What a common mistake prints: one `error:` line that says what to do.
struct Mistake {
    what: &'static str,
    args: Vec<String>,
    /// The control plane to use instead of the cluster's.
    control: Option<String>,
    /// Words of the remedy the message must give.
    remedy: &'static [&'static str],
}

#[test]
fn common_mistakes_each_get_one_line_that_says_what_to_do() {
    let cluster = Cluster::up(1);
    json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "counter",
        "--json",
    ]));
    let scratch = tempfile::tempdir().unwrap();
    let garbage = scratch.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not a module, just bytes\x00\xff\x13").unwrap();
    // A module header, then a section that ends too soon.
    let invalid = scratch.path().join("invalid.wasm");
    std::fs::write(&invalid, b"\0asm\x01\0\0\0\x01\x7f\x00").unwrap();
    let nobody = format!("https://127.0.0.1:{}", free_port());
    // The CA of another cluster.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.pem");
    let made = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "up",
            "--nodes",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--data-dir",
        ])
        .arg(other.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let made = Proc(made);
    wait_for(30, "another cluster's CA", || {
        other_ca.exists().then_some(())
    });
    drop(made);
    let strs = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mistakes = [
        Mistake {
            what: "the control plane is not running",
            args: strs(&["ps"]),
            control: Some(nobody),
            remedy: &["start one with `tern up`", "TERN_CONTROL"],
        },
        Mistake {
            what: "a control plane certified by another cluster's CA",
            args: strs(&["ps", "--ca", other_ca.to_str().unwrap()]),
            control: None,
            remedy: &["is not certified by the CA in", "TERN_CA", "ca.pem"],
        },
        Mistake {
            what: "a wrong token",
            args: strs(&["ps", "--token", "wrong"]),
            control: None,
            remedy: &["use the cluster's token", "`token` file"],
        },
        Mistake {
            what: "an unknown app",
            args: strs(&["invoke", "nope", "get"]),
            control: None,
            remedy: &["no app named nope", "`tern ps`"],
        },
        Mistake {
            what: "a file that is not a module",
            args: vec![
                "deploy".into(),
                garbage.display().to_string(),
                "--name".into(),
                "junk".into(),
            ],
            control: None,
            remedy: &["not a WebAssembly binary", "compile it"],
        },
        Mistake {
            what: "a module that does not validate",
            args: vec![
                "deploy".into(),
                invalid.display().to_string(),
                "--name".into(),
                "junk".into(),
            ],
            control: None,
            remedy: &["invalid.wasm cannot run on tern", "rebuild it", "tern run"],
        },
        Mistake {
            what: "an etcd store that is not running",
            args: vec![
                "control".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                scratch.path().join("c").display().to_string(),
                "--store".into(),
                format!("etcd://127.0.0.1:{}", free_port()),
            ],
            control: None,
            remedy: &["cannot use the etcd store", "is etcd running there?"],
        },
        Mistake {
            what: "a store address without a port",
            args: strs(&["control", "--listen", "127.0.0.1:0", "--store", "etcd://db"]),
            control: None,
            remedy: &["etcd://HOST:PORT"],
        },
        Mistake {
            what: "a node that is not there",
            args: strs(&["migrate", "counter", "--to", "no-such-node"]),
            control: None,
            remedy: &["no node named no-such-node", "`tern nodes`"],
        },
    ];
    for m in mistakes {
        let token = std::fs::read_to_string(cluster.dir.path().join("token")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(&m.args)
            .env(
                "TERN_CONTROL",
                m.control.as_deref().unwrap_or(&cluster.control),
            )
            .env("TERN_CA", cluster.dir.path().join("ca.pem"))
            .env("TERN_TOKEN", token.trim())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: tern {:?} succeeded",
            m.what,
            m.args
        );
        assert!(out.stdout.is_empty(), "{}: printed on stdout", m.what);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{}: not one line:\n{err}", m.what);
        let line = lines[0];
        assert!(
            line.starts_with("error: ") && line.len() > "error: ".len() + 10,
            "{}: {line}",
            m.what
        );
        for word in m.remedy {
            assert!(
                line.contains(word),
                "{}: `{word}` missing from: {line}",
                m.what
            );
        }
    }
}

/// The lines of the fenced code block that follows the line starting with
/// `marker` in README.md, and the block's language.
fn readme_block(marker: &str) -> (String, Vec<String>) {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with(marker))
        .skip(1);
    let fence = lines
        .next()
        .unwrap_or_else(|| panic!("README.md has no `{marker}` followed by a block"));
    assert!(
        fence.starts_with("```"),
        "`{marker}` is not followed by a fenced block: {fence}"
    );
    let body = lines
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect();
    (fence.trim_start_matches('`').to_string(), body)
}

/// A directory laid out like the repository's root for the paths README.md
/// uses (`target/tern-guests/...`, `scheduler/testdata/...`), so its
/// commands run as written without writing into the repository. The guests
/// are wherever this build put them (`tern_artifacts`), which is
/// `target/tern-guests` unless CARGO_TARGET_DIR says otherwise.
fn readme_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let guests = Path::new(tern_artifacts::KV)
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "tern-guests"))
        .expect("tern_artifacts::KV is under a tern-guests directory");
    std::fs::create_dir(dir.path().join("target")).unwrap();
    std::os::unix::fs::symlink(guests, dir.path().join("target/tern-guests")).unwrap();
    std::os::unix::fs::symlink(root().join("scheduler"), dir.path().join("scheduler")).unwrap();
    dir
}

/// Runs one README line with bash, `tern` (this build) first on PATH; it
/// must succeed. Returns its stdout.
fn run_readme_line(line: &str, cwd: &Path, env: &[(&str, &str)]) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_tern")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", line])
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("TERN_TOKEN")
        .env_remove("TERN_CONTROL")
        .env_remove("TERN_DATA_DIR")
        .env(
            "TERN_CACHE_DIR",
            std::env::temp_dir().join("tern-cli-test-cache"),
        )
        .envs(env.iter().copied())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README line failed ({}):\n  {line}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

type Check = (&'static str, fn(&str));

/// Runs every line of a README block in order and checks each one's output
/// with the check whose prefix it starts with; every line needs a check and
/// every check a line, so the block and this test change together.
fn run_readme_block(
    lines: &[String],
    skip: &str,
    checks: &[Check],
    cwd: &Path,
    env: &[(&str, &str)],
) {
    let mut used = vec![false; checks.len()];
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        if !skip.is_empty() && line.starts_with(skip) {
            continue;
        }
        let i = checks
            .iter()
            .position(|(prefix, _)| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no check for this README line; add one:\n  {line}"));
        let stdout = run_readme_line(line, cwd, env);
        (checks[i].1)(&stdout);
        used[i] = true;
    }
    for ((prefix, _), used) in checks.iter().zip(used) {
        assert!(used, "no README line starts with `{prefix}` any more");
    }
}

#[test]
fn readme_tour_runs_as_written() {
    assert!(
        Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()),
        "the README tour uses curl, which is not installed here: install it (Debian: apt-get install curl)"
    );
    let (lang, lines) = readme_block("<!-- tour:");
    assert_eq!(lang, "sh");
    // `tern up &` starts a cluster on 127.0.0.1:7070 with its state in the
    // default data dir; this test starts the same cluster itself, on a free
    // loopback port with a data dir of its own, and skips only that line.
    // The other lines find it as the README says: the control plane from
    // TERN_CONTROL, the token from the token file in TERN_DATA_DIR.
    assert!(
        lines[0].starts_with("tern up &"),
        "the tour starts with `tern up &`: {lines:?}"
    );
    let cluster = Cluster::up(3);
    let data_dir = cluster.dir.path().display().to_string();
    let env = [
        ("TERN_CONTROL", cluster.control.as_str()),
        ("TERN_DATA_DIR", data_dir.as_str()),
    ];
    let checks: &[Check] = &[
        ("tern deploy", |out| {
            assert!(out.contains("deployed kv on node-1"), "{out}")
        }),
        ("tern call", |out| {
            assert_eq!(out, "", "a PUT answers no body")
        }),
        ("curl", |out| assert_eq!(out.trim(), "hello")),
        ("tern migrate", |out| {
            assert!(
                out.contains("migrated kv from node-1 to node-2 (hot"),
                "{out}"
            );
            for word in ["downtime", "total", "sent", "rounds"] {
                assert!(out.contains(word), "no {word}: {out}");
            }
        }),
        ("tern ps", |out| {
            let kv: Vec<&str> = out
                .lines()
                .find(|l| l.starts_with("kv "))
                .unwrap_or_else(|| panic!("no kv in tern ps: {out}"))
                .split_whitespace()
                .collect();
            assert_eq!(kv[..4], ["kv", "node-2", "running", "2"], "{out}");
        }),
        ("tern sim", |out| {
            for policy in ["requests", "cost", "learned"] {
                assert!(
                    out.lines().any(|l| l.starts_with(policy)),
                    "no row for {policy}: {out}"
                );
            }
            assert!(out.contains("predictor"), "{out}");
        }),
    ];
    let cwd = readme_root();
    run_readme_block(&lines, "tern up &", checks, cwd.path(), &env);
}

#[test]
fn readme_snapshot_block_runs_as_written() {
    let (lang, lines) = readme_block("<!-- snapshot:");
    assert_eq!(lang, "sh");
    let checks: &[Check] = &[
        ("tern run", |out| assert_eq!(out.trim(), "5")),
        ("tern resume", |out| {
            assert_eq!(out.lines().collect::<Vec<_>>(), ["6", "6"])
        }),
        ("tern inspect", |out| {
            let line = out
                .lines()
                .find(|l| l.starts_with("checksum"))
                .unwrap_or_else(|| panic!("no checksum line: {out}"));
            assert!(line.ends_with(" ok"), "{out}");
        }),
    ];
    let cwd = readme_root();
    run_readme_block(&lines, "", checks, cwd.path(), &[]);
}

#[test]
fn readme_sdk_example_is_the_counter_example() {
    let (lang, lines) = readme_block("<!-- sdk-example: examples/counter/src/lib.rs");
    assert_eq!(lang, "rust");
    let file = std::fs::read_to_string(root().join("examples/counter/src/lib.rs")).unwrap();
    let app = &file[..file
        .find("#[cfg(test)]")
        .expect("the counter example has unit tests")];
    assert_eq!(
        lines.join("\n"),
        app.trim_end(),
        "README's SDK example differs from examples/counter/src/lib.rs (without its tests): copy it over"
    );
}

#[test]
fn up_prints_the_dashboard_address() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args([
                "up",
                "--nodes",
                "0",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // It prints its report once it listens; a closed stdout ends the read.
    let stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("dashboard: "))
        .expect("tern up prints a dashboard line");
    // The page's token is a read-only one, not the cluster's.
    let token = std::fs::read_to_string(dir.path().join("dashboard-token")).unwrap();
    let cluster_token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    assert_eq!(
        line,
        format!(
            "dashboard: https://127.0.0.1:{port}/#token={}",
            token.trim()
        )
    );
    assert!(!line.contains(cluster_token.trim()));
}

/// Lines of a child's pipe, as they come, over a channel.
fn line_channel(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn demo_json_reports_every_move_and_the_dashboard() {
    let out = tern(&["demo", "--json"]);
    let doc = json(&out);
    assert!(
        out.stderr.is_empty(),
        "--json shows no story and no bars: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard = doc["dashboard"].as_str().unwrap();
    let (addr, token) = dashboard
        .strip_prefix("https://127.0.0.1:")
        .and_then(|rest| rest.split_once("/#token="))
        .unwrap_or_else(|| panic!("not a loopback dashboard address: {dashboard}"));
    assert!(addr.parse::<u16>().is_ok(), "{dashboard}");
    assert!(
        token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{dashboard}"
    );
    let modes: Vec<&str> = doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["hot", "cold", "hybrid"]);
    for m in doc["migrations"].as_array().unwrap() {
        for field in [
            "from",
            "to",
            "downtime_ms",
            "total_ms",
            "bytes_sent",
            "requests_served",
        ] {
            assert!(!m[field].is_null(), "migration lacks {field}: {m}");
        }
        assert_ne!(m["from"], m["to"], "{m}");
        assert_eq!(m["requests_failed"], 0, "{m}");
        assert!(m["bytes_sent"].as_u64().unwrap() > 0, "{m}");
    }
    let placements = doc["placements"].as_array().unwrap();
    assert_eq!(placements.len(), 2);
    assert!(placements.iter().all(|p| p["policy"] == "learned"), "{doc}");
    assert!(doc["requests_served"].as_u64().unwrap() > 0);
    assert_eq!(doc["requests_failed"], 0);
}

#[test]
fn demo_keep_tells_its_story_and_serves_until_sigterm() {
    let port = free_port();
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["demo", "--keep", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = line_channel(child.0.stdout.take().unwrap());
    let stderr = line_channel(child.0.stderr.take().unwrap());
    // The story, line by line (stderr is a pipe here: no bars), up to the
    // line that says the cluster keeps running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut story = Vec::new();
    while !story
        .last()
        .is_some_and(|l: &String| l.contains("keeps running"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match stderr.recv_timeout(left) {
            Ok(line) => story.push(line),
            Err(e) => panic!("no `keeps running` line ({e}); so far: {story:#?}"),
        }
    }
    let text = story.join("\n");
    assert!(
        !text.contains('\x1b'),
        "no terminal codes when stderr is not a terminal:\n{text}"
    );
    let dashboard_prefix = format!("▶ dashboard: https://127.0.0.1:{port}/#token=");
    let token = story
        .iter()
        .find_map(|l| l.strip_prefix(&dashboard_prefix))
        .unwrap_or_else(|| panic!("no dashboard line for port {port}:\n{text}"))
        .to_string();
    for needle in [
        "▶ local cluster: control plane at",
        "▶ deployed counter",
        "▶ deployed kv",
        "▶ serving load",
        "▶ waiting for counter's first checkpoint",
        "▶ moved counter hot",
        "▶ moved kv cold",
        "▶ moved counter hybrid",
    ] {
        assert!(text.contains(needle), "no `{needle}` in the story:\n{text}");
    }
    // The summary went to stdout before that line went to stderr.
    let mut summary = Vec::new();
    while !summary
        .last()
        .is_some_and(|l: &String| l.contains("requests served during the demo"))
    {
        match stdout.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => summary.push(line),
            Err(e) => panic!("no summary on stdout ({e}): {summary:#?}"),
        }
    }
    assert!(
        summary.last().unwrap().ends_with(", 0 failed."),
        "{summary:#?}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("app ") && l.contains("downtime")),
        "the summary table: {summary:#?}"
    );
    // Kept: the control plane answers with the dashboard's token, and the
    // load goes on.
    // The story names the demo's CA, which the client trusts.
    let ca = text
        .split("import ")
        .nth(1)
        .and_then(|rest| rest.split(" into the browser").next())
        .unwrap_or_else(|| panic!("the story names no CA:\n{text}"))
        .to_string();
    let ps = || {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["ps", "--json"])
            .env("TERN_CONTROL", format!("https://127.0.0.1:{port}"))
            .env("TERN_CA", &ca)
            .env("TERN_TOKEN", &token)
            .output()
            .unwrap();
        let doc = json(&out);
        let served = |name: &str| {
            let app = doc
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .unwrap();
            // `--keep` moves counter every 10 s: it may be on its way.
            assert!(
                app["state"] == "running" || app["state"] == "migrating",
                "{app}"
            );
            app["requests_served"].as_u64().unwrap()
        };
        (served("counter"), served("kv"))
    };
    let before = ps();
    wait_for(30, "the kept demo's load to go on", || {
        let now = ps();
        (now.0 > before.0 && now.1 > before.1).then_some(())
    });
    // And counter keeps moving between nodes, hot, every 10 s.
    let line = loop {
        match stderr.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l)
                if l.starts_with("▶ moved counter hot")
                    || l.starts_with("▶ moving counter failed") =>
            {
                break l
            }
            Ok(_) => {}
            Err(e) => panic!("the kept demo never moved counter ({e})"),
        }
    };
    assert!(line.starts_with("▶ moved counter hot node-"), "{line}");
    let data_dir = text
        .split("(data in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(PathBuf::from)
        .expect("the story says where the data is");
    assert!(data_dir.exists());
    unsafe { libc_kill(child.0.id() as i32, 15) };
    let status = wait_for(30, "tern demo --keep to stop on SIGTERM", || {
        child.0.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "the demo removes its data dir");
}

/// A snapshot taken from a cluster carries the app's /data files (`tern
/// inspect` lists them), and `tern restore` under another name brings them
/// back in that app's own directory.
#[test]
fn a_cluster_snapshot_carries_the_apps_files() {
    let cluster = Cluster::up(1);
    json(&cluster.tern(&[
        "deploy",
        tern_artifacts::HEAPSTATE,
        "--name",
        "notes",
        "--json",
    ]));
    for n in ["3", "5"] {
        let out = cluster.tern(&["invoke", "notes", "file_write", n]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sum = json(&cluster.tern(&["invoke", "notes", "file_sum", "--json"]))["results"][0].clone();
    let scratch = tempfile::tempdir().unwrap();
    let snap = scratch.path().join("notes.snap");
    let out = cluster.tern(&["snapshot", "notes", "-o", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let doc = json(&cluster.tern(&["inspect", snap.to_str().unwrap(), "--json"]));
    let files: Vec<(String, u64)> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("notes/3.txt".to_string(), 3),
            ("notes/5.txt".to_string(), 5)
        ]
    );
    let text = String::from_utf8_lossy(&cluster.tern(&["inspect", snap.to_str().unwrap()]).stdout)
        .to_string();
    assert!(text.contains("files          2 carried"), "{text}");

    let out = cluster.tern(&["restore", snap.to_str().unwrap(), "--name", "notes-copy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy =
        json(&cluster.tern(&["invoke", "notes-copy", "file_sum", "--json"]))["results"][0].clone();
    assert_eq!(copy, sum, "the restored app reads the same files");

    // Locally too: `tern resume --data-dir` gives the app its files as /data.
    let data = scratch.path().join("data");
    let resumed = json(&cluster.tern(&[
        "resume",
        snap.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--invoke",
        "file_sum",
        "--json",
    ]));
    assert_eq!(resumed["calls"][0]["results"][0], sum, "{resumed}");
    assert_eq!(
        std::fs::read_to_string(data.join("notes/5.txt")).unwrap(),
        "55555"
    );
    // A directory that holds anything is refused, and left alone.
    let out = cluster.tern(&[
        "resume",
        snap.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert!(data.join("notes/3.txt").exists());
}

/// Two `tern control` processes on one etcd (Debian's `etcd-server`): the
/// second takes the cluster token from etcd and stands by; a node given
/// both follows the leader; when the leader is SIGKILLed the standby leads
/// within the lease, with the app and its state, and client commands given
/// both control planes work against whichever leads.
#[test]
fn control_planes_on_etcd_survive_the_leader_being_killed() {
    let etcd = tern_artifacts::tools::Etcd::start();
    let store = etcd.store_url("cli");
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (
        format!("https://127.0.0.1:{pa}"),
        format!("https://127.0.0.1:{pb}"),
    );
    // The first control plane makes the cluster's CA; the operator gives
    // it to the second, so that nodes and clients trust both.
    let (ca, ca_key) = (dir.path().join("a/ca.pem"), dir.path().join("a/ca.key"));
    let control = |port: u16, name: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
        c.args(["control", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", &store, "--data-dir"])
            .arg(dir.path().join(name));
        if name != "a" {
            c.arg("--ca-cert").arg(&ca).arg("--ca-key").arg(&ca_key);
        }
        Proc(
            c.env_remove("TERN_TOKEN")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let leader = control(pa, "a");
    let token_of = |name: &str| {
        let path = dir.path().join(name).join("token");
        wait_for(30, "a token file", || std::fs::read_to_string(&path).ok())
    };
    let token = token_of("a");
    let tern = |control: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .env("TERN_CONTROL", control)
            .env("TERN_CA", &ca)
            .env("TERN_TOKEN", token.trim())
            .output()
            .unwrap()
    };
    wait_for(30, "the first control plane to lead", || {
        tern(&a, &["nodes", "--json"])
            .status
            .success()
            .then_some(())
    });
    let _standby = control(pb, "b");
    assert_eq!(token_of("b"), token, "the standby took the cluster's token");
    let _node = node_proc(
        &format!("{a},{b}"),
        "n1",
        &dir.path().join("n1"),
        &join_token(|args| tern(&a, args)),
    );
    wait_for(30, "a ready node", || {
        let doc: serde_json::Value =
            serde_json::from_slice(&tern(&a, &["nodes", "--json"]).stdout).ok()?;
        (doc.as_array()?.len() == 1 && doc[0]["state"] == "ready").then_some(())
    });
    json(&tern(
        &a,
        &[
            "deploy",
            tern_artifacts::COUNTER,
            "--name",
            "counter",
            "--json",
        ],
    ));
    json(&tern(&a, &["invoke", "counter", "add", "41", "--json"]));
    // The standby says who leads.
    let out = tern(&b, &["ps"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stands by") && err.contains(&a), "{err}");

    // Given both, the client commands talk to whichever leads.
    let both = format!("{a},{b}");
    assert!(tern(&both, &["ps"]).status.success());
    drop(leader);
    let doc = wait_for(30, "the standby to lead", || {
        let doc: serde_json::Value =
            serde_json::from_slice(&tern(&both, &["ps", "--json"]).stdout).ok()?;
        doc.as_array()?.first().cloned()
    });
    assert_eq!(
        (doc["name"].as_str(), doc["node"].as_str()),
        (Some("counter"), Some("n1")),
        "{doc}"
    );
    let out = json(&tern(&b, &["invoke", "counter", "get", "--json"]));
    assert_eq!(out["results"][0], 41, "{out}");
    wait_for(30, "the node to report to the new leader", || {
        let doc: serde_json::Value =
            serde_json::from_slice(&tern(&b, &["nodes", "--json"]).stdout).ok()?;
        (doc[0]["state"] == "ready" && doc[0]["last_heartbeat_ms_ago"].as_u64()? < 2000)
            .then_some(())
    });
}

/// `tern` built for aarch64 and run under qemu-user: the other CPU
/// architecture of these tests.
struct Aarch64 {
    tern: PathBuf,
    qemu: PathBuf,
}

impl Aarch64 {
    /// Cross-compiles `tern` for aarch64-unknown-linux-gnu once per target
    /// directory (into `TARGET/cross`), with Debian's cross gcc as linker;
    /// the target, the cross gcc and qemu-user are installed when missing.
    fn get() -> &'static Aarch64 {
        static ONCE: std::sync::OnceLock<Aarch64> = std::sync::OnceLock::new();
        ONCE.get_or_init(|| {
            use tern_artifacts::tools::debian_tool;
            let qemu = debian_tool(
                &["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"],
                "qemu-user-static",
                "the cross-architecture tests need qemu-user: install Debian's \
                 `qemu-user-static` (.ci/run does this)",
            );
            let gcc = debian_tool(
                &["/usr/bin/aarch64-linux-gnu-gcc"],
                "gcc-aarch64-linux-gnu",
                "the cross-architecture tests need an aarch64 linker: install Debian's \
                 `gcc-aarch64-linux-gnu` (.ci/run does this)",
            );
            const TARGET: &str = "aarch64-unknown-linux-gnu";
            let added = Command::new("rustup")
                .args(["target", "add", TARGET])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                added,
                "cannot add the {TARGET} target: `rustup target add {TARGET}`"
            );
            // TARGET_DIR/release/tern → TARGET_DIR/cross
            let target_dir = Path::new(env!("CARGO_BIN_EXE_tern"))
                .parent()
                .and_then(Path::parent)
                .unwrap()
                .join("cross");
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let out = Command::new(cargo)
                .args(["build", "--release", "-p", "tern", "--target", TARGET])
                .arg("--target-dir")
                .arg(&target_dir)
                .current_dir(root())
                .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", gcc)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "cross-compiling tern for {TARGET} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Aarch64 {
                tern: target_dir.join(TARGET).join("release").join("tern"),
                qemu,
            }
        })
    }

    /// The aarch64 `tern ARGS` under qemu (its libraries from Debian's cross
    /// sysroot).
    fn tern(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(&self.tern)
            .env(
                "TERN_CACHE_DIR",
                std::env::temp_dir().join("tern-cli-test-cache-aarch64"),
            );
        c
    }
}

/// `--invoke EXPORT ARGS...` for each call.
fn invoke_args(calls: &[(&str, &[i64])]) -> Vec<String> {
    calls
        .iter()
        .flat_map(|(export, args)| {
            ["--invoke".to_string(), export.to_string()]
                .into_iter()
                .chain(args.iter().map(i64::to_string))
        })
        .collect()
}

fn results(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    doc["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no calls in {doc}"))
        .iter()
        .map(|c| c["results"].clone())
        .collect()
}

/// An app's state moves between CPU architectures: each guest runs its
/// calls straight on this machine (x86_64), and again split in three,
/// snapshot and resume between the parts, the middle part on aarch64 (or
/// the first and last, the other way round); every result is the same.
#[test]
fn snapshots_resume_on_another_cpu_architecture() {
    let arm = Aarch64::get();
    let zlib: &[(&str, &[i64])] = &[
        ("init", &[6]),
        ("feed", &[50_000, 1]),
        ("flush", &[]),
        ("drain", &[]),
        ("feed", &[200_000, 3]),
        ("out_crc", &[]),
        ("roundtrip_ok", &[]),
        ("feed", &[90_000, 5]),
        ("finish", &[]),
        ("roundtrip_ok", &[]),
        ("out_len", &[]),
        ("out_crc", &[]),
    ];
    let heap: &[(&str, &[i64])] = &[
        ("push", &[3]),
        ("push", &[9]),
        ("touch", &[300, 7]),
        ("digest", &[]),
        ("grow", &[16]),
        ("touch", &[200, 3]),
        ("push", &[-4]),
        ("digest", &[]),
        ("sum", &[]),
        ("len", &[]),
        ("memory_pages", &[]),
        ("digest", &[]),
    ];
    let count: &[(&str, &[i64])] = &[
        ("add", &[5]),
        ("add", &[-2]),
        ("get", &[]),
        ("add", &[40]),
        ("get", &[]),
        ("get", &[]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, module, calls) in [
        ("zlib", tern_artifacts::ZLIB_GUEST, zlib),
        ("heapstate", tern_artifacts::HEAPSTATE, heap),
        ("counter", tern_artifacts::COUNTER, count),
    ] {
        let straight = json(&tern(
            &[
                &["run", module, "--json"][..],
                &invoke_args(calls)
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ]
            .concat(),
        ));
        let want = results(&straight);
        let third = calls.len() / 3;
        let parts = [
            &calls[..third],
            &calls[third..2 * third],
            &calls[2 * third..],
        ];
        for arm_in_the_middle in [true, false] {
            let mut got = Vec::new();
            let mut snap: Option<PathBuf> = None;
            for (k, part) in parts.iter().enumerate() {
                let on_arm = (k == 1) == arm_in_the_middle;
                let out_snap = dir
                    .path()
                    .join(format!("{name}-{arm_in_the_middle}-{k}.snap"));
                let mut args: Vec<String> = match &snap {
                    None => vec!["run".into(), module.into()],
                    Some(s) => vec!["resume".into(), s.display().to_string()],
                };
                args.extend(invoke_args(part));
                args.extend([
                    "--snapshot-out".into(),
                    out_snap.display().to_string(),
                    "--json".into(),
                ]);
                let out = if on_arm {
                    arm.tern().args(&args).output().unwrap()
                } else {
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    tern(&a)
                };
                got.extend(results(&json(&out)));
                snap = Some(out_snap);
            }
            assert_eq!(
                got, want,
                "{name}: the calls split across x86_64 and aarch64 (aarch64 in the middle: {arm_in_the_middle}) answered differently"
            );
        }
    }
}

/// A live cluster with nodes of two CPU architectures: the aarch64 node
/// (under qemu) registers with its architecture, and an app moves to it
/// hot, back hot, and to it cold while a client calls it; every call runs
/// once, in order.
#[test]
fn an_app_moves_between_nodes_of_different_cpu_architectures() {
    let arm = Aarch64::get();
    let cluster = Cluster::up(1);
    // The aarch64 node joins the cluster as any node does.
    let join = join_token(|args| cluster.tern(args));
    let port = free_port();
    let _arm_node = Proc(
        arm.tern()
            .args(["node", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--control",
                &cluster.control,
                "--name",
                "arm",
                "--join",
                &join,
            ])
            .arg("--data-dir")
            .arg(cluster.dir.path().join("arm"))
            .env_remove("TERN_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let nodes = wait_for(120, "the aarch64 node to register", || {
        let doc: serde_json::Value =
            serde_json::from_slice(&cluster.tern(&["nodes", "--json"]).stdout).ok()?;
        (doc.as_array()?.len() == 2 && doc.as_array()?.iter().all(|n| n["state"] == "ready"))
            .then_some(doc)
    });
    let arch = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["arch"].clone())
    };
    assert_eq!(arch("arm"), Some("aarch64".into()), "{nodes}");
    assert_eq!(
        arch("node-1"),
        Some(std::env::consts::ARCH.into()),
        "{nodes}"
    );

    json(&cluster.tern(&[
        "deploy",
        tern_artifacts::COUNTER,
        "--name",
        "counter",
        "--node",
        "node-1",
        "--json",
    ]));
    let writer = cluster.counter_writer(30);
    for (to, mode) in [("arm", "hot"), ("node-1", "hot"), ("arm", "cold")] {
        let doc =
            json(&cluster.tern(&["migrate", "counter", "--to", to, "--mode", mode, "--json"]));
        assert_eq!(
            (doc["to"].as_str(), doc["mode"].as_str()),
            (Some(to), Some(mode)),
            "{doc}"
        );
        eprintln!(
            "{mode} to {to}: downtime {} ms, total {} ms, tracker {}",
            doc["downtime_ms"], doc["total_ms"], doc["dirty_tracking"]
        );
    }
    let totals = writer.join().unwrap();
    assert_eq!(
        totals,
        (1..=30).collect::<Vec<i64>>(),
        "each call ran exactly once, in order"
    );
    let doc = json(&cluster.tern(&["invoke", "counter", "get", "--json"]));
    assert_eq!(
        (doc["results"][0].as_i64(), doc["node"].as_str()),
        (Some(30), Some("arm")),
        "{doc}"
    );
}

// ---------------------------------------------------------------------------
// The local runner hardened (issue 11, items 2, 12 and 13): each probe as
// the issue wrote it, and what tern answers now.

/// Asks WASI what it was given: a directory at fd 3 (`prestat`: 0 or an
/// errno), the file `secret` in it (`open_secret`: 0 or an errno).
const WHAT_AM_I_GIVEN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "secret")
  (global $n (mut i32) (i32.const 0))
  (func (export "prestat") (param i32) (result i32) (call $prestat (local.get 0) (i32.const 0)))
  (func (export "open_secret") (result i32)
    (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 0)
      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1))) (global.get $n)))"#;

fn write_wat(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn resume_grants_only_what_its_command_line_gives() {
    let dir = tempfile::tempdir().unwrap();
    let guest = write_wat(dir.path(), "given.wat", WHAT_AM_I_GIVEN);
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret"), "the host's").unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let snap = dir.path().join("given.snap");
    let snap = snap.to_str().unwrap();
    // The probe: a snapshot whose app was given a directory as `/`.
    let out = tern(&[
        "run",
        &guest,
        "--dir",
        &format!("{}::/", host.display()),
        "--env",
        "TOKEN=hunter2",
        "--memory",
        "1GiB",
        "--invoke",
        "open_secret",
        "--snapshot-out",
        snap,
    ]);
    assert_eq!(stdout_of(&out).trim(), "0", "{}", stderr_of(&out));

    // (resume flags, what open_secret answers, warnings expected, not expected)
    type Case<'a> = (Vec<&'a str>, &'a str, Vec<String>, Vec<&'a str>);
    let o = format!("{}::/", other.display());
    let cases: Vec<Case> = vec![
        (
            vec![],
            "8", // EBADF: no directory at all
            vec![
                format!(
                    "warning: the snapshot asks for directory {} as /; not granted (give it with --dir {}::/)",
                    host.display(),
                    host.display()
                ),
                "warning: the snapshot asks for environment variable TOKEN; not granted (give it with --env TOKEN=VALUE)".into(),
                "warning: the snapshot asks for a memory limit of 1.0 GiB; running under 4.0 GiB (set it with --memory)".into(),
            ],
            vec!["hunter2"],
        ),
        (
            vec!["--dir", &o, "--env", "TOKEN=other", "--memory", "1GiB"],
            "44", // ENOENT: `/` is the command line's directory, not the file's
            vec![],
            vec!["warning", "hunter2"],
        ),
    ];
    for (flags, answer, warnings, absent) in cases {
        let mut args = vec!["resume", snap];
        args.extend(&flags);
        args.extend(["--invoke", "open_secret"]);
        let out = tern(&args);
        let err = stderr_of(&out);
        assert!(out.status.success(), "{flags:?}: {err}");
        assert_eq!(stdout_of(&out).trim(), answer, "{flags:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        for w in &warnings {
            assert!(
                lines.contains(&w.as_str()),
                "{flags:?}: missing `{w}` in\n{err}"
            );
        }
        for a in absent {
            assert!(!err.contains(a), "{flags:?}: `{a}` in\n{err}");
        }
    }

    // inspect shows the requests as requests, and no variable's value.
    let out = tern(&["inspect", snap]);
    let text = stdout_of(&out);
    assert!(text.contains("requests, not grants"), "{text}");
    assert!(
        text.contains(&format!("dir          {} as /", host.display())),
        "{text}"
    );
    assert!(
        text.contains("TOKEN (names only)") && !text.contains("hunter2"),
        "{text}"
    );
    assert!(text.contains("limits       memory 1.0 GiB"), "{text}");
    let doc = json(&tern(&["inspect", snap, "--json"]));
    assert_eq!(doc["requests"]["env"], serde_json::json!(["TOKEN"]));
    assert_eq!(doc["requests"]["dirs"][0]["guest"], "/");
    assert_eq!(doc["requests"]["limits"]["memory_bytes"], 1u64 << 30);
    assert!(doc["requests"]["note"]
        .as_str()
        .unwrap()
        .contains("not grants"));
    assert!(!doc.to_string().contains("hunter2"));
}

#[test]
fn a_trap_exits_134_an_exit_keeps_its_status_and_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let command = |body: &str| {
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") {body}))"#
        )
    };
    let misbehave = root().join("tests/guests/wat/misbehave.wat");
    let m = misbehave.to_str().unwrap();
    let guests = [
        ("trap.wat", command("unreachable")),
        ("exit0.wat", command("(call $exit (i32.const 0))")),
        ("exit1.wat", command("(call $exit (i32.const 1))")),
        ("exit33.wat", command("(call $exit (i32.const 33))")),
        ("exit200.wat", command("(call $exit (i32.const 200))")),
    ];
    for (name, text) in &guests {
        write_wat(dir.path(), name, text);
    }
    let p = |name: &str| dir.path().join(name).display().to_string();
    // (command line, exit status, what stderr says: None = nothing at all)
    let cases: Vec<(Vec<String>, i32, Option<&str>)> = vec![
        (vec!["run".into(), p("trap.wat")], 134, Some("unreachable")),
        (vec!["run".into(), p("exit0.wat")], 0, None),
        (vec!["run".into(), p("exit1.wat")], 1, None),
        (vec!["run".into(), p("exit33.wat")], 33, None),
        (
            vec!["run".into(), p("exit200.wat")],
            1,
            Some("exit with invalid exit status outside of [0..126)"),
        ),
        (
            ["run", m, "--invoke", "trap"].map(String::from).to_vec(),
            134,
            Some("unreachable"),
        ),
        (
            ["run", m, "--timeout", "50ms", "--invoke", "spin"]
                .map(String::from)
                .to_vec(),
            134,
            Some("time limit"),
        ),
        (
            ["run", m, "--invoke", "recurse", "0"]
                .map(String::from)
                .to_vec(),
            134,
            Some("stack"),
        ),
        (
            ["run", m, "--invoke", "nope"].map(String::from).to_vec(),
            1,
            Some("no exported function"),
        ),
    ];
    for (args, status, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tern(&args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {err}");
        match says {
            None => assert!(err.is_empty(), "{args:?}: {err}"),
            Some(needle) => {
                assert!(
                    err.starts_with("error: ") && err.contains(needle),
                    "{args:?}: {err}"
                );
                assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
            }
        }
    }
    let help = stdout_of(&tern(&["run", "--help"]));
    assert!(help.contains("134 when a call traps"), "{help}");
}

#[test]
fn stdin_reaches_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    // Copies stdin to stdout until end of file.
    let cat = write_wat(
        dir.path(),
        "cat.wat",
        r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (i32.store (i32.const 0) (i32.const 64))
      (i32.store (i32.const 4) (i32.const 4096))
      (br_if 1 (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br_if 1 (i32.eqz (i32.load (i32.const 8))))
      (i32.store (i32.const 4) (i32.load (i32.const 8)))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $more))))"#,
    );
    let input: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", &cat])
        .env(
            "TERN_CACHE_DIR",
            std::env::temp_dir().join("tern-cli-test-cache"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(feed.as_bytes()).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out) == input,
        "the guest saw other bytes than were piped"
    );
}

#[test]
fn dir_names_a_host_path_with_a_colon() {
    let dir = tempfile::tempdir().unwrap();
    let guest = write_wat(dir.path(), "given.wat", WHAT_AM_I_GIVEN);
    for sub in ["a:b", "plain"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("secret"), "x").unwrap();
    }
    let d = |s: &str| format!("{}/{s}", dir.path().display());
    // (--dir value, whether the app finds `secret` in the directory it got)
    let cases = [
        (format!("{}::/data", d("a:b")), true),
        (d("a:b") + "::" + &d("a:b"), true),
        (format!("{}:/data", d("plain")), true),
        (d("plain"), true),
    ];
    for (spec, found) in cases {
        let out = tern(&["run", &guest, "--dir", &spec, "--invoke", "open_secret"]);
        assert!(out.status.success(), "--dir {spec}: {}", stderr_of(&out));
        assert_eq!(stdout_of(&out).trim() == "0", found, "--dir {spec}");
    }
    // Without `::`, the first `:` separates, and the error says how to
    // write such a path.
    let out = tern(&["run", &guest, "--dir", &d("a:b")]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.starts_with("error: ") && err.contains("write HOST::GUEST"),
        "{err}"
    );
}

#[test]
fn inspect_and_resume_refuse_the_crafted_lz4_probe() {
    let seed = root().join("runtime/fuzz/corpus/snapshot_decode/seed-lz4-run-declaring-8-mi-pages");
    let seed = seed.to_str().unwrap();
    for args in [
        vec!["inspect", seed],
        vec!["resume", seed, "--invoke", "get"],
    ] {
        let out = tern(&args);
        let err = stderr_of(&out);
        // An error with a status, not an abort by a signal.
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("a memory can hold"),
            "{args:?}: {err}"
        );
    }
}
