//! `tern invoke` calls an app's export with numeric arguments; `tern call`
//! sends a request to an SDK app's handler and prints the response body.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use tern_api::client::ClientError;
use tern_api::types::{InvokeRequest, InvokeResponse};

use super::ok;
use crate::client::{percent_encode, runtime, seg, Conn};
use crate::output::{self, outln};
use crate::util::print_json;

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
        outln!(
            "{}",
            r.results
                .iter()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }
    ok()
}

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
            ClientError::Status {
                status, message, ..
            } if status != 401 => anyhow!("{message}"),
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
    output::write(&answer)?;
    if std::io::stdout().is_terminal() && !answer.ends_with(b"\n") && !answer.is_empty() {
        output::write(b"\n")?;
    }
    ok()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
