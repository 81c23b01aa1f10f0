//! `tern deploy`: upload a module, place it (or only show where it would
//! go, `--dry-run`) and start it; prints the placement decision as a table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::Value;
use tern_api::types::{AppView, DeployRequest};

use super::ok;
use crate::client::{runtime, Conn};
use crate::output::{out, outln};
use crate::util::{human_ms, parse_duration, parse_size, print_json, table};

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
            Some(n) => outln!("{name} would go to {n} (dry run: nothing started)")?,
            None => outln!(
                "{name} would go to {} as asked (dry run: nothing started)",
                a.node.as_deref().unwrap_or("?")
            )?,
        }
        print_decision(&answer["decision"], a.node.as_deref())?;
        return ok();
    }
    let app: AppView =
        serde_json::from_value(answer["app"].clone()).context("unexpected answer to a deploy")?;
    let node = app.node.as_deref().unwrap_or("?");
    outln!(
        "deployed {} on {node} (generation {}, {})",
        app.name,
        app.generation,
        app.state
    )?;
    if let Some(t) = start_at_unix_ms {
        let wait = t.saturating_sub(unix_ms(SystemTime::now()));
        outln!(
            "starts at {} (in {})",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t)),
            human_ms(wait as f64)
        )?;
    }
    print_decision(&answer["decision"], a.node.as_deref())?;
    ok()
}

/// The placement decision as a candidate table.
fn print_decision(d: &Value, forced: Option<&str>) -> Result<()> {
    if let Some(n) = forced {
        outln!("placed on {n} as asked (--node)")?;
        return Ok(());
    }
    let Some(cands) = d["candidates"].as_array() else {
        return Ok(());
    };
    outln!(
        "placement by `{}` policy:",
        d["policy"].as_str().unwrap_or("?")
    )?;
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
    out!(
        "{}",
        indent(
            &table(&["  NODE", "FITS", "SCORE", "TERMS / WHY NOT"], rows),
            "  "
        )
    )
}

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

fn indent(s: &str, by: &str) -> String {
    s.lines().map(|l| format!("{by}{l}\n")).collect()
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
    fn key_values() {
        assert_eq!(
            parse_kv("a=b=c", "--env").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_kv("=x", "--env").is_err());
        assert!(parse_kv("novalue", "--label").is_err());
    }
}
