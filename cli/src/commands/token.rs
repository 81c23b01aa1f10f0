//! `tern token create | list | revoke`: the cluster's credentials, changed
//! without a restart.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use tern_api::types::{CredentialView, Scope, TokenCreate, TokenCreated};

use super::ok;
use crate::client::{runtime, Conn};
use crate::output::outln;
use crate::util::{parse_duration, print_json};

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a credential: `operator` (client commands), `dashboard`
    /// (read-only) or `join` (one node joins once; it pins the cluster's CA).
    ///
    /// Example: tern token create --scope join --ttl 1h
    Create {
        #[arg(long, value_name = "SCOPE", default_value = "operator", value_parser = ["operator", "dashboard", "join"])]
        scope: String,
        /// How long it stays valid (default: until revoked; join tokens 1h).
        #[arg(long, value_name = "DUR")]
        ttl: Option<String>,
        /// A note shown by `tern token list`.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the credentials: tokens, the cluster token, node certificates.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a credential at once: a token (`tok-…`), the cluster token
    /// (`cluster`), or a node's certificates (`node/NAME`). Rotating is
    /// creating a new one, switching to it, and revoking the old one.
    ///
    /// Example: tern token revoke node/edge-1
    Revoke {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn token(a: TokenArgs) -> Result<ExitCode> {
    match a.command {
        TokenCommand::Create {
            scope,
            ttl,
            note,
            conn,
        } => {
            let scope: Scope = scope.parse().map_err(|e: String| anyhow!(e))?;
            let ttl_secs = ttl
                .map(|t| parse_duration(&t))
                .transpose()?
                .map(|d| d.as_secs().max(1));
            let ctl = conn.connect()?;
            let made: TokenCreated = runtime()?.block_on(ctl.post(
                "/v1/tokens",
                &TokenCreate {
                    scope,
                    ttl_secs,
                    note,
                },
            ))?;
            if conn.json {
                print_json(&made)?;
            } else {
                outln!("{}", made.token)?;
                eprintln!(
                    "{} token {} (shown this once{})",
                    made.scope,
                    made.id,
                    match made.expires_unix_ms {
                        Some(_) => format!(", valid for {}", ttl_text(made.expires_unix_ms)),
                        None => String::new(),
                    }
                );
            }
        }
        TokenCommand::List { conn } => {
            let ctl = conn.connect()?;
            let list: Vec<CredentialView> = runtime()?.block_on(ctl.get("/v1/tokens"))?;
            if conn.json {
                print_json(&list)?;
            } else {
                outln!(
                    "{:<44} {:<10} {:<8} {:<14} NOTE",
                    "ID",
                    "SCOPE",
                    "STATE",
                    "EXPIRES"
                )?;
                for c in &list {
                    outln!(
                        "{:<44} {:<10} {:<8} {:<14} {}",
                        c.id,
                        c.scope,
                        c.state,
                        ttl_text(c.expires_unix_ms),
                        c.note.as_deref().unwrap_or("")
                    )?;
                }
            }
        }
        TokenCommand::Revoke { id, conn } => {
            let ctl = conn.connect()?;
            let answer: serde_json::Value = runtime()?.block_on(async {
                ctl.client
                    .send(
                        hyper::Method::DELETE,
                        &ctl.url(&format!("/v1/tokens/{id}")),
                        "application/json",
                        bytes::Bytes::new(),
                    )
                    .await
                    .map_err(|e| ctl.err(e))
                    .and_then(|(_, b)| {
                        serde_json::from_slice(&b).map_err(|e| anyhow!("unexpected answer: {e}"))
                    })
            })?;
            if conn.json {
                print_json(&answer)?;
            } else {
                for r in answer["revoked"].as_array().into_iter().flatten() {
                    outln!("revoked {}", r.as_str().unwrap_or("?"))?;
                }
            }
        }
    }
    ok()
}

fn ttl_text(expires: Option<u64>) -> String {
    match expires {
        None => "never".into(),
        Some(e) => {
            let now = tern_util::now_unix_ms();
            if e <= now {
                "expired".into()
            } else {
                humantime::format_duration(std::time::Duration::from_secs((e - now) / 1000))
                    .to_string()
            }
        }
    }
}
