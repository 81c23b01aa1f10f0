//! What every cluster client command shares: reaching the control plane.
//!
//! A client command finds the control plane from `--control`, else
//! `TERN_CONTROL`, else `https://127.0.0.1:7070`; it trusts the cluster's
//! CA from `--ca`, else `TERN_CA`, else `ca.pem` in the data dir; given several (control
//! planes sharing an etcd store), it talks to the one whose health says it
//! leads. It takes the token from `--token`, else `TERN_TOKEN`, else the
//! token file in the default data dir (the one `tern up` writes). A failed
//! request becomes an error that says what to do, naming where the token
//! came from when the control plane refuses it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tern_api::client::{Client, ClientError};

use crate::util::default_data_dir;

/// Where client commands look for the control plane by default.
pub const DEFAULT_CONTROL: &str = "https://127.0.0.1:7070";

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
    /// The cluster's CA certificate, to check the control plane's
    /// (default: ca.pem in the data dir, which `tern up` and `tern
    /// control` write).
    #[arg(long, value_name = "FILE", env = "TERN_CA")]
    ca: Option<PathBuf>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

enum TokenFrom {
    Given,
    File(PathBuf),
    Nowhere(PathBuf),
}

/// A client of one control plane, with errors that say what to do.
pub struct Ctl {
    pub client: Client,
    /// The control plane's URL, without a trailing `/`.
    pub base: String,
    from: TokenFrom,
    /// The CA file trusted (`None`: none found).
    ca: Option<PathBuf>,
}

impl Conn {
    /// The control plane these options name (the leading one of several).
    pub fn connect(&self) -> Result<Ctl> {
        let bases = self
            .control
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| {
                let mut base = b.trim_end_matches('/').to_string();
                if !base.contains("://") {
                    base = format!("https://{base}");
                }
                if !base.starts_with("https://") && !base.starts_with("http://") {
                    bail!("--control {base}: use an https:// URL");
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
        let (ca_path, ca_from) = match &self.ca {
            Some(p) => (p.clone(), "--ca/TERN_CA"),
            None => (tern_api::tls::ca_path(&default_data_dir()), "the data dir"),
        };
        let client = match std::fs::read_to_string(&ca_path) {
            Ok(pem) => {
                let tls = tern_api::tls::Tls::new(pem, None)
                    .with_context(|| format!("the CA file {} ({ca_from})", ca_path.display()))?;
                Client::with_tls(token, &tls)?
            }
            Err(_) if self.ca.is_some() => bail!(
                "cannot read the CA file {} given with --ca/TERN_CA",
                ca_path.display()
            ),
            // No CA: plain http:// works; https:// fails with advice.
            Err(_) => Client::new(token),
        };
        let ca = Some(ca_path).filter(|p| p.exists());
        let base = if bases.len() > 1 {
            leader(&client, &bases)?.unwrap_or(first)
        } else {
            first
        };
        Ok(Ctl {
            client,
            base,
            from,
            ca,
        })
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
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn with_timeout(&self, t: Duration) -> Ctl {
        let from = match &self.from {
            TokenFrom::Given => TokenFrom::Given,
            TokenFrom::File(p) => TokenFrom::File(p.clone()),
            TokenFrom::Nowhere(p) => TokenFrom::Nowhere(p.clone()),
        };
        Ctl {
            client: self.client.clone().with_timeout(t),
            base: self.base.clone(),
            from,
            ca: self.ca.clone(),
        }
    }

    /// A failed request as an error that says what to do.
    pub fn err(&self, e: ClientError) -> anyhow::Error {
        let base = &self.base;
        match e {
            ClientError::Unreachable { reason, .. } => anyhow!(
                "cannot reach the control plane at {base}: start one with `tern up` (or point --control / TERN_CONTROL at a running one) ({reason})"
            ),
            ClientError::Certificate { reason, .. } => match &self.ca {
                Some(p) => anyhow!(
                    "the control plane at {base} is not certified by the CA in {} ({reason}): pass --ca FILE or set TERN_CA to that cluster's ca.pem (in the data dir of its `tern up`/`tern control`)",
                    p.display()
                ),
                None => anyhow!(
                    "cannot check the certificate of the control plane at {base}: no CA to trust ({reason}); pass --ca FILE or set TERN_CA to the cluster's ca.pem (in the data dir of its `tern up`/`tern control`)"
                ),
            },
            ClientError::Status { status: 400, message, .. } if message.contains("speaks HTTPS only") => anyhow!(
                "the control plane at {base} speaks HTTPS only: use https:// in --control / TERN_CONTROL"
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

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.client
            .get_json(&self.url(path))
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.client
            .post_json(&self.url(path), body)
            .await
            .map_err(|e| self.err(e))
    }

    /// Uploads a module unless the control plane has it; returns its sha256.
    pub async fn upload_module(&self, file: &Path) -> Result<(String, u64)> {
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

/// A current-thread async runtime for one command's requests.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn percent_encode(s: &str) -> String {
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
pub fn seg(s: &str) -> String {
    percent_encode(s).replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_paths() {
        assert_eq!(percent_encode("/a b/c?d=1"), "/a%20b/c%3Fd%3D1");
        assert_eq!(seg("x/y"), "x%2Fy");
    }
}
