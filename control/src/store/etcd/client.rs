//! The client side of etcd: where a store is (`EtcdUrl`, with TLS to etcd
//! when given certificates) and calls to etcd's v3 JSON gateway (reads,
//! transactions, leases, watches), blocking like the store's callers.

use std::time::Duration;

use anyhow::{anyhow, bail};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::{MAX_ANSWER, PAGE};

/// Where an etcd store is: `etcd://HOST:PORT[/PREFIX]` (plain HTTP to
/// etcd), or `etcd+https://HOST:PORT[/PREFIX]` with [`EtcdUrl::tls`] set:
/// etcd's certificate is checked against a CA and the control plane
/// presents its client certificate (etcd's `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoint: String,
    /// `/PREFIX` (default `/tern`): several clusters can share one etcd.
    pub prefix: String,
    /// For `etcd+https://`: the CA that signed etcd's certificate and the
    /// client certificate to present.
    pub tls: Option<EtcdTls>,
}

/// The PEM texts for TLS to etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_pem: String,
    /// Certificate and key presented to etcd (`None`: none).
    pub client: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdUrl {
    /// The same store reached over TLS with this material.
    pub fn with_tls(mut self, tls: EtcdTls) -> EtcdUrl {
        self.tls = Some(tls);
        self
    }

    /// An HTTP agent for this etcd (TLS as configured).
    pub(super) fn agent(&self, timeout: Duration) -> anyhow::Result<ureq::Agent> {
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false);
        if let Some(tls) = &self.tls {
            use ureq::tls::{
                Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider,
            };
            let roots = Certificate::from_pem(tls.ca_pem.as_bytes())
                .map_err(|e| anyhow!("the CA for etcd is unreadable: {e}"))?;
            let mut t = TlsConfig::builder()
                .provider(TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(tern_api::tls::provider())
                .root_certs(RootCerts::new_with_certs(&[roots]));
            if let Some((cert, key)) = &tls.client {
                let cert = Certificate::from_pem(cert.as_bytes())
                    .map_err(|e| anyhow!("the client certificate for etcd is unreadable: {e}"))?;
                let key = PrivateKey::from_pem(key.as_bytes())
                    .map_err(|e| anyhow!("the client key for etcd is unreadable: {e}"))?;
                t = t.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
            }
            cfg = cfg.tls_config(t.build());
        }
        Ok(cfg.build().new_agent())
    }
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<EtcdUrl, String> {
        let usage = "an etcd store is etcd://HOST:PORT or etcd://HOST:PORT/PREFIX";
        let (scheme, rest) = if let Some(r) = s.strip_prefix("etcd+https://") {
            ("https", r)
        } else {
            (
                "http",
                s.strip_prefix("etcd://")
                    .ok_or_else(|| format!("`{s}`: {usage}"))?,
            )
        };
        let (host_port, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_matches('/')),
            None => (rest, "tern"),
        };
        let port_ok = host_port
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!("`{s}`: no HOST:PORT; {usage}"));
        }
        let prefix_ok = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && !prefix
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..");
        if !prefix_ok {
            return Err(format!(
                "`{s}`: the prefix may hold letters, digits, `-`, `_`, `.` and `/` between names"
            ));
        }
        Ok(EtcdUrl {
            endpoint: format!("{scheme}://{host_port}"),
            prefix: format!("/{prefix}"),
            tls: None,
        })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.endpoint.strip_prefix("https://") {
            Some(host) => write!(f, "etcd+https://{host}{}", self.prefix),
            None => {
                let host = self.endpoint.trim_start_matches("http://");
                write!(f, "etcd://{host}{}", self.prefix)
            }
        }
    }
}

/// One key and its value as etcd gives them.
pub(crate) struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
}

/// Calls to etcd's v3 JSON gateway (blocking: the store's callers are).
#[derive(Clone)]
pub(crate) struct Etcd {
    agent: ureq::Agent,
    endpoint: String,
    url: EtcdUrl,
}

pub(super) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub(super) fn unb64(v: &Value) -> anyhow::Result<Vec<u8>> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| anyhow!("etcd answered a value that is not base64: {e}")),
    }
}

/// etcd's 64-bit numbers come as JSON strings; zero values are left out.
pub(super) fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The first key after every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(super) fn op_put(key: &[u8], value: &[u8]) -> Value {
    json!({"request_put": {"key": b64(key), "value": b64(value)}})
}

pub(super) fn op_delete(key: &[u8]) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

pub(super) fn op_delete_range(from: &[u8], to: &[u8]) -> Value {
    json!({"request_delete_range": {"key": b64(from), "range_end": b64(to)}})
}

pub(super) fn op_get(key: &[u8]) -> Value {
    json!({"request_range": {"key": b64(key)}})
}

/// Holds when `key` does not exist.
pub(super) fn cmp_absent(key: &[u8]) -> Value {
    json!({"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"})
}

/// Holds when `key` was created at `revision` (and not deleted since).
pub(super) fn cmp_created_at(key: &[u8], revision: i64) -> Value {
    json!({"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": revision.to_string()})
}

impl Etcd {
    pub fn new(url: &EtcdUrl, timeout: Duration) -> anyhow::Result<Etcd> {
        Ok(Etcd {
            agent: url.agent(timeout)?,
            endpoint: url.endpoint.trim_end_matches('/').to_string(),
            url: url.clone(),
        })
    }

    pub(super) fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let bytes = serde_json::to_vec(body)?;
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/json")
            .send(&bytes[..])
            .map_err(|e| anyhow!("cannot reach etcd at {}: {e}", self.endpoint))?;
        let status = resp.status().as_u16();
        let answer = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| anyhow!("etcd at {} broke off its answer: {e}", self.endpoint))?;
        let v: Value = serde_json::from_slice(&answer).map_err(|_| {
            anyhow!(
                "{} answered {path} with something else than etcd's JSON (is it etcd ≥ 3.4?)",
                self.endpoint
            )
        })?;
        if status >= 300 {
            let msg = v["message"].as_str().or(v["error"].as_str()).unwrap_or("");
            bail!("etcd at {} refused {path} ({status}): {msg}", self.endpoint);
        }
        Ok(v)
    }

    pub(super) fn kvs(v: &Value) -> anyhow::Result<Vec<Kv>> {
        let Some(list) = v["kvs"].as_array() else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|kv| {
                Ok(Kv {
                    key: unb64(&kv["key"])?,
                    value: unb64(&kv["value"])?,
                    create_revision: int(&kv["create_revision"]),
                })
            })
            .collect()
    }

    pub fn get(&self, key: &[u8]) -> anyhow::Result<Option<Kv>> {
        let v = self.post("/v3/kv/range", &json!({"key": b64(key)}))?;
        Ok(Self::kvs(&v)?.into_iter().next())
    }

    /// Every key that starts with `prefix`, in key order (read in pages).
    pub fn scan(&self, prefix: &[u8]) -> anyhow::Result<Vec<Kv>> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        loop {
            let v = self.post(
                "/v3/kv/range",
                &json!({"key": b64(&from), "range_end": b64(&end), "limit": PAGE.to_string()}),
            )?;
            let page = Self::kvs(&v)?;
            let more = v["more"].as_bool().unwrap_or(false);
            if let Some(last) = page.last() {
                from = last.key.clone();
                from.push(0);
            }
            let done = page.is_empty() || !more;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// A transaction: `(succeeded, the answer)`.
    pub(super) fn txn(
        &self,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> anyhow::Result<(bool, Value)> {
        let v = self.post(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": failure}),
        )?;
        Ok((v["succeeded"].as_bool().unwrap_or(false), v))
    }

    pub(super) fn grant(&self, ttl: Duration) -> anyhow::Result<i64> {
        let v = self.post(
            "/v3/lease/grant",
            &json!({"TTL": ttl.as_secs().max(1).to_string()}),
        )?;
        match int(&v["ID"]) {
            0 => bail!("etcd granted no lease: {v}"),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL in seconds (0: it has expired).
    pub(super) fn keepalive(&self, lease: i64) -> anyhow::Result<i64> {
        let v = self.post("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        Ok(int(&v["result"]["TTL"]))
    }

    pub(super) fn revoke(&self, lease: i64) -> anyhow::Result<()> {
        self.post("/v3/lease/revoke", &json!({"ID": lease.to_string()}))?;
        Ok(())
    }

    /// Waits until `key` is deleted at a revision after `revision`, or
    /// `wait` passed (the caller looks again either way).
    pub(super) fn watch_deletion(
        &self,
        key: &[u8],
        revision: i64,
        wait: Duration,
    ) -> anyhow::Result<()> {
        use std::io::BufRead;
        let body = json!({"create_request": {"key": b64(key), "start_revision": (revision + 1).to_string()}});
        let agent = self.url.agent(wait)?;
        let resp = agent
            .post(format!("{}/v3/watch", self.endpoint))
            .header("content-type", "application/json")
            .send(&serde_json::to_vec(&body)?[..]);
        let Ok(resp) = resp else {
            return Ok(());
        };
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        // The gateway streams one JSON object per line; a timeout ends the
        // stream with an error, which is the end of the wait.
        for line in reader.lines() {
            let Ok(line) = line else {
                return Ok(());
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let deleted = v["result"]["events"]
                .as_array()
                .is_some_and(|evs| evs.iter().any(|e| e["type"] == "DELETE"));
            if deleted || v["result"]["canceled"].as_bool() == Some(true) {
                return Ok(());
            }
        }
        Ok(())
    }
}
