//! An app's own directory travels with it. A node gives each app a
//! directory of its own (the guest sees it as `/data`); its regular files go
//! into every snapshot of the app (the `files` of the snapshot body, paths
//! relative to the directory, sorted) and are written back on whatever node
//! restores it, which then holds exactly those files. Directories given with
//! `tern run --dir` are the user's own and never travel.
//!
//! Bounded: at most [`MAX_FILES`] files and [`MAX_BYTES`] bytes; beyond
//! that a capture fails with a clear error (moving more data than memory
//! through a snapshot is not what snapshots are for). Symbolic links and
//! special files are not carried; empty directories are not kept.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Most bytes an app's directory may hold to be carried.
pub const MAX_BYTES: u64 = 64 << 20;
/// Most files an app's directory may hold to be carried.
pub const MAX_FILES: usize = 10_000;

/// The regular files under `dir`, as (relative path with `/`, contents),
/// sorted by path. A missing directory holds nothing.
pub fn read_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    if dir.exists() {
        walk(dir, dir, &mut out, &mut total)?;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>, total: &mut u64) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::Other(format!(
            "cannot list the app's directory {}: {e}",
            dir.display()
        ))
    })?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::Other(format!("cannot list {}: {e}", dir.display())))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| Error::Other(format!("cannot inspect {}: {e}", path.display())))?;
        if kind.is_dir() {
            walk(root, &path, out, total)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("walked from root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::Other(format!("cannot read {}: {e}", path.display())))?;
            *total += bytes.len() as u64;
            if out.len() >= MAX_FILES || *total > MAX_BYTES {
                return Err(Error::NotMigratable(format!(
                    "the app's directory holds more than {MAX_FILES} files or {} MiB: \
                     keep less in /data, or keep it outside the app",
                    MAX_BYTES >> 20
                )));
            }
            out.push((rel, bytes));
        }
    }
    Ok(())
}

/// A carried path as a relative path made of plain names only; `None` for
/// anything that could reach outside the directory.
fn safe_relative(p: &str) -> Option<PathBuf> {
    if p.is_empty() || p.contains('\0') {
        return None;
    }
    let path = Path::new(p);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Makes `dir` hold exactly `files`: checks every path first (a snapshot
/// from elsewhere may be hostile), then empties the directory and writes
/// them.
pub fn write_files<B: AsRef<[u8]>>(dir: &Path, files: &[(String, B)]) -> Result<()> {
    let mut checked = Vec::with_capacity(files.len());
    for (p, bytes) in files {
        let rel = safe_relative(p).ok_or_else(|| {
            Error::Other(format!("the snapshot carries a file with a bad path `{p}`"))
        })?;
        checked.push((rel, bytes.as_ref()));
    }
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::Other(format!("cannot {what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
        let entry = entry.map_err(|e| io("list", dir, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| io("remove", &path, e))?;
    }
    for (rel, bytes) in checked {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| io("write", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_round_trips_and_is_replaced() {
        let a = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("sub/deeper")).unwrap();
        std::fs::write(a.path().join("top.txt"), b"top").unwrap();
        std::fs::write(a.path().join("sub/deeper/x.bin"), [0u8, 1, 2]).unwrap();
        let files = read_files(a.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["sub/deeper/x.bin", "top.txt"]);

        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("stale"), b"old").unwrap();
        std::fs::create_dir_all(b.path().join("old-dir")).unwrap();
        write_files(b.path(), &files).unwrap();
        assert_eq!(read_files(b.path()).unwrap(), files);
        assert!(!b.path().join("stale").exists() && !b.path().join("old-dir").exists());
    }

    #[test]
    fn paths_that_leave_the_directory_are_refused_before_anything_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("keep"), b"k").unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./", "a/\0b"] {
            let files = vec![
                ("ok".to_string(), b"1".to_vec()),
                (bad.to_string(), b"2".to_vec()),
            ];
            assert!(write_files(d.path(), &files).is_err(), "{bad:?}");
            assert!(
                d.path().join("keep").exists(),
                "{bad:?} emptied the directory"
            );
        }
    }

    #[test]
    fn too_much_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(d.path().join("big")).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        assert!(matches!(read_files(d.path()), Err(Error::NotMigratable(_))));
    }
}
