//! The control plane's state on disk: `control.redb` (JSON values in redb
//! tables) and the blobs beside it, `modules/SHA256.wasm` and
//! `checkpoints/NAME.snap`, each written to a temporary name and renamed.
//!
//! Writes that only record what a heartbeat reported are not flushed to
//! disk one by one (redb `Durability::None`); one of them every two seconds
//! is, and so is every change an operator or the scheduler made.

// redb's error type is large; its errors are rare and end a request.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tern_api::types::MigrationReport;

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

/// The layout version of the tables; a store written by another layout is
/// refused, never misread.
const SCHEMA: u64 = 1;
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// What a store holds, read once at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub nodes: Vec<NodeRec>,
    pub apps: Vec<AppRec>,
    pub modules: HashMap<String, u64>,
    pub checkpoints: HashMap<String, CheckpointRec>,
    pub generations: HashMap<String, u64>,
    /// (sequence, report), oldest first.
    pub migrations: Vec<(u64, MigrationReport)>,
    /// Per app: (sample index, cpu milli, memory bytes), oldest first.
    pub history: BTreeMap<String, Vec<(u64, u64, u64)>>,
}

/// The redb database and the directory around it.
pub struct Store {
    dir: PathBuf,
    db: Mutex<Option<Database>>,
    last_flush: Mutex<Instant>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        for sub in ["modules", "checkpoints"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let path = dir.join("control.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => bail!(
                "{} is in use by another control plane: stop it, or give this one another --data-dir",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot open the control plane's store {}", path.display())),
        };
        let store = Store {
            dir: dir.to_path_buf(),
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

    pub fn module_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{sha256}.wasm"))
    }

    pub fn checkpoint_path(&self, app: &str) -> PathBuf {
        self.dir.join("checkpoints").join(format!("{app}.snap"))
    }

    /// Reads every table.
    pub fn load(&self) -> anyhow::Result<Loaded> {
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
        Ok(out)
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

    pub fn put_node(&self, n: &NodeRec, durable: bool) -> anyhow::Result<()> {
        let v = serde_json::to_vec(n)?;
        self.write(durable, |tx| {
            tx.open_table(NODES)?
                .insert(n.info.name.as_str(), v.as_slice())?;
            Ok(())
        })
    }

    /// Stores several apps in one transaction.
    pub fn put_apps(&self, apps: &[&AppRec], durable: bool) -> anyhow::Result<()> {
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

    pub fn put_app(&self, a: &AppRec) -> anyhow::Result<()> {
        self.put_apps(&[a], true)
    }

    /// Forgets an app: its row, its checkpoint record, its usage history
    /// (its highest generation stays, to fence copies left on nodes).
    pub fn remove_app(&self, name: &str) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(APPS)?.remove(name)?;
            tx.open_table(CHECKPOINTS)?.remove(name)?;
            tx.open_table(HISTORY)?
                .retain_in((name, 0u64)..=(name, u64::MAX), |_, _| false)?;
            Ok(())
        })
    }

    pub fn put_generation(&self, name: &str, generation: u64) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(GENERATIONS)?.insert(name, generation)?;
            Ok(())
        })
    }

    pub fn put_module(&self, sha256: &str, size: u64) -> anyhow::Result<()> {
        self.write(true, |tx| {
            tx.open_table(MODULES)?.insert(sha256, size)?;
            Ok(())
        })
    }

    pub fn put_checkpoint(&self, app: &str, c: &CheckpointRec) -> anyhow::Result<()> {
        let v = serde_json::to_vec(c)?;
        self.write(true, |tx| {
            tx.open_table(CHECKPOINTS)?.insert(app, v.as_slice())?;
            Ok(())
        })
    }

    /// Appends a migration report and drops the oldest beyond `keep`.
    pub fn push_migration(
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
    pub fn push_samples(
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
    pub fn close(&self) {
        let _ = self.write(true, |_| Ok(()));
        self.db.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("the store's record for {what} is unreadable"))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut suffix = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut suffix);
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, generation: u64) -> AppRec {
        AppRec {
            name: name.into(),
            module_sha256: "ab".repeat(32),
            node: Some("node-1".into()),
            generation,
            state: "running".into(),
            ..AppRec::default()
        }
    }

    #[test]
    fn every_table_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let mut n = NodeRec::default();
            n.info.name = "node-1".into();
            n.info.url = "http://127.0.0.1:1".into();
            n.draining = true;
            s.put_node(&n, true).unwrap();
            s.put_apps(&[&app("a", 3), &app("b", 1)], false).unwrap();
            s.put_generation("a", 3).unwrap();
            s.put_generation("gone", 7).unwrap();
            s.put_module(&"ab".repeat(32), 123).unwrap();
            s.put_checkpoint(
                "a",
                &CheckpointRec {
                    generation: 3,
                    bytes: 10,
                    unix_ms: 5,
                },
            )
            .unwrap();
            for seq in 0..5 {
                let r = MigrationReport {
                    app: format!("m{seq}"),
                    ..MigrationReport::default()
                };
                s.push_migration(seq, &r, 3).unwrap();
            }
            let samples: Vec<_> = (0..10)
                .map(|i| ("a".to_string(), i, i * 10, 1 << 20))
                .collect();
            s.push_samples(&samples, 4).unwrap();
            s.push_samples(&[("b".into(), 1, 1, 1)], 4).unwrap();
            s.close();
        }
        let s = Store::open(dir.path()).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.nodes.len(), 1);
        assert!(l.nodes[0].draining);
        let mut names: Vec<_> = l
            .apps
            .iter()
            .map(|a| (a.name.as_str(), a.generation))
            .collect();
        names.sort();
        assert_eq!(names, [("a", 3), ("b", 1)]);
        assert_eq!(l.generations.get("gone"), Some(&7));
        assert_eq!(l.modules.get(&"ab".repeat(32)), Some(&123));
        assert_eq!(l.checkpoints["a"].generation, 3);
        // Bounded: the newest three migrations, oldest first.
        let kept: Vec<_> = l.migrations.iter().map(|(_, r)| r.app.as_str()).collect();
        assert_eq!(kept, ["m2", "m3", "m4"]);
        // Bounded per app: the last `keep` indexes before the newest and the newest.
        let idx: Vec<u64> = l.history["a"].iter().map(|s| s.0).collect();
        assert_eq!(idx, [5, 6, 7, 8, 9]);
        assert_eq!(l.history["b"], [(1, 1, 1)]);

        s.remove_app("a").unwrap();
        let l = s.load().unwrap();
        assert!(l.apps.iter().all(|a| a.name != "a"));
        assert!(!l.checkpoints.contains_key("a"));
        assert!(!l.history.contains_key("a"));
        assert_eq!(
            l.generations.get("a"),
            Some(&3),
            "generations outlive the app (fencing)"
        );
    }

    #[test]
    fn a_second_opener_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(
            e.to_string().contains("in use by another control plane"),
            "{e}"
        );
    }

    #[test]
    fn atomic_writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.snap");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
