//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_runtime::{
    AppConfig, Instance, RestoreOptions, Runtime, RuntimeConfig, Snapshot, SnapshotOptions, Val,
};

/// A runtime with its own engine and no disk cache, as a fresh node would have.
pub fn fresh_runtime() -> Arc<Runtime> {
    Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime")
}

/// Path of a WAT guest in tests/guests/wat.
pub fn wat(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guests/wat")
        .join(name)
}

/// A digest of an instance's whole state (memories, globals, tables), taken
/// through a capture; the clock and call counter are left out.
pub fn state_digest(inst: &mut Instance) -> u128 {
    let snap = inst
        .snapshot(SnapshotOptions {
            embed_module: false,
            compress: false,
            hooks: false,
        })
        .expect("snapshot for digest");
    digest_of(&snap)
}

pub fn digest_of(snap: &Snapshot) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let b = &snap.body;
    h.update(&postcard::to_stdvec(&b.globals).unwrap());
    h.update(&postcard::to_stdvec(&b.tables).unwrap());
    for m in &b.memories {
        h.update(&m.byte_size.to_le_bytes());
        for r in &m.runs {
            h.update(&r.first_page.to_le_bytes());
            h.update(&snap.run_data(r).unwrap());
        }
    }
    h.digest128()
}

/// How a test restores: from bytes (copying) or from a file (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    BytesCopy,
    FileCow,
    FileCopy,
    Compressed,
}

/// Snapshots `inst`, moves the snapshot through `via` into a fresh runtime,
/// and restores it there.
pub fn move_instance(inst: &mut Instance, via: Via, dir: &Path) -> Instance {
    let compress = via == Via::Compressed;
    let snap = inst
        .snapshot(SnapshotOptions {
            embed_module: true,
            compress,
            hooks: true,
        })
        .expect("snapshot");
    let rt = fresh_runtime();
    let (snap, cow) = match via {
        Via::BytesCopy | Via::Compressed => (
            Snapshot::from_bytes(snap.as_bytes().to_vec()).expect("decode"),
            false,
        ),
        Via::FileCow | Via::FileCopy => {
            let path = dir.join(format!("s-{}.snap", rand_suffix()));
            snap.write_file(&path).expect("write snapshot");
            (
                Snapshot::open(&path, true).expect("open snapshot"),
                via == Via::FileCow,
            )
        }
    };
    Instance::restore(
        &rt,
        &snap,
        None,
        RestoreOptions {
            copy_on_write: cow,
            hooks: true,
            ..Default::default()
        },
    )
    .expect("restore")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Starts a module afresh with nothing granted.
pub fn start(rt: &Arc<Runtime>, path: &Path) -> Instance {
    let m = rt
        .load_file(path)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    Instance::start(
        rt,
        &m,
        AppConfig {
            random_seed: Some(7),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("start {}: {e}", path.display()))
}

/// Renders results for comparison.
pub fn show(vals: &[Val]) -> String {
    vals.iter()
        .map(tern_runtime::values::to_text)
        .collect::<Vec<_>>()
        .join(" ")
}
