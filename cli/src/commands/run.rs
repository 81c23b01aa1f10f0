//! `tern run` and `tern resume`: one module on this machine, started fresh
//! or from a snapshot, then the calls and requests the command line asks
//! for, and optionally a snapshot after the last one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tern_runtime::values::{to_json, to_text, JsonValue};
use tern_runtime::wasi::{regrant, NotGranted};
use tern_runtime::{
    AppConfig, Instance, LimitsState, Preopen, RestoreOptions, Runtime, RuntimeConfig, Snapshot,
    SnapshotOptions, Stdio, WasiState,
};

use crate::output::{out, outln};
use crate::util::{human_bytes, parse_duration, parse_size, print_json};

#[derive(Args)]
pub struct CallArgs {
    /// Call an export with numeric arguments (repeatable; calls run in order).
    #[arg(long = "invoke", id = "invoke", value_names = ["EXPORT", "ARG"], num_args = 1.., action = clap::ArgAction::Append, allow_negative_numbers = true)]
    invoke_flat: Vec<String>,
    /// The calls, grouped per `--invoke` (filled from the matches).
    #[arg(skip)]
    pub invoke: Vec<Vec<String>>,
    /// Send a request to an SDK app's handler after the invokes (repeatable);
    /// prints the response body.
    #[arg(long = "request", value_name = "PATH")]
    requests: Vec<String>,
    /// Body for --request: TEXT, or @FILE to read it from a file.
    #[arg(long, value_name = "TEXT|@FILE")]
    data: Option<String>,
    /// Method for --request (default: POST with --data, else GET).
    #[arg(long, value_name = "METHOD")]
    method: Option<String>,
    /// Write a snapshot of the app after the last call.
    #[arg(long, value_name = "FILE")]
    snapshot_out: Option<PathBuf>,
    /// Compress the snapshot's memory runs with LZ4 where that pays
    /// (smaller file; raw runs restore copy-on-write).
    #[arg(long)]
    compress: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

impl CallArgs {
    /// Groups the `--invoke` values per occurrence.
    pub fn group(&mut self, m: &clap::ArgMatches) {
        self.invoke = m
            .get_occurrences::<String>("invoke")
            .map(|occ| occ.map(|o| o.cloned().collect()).collect())
            .unwrap_or_default();
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The module (.wasm, or .wat text).
    file: PathBuf,
    #[command(flatten)]
    pub calls: CallArgs,
    #[command(flatten)]
    grant: GrantArgs,
}

/// What the app is given and the limits it runs under: the same flags for
/// a fresh run and a resume (a snapshot grants nothing by itself).
#[derive(Args)]
struct GrantArgs {
    /// An environment variable for the app (repeatable). Nothing is inherited.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Give the app a host directory, as GUEST inside (default: the same
    /// path). `HOST::GUEST` also separates them, for a HOST with a `:` in
    /// it (`--dir 'a:b::/data'`); with no `::`, the first `:` does.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,
    /// Give the app a host directory read-only (same form as --dir).
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]")]
    dirs_ro: Vec<String>,
    /// Memory limit for all the app's memories together (e.g. 64MiB;
    /// default 4GiB); growth past it fails as Wasm says.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Fuel per call (instructions, roughly); a call that runs out is stopped.
    #[arg(long, value_name = "N", conflicts_with = "timeout")]
    fuel: Option<u64>,
    /// Time limit per call (e.g. 500ms, 2s).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Arguments passed to the app (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

impl GrantArgs {
    /// What the command line gives: `program` as the first argument, the
    /// arguments after `--`, the variables and the directories.
    fn wasi(&self, program: String) -> Result<WasiState> {
        let mut env = Vec::new();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env {kv}: expected K=V"))?;
            env.push((k.to_string(), v.to_string()));
        }
        let mut preopens = Vec::new();
        for d in &self.dirs {
            preopens.push(parse_dir(d, false)?);
        }
        for d in &self.dirs_ro {
            preopens.push(parse_dir(d, true)?);
        }
        let mut args = vec![program];
        args.extend(self.args.iter().cloned());
        Ok(WasiState {
            args,
            env,
            preopens,
            ..Default::default()
        })
    }

    /// The command line's limits; what it leaves out, the local defaults.
    fn limits(&self) -> Result<LimitsState> {
        let given = LimitsState {
            memory_bytes: self.memory.as_deref().map(parse_size).transpose()?,
            fuel_per_call: self.fuel,
            timeout_ms_per_call: self
                .timeout
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .map(|d| d.as_millis().max(1) as u64),
        };
        Ok(given.or_defaults(&LimitsState::LOCAL_DEFAULTS))
    }
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The snapshot file.
    snapshot: PathBuf,
    #[command(flatten)]
    pub calls: CallArgs,
    #[command(flatten)]
    grant: GrantArgs,
    /// The module, when the snapshot does not carry it.
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// Copy memory instead of mapping the snapshot copy-on-write.
    #[arg(long)]
    copy: bool,
    /// For a snapshot taken on a node: an empty (or new) directory to give
    /// the app as `/data`, filled with the files the snapshot carries.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct CallReport {
    export: String,
    args: Vec<JsonValue>,
    results: Vec<JsonValue>,
}

#[derive(Serialize)]
struct ResponseReport {
    path: String,
    status: u16,
    body: String,
}

#[derive(Serialize)]
struct RunReport {
    module: String,
    calls: Vec<CallReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    responses: Vec<ResponseReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotWritten>,
}

#[derive(Serialize)]
struct SnapshotWritten {
    path: String,
    bytes: u64,
    stored_pages: u64,
}

fn runtime() -> Result<Arc<Runtime>> {
    Ok(Runtime::new(RuntimeConfig {
        cache_dir: RuntimeConfig::default_cache_dir(),
    })?)
}

/// Splits `--dir HOST[::GUEST]` (or `HOST:GUEST`, when HOST has no `:`).
fn split_dir(spec: &str) -> (&str, &str) {
    match spec.split_once("::") {
        Some((h, g)) => (h, g),
        None => spec.split_once(':').unwrap_or((spec, spec)),
    }
}

fn parse_dir(spec: &str, read_only: bool) -> Result<Preopen> {
    let (host, guest) = split_dir(spec);
    if host.is_empty() || guest.is_empty() {
        bail!("--dir {spec}: expected HOST, HOST::GUEST or HOST:GUEST");
    }
    let meta = std::fs::metadata(host).with_context(|| {
        let hint = if spec.contains(':') && !spec.contains("::") {
            " (for a host path with a `:` in it, write HOST::GUEST)"
        } else {
            ""
        };
        format!("--dir {spec}: cannot use `{host}`{hint}")
    })?;
    if !meta.is_dir() {
        bail!("--dir {spec}: `{host}` is not a directory");
    }
    // Stored absolute, so a resume from elsewhere finds the same directory.
    let host = std::fs::canonicalize(host)?.to_string_lossy().into_owned();
    Ok(Preopen {
        host,
        guest: guest.to_string(),
        read_only,
    })
}

/// The exit status for a failed command: a trap (the guest's, or a limit
/// or interrupt that stopped it) exits 134 as wasmtime does, a `proc_exit`
/// in a call exits with its status; anything else is an ordinary error.
fn outcome(result: Result<ExitCode>) -> Result<ExitCode> {
    let err = match result {
        Ok(code) => return Ok(code),
        Err(e) => e,
    };
    match err.downcast_ref::<tern_runtime::Error>() {
        Some(e) if e.is_trap() => {
            eprintln!("error: {}", crate::util::one_line(&err));
            Ok(ExitCode::from(TRAP_EXIT_STATUS))
        }
        Some(tern_runtime::Error::Exit(code)) => Ok(exit_status(*code)),
        _ => Err(err),
    }
}

/// What `tern run` exits with when a call traps: 128 + SIGABRT, as
/// wasmtime (and a native program that aborts).
pub const TRAP_EXIT_STATUS: u8 = 134;

fn exit_status(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

pub fn run(a: RunArgs) -> Result<ExitCode> {
    outcome(run_inner(a))
}

fn run_inner(a: RunArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    let module = rt
        .load_file(&a.file)
        .with_context(|| format!("cannot load `{}`", a.file.display()))?;
    let name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app.wasm".into());
    let wasi = a.grant.wasi(name)?;
    let config = AppConfig {
        args: wasi.args,
        env: wasi.env,
        preopens: wasi.preopens,
        limits: a.grant.limits()?,
        stdio: Stdio::Inherit,
        ..Default::default()
    };
    let mut inst = match Instance::start(&rt, &module, config) {
        Ok(i) => i,
        Err(tern_runtime::Error::Exit(code)) => {
            // A command that exits non-zero: its status is ours.
            if a.calls.json {
                print_json(&RunReport {
                    module: module.hash_hex(),
                    calls: vec![],
                    responses: vec![],
                    exit_code: Some(code),
                    snapshot: None,
                })?;
            }
            return Ok(exit_status(code.max(1)));
        }
        Err(e) => return Err(e.into()),
    };
    if tern_runtime::sdk::check_app(&mut inst)? {
        tern_runtime::sdk::init(&mut inst)?;
    }
    finish(&mut inst, &a.calls)
}

pub fn resume(a: ResumeArgs) -> Result<ExitCode> {
    outcome(resume_inner(a))
}

fn resume_inner(a: ResumeArgs) -> Result<ExitCode> {
    let rt = runtime()?;
    let snap = Snapshot::open(&a.snapshot, true)
        .with_context(|| format!("cannot resume `{}`", a.snapshot.display()))?;
    let module = match &a.module {
        Some(p) => Some(
            rt.load_file(p)
                .with_context(|| format!("cannot load `{}`", p.display()))?,
        ),
        None => None,
    };
    // The snapshot is data, not authority: the app gets what this command
    // line gives and runs under its limits, whatever the file says.
    let program = a
        .snapshot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app.wasm".into());
    let mut grant = a.grant.wasi(program)?;
    let mut carry_dir = None;
    if let Some(dir) = &a.data_dir {
        // The directory is made to hold exactly the carried files: refuse
        // one that holds anything, rather than replace what is there.
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "--data-dir {} is not empty: give an empty or new directory (the snapshot's files are written there)",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = std::fs::canonicalize(dir)?.to_string_lossy().into_owned();
        grant.preopens.retain(|p| p.guest != "/data");
        grant.preopens.push(Preopen {
            host,
            guest: "/data".into(),
            read_only: false,
        });
        carry_dir = Some(dir.clone());
    }
    let (wasi, missing) = regrant(&snap.body.wasi, &grant);
    for m in &missing {
        let hint = match m {
            NotGranted::Dir { host, guest } => format!("give it with --dir {host}::{guest}"),
            NotGranted::DirWritable { guest } => {
                format!("it is read-only; give it with --dir HOST::{guest}")
            }
            NotGranted::Env(name) => format!("give it with --env {name}=VALUE"),
            NotGranted::Args(_) => "pass them after --".into(),
        };
        eprintln!("warning: the snapshot asks for {m}; not granted ({hint})");
    }
    let limits = a.grant.limits()?;
    for line in limit_differences(&snap.body.limits, &limits) {
        eprintln!("warning: {line}");
    }
    let opts = RestoreOptions {
        copy_on_write: !a.copy,
        hooks: true,
        stdio: Stdio::Inherit,
        wasi_override: Some(wasi),
        limits_override: Some(limits),
        carry_dir,
        ..Default::default()
    };
    let mut inst = Instance::restore(&rt, &snap, module, opts)
        .with_context(|| format!("cannot resume `{}`", a.snapshot.display()))?;
    finish(&mut inst, &a.calls)
}

/// One limit as `limit_differences` words it.
struct Limit {
    what: &'static str,
    flag: &'static str,
    asked: Option<u64>,
    applied: Option<u64>,
    show: fn(u64) -> String,
}

/// One line per limit the snapshot records that this run does not apply.
fn limit_differences(asked: &LimitsState, applied: &LimitsState) -> Vec<String> {
    let limits = [
        Limit {
            what: "memory limit",
            flag: "--memory",
            asked: asked.memory_bytes,
            applied: applied.memory_bytes,
            show: human_bytes,
        },
        Limit {
            what: "time limit per call",
            flag: "--timeout",
            asked: asked.timeout_ms_per_call,
            applied: applied.timeout_ms_per_call,
            show: |ms| format!("{ms} ms"),
        },
        Limit {
            what: "fuel limit per call",
            flag: "--fuel",
            asked: asked.fuel_per_call,
            applied: applied.fuel_per_call,
            show: |n| n.to_string(),
        },
    ];
    let mut out = Vec::new();
    for l in limits.iter().filter(|l| l.asked != l.applied) {
        let asks = l.asked.map_or(format!("no {}", l.what), |v| {
            format!("a {} of {}", l.what, (l.show)(v))
        });
        let runs = l.applied.map_or("running without one".into(), |v| {
            format!("running under {}", (l.show)(v))
        });
        out.push(format!(
            "the snapshot asks for {asks}; {runs} (set it with {})",
            l.flag
        ));
    }
    out
}

fn finish(inst: &mut Instance, c: &CallArgs) -> Result<ExitCode> {
    let mut calls = Vec::new();
    for inv in &c.invoke {
        let (export, args) = inv.split_first().context("--invoke needs an export name")?;
        let (params, _) = inst.func_type(export)?;
        let vals = tern_runtime::values::parse_args(export, &params, args)?;
        let results = inst.call(export, &vals)?;
        if !c.json {
            let line: Vec<String> = results.iter().map(to_text).collect();
            outln!("{}", line.join(" "))?;
        }
        calls.push(CallReport {
            export: export.clone(),
            args: vals.iter().map(to_json).collect(),
            results: results.iter().map(to_json).collect(),
        });
    }
    let mut responses = Vec::new();
    if !c.requests.is_empty() {
        if !tern_runtime::sdk::check_app(inst)? {
            anyhow::bail!("--request needs an SDK app (one that exports `tern_abi_version`); this module does not: use --invoke");
        }
        let body = match c.data.as_deref() {
            Some(d) if d.starts_with('@') => {
                std::fs::read(&d[1..]).with_context(|| format!("cannot read --data {d}"))?
            }
            Some(d) => d.as_bytes().to_vec(),
            None => Vec::new(),
        };
        let method = c.method.clone().unwrap_or_else(|| {
            if c.data.is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        });
        for target in &c.requests {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let req = tern_runtime::sdk::Request {
                method: method.to_uppercase(),
                path: if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                },
                query: query.to_string(),
                headers: vec![],
                body: body.clone(),
            };
            let resp = tern_runtime::sdk::handle(inst, &req);
            let text = String::from_utf8_lossy(&resp.body).into_owned();
            if !c.json {
                out!("{text}")?;
                if !text.ends_with('\n') {
                    outln!()?;
                }
            }
            responses.push(ResponseReport {
                path: target.clone(),
                status: resp.status,
                body: text,
            });
        }
    }
    let mut written = None;
    if let Some(path) = &c.snapshot_out {
        let snap = inst.snapshot(SnapshotOptions {
            compress: c.compress,
            ..Default::default()
        })?;
        snap.write_file(path)
            .with_context(|| format!("cannot write snapshot `{}`", path.display()))?;
        written = Some(SnapshotWritten {
            path: path.display().to_string(),
            bytes: snap.as_bytes().len() as u64,
            stored_pages: snap.stored_pages(),
        });
        if !c.json {
            eprintln!(
                "snapshot: {} ({}, {} pages stored)",
                path.display(),
                human_bytes(snap.as_bytes().len() as u64),
                snap.stored_pages()
            );
        }
    }
    if c.json {
        print_json(&RunReport {
            module: inst.module().hash_hex(),
            calls,
            responses,
            exit_code: inst.exited(),
            snapshot: written,
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
