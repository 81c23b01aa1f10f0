//! The control plane's state: records in a store, blobs beside it in the
//! data directory (`modules/SHA256.wasm`, `checkpoints/NAME@DIGEST.snap`,
//! each written to a temporary name and renamed). A checkpoint file is
//! named by its digest and never written again, so a record names exactly
//! one content; files no record names are removed when the records are
//! loaded.
//!
//! Two backends keep the records: `redb` (embedded, one control plane: the
//! default) and `etcd` (shared by several control planes, one of which
//! leads; see `etcd`). Both hold the same records and are checked by the
//! same tests.

mod etcd;
mod redb;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tern_api::types::MigrationReport;

pub use etcd::{
    checkpoint_records, prepare as prepare_etcd, Campaign, EtcdTls, EtcdUrl, Leadership,
};

use crate::state::{AppRec, CheckpointRec, NodeRec};

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
    /// The credentials record (`credentials.rs`) as JSON, if written yet.
    pub credentials: Option<Vec<u8>>,
}

enum Backend {
    Redb(redb::Redb),
    Etcd(Arc<Leadership>),
}

/// The records and the directory of blobs beside them.
pub struct Store {
    dir: PathBuf,
    backend: Backend,
}

/// The data directory and its blob directories, owner-only (checkpoints
/// hold apps' memory, the store their environment).
fn blob_dirs(dir: &Path) -> anyhow::Result<()> {
    for d in [
        dir.to_path_buf(),
        dir.join("modules"),
        dir.join("checkpoints"),
    ] {
        tern_util::create_private_dir(&d)
            .with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// `NAME@DIGEST.snap`, or `NAME.snap` for a record without a digest.
pub fn checkpoint_file_name(app: &str, digest: Option<&str>) -> String {
    match digest {
        Some(d) => format!("{app}@{d}.snap"),
        None => format!("{app}.snap"),
    }
}

/// The name of app `app`'s pin of checkpoint `digest` (`ops::pinned`): a
/// hard link to the file a node reads by ranges while it restores lazily.
pub fn pin_file_name(app: &str, digest: &str) -> String {
    format!("{app}.{digest}.pinned")
}

/// A checkpoint digest as records and restores carry it: xxh3-128, 32
/// lowercase hex digits (it becomes part of a file name).
pub fn valid_digest(d: &str) -> bool {
    d.len() == 32 && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The digest a checkpoint's bytes are named by.
pub fn checkpoint_digest(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

impl Store {
    /// Opens (or creates) the embedded store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        blob_dirs(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            backend: Backend::Redb(redb::Redb::open(dir)?),
        })
    }

    /// The records in etcd, written under `leadership`; blobs in `dir`.
    pub fn etcd(dir: &Path, leadership: Arc<Leadership>) -> anyhow::Result<Store> {
        blob_dirs(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            backend: Backend::Etcd(leadership),
        })
    }

    pub fn module_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{sha256}.wasm"))
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The file of the app's checkpoint `digest` (see [`CheckpointRec`]);
    /// `None`: the file of a record written before digests were kept.
    /// `@` is in no app name, so no two apps' files can share a name.
    pub fn checkpoint_path(&self, app: &str, digest: Option<&str>) -> PathBuf {
        self.checkpoints_dir()
            .join(checkpoint_file_name(app, digest))
    }

    /// Whether the file `rec` names is in this control plane's directory.
    fn holds_checkpoint(&self, app: &str, rec: &CheckpointRec) -> bool {
        let digest = rec.digest.as_deref();
        digest.is_none_or(valid_digest)
            && std::fs::metadata(self.checkpoint_path(app, digest))
                .is_ok_and(|m| m.is_file() && m.len() == rec.bytes)
    }

    /// Removes from the checkpoints directory what no record in `kept`
    /// names: files of older checkpoints (another control plane received
    /// the newer ones, or a write was cut short), temporary files, and
    /// pins of other checkpoints than an app's latest. A pin of the latest
    /// stays: a node restarting the app lazily from it goes on reading it
    /// across a restart of this process (it would otherwise find it gone
    /// and fail the app).
    fn sweep_checkpoints(&self, kept: &HashMap<String, CheckpointRec>) {
        let wanted: std::collections::HashSet<String> = kept
            .iter()
            .flat_map(|(app, c)| {
                let pin = c.digest.as_deref().map(|d| pin_file_name(app, d));
                std::iter::once(checkpoint_file_name(app, c.digest.as_deref())).chain(pin)
            })
            .collect();
        let Ok(entries) = std::fs::read_dir(self.checkpoints_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(f) = file.to_str() else { continue };
            let stale = ((f.ends_with(".snap") || f.ends_with(".pinned")) && !wanted.contains(f))
                || (f.starts_with('.') && f.ends_with(".tmp"))
                || f.ends_with(".pinning");
            if stale && e.file_type().is_ok_and(|t| t.is_file()) {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %f, "removed a checkpoint file no record names")
                    }
                    Err(err) => {
                        tracing::warn!(file = %f, "cannot remove a stale checkpoint file: {err}")
                    }
                }
            }
        }
    }

    /// A module's bytes: from the data directory, or (etcd) from the store,
    /// kept in the data directory from then on. `size` is its recorded size.
    pub fn module_bytes(&self, sha256: &str, size: u64) -> anyhow::Result<Vec<u8>> {
        let path = self.module_path(sha256);
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) => match &self.backend {
                Backend::Redb(_) => Err(e).with_context(|| {
                    format!(
                        "module {sha256} is missing from {}; upload it again (`tern deploy` does)",
                        path.display()
                    )
                }),
                Backend::Etcd(l) => {
                    let bytes = l.module_bytes(sha256, size)?;
                    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
                    if actual != sha256 {
                        anyhow::bail!("module {sha256} in {} is damaged (its bytes hash to {actual}): upload it again", l.url());
                    }
                    write_atomic(&path, &bytes)
                        .with_context(|| format!("cannot keep module {sha256}"))?;
                    Ok(bytes)
                }
            },
        }
    }

    /// Reads every record. Checkpoint records whose file is not in this
    /// control plane's directory are left out (with etcd, another control
    /// plane received that checkpoint; the app's node is asked for a new
    /// one), and checkpoint files no record names are removed.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let mut loaded = match &self.backend {
            Backend::Redb(db) => db.load()?,
            Backend::Etcd(l) => l.load()?,
        };
        loaded.checkpoints.retain(|app, c| {
            let here = self.holds_checkpoint(app, c);
            if !here {
                tracing::warn!(%app, generation = c.generation, "its latest checkpoint is not on this control plane's disk (another one received it); waiting for the next one");
            }
            here
        });
        self.sweep_checkpoints(&loaded.checkpoints);
        Ok(loaded)
    }

    /// `durable`: on disk when this returns (redb; etcd always is).
    pub fn put_node(&self, n: &NodeRec, durable: bool) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_node(n, durable),
            Backend::Etcd(l) => l.put_node(n),
        }
    }

    /// Stores several apps (in one transaction where the backend can).
    pub fn put_apps(&self, apps: &[&AppRec], durable: bool) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_apps(apps, durable),
            Backend::Etcd(l) => l.put_apps(apps),
        }
    }

    pub fn put_app(&self, a: &AppRec) -> anyhow::Result<()> {
        self.put_apps(&[a], true)
    }

    /// Forgets an app: its row, its checkpoint record, its usage history
    /// (its highest generation stays, to fence copies left on nodes).
    pub fn remove_app(&self, name: &str) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.remove_app(name),
            Backend::Etcd(l) => l.remove_app(name),
        }
    }

    pub fn put_generation(&self, name: &str, generation: u64) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_generation(name, generation),
            Backend::Etcd(l) => l.put_generation(name, generation),
        }
    }

    /// Records a module whose bytes are already at [`Store::module_path`].
    pub fn put_module(&self, sha256: &str, size: u64) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_module(sha256, size),
            Backend::Etcd(l) => {
                let bytes = std::fs::read(self.module_path(sha256))
                    .with_context(|| format!("cannot read module {sha256} back"))?;
                l.put_module(sha256, &bytes)
            }
        }
    }

    /// Replaces the credentials record (always durable).
    pub fn put_credentials(&self, bytes: &[u8]) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_credentials(bytes),
            Backend::Etcd(l) => l.put_credentials(bytes),
        }
    }

    pub fn put_checkpoint(&self, app: &str, c: &CheckpointRec) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.put_checkpoint(app, c),
            Backend::Etcd(l) => l.put_checkpoint(app, c),
        }
    }

    /// Appends a migration report and drops the oldest beyond `keep`.
    pub fn push_migration(
        &self,
        seq: u64,
        report: &MigrationReport,
        keep: usize,
    ) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.push_migration(seq, report, keep),
            Backend::Etcd(l) => l.push_migration(seq, report, keep),
        }
    }

    /// Records usage samples `(app, index, cpu milli, memory bytes)` and
    /// drops each app's samples older than `keep` indexes.
    pub fn push_samples(
        &self,
        samples: &[(String, u64, u64, u64)],
        keep: u64,
    ) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Redb(db) => db.push_samples(samples, keep),
            Backend::Etcd(l) => l.push_samples(samples, keep),
        }
    }

    /// Closes the store: later writes fail; everything written so far is
    /// on disk (redb), and the leadership is given up (etcd).
    pub fn close(&self) {
        match &self.backend {
            Backend::Redb(db) => db.close(),
            Backend::Etcd(l) => l.resign(),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("the store's record for {what} is unreadable"))
}

pub use tern_util::write_atomic;

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
            let digest = checkpoint_digest(b"0123456789");
            write_atomic(&s.checkpoint_path("a", Some(&digest)), b"0123456789").unwrap();
            s.put_checkpoint(
                "a",
                &CheckpointRec {
                    generation: 3,
                    bytes: 10,
                    unix_ms: 5,
                    digest: Some(digest),
                    foreign: false,
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

    /// A record is loaded only with the very file it names; every other
    /// file in the checkpoints directory goes.
    #[test]
    fn a_checkpoint_record_needs_the_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let rec = |bytes: &[u8], digest: Option<String>| CheckpointRec {
            generation: 1,
            bytes: bytes.len() as u64,
            unix_ms: 1,
            digest,
            foreign: false,
        };
        let (newer, older) = (b"newer state".as_slice(), b"older state".as_slice());
        // (app, bytes recorded, bytes on disk, file named by, loaded):
        // `here`: its file is here. `elsewhere`: the record names a newer
        // checkpoint another control plane received; this one holds only
        // an older file of it. `short`: its file lost bytes.
        type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8], bool);
        let cases: [Case; 3] = [
            ("here", newer, newer, newer, true),
            ("elsewhere", newer, older, older, false),
            ("short", newer, b"newer", newer, false),
        ];
        for (app, recorded, on_disk, named_by, _) in cases {
            let d = checkpoint_digest(recorded);
            let file = checkpoint_digest(named_by);
            write_atomic(&s.checkpoint_path(app, Some(&file)), on_disk).unwrap();
            s.put_checkpoint(app, &rec(recorded, Some(d))).unwrap();
        }
        // A record from before digests names `NAME.snap`; a record whose
        // digest is not one is never made a path.
        write_atomic(&s.checkpoint_path("old-style", None), older).unwrap();
        s.put_checkpoint("old-style", &rec(older, None)).unwrap();
        s.put_checkpoint("bad", &rec(older, Some("../../x".into())))
            .unwrap();
        // The pin of `here`'s latest checkpoint (a node may be reading it)
        // stays; a pin of any other does not.
        let here = checkpoint_digest(newer);
        std::fs::hard_link(
            s.checkpoint_path("here", Some(&here)),
            s.checkpoints_dir().join(pin_file_name("here", &here)),
        )
        .unwrap();
        let stray = [
            ".counter@x.snap.1.tmp",
            "counter.0123.pinned",
            &pin_file_name("here", &checkpoint_digest(older)),
            "here.pinning",
            "gone@ab.snap",
        ];
        for f in stray {
            std::fs::write(s.checkpoints_dir().join(f), b"x").unwrap();
        }
        s.close();

        let s = Store::open(dir.path()).unwrap();
        let l = s.load().unwrap();
        for (app, _, _, _, kept) in cases {
            assert_eq!(l.checkpoints.contains_key(app), kept, "{app}");
        }
        assert!(l.checkpoints.contains_key("old-style"));
        assert!(!l.checkpoints.contains_key("bad"));
        let mut left: Vec<String> = std::fs::read_dir(s.checkpoints_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!("here@{here}.snap"),
            pin_file_name("here", &here),
            "old-style.snap".to_string(),
        ];
        want.sort();
        assert_eq!(left, want, "only the files a loaded record names stay");
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
