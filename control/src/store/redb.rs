//! The embedded backend: `control.redb`, JSON values in redb tables.
//!
//! Writes that only record what a heartbeat reported are not flushed to
//! disk one by one (redb `Durability::None`); one of them every two seconds
//! is, and so is every change an operator or the scheduler made.

// redb's error type is large; its errors are rare and end a request.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tern_api::types::MigrationReport;

use super::{decode, Loaded};
use crate::state::{AppRec, CheckpointRec, NodeRec};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const MODULES: TableDefinition<&str, u64> = TableDefinition::new("modules");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("generations");
const MIGRATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("migrations");
/// (app, sample index) → (cpu milli, memory bytes).
const HISTORY: TableDefinition<(&str, u64), (u64, u64)> = TableDefinition::new("history");
/// The credentials record (`credentials.rs`), under the key `credentials`.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// The layout version of the tables; a store written by another layout is
/// refused, never misread.
const SCHEMA: u64 = 1;
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// The redb database.
pub(super) struct Redb {
    db: Mutex<Option<Database>>,
    last_flush: Mutex<Instant>,
}

impl Redb {
    /// Opens (or creates) `control.redb` in `dir`.
    pub(super) fn open(dir: &Path) -> anyhow::Result<Redb> {
        let path = dir.join("control.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => bail!(
                "{} is in use by another control plane: stop it, or give this one another --data-dir",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot open the control plane's store {}", path.display())),
        };
        // The records hold apps' environment: owner-only, like every file
        // tern writes.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tern_util::FILE_MODE))
                .with_context(|| format!("cannot make {} owner-only", path.display()))?;
        }
        let store = Redb {
            db: Mutex::new(Some(db)),
            last_flush: Mutex::new(Instant::now()),
        };
        let found = store.write(true, |tx| {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            if found.is_none() {
                meta.insert("schema", SCHEMA)?;
            }
            // Create every table, so reads never meet a missing one.
            tx.open_table(NODES)?;
            tx.open_table(APPS)?;
            tx.open_table(MODULES)?;
            tx.open_table(CHECKPOINTS)?;
            tx.open_table(GENERATIONS)?;
            tx.open_table(MIGRATIONS)?;
            tx.open_table(HISTORY)?;
            tx.open_table(SECRETS)?;
            Ok(found)
        })?;
        if let Some(v) = found.filter(|v| *v != SCHEMA) {
            bail!(
                "{} was written with store layout {v}, this tern reads layout {SCHEMA}: use the tern that wrote it, or start over with another --data-dir",
                path.display()
            );
        }
        Ok(store)
    }

    /// Reads every table.
    pub(super) fn load(&self) -> anyhow::Result<Loaded> {
        let guard = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let db = guard.as_ref().context("the store is closed")?;
        let tx = db.begin_read()?;
        let mut out = Loaded::default();
        for row in tx.open_table(NODES)?.iter()? {
            let (k, v) = row?;
            out.nodes.push(decode(k.value(), v.value())?);
        }
        for row in tx.open_table(APPS)?.iter()? {
            let (k, v) = row?;
            out.apps.push(decode(k.value(), v.value())?);
        }
        for row in tx.open_table(MODULES)?.iter()? {
            let (k, v) = row?;
            out.modules.insert(k.value().to_string(), v.value());
        }
        for row in tx.open_table(CHECKPOINTS)?.iter()? {
            let (k, v) = row?;
            out.checkpoints
                .insert(k.value().to_string(), decode(k.value(), v.value())?);
        }
        for row in tx.open_table(GENERATIONS)?.iter()? {
            let (k, v) = row?;
            out.generations.insert(k.value().to_string(), v.value());
        }
        for row in tx.open_table(MIGRATIONS)?.iter()? {
            let (k, v) = row?;
            out.migrations
                .push((k.value(), decode("migration", v.value())?));
        }
        for row in tx.open_table(HISTORY)?.iter()? {
            let (k, v) = row?;
            let (app, idx) = k.value();
            let (cpu, mem) = v.value();
            out.history
                .entry(app.to_string())
                .or_default()
                .push((idx, cpu, mem));
        }
        if let Some(v) = tx.open_table(SECRETS)?.get("credentials")? {
            out.credentials = Some(v.value().to_vec());
        }
        Ok(out)
    }

    pub(super) fn put_credentials(&self, bytes: &[u8]) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(SECRETS)?.insert("credentials", bytes)?;
            Ok(())
        })
    }

    /// Runs `f` in a write transaction; `durable` commits are on disk when
    /// this returns, others at the latest with the next flush.
    fn write<R>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<R, redb::Error>,
    ) -> anyhow::Result<R> {
        let guard = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let db = guard
            .as_ref()
            .context("the control plane is shutting down")?;
        let mut last = self.last_flush.lock().unwrap_or_else(|e| e.into_inner());
        let durable = durable || last.elapsed() >= FLUSH_EVERY;
        let mut tx = db.begin_write()?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        let r = f(&tx)?;
        tx.commit()?;
        if durable {
            *last = Instant::now();
        }
        Ok(r)
    }

    pub(super) fn put_node(&self, n: &NodeRec, durable: bool) -> anyhow::Result<()> {
        let v = serde_json::to_vec(n)?;
        self.write(durable, |tx| {
            tx.open_table(NODES)?
                .insert(n.info.name.as_str(), v.as_slice())?;
            Ok(())
        })
    }

    /// Stores several apps in one transaction.
    pub(super) fn put_apps(&self, apps: &[&AppRec], durable: bool) -> anyhow::Result<()> {
        if apps.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(String, Vec<u8>)> = apps
            .iter()
            .map(|a| Ok((a.name.clone(), serde_json::to_vec(a)?)))
            .collect::<anyhow::Result<_>>()?;
        self.write(durable, |tx| {
            let mut t = tx.open_table(APPS)?;
            for (k, v) in &encoded {
                t.insert(k.as_str(), v.as_slice())?;
            }
            Ok(())
        })
    }

    /// Forgets an app: its row, its checkpoint record, its usage history
    /// (its highest generation stays, to fence copies left on nodes).
    pub(super) fn remove_app(&self, name: &str) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(APPS)?.remove(name)?;
            tx.open_table(CHECKPOINTS)?.remove(name)?;
            tx.open_table(HISTORY)?
                .retain_in((name, 0u64)..=(name, u64::MAX), |_, _| false)?;
            Ok(())
        })
    }

    pub(super) fn put_generation(&self, name: &str, generation: u64) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(GENERATIONS)?.insert(name, generation)?;
            Ok(())
        })
    }

    pub(super) fn put_module(&self, sha256: &str, size: u64) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(MODULES)?.insert(sha256, size)?;
            Ok(())
        })
    }

    pub(super) fn put_checkpoint(&self, app: &str, c: &CheckpointRec) -> anyhow::Result<()> {
        let v = serde_json::to_vec(c)?;
        self.write(true, |tx| {
            tx.open_table(CHECKPOINTS)?.insert(app, v.as_slice())?;
            Ok(())
        })
    }

    /// Appends a migration report and drops the oldest beyond `keep`.
    pub(super) fn push_migration(
        &self,
        seq: u64,
        report: &MigrationReport,
        keep: usize,
    ) -> anyhow::Result<()> {
        let v = serde_json::to_vec(report)?;
        self.write(true, |tx| {
            let mut t = tx.open_table(MIGRATIONS)?;
            t.insert(seq, v.as_slice())?;
            let cutoff = seq.saturating_add(1).saturating_sub(keep as u64);
            if cutoff > 0 {
                t.retain_in(..cutoff, |_, _| false)?;
            }
            Ok(())
        })
    }

    /// Records usage samples `(app, index, cpu milli, memory bytes)` and
    /// drops each app's samples older than `keep` indexes.
    pub(super) fn push_samples(
        &self,
        samples: &[(String, u64, u64, u64)],
        keep: u64,
    ) -> anyhow::Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        self.write(false, |tx| {
            let mut t = tx.open_table(HISTORY)?;
            for (app, idx, cpu, mem) in samples {
                t.insert((app.as_str(), *idx), (*cpu, *mem))?;
                let cutoff = idx.saturating_sub(keep);
                if cutoff > 0 {
                    t.retain_in((app.as_str(), 0u64)..(app.as_str(), cutoff), |_, _| false)?;
                }
            }
            Ok(())
        })
    }

    /// Closes the database (later writes fail); everything written so far is on disk.
    pub(super) fn close(&self) {
        let _ = self.write(true, |_| Ok(()));
        self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
