//! The cluster commands: clients of the control plane (`nodes`, `deploy`,
//! `ps`, `invoke`, `call`, `migrate`, `snapshot`, `restore`, `stop`,
//! `start`, `rm`, `logs`, `drain`) and `tern control`, which runs one.
//!
//! Each client command finds the control plane from `--control`, else
//! `TERN_CONTROL`, else `http://127.0.0.1:7070`, and the token from
//! `--token`, else `TERN_TOKEN`, else the token file in the default data
//! dir (the one `tern up` writes). With `--json` it prints one JSON document
//! and nothing else on stdout; otherwise the same data as text.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tern_api::client::{Client, ClientError};
use tern_api::types::{
    AppView, DeployRequest, InvokeRequest, InvokeResponse, LogsResponse, MigrationReport, NodeView,
};

use crate::util::{human_bytes, parse_duration, parse_size, print_json};

/// Where client commands look for the control plane by default.
pub const DEFAULT_CONTROL: &str = "http://127.0.0.1:7070";
/// Where `tern up` and `tern control` listen by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// `$TERN_DATA_DIR`, else `$XDG_DATA_HOME/tern`, else `~/.local/share/tern`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = non_empty("TERN_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(d).join("tern");
    }
    let home = non_empty("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local").join("share").join("tern")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Options every client command takes.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The control plane's URL; several, comma-separated, for control
    /// planes sharing an etcd store (the one that leads answers).
    #[arg(long, value_name = "URL[,URL...]", env = "TERN_CONTROL", default_value = DEFAULT_CONTROL)]
    control: String,
    /// The cluster token (default: the token file `tern up` wrote in the data dir).
    #[arg(long, value_name = "TOKEN", env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

enum TokenFrom {
    Given,
    File(PathBuf),
    Nowhere(PathBuf),
}

/// A client of one control plane, with errors that say what to do.
struct Ctl {
    client: Client,
    base: String,
    from: TokenFrom,
}

impl Conn {
    fn connect(&self) -> Result<Ctl> {
        let bases = self
            .control
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| {
                let mut base = b.trim_end_matches('/').to_string();
                if !base.contains("://") {
                    base = format!("http://{base}");
                }
                if !base.starts_with("http://") {
                    bail!("--control {base}: only http:// control planes are supported");
                }
                Ok(base)
            })
            .collect::<Result<Vec<String>>>()?;
        let Some(first) = bases.first().cloned() else {
            bail!("--control is empty: give the control plane's URL");
        };
        let (token, from) = match self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(t) => (Some(t.to_string()), TokenFrom::Given),
            None => {
                let path = default_data_dir().join("token");
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => {
                        (Some(t.trim().to_string()), TokenFrom::File(path))
                    }
                    _ => (None, TokenFrom::Nowhere(path)),
                }
            }
        };
        let client = Client::new(token);
        let base = if bases.len() > 1 {
            leader(&client, &bases)?.unwrap_or(first)
        } else {
            first
        };
        Ok(Ctl { client, base, from })
    }
}

/// The first of `bases` that answers as the leading control plane (a
/// standby's health says `standby`; one that is down does not answer).
fn leader(client: &Client, bases: &[String]) -> Result<Option<String>> {
    let probe = client.clone().with_timeout(Duration::from_secs(3));
    Ok(runtime()?.block_on(async {
        for base in bases {
            if let Ok(h) = probe.get_json::<Value>(&format!("{base}/v1/health")).await {
                if h["role"] == "control" {
                    return Some(base.clone());
                }
            }
        }
        None
    }))
}

impl Ctl {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn with_timeout(&self, t: Duration) -> Ctl {
        let from = match &self.from {
            TokenFrom::Given => TokenFrom::Given,
            TokenFrom::File(p) => TokenFrom::File(p.clone()),
            TokenFrom::Nowhere(p) => TokenFrom::Nowhere(p.clone()),
        };
        Ctl {
            client: self.client.clone().with_timeout(t),
            base: self.base.clone(),
            from,
        }
    }

    fn err(&self, e: ClientError) -> anyhow::Error {
        let base = &self.base;
        match e {
            ClientError::Unreachable { reason, .. } => anyhow!(
                "cannot reach the control plane at {base}: start one with `tern up` (or point --control / TERN_CONTROL at a running one) ({reason})"
            ),
            ClientError::Timeout { secs, .. } => anyhow!("the control plane at {base} did not answer within {secs} s"),
            ClientError::Status { status: 401, .. } => match &self.from {
                TokenFrom::Given => anyhow!(
                    "the control plane at {base} refused the token from --token/TERN_TOKEN: use the cluster's token (the `token` file in the data dir of `tern up`)"
                ),
                TokenFrom::File(p) => anyhow!(
                    "the control plane at {base} refused the token in {}: that file belongs to another cluster; pass --token or set TERN_TOKEN",
                    p.display()
                ),
                TokenFrom::Nowhere(p) => anyhow!(
                    "the control plane at {base} needs the cluster token: pass --token, set TERN_TOKEN, or run `tern up` (it writes {})",
                    p.display()
                ),
            },
            ClientError::Status { message, .. } => anyhow!("{message}"),
            ClientError::Decode { reason, .. } => {
                anyhow!("unexpected answer from {base} ({reason}): is it a tern control plane of the same version?")
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.client
            .get_json(&self.url(path))
            .await
            .map_err(|e| self.err(e))
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.client
            .post_json(&self.url(path), body)
            .await
            .map_err(|e| self.err(e))
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        self.client
            .post_bytes(&self.url(path), body.into())
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.err(e))
    }

    /// Uploads a module unless the control plane has it; returns its sha256.
    async fn upload_module(&self, file: &Path) -> Result<(String, u64)> {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        if !bytes.starts_with(b"\0asm") {
            bail!(
                "{} is not a WebAssembly binary (.wasm): compile it first (e.g. for wasm32-wasip1)",
                file.display()
            );
        }
        // The same check a node makes, here, so the message names the file.
        if let Err(e) = tern_runtime::rewrite::rewrite(&bytes) {
            bail!(
                "{} cannot run on tern: {e}: rebuild it for wasm32-wasip1 (`tern run {}` shows the problem locally)",
                file.display(),
                file.display()
            );
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        let len = bytes.len() as u64;
        let path = format!("/v1/modules/{sha}");
        if !self
            .client
            .exists(&self.url(&path))
            .await
            .map_err(|e| self.err(e))?
        {
            self.client
                .put_bytes(&self.url(&path), bytes.into())
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok((sha, len))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn ok() -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- nodes

#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn nodes(a: NodesArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let nodes: Vec<NodeView> = runtime()?.block_on(ctl.get("/v1/nodes"))?;
    if a.conn.json {
        print_json(&nodes)?;
        return ok();
    }
    if nodes.is_empty() {
        println!(
            "no nodes yet: start some with `tern up` or `tern node --control {}`",
            ctl.base
        );
        return ok();
    }
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.clone(),
                n.url.clone(),
                n.arch.clone(),
                format!("{}m / {}m", n.usage.cpu_milli, n.capacity.cpu_milli),
                format!(
                    "{} / {}",
                    human_bytes(n.usage.memory_bytes),
                    human_bytes(n.capacity.memory_bytes)
                ),
                if n.apps.is_empty() {
                    "-".into()
                } else {
                    format!("{} ({})", n.apps.len(), n.apps.join(","))
                },
                kv_list(&n.labels),
                n.last_heartbeat_ms_ago
                    .map_or("never".into(), |ms| format!("{} ago", human_ms(ms as f64))),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "STATE",
                "ADDRESS",
                "ARCH",
                "CPU",
                "MEMORY",
                "APPS",
                "LABELS",
                "HEARTBEAT"
            ],
            rows
        )
    );
    ok()
}

// ---------------------------------------------------------------- deploy

#[derive(Args)]
pub struct DeployArgs {
    /// The module (.wasm).
    file: PathBuf,
    /// The app's name (default: the file's name without `.wasm`).
    #[arg(long)]
    name: Option<String>,
    /// Run it on this node rather than where the scheduler decides.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// Memory limit, also the memory it requests (e.g. 64MiB).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU it requests, in thousandths of a core.
    #[arg(long, value_name = "MILLI")]
    cpu: Option<u64>,
    /// An environment variable for the app (repeatable). Nothing is inherited.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// What happens when it crashes or its node is lost.
    #[arg(long, value_name = "POLICY", value_parser = ["never", "on-failure", "always"])]
    restart: Option<String>,
    /// Start it at this time (RFC 3339, e.g. 2030-01-01T08:00:00Z or with +02:00).
    #[arg(long, value_name = "RFC3339", conflicts_with = "start_after")]
    start_at: Option<String>,
    /// Start it after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DUR")]
    start_after: Option<String>,
    /// A label the node must carry (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Placement policy (default: the cluster's).
    #[arg(long, value_name = "POLICY", value_parser = ["requests", "cost", "learned"])]
    policy: Option<String>,
    /// Where the app's users are (a zone or location; the `cost` policy keeps latency to them low).
    #[arg(long, value_name = "LOCATION")]
    user_location: Option<String>,
    /// Time limit per call (e.g. 500ms, 2s).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Fuel per call (instructions, roughly).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Only show where the scheduler would place it (uploads the module, starts nothing).
    #[arg(long)]
    dry_run: bool,
    /// Arguments passed to the app (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

pub fn deploy(a: DeployArgs) -> Result<ExitCode> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| {
                s.chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect()
            })
            .ok_or_else(|| {
                anyhow!(
                    "cannot make an app name from {}: pass --name",
                    a.file.display()
                )
            })?,
    };
    let start_at_unix_ms = match (&a.start_at, &a.start_after) {
        (Some(t), _) => {
            let at = parse_rfc3339(t)?;
            if at < SystemTime::now() {
                bail!("--start-at {t} is in the past: give a later time, or leave it out to start now");
            }
            Some(unix_ms(at))
        }
        (None, Some(d)) => Some(unix_ms(SystemTime::now() + parse_duration(d)?)),
        (None, None) => None,
    };
    let req = DeployRequest {
        name: name.clone(),
        module_sha256: String::new(),
        node: a.node.clone(),
        memory_limit: a.memory.as_deref().map(parse_size).transpose()?,
        cpu_milli: a.cpu,
        env: a
            .env
            .iter()
            .map(|kv| parse_kv(kv, "--env"))
            .collect::<Result<_>>()?,
        args: a.args.clone(),
        restart: a.restart.clone(),
        start_at_unix_ms,
        labels: a
            .labels
            .iter()
            .map(|kv| parse_kv(kv, "--label"))
            .collect::<Result<_>>()?,
        policy: a.policy.clone(),
        user_location: a.user_location.clone(),
        timeout_ms: a
            .timeout
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .map(|d| d.as_millis() as u64),
        fuel: a.fuel,
    };
    let ctl = a.conn.connect()?;
    let answer: Value = runtime()?.block_on(async {
        let (sha, _) = ctl.upload_module(&a.file).await?;
        let req = DeployRequest {
            module_sha256: sha,
            ..req
        };
        ctl.post(
            if a.dry_run {
                "/v1/apps?dry_run=1"
            } else {
                "/v1/apps"
            },
            &req,
        )
        .await
    })?;
    if a.conn.json {
        print_json(&answer)?;
        return ok();
    }
    if a.dry_run {
        match answer["decision"]["node"].as_str() {
            Some(n) => println!("{name} would go to {n} (dry run: nothing started)"),
            None => println!(
                "{name} would go to {} as asked (dry run: nothing started)",
                a.node.as_deref().unwrap_or("?")
            ),
        }
        print_decision(&answer["decision"], a.node.as_deref());
        return ok();
    }
    let app: AppView =
        serde_json::from_value(answer["app"].clone()).context("unexpected answer to a deploy")?;
    let node = app.node.as_deref().unwrap_or("?");
    println!(
        "deployed {} on {node} (generation {}, {})",
        app.name, app.generation, app.state
    );
    if let Some(t) = start_at_unix_ms {
        let wait = t.saturating_sub(unix_ms(SystemTime::now()));
        println!(
            "starts at {} (in {})",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t)),
            human_ms(wait as f64)
        );
    }
    print_decision(&answer["decision"], a.node.as_deref());
    ok()
}

/// The placement decision as a candidate table.
fn print_decision(d: &Value, forced: Option<&str>) {
    if let Some(n) = forced {
        println!("placed on {n} as asked (--node)");
        return;
    }
    let Some(cands) = d["candidates"].as_array() else {
        return;
    };
    println!(
        "placement by `{}` policy:",
        d["policy"].as_str().unwrap_or("?")
    );
    let chosen = d["node"].as_str().unwrap_or("");
    let mut ranked: Vec<&Value> = cands.iter().collect();
    ranked.sort_by(|a, b| {
        let fa = a["feasible"].as_bool().unwrap_or(false);
        let fb = b["feasible"].as_bool().unwrap_or(false);
        let sa = a["score"].as_f64().unwrap_or(f64::NEG_INFINITY);
        let sb = b["score"].as_f64().unwrap_or(f64::NEG_INFINITY);
        fb.cmp(&fa).then(sb.total_cmp(&sa))
    });
    let rows = ranked
        .iter()
        .map(|c| {
            let node = c["node"].as_str().unwrap_or("?");
            let feasible = c["feasible"].as_bool().unwrap_or(false);
            let why = if feasible {
                c["terms"]
                    .as_object()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| {
                                format!("{k}={}", fmt_num(v.as_f64().unwrap_or(f64::NAN)))
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            } else {
                c["reason_if_not"].as_str().unwrap_or("").to_string()
            };
            vec![
                format!("{} {node}", if node == chosen { "*" } else { " " }),
                if feasible { "yes".into() } else { "no".into() },
                c["score"].as_f64().map_or("-".into(), fmt_num),
                why,
            ]
        })
        .collect();
    print!(
        "{}",
        indent(
            &table(&["  NODE", "FITS", "SCORE", "TERMS / WHY NOT"], rows),
            "  "
        )
    );
}

// ---------------------------------------------------------------- ps

#[derive(Args)]
pub struct PsArgs {
    #[command(flatten)]
    conn: Conn,
}

pub fn ps(a: PsArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let apps: Vec<AppView> = runtime()?.block_on(ctl.get("/v1/apps"))?;
    if a.conn.json {
        print_json(&apps)?;
        return ok();
    }
    if apps.is_empty() {
        println!("no apps: deploy one with `tern deploy FILE.wasm --name NAME`");
        return ok();
    }
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.node.clone().unwrap_or_else(|| "-".into()),
                a.state.clone(),
                a.generation.to_string(),
                human_bytes(a.memory_bytes),
                a.requests_served.to_string(),
                a.restart.clone(),
                a.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "NODE",
                "STATE",
                "GEN",
                "MEMORY",
                "REQUESTS",
                "RESTART",
                "LAST ERROR"
            ],
            rows
        )
    );
    ok()
}

// ---------------------------------------------------------------- invoke

#[derive(Args)]
pub struct InvokeArgs {
    /// The app.
    name: String,
    /// The exported function.
    export: String,
    /// Numeric arguments (negative numbers are fine).
    #[arg(allow_negative_numbers = true)]
    args: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

pub fn invoke(a: InvokeArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let req = InvokeRequest {
        export: a.export.clone(),
        args: a.args.clone(),
    };
    let r: InvokeResponse =
        runtime()?.block_on(ctl.post(&format!("/v1/apps/{}/invoke", seg(&a.name)), &req))?;
    if a.conn.json {
        print_json(&r)?;
    } else {
        println!(
            "{}",
            r.results
                .iter()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    ok()
}

// ---------------------------------------------------------------- call

#[derive(Args)]
pub struct CallArgs {
    /// The app.
    name: String,
    /// The path the app's handler sees.
    #[arg(long, default_value = "/")]
    path: String,
    /// The request body: TEXT, or @FILE to send a file's bytes.
    #[arg(long, value_name = "@FILE|TEXT")]
    data: Option<String>,
    /// HTTP method (default: POST with --data, GET without).
    #[arg(long, short = 'X', value_name = "M")]
    method: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Serialize)]
struct CallOutput {
    app: String,
    method: String,
    path: String,
    body: String,
}

pub fn call(a: CallArgs) -> Result<ExitCode> {
    let body = match a.data.as_deref() {
        Some(d) if d.starts_with('@') => {
            std::fs::read(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?
        }
        Some(d) => d.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let method = a
        .method
        .clone()
        .unwrap_or_else(|| {
            if a.data.is_some() {
                "POST".into()
            } else {
                "GET".into()
            }
        })
        .to_ascii_uppercase();
    let path = if a.path.starts_with('/') {
        a.path.clone()
    } else {
        format!("/{}", a.path)
    };
    let ctl = a.conn.connect()?;
    let url = format!(
        "/v1/apps/{}/call?path={}&method={}",
        seg(&a.name),
        percent_encode(&path),
        percent_encode(&method)
    );
    let full = ctl.url(&url);
    let answer = runtime()?
        .block_on(ctl.client.post_bytes(&full, body.into()))
        .map_err(|e| match e {
            // The app's own answer (passed through): say so, without our URL.
            ClientError::Status { message, .. }
                if message.starts_with(&format!("{full} answered ")) =>
            {
                anyhow!(
                    "app {} answered {}",
                    a.name,
                    message[full.len() + " answered ".len()..].trim()
                )
            }
            ClientError::Status { status, message } if status != 401 => anyhow!("{message}"),
            e => ctl.err(e),
        })?;
    if a.conn.json {
        print_json(&CallOutput {
            app: a.name,
            method,
            path,
            body: String::from_utf8_lossy(&answer).into_owned(),
        })?;
        return ok();
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&answer)?;
    if std::io::stdout().is_terminal() && !answer.ends_with(b"\n") && !answer.is_empty() {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    ok()
}

// ---------------------------------------------------------------- migrate

#[derive(Args)]
pub struct MigrateArgs {
    /// The app.
    name: String,
    /// The node it moves to.
    #[arg(long, value_name = "NODE")]
    to: String,
    /// cold: stop, copy, restore; hot: live pre-copy while it serves;
    /// hybrid: the target starts from a checkpoint, only the delta moves.
    #[arg(long, value_name = "MODE", default_value = "hot", value_parser = ["cold", "hot", "hybrid"])]
    mode: String,
    #[command(flatten)]
    conn: Conn,
}

pub fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?.with_timeout(Duration::from_secs(900));
    let body = serde_json::json!({"to": a.to, "mode": a.mode});
    let r: MigrationReport =
        runtime()?.block_on(ctl.post(&format!("/v1/apps/{}/migrate", seg(&a.name)), &body))?;
    if a.conn.json {
        print_json(&r)?;
        return ok();
    }
    println!(
        "migrated {} from {} to {} ({}, generation {})",
        r.app, r.from, r.to, r.mode, r.generation
    );
    let rows = vec![
        vec!["downtime".into(), human_ms(r.downtime_ms)],
        vec!["total".into(), human_ms(r.total_ms)],
        vec![
            "sent".into(),
            format!("{} ({} pages)", human_bytes(r.bytes_sent), r.pages_sent),
        ],
        vec!["rounds".into(), r.rounds.to_string()],
        vec![
            "held".into(),
            format!("{} requests, replayed on {}", r.requests_held, r.to),
        ],
        vec![
            "dirty pages".into(),
            format!(
                "tracked by {}",
                if r.dirty_tracking.is_empty() {
                    "-"
                } else {
                    &r.dirty_tracking
                }
            ),
        ],
    ];
    for row in rows {
        println!("  {:<12} {}", row[0], row[1]);
    }
    ok()
}

// ---------------------------------------------------------------- snapshot / restore

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
        println!(
            "wrote {} ({}) from {}",
            out.file,
            human_bytes(out.bytes),
            out.app
        );
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
        println!(
            "restored {} on {} (generation {}, {})",
            view.name,
            view.node.as_deref().unwrap_or("?"),
            view.generation,
            view.state
        );
    }
    ok()
}

// ---------------------------------------------------------------- stop / start / rm

#[derive(Args)]
pub struct AppArgs {
    /// The app.
    name: String,
    #[command(flatten)]
    conn: Conn,
}

fn stop_or_start(a: AppArgs, verb: &str) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let view: AppView = runtime()?.block_on(ctl.post(
        &format!("/v1/apps/{}/{verb}", seg(&a.name)),
        &serde_json::json!({}),
    ))?;
    if a.conn.json {
        print_json(&view)?;
    } else {
        let done = if verb == "stop" { "stopped" } else { "started" };
        println!(
            "{done} {} on {} ({})",
            view.name,
            view.node.as_deref().unwrap_or("?"),
            view.state
        );
    }
    ok()
}

pub fn stop(a: AppArgs) -> Result<ExitCode> {
    stop_or_start(a, "stop")
}

pub fn start(a: AppArgs) -> Result<ExitCode> {
    stop_or_start(a, "start")
}

pub fn rm(a: AppArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    runtime()?.block_on(async {
        ctl.client
            .delete(&ctl.url(&format!("/v1/apps/{}", seg(&a.name))))
            .await
            .map_err(|e| ctl.err(e))
    })?;
    if a.conn.json {
        print_json(&serde_json::json!({"removed": a.name}))?;
    } else {
        println!("removed {}", a.name);
    }
    ok()
}

// ---------------------------------------------------------------- logs

#[derive(Args)]
pub struct LogsArgs {
    /// The app.
    name: String,
    /// Keep printing new lines as they come (Ctrl-C stops).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Start from this line number.
    #[arg(long, value_name = "N", default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    conn: Conn,
}

pub fn logs(a: LogsArgs) -> Result<ExitCode> {
    if a.follow && a.conn.json {
        bail!("--follow prints lines as they come; use it without --json");
    }
    let ctl = a.conn.connect()?;
    let rt = runtime()?;
    let path =
        |from: u64, wait: u64| format!("/v1/apps/{}/logs?from={from}&wait_ms={wait}", seg(&a.name));
    let first: LogsResponse = rt.block_on(ctl.get(&path(a.from, 0)))?;
    if a.conn.json {
        print_json(&first)?;
        return ok();
    }
    let print = |r: &LogsResponse| -> Result<()> {
        let mut out = std::io::stdout().lock();
        for l in &r.lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        Ok(())
    };
    print(&first)?;
    if !a.follow {
        return ok();
    }
    let mut next = first.next;
    rt.block_on(async {
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            let url = path(next, 20_000);
            tokio::select! {
                _ = &mut stop => return Ok::<_, anyhow::Error>(()),
                r = ctl.get::<LogsResponse>(&url) => {
                    let r = r?;
                    print(&r)?;
                    next = r.next;
                }
            }
        }
    })?;
    ok()
}

// ---------------------------------------------------------------- drain

#[derive(Args)]
pub struct DrainArgs {
    /// The node.
    node: String,
    /// Take new apps again (undo a drain).
    #[arg(long)]
    undo: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn drain(a: DrainArgs) -> Result<ExitCode> {
    let ctl = a.conn.connect()?;
    let view: NodeView = runtime()?.block_on(ctl.post(
        &format!("/v1/nodes/{}/drain", seg(&a.node)),
        &serde_json::json!({"drain": !a.undo}),
    ))?;
    if a.conn.json {
        print_json(&view)?;
    } else if a.undo {
        println!("{} takes new apps again ({})", view.name, view.state);
    } else {
        println!(
            "{} is draining: it takes no new apps, and the rebalancer moves its {} app(s) away",
            view.name,
            view.apps.len()
        );
    }
    ok()
}

// ---------------------------------------------------------------- tern control

#[derive(Args)]
pub struct ControlArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Where the state lives (default: $TERN_DATA_DIR, $XDG_DATA_HOME/tern or ~/.local/share/tern).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The state store: `redb` (embedded, the default) or
    /// `etcd://HOST:PORT[/PREFIX]` (shared by several control planes, of
    /// which one leads and the others stand by).
    #[arg(long, value_name = "STORE", default_value = "redb")]
    store: String,
    /// The cluster token (default: DATA_DIR/token, created if missing).
    #[arg(long, value_name = "TOKEN", env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Default placement policy.
    #[arg(long, value_name = "POLICY", default_value = "requests", value_parser = ["requests", "cost", "learned"])]
    policy: String,
    /// A node without a heartbeat for this long is down.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    heartbeat_timeout: String,
    /// How often the rebalancer runs.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    rebalance_interval: String,
    /// The URL nodes reach this control plane at (default: the listen address).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
}

/// The control plane's configuration from `tern control` / `tern up` flags.
pub fn control_config(
    data_dir: &Path,
    token: String,
    policy: &str,
    heartbeat: &str,
    rebalance: &str,
) -> Result<tern_control::ControlConfig> {
    let mut cfg = tern_control::ControlConfig::new(data_dir, token);
    cfg.policy = policy.parse().map_err(|e| anyhow!("{e}"))?;
    cfg.heartbeat_timeout = parse_duration(heartbeat)?;
    cfg.rebalance_interval = parse_duration(rebalance)?;
    Ok(cfg)
}

pub fn control(a: ControlArgs) -> Result<ExitCode> {
    let store: tern_control::StoreConfig = a.store.parse().map_err(|e: String| anyhow!(e))?;
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let given = a.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let token = match (&store, given) {
        (tern_control::StoreConfig::Redb, Some(t)) => t.to_string(),
        (tern_control::StoreConfig::Redb, None) => tern_control::load_or_create_token(&data_dir)?,
        // Control planes sharing an etcd share its token: the first one's,
        // kept in DATA_DIR/token too so that client commands find it.
        (tern_control::StoreConfig::Etcd(url), given) => {
            let t = tern_control::etcd_token(url, given, || {
                tern_control::load_or_create_token(&data_dir)
            })?;
            if given.is_none() {
                tern_control::write_token(&data_dir.join("token"), &t)?;
            }
            t
        }
    };
    let mut cfg = control_config(
        &data_dir,
        token,
        &a.policy,
        &a.heartbeat_timeout,
        &a.rebalance_interval,
    )?;
    cfg.advertise_url = a.advertise.clone();
    cfg.store = store;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: is another control plane running there? (use --listen)",
                    a.listen
                )
            })?;
        let addr = listener.local_addr()?;
        println!("control plane listening on http://{addr}");
        match &cfg.store {
            tern_control::StoreConfig::Redb => {
                println!("  state  {}", data_dir.join("control.redb").display())
            }
            tern_control::StoreConfig::Etcd(url) => println!(
                "  state  {url} (this control plane leads, or stands by while another does)\n  blobs  {}",
                data_dir.display()
            ),
        }
        if a.token.is_none() {
            println!("  token  {}", data_dir.join("token").display());
        }
        println!("Ctrl-C stops it.");
        tern_control::run(listener, cfg, shutdown_signal()).await
    })?;
    println!("control plane stopped");
    ok()
}

// ---------------------------------------------------------------- helpers

/// `K=V` into a pair.
fn parse_kv(s: &str, flag: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{flag} `{s}`: expected KEY=VALUE"),
    }
}

/// An RFC 3339 time with `Z` or a `+HH:MM`/`-HH:MM` offset.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime> {
    let t = s.trim();
    let bad = |why: &str| {
        anyhow!("`{s}` is not an RFC 3339 time ({why}); try 2030-01-01T08:00:00Z or 2030-01-01T10:00:00+02:00")
    };
    if t.ends_with(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(&t[..t.len() - 1]).map_err(|e| bad(&e.to_string()));
    }
    let n = t.len();
    if n > 6 && matches!(&t.as_bytes()[n - 6], b'+' | b'-') && t.as_bytes()[n - 3] == b':' {
        let sign: i64 = if t.as_bytes()[n - 6] == b'+' { 1 } else { -1 };
        let hh: i64 = t[n - 5..n - 3].parse().map_err(|_| bad("bad offset"))?;
        let mm: i64 = t[n - 2..].parse().map_err(|_| bad("bad offset"))?;
        if hh > 23 || mm > 59 {
            return Err(bad("bad offset"));
        }
        let local = humantime::parse_rfc3339_weak(&t[..n - 6]).map_err(|e| bad(&e.to_string()))?;
        let offset = Duration::from_secs(((hh * 60 + mm) * 60) as u64);
        // Local time = UTC + offset.
        return Ok(if sign > 0 {
            local - offset
        } else {
            local + offset
        });
    }
    Err(bad("no time zone: add Z for UTC or an offset like +02:00"))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A name as one URL path segment.
fn seg(s: &str) -> String {
    percent_encode(s).replace('/', "%2F")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn kv_list(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        "-".into()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Milliseconds in human units.
pub fn human_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "-".into()
    } else if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{:.2} s", ms / 1000.0).replace(".00 s", " s")
    } else if ms < 120_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else {
        format!("{:.0} min", ms / 60_000.0)
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn indent(s: &str, by: &str) -> String {
    s.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// Writes a file atomically and durably (see `tern_util::write_atomic`).
fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tern_util::write_atomic(path, bytes)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets() {
        let z = parse_rfc3339("2030-01-01T08:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2030-01-01T10:00:00+02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2030-01-01T03:30:00-04:30").unwrap(), z);
        assert!(parse_rfc3339("2030-01-01T08:00:00").is_err());
        assert!(parse_rfc3339("tomorrow").is_err());
    }

    #[test]
    fn encodes_paths() {
        assert_eq!(percent_encode("/a b/c?d=1"), "/a%20b/c%3Fd%3D1");
        assert_eq!(seg("x/y"), "x%2Fy");
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["A", "BB"],
            vec![vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A     BB\nlong  x\ns\n");
    }

    #[test]
    fn human_times() {
        assert_eq!(human_ms(0.25), "250 µs");
        assert_eq!(human_ms(12.34), "12.3 ms");
        assert_eq!(human_ms(1500.0), "1.50 s");
        assert_eq!(human_ms(30_000.0), "30 s");
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_kv("a=b=c", "--env").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_kv("=x", "--env").is_err());
        assert!(parse_kv("novalue", "--label").is_err());
    }
}
