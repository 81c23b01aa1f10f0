//! How a build script compiles a guest workspace (these examples,
//! `tests/guests/`) for wasm32-wasip1: shared by the `tern` binary's build
//! script (which embeds the examples `tern demo` deploys) and by the test
//! artifacts' (which build every guest for the tests). It is included with
//! `#[path]`; it is not part of the examples' own workspace.
//!
//! The nested cargo runs with the outer build's variables removed, so flags
//! meant for the host (RUSTFLAGS, a coverage wrapper, CARGO_TARGET_DIR, ...)
//! do not leak into the guests, and into one target dir of its own
//! (`<outer target dir>/tern-guests`). The wasm32-wasip1 target is added
//! with rustup when the toolchain lacks it.

#![allow(dead_code)] // each build script uses its part

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TARGET: &str = "wasm32-wasip1";

/// Variables the outer cargo sets (or a user sets for the host build) that
/// must not reach the nested build. `RUSTC` is kept: the nested build uses
/// the compiler whose sysroot `ensure_wasm_target` checked.
pub const STRIP_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_JOBS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_INCREMENTAL",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTDOC",
    "LLVM_PROFILE_FILE",
];

/// Prefixes of such variables (`CARGO_CFG_*`, `CARGO_FEATURE_*`, profile
/// overrides like `CARGO_PROFILE_RELEASE_LTO`, cargo-internal `__CARGO_*`).
pub const STRIP_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_PROFILE_",
    "CARGO_TARGET_",
    "CARGO_BIN_",
    "DEP_",
    "__CARGO",
];

/// One guest program, built by cargo.
pub struct Guest {
    /// Crate directory name, e.g. `counter`.
    pub name: String,
    /// Where the built module lands.
    pub wasm: PathBuf,
}

/// `<outer target dir>/tern-guests`: shared by every profile of the host
/// build, so `cargo build` and `cargo test --release` do not each rebuild
/// the guests. The outer target dir is the ancestor of OUT_DIR that cargo
/// marked with CACHEDIR.TAG; without one, a dir inside OUT_DIR.
pub fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .skip(1)
        .take(6)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(|d| d.join("tern-guests"))
        .unwrap_or_else(|| out_dir.join("tern-guests"))
}

pub fn watch(path: &Path) {
    // A path that does not exist would make cargo rerun this script every time.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Adds the wasm32-wasip1 target to the toolchain of `rustc` if it lacks it.
pub fn ensure_wasm_target(rustc: &Path) {
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTC_WRAPPER")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{} --print sysroot`: {e}", rustc.display()));
    assert!(
        out.status.success(),
        "`{} --print sysroot` failed: {}",
        rustc.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        return;
    }
    // rustup names toolchains after their directory: ~/.rustup/toolchains/<name>.
    let toolchain = sysroot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    println!(
        "cargo:warning=the {TARGET} target is missing from {}: running `rustup target add {TARGET}`",
        sysroot.display()
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    let status = cmd.stdout(Stdio::from(std::io::stderr())).status();
    match status {
        Ok(s) if s.success() => assert!(
            sysroot.join("lib/rustlib").join(TARGET).is_dir(),
            "`rustup target add {TARGET}` succeeded but the Rust toolchain at {} still lacks \
             the target: is RUSTC ({}) a toolchain that rustup does not manage? Install the \
             {TARGET} standard library for it and build again",
            sysroot.display(),
            rustc.display()
        ),
        Ok(s) => panic!(
            "the {TARGET} target is not installed for the Rust toolchain at {} and \
             `rustup target add {TARGET}{}` failed ({s}); install the target by hand \
             and build again",
            sysroot.display(),
            toolchain
                .map(|t| format!(" --toolchain {t}"))
                .unwrap_or_default()
        ),
        Err(e) => panic!(
            "the {TARGET} target is not installed for the Rust toolchain at {} and \
             rustup could not be run ({e}); install the target for this toolchain and build again",
            sysroot.display()
        ),
    }
}

/// The crates of a guest workspace: every directory with a Cargo.toml, a
/// `cdylib` when it has `src/lib.rs` (module `<name>.wasm`, dashes turned
/// into underscores), a command when it has `src/main.rs`.
pub fn members(ws: &Path, release_dir: &Path) -> Vec<Guest> {
    let mut out = Vec::new();
    let entries = fs::read_dir(ws).unwrap_or_else(|e| panic!("cannot read {}: {e}", ws.display()));
    for entry in entries {
        let dir = entry.expect("dir entry").path();
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .expect("crate dir name")
            .to_string_lossy()
            .into_owned();
        let file = if dir.join("src/lib.rs").is_file() {
            format!("{}.wasm", name.replace('-', "_"))
        } else if dir.join("src/main.rs").is_file() {
            format!("{name}.wasm")
        } else {
            continue;
        };
        out.push(Guest {
            name,
            wasm: release_dir.join(file),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn build_workspace(cargo: &Path, ws: &Path, target_dir: &Path, jobs: Option<&str>) {
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(ws.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if let Some(j) = jobs {
        cmd.arg("--jobs").arg(j);
    }
    // cargo reads config (.cargo/config.toml) from the current dir up.
    cmd.current_dir(ws);
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if STRIP_VARS.contains(&k.as_ref()) || STRIP_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    // stdout is this script's channel to cargo: keep the nested build's
    // chatter on stderr, which cargo shows when the build fails.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {} to build {}: {e}",
            cargo.display(),
            ws.display()
        )
    });
    if !status.success() {
        panic!(
            "building the {TARGET} guests in {} failed ({status}); the compiler's output is above. \
             To reproduce: cd {} && cargo build --release --target {TARGET}",
            ws.display(),
            ws.display()
        );
    }
}
