//! The etcd backend: the same records as the redb backend, kept as keys
//! under one prefix in etcd (its v3 API, through the JSON gateway every
//! etcd ≥ 3.4 serves), so that several control planes can share them.
//!
//! Only one of them acts at a time. Each asks for the leadership by
//! creating the key `PREFIX/leader`, bound to a lease it keeps alive; the
//! others wait as standbys, watching that key, and ask again when it goes
//! (the leader resigned, or its lease expired). Every write of the leader
//! is a transaction conditional on the leader key still being the one it
//! created, so a control plane that lost its lease without noticing yet
//! cannot overwrite what its successor wrote.
//!
//! Layout (`P` is the prefix, `/tern` by default):
//! - `P/schema` — the layout version; `P/token` — the cluster token;
//!   `P/leader` — the leader's URL; `P/credentials` — the tokens, node
//!   certificates and revocations (`credentials.rs`), and the snapshot key;
//! - `P/nodes/NAME`, `P/apps/NAME`, `P/checkpoints/NAME` — JSON records;
//! - `P/generations/NAME`, `P/modules/SHA256` — decimal numbers;
//! - `P/module-blobs/SHA256/NNNNNN` — the module's bytes in 512 KiB chunks
//!   (etcd refuses values past ~1.5 MiB);
//! - `P/migrations/SEQ` and `P/history/APP/INDEX` (`[cpu, memory]`), with
//!   20-digit numbers so that key order is numeric order.
//!
//! Checkpoint *blobs* stay in the data directory of the control plane that
//! received them (etcd is meant for small values): a control plane that
//! takes over asks the nodes of the apps it holds no blob of for a fresh
//! checkpoint at once. An app whose node is lost together with the leader
//! restarts from its module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tern_api::types::MigrationReport;

mod client;

use client::*;
pub use client::{EtcdTls, EtcdUrl};

use super::{decode, Loaded};
use crate::state::{AppRec, CheckpointRec, NodeRec};

/// The layout version of the keys; a prefix written by another layout is
/// refused, never misread.
const SCHEMA: &str = "1";
/// Bytes of a module per etcd value.
const BLOB_CHUNK: usize = 512 << 10;
/// Keys per page when reading a range.
const PAGE: i64 = 256;
/// Largest etcd answer read.
const MAX_ANSWER: u64 = 256 << 20;
/// Operations per transaction (etcd's default limit is 128).
const MAX_OPS: usize = 100;

/// The keys of one cluster.
#[derive(Clone)]
struct Keys(String);

impl Keys {
    fn key(&self, rel: &str) -> Vec<u8> {
        format!("{}/{rel}", self.0).into_bytes()
    }
    fn numbered(&self, dir: &str, n: u64) -> Vec<u8> {
        self.key(&format!("{dir}/{n:020}"))
    }
}

/// The checkpoint records under `url`'s prefix, read without the
/// leadership (a standby mirrors the files they name: `crate::mirror`).
pub fn checkpoint_records(
    url: &EtcdUrl,
) -> anyhow::Result<std::collections::HashMap<String, CheckpointRec>> {
    let etcd = Etcd::new(url, Duration::from_secs(10))?;
    let mut prefix = Keys(url.prefix.clone()).key("checkpoints");
    prefix.push(b'/');
    let mut out = std::collections::HashMap::new();
    for kv in etcd.scan(&prefix)? {
        let app = std::str::from_utf8(kv.key.get(prefix.len()..).unwrap_or_default())
            .map_err(|_| anyhow!("a checkpoint key under {} is not UTF-8", url.prefix))?;
        out.insert(app.to_string(), decode(app, &kv.value)?);
    }
    Ok(out)
}

/// Prepares a prefix for this tern: checks (or writes) its layout version
/// and agrees on the cluster token. With `given`, that token must be the
/// one etcd holds (or becomes it); without, etcd's is used, or `fallback`'s
/// when etcd holds none yet. Returns the token.
pub fn prepare(
    url: &EtcdUrl,
    given: Option<&str>,
    fallback: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let etcd = Etcd::new(url, Duration::from_secs(10))?;
    let keys = Keys(url.prefix.clone());
    let schema_key = keys.key("schema");
    let (_, v) = etcd
        .txn(
            vec![cmp_absent(&schema_key)],
            vec![op_put(&schema_key, SCHEMA.as_bytes())],
            vec![op_get(&schema_key)],
        )
        .with_context(|| format!("cannot use the etcd store {url}: is etcd running there?"))?;
    if let Some(found) = v["responses"][0]["response_range"]["kvs"][0]["value"].as_str() {
        let found = String::from_utf8_lossy(&unb64(&json!(found))?).into_owned();
        if found != SCHEMA {
            bail!("{url} was written with store layout {found}, this tern reads layout {SCHEMA}: use the tern that wrote it, or another prefix (etcd://HOST:PORT/PREFIX)");
        }
    }
    let token_key = keys.key("token");
    let held = etcd.get(&token_key)?;
    let held = held.map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
    match (given, held) {
        (Some(t), Some(h)) if t == h => Ok(h),
        (Some(_), Some(_)) => bail!(
            "{url} holds another cluster token than the one given: give the cluster's token (`--token` or TERN_TOKEN), or start without one to use it"
        ),
        (None, Some(h)) if !h.is_empty() => Ok(h),
        (given, _) => {
            let token = match given {
                Some(t) => t.to_string(),
                None => fallback()?,
            };
            let (won, v) = etcd.txn(
                vec![cmp_absent(&token_key)],
                vec![op_put(&token_key, token.as_bytes())],
                vec![op_get(&token_key)],
            )?;
            if won {
                return Ok(token);
            }
            // Another control plane wrote it first: use that one.
            let kv = &v["responses"][0]["response_range"]["kvs"][0];
            Ok(String::from_utf8_lossy(&unb64(&kv["value"])?)
                .trim()
                .to_string())
        }
    }
}

/// What a control plane learns when it asks for the leadership.
#[allow(clippy::large_enum_variant)] // one per campaign, moved once
pub enum Campaign {
    Won(Leadership),
    /// Another control plane leads, at `leader` (its URL), as of etcd's
    /// `revision`.
    Lost {
        leader: String,
        revision: i64,
    },
}

/// This control plane's leadership: a lease it keeps alive and the
/// revision at which it created the leader key. Every write is conditional
/// on that key (so, on the leadership) being still its own.
pub struct Leadership {
    etcd: Etcd,
    keys: Keys,
    url: EtcdUrl,
    lease: i64,
    revision: i64,
    lost: AtomicBool,
    ttl: Duration,
    /// When the lease was last renewed: past `ttl` without a renewal the
    /// lease may have ended, so the leadership is given up.
    renewed: std::sync::Mutex<std::time::Instant>,
}

impl Leadership {
    /// Asks for the leadership, advertising `me`; the lease lasts `ttl`
    /// without renewal.
    pub fn campaign(url: &EtcdUrl, me: &str, ttl: Duration) -> anyhow::Result<Campaign> {
        let etcd = Etcd::new(url, Duration::from_secs(10))?;
        let keys = Keys(url.prefix.clone());
        let leader = keys.key("leader");
        let lease = etcd.grant(ttl)?;
        let put = json!({"request_put": {"key": b64(&leader), "value": b64(me.as_bytes()), "lease": lease.to_string()}});
        let (won, v) = etcd.txn(vec![cmp_absent(&leader)], vec![put], vec![op_get(&leader)])?;
        if won {
            return Ok(Campaign::Won(Leadership {
                etcd,
                keys,
                url: url.clone(),
                lease,
                revision: int(&v["header"]["revision"]),
                lost: AtomicBool::new(false),
                ttl,
                renewed: std::sync::Mutex::new(std::time::Instant::now()),
            }));
        }
        let _ = etcd.revoke(lease);
        let kv = &v["responses"][0]["response_range"]["kvs"][0];
        Ok(Campaign::Lost {
            leader: String::from_utf8_lossy(&unb64(&kv["value"])?).into_owned(),
            revision: int(&v["header"]["revision"]),
        })
    }

    /// Waits (at most `wait`) until the leader key at `revision` goes.
    pub fn wait_for_vacancy(url: &EtcdUrl, revision: i64, wait: Duration) -> anyhow::Result<()> {
        let etcd = Etcd::new(url, Duration::from_secs(10))?;
        let key = Keys(url.prefix.clone()).key("leader");
        etcd.watch_deletion(&key, revision, wait)
    }

    /// Renews the lease and checks that the leader key is still the one
    /// this control plane created; false once the leadership is lost.
    pub fn keepalive(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        let held = self.etcd.keepalive(self.lease).and_then(|ttl| {
            let key = self.etcd.get(&self.keys.key("leader"))?;
            Ok(ttl > 0 && key.is_some_and(|k| k.create_revision == self.revision))
        });
        let mut renewed = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        match held {
            Ok(true) => {
                *renewed = std::time::Instant::now();
                true
            }
            Ok(false) => {
                self.lost.store(true, Ordering::SeqCst);
                false
            }
            // etcd unreachable: the lease may still run, until its TTL
            // passes without a renewal.
            Err(e) if renewed.elapsed() < self.ttl => {
                tracing::warn!("cannot renew the leadership lease: {e}");
                true
            }
            Err(e) => {
                tracing::warn!("no renewal of the leadership lease for its whole TTL ({e}): giving the leadership up");
                self.lost.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Gives the leadership up at once (a standby takes over without
    /// waiting for the lease to expire).
    pub fn resign(&self) {
        self.lost.store(true, Ordering::SeqCst);
        let _ = self.etcd.revoke(self.lease);
    }

    pub fn url(&self) -> &EtcdUrl {
        &self.url
    }

    /// Applies `ops` if this control plane still leads.
    fn write(&self, ops: Vec<Value>) -> anyhow::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.is_lost() {
            bail!(
                "this control plane no longer leads (etcd {}): it writes nothing",
                self.url
            );
        }
        let fence = cmp_created_at(&self.keys.key("leader"), self.revision);
        let (ok, _) = self.etcd.txn(vec![fence], ops, vec![])?;
        if !ok {
            self.lost.store(true, Ordering::SeqCst);
            bail!(
                "this control plane lost the leadership (etcd {}): another one leads now",
                self.url
            );
        }
        Ok(())
    }

    /// Applies `ops` in transactions of at most [`MAX_OPS`].
    fn write_all(&self, ops: Vec<Value>) -> anyhow::Result<()> {
        let mut ops = ops;
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(MAX_OPS));
            self.write(ops)?;
            ops = rest;
        }
        Ok(())
    }

    // ------------------------------------------------------------ records

    fn suffix<'a>(&self, dir: &str, key: &'a [u8]) -> anyhow::Result<&'a str> {
        let head = self.keys.key(dir).len() + 1;
        std::str::from_utf8(key.get(head..).unwrap_or_default())
            .map_err(|_| anyhow!("a key under {}/{dir} is not UTF-8", self.keys.0))
    }

    fn number(bytes: &[u8], what: &str) -> anyhow::Result<u64> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow!("the store's {what} is not a number"))
    }

    fn dir(&self, dir: &str) -> anyhow::Result<Vec<Kv>> {
        let mut p = self.keys.key(dir);
        p.push(b'/');
        self.etcd.scan(&p)
    }

    pub(super) fn load(&self) -> anyhow::Result<Loaded> {
        let mut out = Loaded::default();
        for kv in self.dir("nodes")? {
            out.nodes
                .push(decode(self.suffix("nodes", &kv.key)?, &kv.value)?);
        }
        for kv in self.dir("apps")? {
            out.apps
                .push(decode(self.suffix("apps", &kv.key)?, &kv.value)?);
        }
        for kv in self.dir("modules")? {
            let sha = self.suffix("modules", &kv.key)?.to_string();
            out.modules
                .insert(sha, Self::number(&kv.value, "module size")?);
        }
        for kv in self.dir("checkpoints")? {
            let app = self.suffix("checkpoints", &kv.key)?;
            out.checkpoints
                .insert(app.to_string(), decode(app, &kv.value)?);
        }
        for kv in self.dir("generations")? {
            let app = self.suffix("generations", &kv.key)?.to_string();
            out.generations
                .insert(app, Self::number(&kv.value, "generation")?);
        }
        for kv in self.dir("migrations")? {
            let seq = Self::number(
                self.suffix("migrations", &kv.key)?.as_bytes(),
                "migration key",
            )?;
            out.migrations.push((seq, decode("migration", &kv.value)?));
        }
        out.credentials = self
            .etcd
            .get(&self.keys.key("credentials"))?
            .map(|kv| kv.value);
        for kv in self.dir("history")? {
            let rest = self.suffix("history", &kv.key)?;
            let (app, idx) = rest
                .rsplit_once('/')
                .ok_or_else(|| anyhow!("a usage sample's key is malformed: {rest}"))?;
            let idx = Self::number(idx.as_bytes(), "sample index")?;
            let (cpu, mem): (u64, u64) = decode("usage sample", &kv.value)?;
            out.history
                .entry(app.to_string())
                .or_default()
                .push((idx, cpu, mem));
        }
        Ok(out)
    }

    pub(super) fn put_credentials(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.write(vec![op_put(&self.keys.key("credentials"), bytes)])
    }

    pub(super) fn put_node(&self, n: &NodeRec) -> anyhow::Result<()> {
        let v = serde_json::to_vec(n)?;
        self.write(vec![op_put(
            &self.keys.key(&format!("nodes/{}", n.info.name)),
            &v,
        )])
    }

    pub(super) fn put_apps(&self, apps: &[&AppRec]) -> anyhow::Result<()> {
        let ops = apps
            .iter()
            .map(|a| {
                Ok(op_put(
                    &self.keys.key(&format!("apps/{}", a.name)),
                    &serde_json::to_vec(a)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.write_all(ops)
    }

    pub(super) fn remove_app(&self, name: &str) -> anyhow::Result<()> {
        let history = self.keys.key(&format!("history/{name}/"));
        self.write(vec![
            op_delete(&self.keys.key(&format!("apps/{name}"))),
            op_delete(&self.keys.key(&format!("checkpoints/{name}"))),
            op_delete_range(&history, &prefix_end(&history)),
        ])
    }

    pub(super) fn put_generation(&self, name: &str, generation: u64) -> anyhow::Result<()> {
        self.write(vec![op_put(
            &self.keys.key(&format!("generations/{name}")),
            generation.to_string().as_bytes(),
        )])
    }

    /// Stores a module's bytes (in chunks), then its record: a module
    /// listed is a module whole.
    pub(super) fn put_module(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<()> {
        for (i, chunk) in bytes.chunks(BLOB_CHUNK).enumerate() {
            let key = self
                .keys
                .numbered(&format!("module-blobs/{sha256}"), i as u64);
            self.write(vec![op_put(&key, chunk)])?;
        }
        self.write(vec![op_put(
            &self.keys.key(&format!("modules/{sha256}")),
            bytes.len().to_string().as_bytes(),
        )])
    }

    /// A module's bytes, as stored by [`Leadership::put_module`].
    pub(super) fn module_bytes(&self, sha256: &str, size: u64) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size as usize);
        for i in 0..(size as usize).div_ceil(BLOB_CHUNK) {
            let key = self
                .keys
                .numbered(&format!("module-blobs/{sha256}"), i as u64);
            let kv = self.etcd.get(&key)?.ok_or_else(|| {
                anyhow!(
                    "module {sha256} is listed in {} but part {i} of it is missing",
                    self.url
                )
            })?;
            out.extend_from_slice(&kv.value);
        }
        Ok(out)
    }

    pub(super) fn put_checkpoint(&self, app: &str, c: &CheckpointRec) -> anyhow::Result<()> {
        let v = serde_json::to_vec(c)?;
        self.write(vec![op_put(
            &self.keys.key(&format!("checkpoints/{app}")),
            &v,
        )])
    }

    pub(super) fn push_migration(
        &self,
        seq: u64,
        report: &MigrationReport,
        keep: usize,
    ) -> anyhow::Result<()> {
        let v = serde_json::to_vec(report)?;
        let mut ops = vec![op_put(&self.keys.numbered("migrations", seq), &v)];
        let cutoff = seq.saturating_add(1).saturating_sub(keep as u64);
        if cutoff > 0 {
            ops.push(op_delete_range(
                &self.keys.numbered("migrations", 0),
                &self.keys.numbered("migrations", cutoff),
            ));
        }
        self.write(ops)
    }

    pub(super) fn push_samples(
        &self,
        samples: &[(String, u64, u64, u64)],
        keep: u64,
    ) -> anyhow::Result<()> {
        let mut ops = Vec::new();
        for (app, idx, cpu, mem) in samples {
            let dir = format!("history/{app}");
            ops.push(op_put(
                &self.keys.numbered(&dir, *idx),
                &serde_json::to_vec(&(cpu, mem))?,
            ));
            let cutoff = idx.saturating_sub(keep);
            if cutoff > 0 {
                ops.push(op_delete_range(
                    &self.keys.numbered(&dir, 0),
                    &self.keys.numbered(&dir, cutoff),
                ));
            }
        }
        self.write_all(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_parsed_or_refused_with_the_form() {
        let u: EtcdUrl = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:2379");
        assert_eq!(u.prefix, "/tern");
        assert_eq!(u.to_string(), "etcd://127.0.0.1:2379/tern");
        let u: EtcdUrl = "etcd://db.local:2379/prod/eu-1/".parse().unwrap();
        assert_eq!(
            (u.endpoint.as_str(), u.prefix.as_str()),
            ("http://db.local:2379", "/prod/eu-1")
        );
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://:2379",
            "http://host:2379",
            "etcd://host:2379/a//b",
            "etcd://host:2379/../x",
            "etcd://host:2379/a b",
        ] {
            let e = bad.parse::<EtcdUrl>().unwrap_err();
            assert!(e.contains("etcd://") || e.contains("prefix"), "{bad}: {e}");
        }
    }

    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/tern/apps/"), b"/tern/apps0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
