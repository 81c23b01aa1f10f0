//! Full disks: each node's data directory on a small filesystem of its own
//! (a tmpfs, in a mount namespace the soak makes for itself and its
//! children, so no mount outlives the soak), which the `full_disk` fault
//! fills for a while: checkpoints, fencing records and incoming moves then
//! meet ENOSPC as on a real full disk. Needs the right to mount (root);
//! without it the soak says so and leaves that fault out.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The size of each node's filesystem: room for its modules, compiled
/// code and the ledgers' checkpoints many times over.
const DISK_BYTES: u64 = 256 << 20;

/// Moves this process into a mount namespace of its own, where mounts are
/// private: what the soak mounts is seen by it and its children only, and
/// goes away with them. Call before any thread starts. `Err`: why not.
pub fn private_mounts() -> Result<(), String> {
    // SAFETY: unshare and mount take no Rust-owned memory; the strings are
    // NUL-terminated literals.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!(
                "cannot make a mount namespace ({}): run as root",
                std::io::Error::last_os_error()
            ));
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!(
                "cannot make mounts private ({})",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte")
}

/// Mounts a filesystem of [`DISK_BYTES`] at `dir` (created if missing).
pub fn small_disk(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = c_path(dir)?;
    let opts = CString::new(format!("size={DISK_BYTES},mode=0700")).expect("no NUL");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            c"tern-soak".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if r != 0 {
        bail!(
            "cannot mount a small filesystem at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Unmounts what [`small_disk`] mounted (lazily: a process may still hold it).
pub fn unmount(dir: &Path) {
    if let Ok(target) = c_path(dir) {
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the filesystem holding `dir` until it is full; the filler's path,
/// to remove when the fault ends.
pub fn fill(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join(".soak-full-disk");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
    }
    // The last, partial pages too.
    for size in [4096usize, 512, 1] {
        while f.write(&chunk[..size]).is_ok_and(|n| n > 0) {}
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_leaves_no_room_and_its_removal_gives_it_back() {
        // Within a tmpfs of our own when this process may mount; else a
        // temporary directory is no place to fill, and there is nothing to test.
        if private_mounts().is_err() {
            eprintln!("skipped: no right to mount here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        small_disk(dir.path()).unwrap();
        let filler = fill(dir.path()).unwrap();
        let err = std::fs::write(dir.path().join("checkpoint"), [1u8; 8192]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        std::fs::remove_file(filler).unwrap();
        std::fs::write(dir.path().join("checkpoint"), [1u8; 8192]).unwrap();
        unmount(dir.path());
    }
}
