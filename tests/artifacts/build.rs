//! Builds tern's guest programs for wasm32-wasip1 and writes
//! `$OUT_DIR/artifacts.rs`, which says where they are.
//!
//! Two cargo workspaces of their own are built, in release mode, into one
//! target dir of their own (`<outer target dir>/tern-guests`):
//! `examples/` (the example apps) and `tests/guests/` (test guests). The
//! nested cargo runs with the outer build's variables removed, so flags meant
//! for the host (RUSTFLAGS, a coverage wrapper, CARGO_TARGET_DIR, ...) do not
//! leak into the guests. The wasm32-wasip1 target is added with rustup when
//! the toolchain lacks it. Same pattern as wasmtime's
//! `crates/test-programs/artifacts/build.rs`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip1";

/// Variables the outer cargo sets (or a user sets for the host build) that
/// must not reach the nested build. `RUSTC` is kept: the nested build uses
/// the compiler whose sysroot `ensure_wasm_target` checked.
const STRIP_VARS: &[&str] = &[
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
const STRIP_PREFIXES: &[&str] = &[
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
struct Guest {
    /// Crate directory name, e.g. `counter`.
    name: String,
    /// Where the built module lands.
    wasm: PathBuf,
}

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("repository root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let jobs = env::var("NUM_JOBS").ok();

    let guest_target_dir = guest_target_dir(&out_dir);
    ensure_wasm_target(Path::new(&rustc));

    let sdk = root.join("sdk");
    let examples_ws = root.join("examples");
    let guests_ws = root.join("tests/guests");
    let wat_dir = guests_ws.join("wat");

    // Sources only, not the built modules: they are written while this script
    // runs, so cargo would find them newer than its run and run it again.
    println!("cargo:rerun-if-changed=build.rs");
    watch(&sdk.join("Cargo.toml"));
    watch(&sdk.join("src"));
    watch(&wat_dir);

    let release_dir = guest_target_dir.join(TARGET).join("release");
    let mut built = Vec::new();
    for ws in [&examples_ws, &guests_ws] {
        let members = members(ws, &release_dir);
        watch(&ws.join("Cargo.toml"));
        watch(&ws.join("Cargo.lock"));
        watch(&ws.join(".cargo"));
        for m in &members {
            watch(&ws.join(&m.name).join("Cargo.toml"));
            watch(&ws.join(&m.name).join("src"));
        }
        build_workspace(Path::new(&cargo), ws, &guest_target_dir, jobs.as_deref());
        for m in &members {
            if !m.wasm.is_file() {
                panic!(
                    "{} was built but {} does not exist: is `{}` listed in the workspace's members?",
                    ws.display(),
                    m.wasm.display(),
                    m.name
                );
            }
        }
        built.push(members);
    }

    let wats = wat_files(&wat_dir);
    let code = generate(&built[0], &built[1], &wat_dir, &wats);
    fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

/// `<outer target dir>/tern-guests`: shared by every profile of the host
/// build, so `cargo build` and `cargo test --release` do not each rebuild
/// the guests. The outer target dir is the ancestor of OUT_DIR that cargo
/// marked with CACHEDIR.TAG; without one, a dir inside OUT_DIR.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .skip(1)
        .take(6)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(|d| d.join("tern-guests"))
        .unwrap_or_else(|| out_dir.join("tern-guests"))
}

fn watch(path: &Path) {
    // A path that does not exist would make cargo rerun this script every time.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Adds the wasm32-wasip1 target to the toolchain of `rustc` if it lacks it.
fn ensure_wasm_target(rustc: &Path) {
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
fn members(ws: &Path, release_dir: &Path) -> Vec<Guest> {
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

fn build_workspace(cargo: &Path, ws: &Path, target_dir: &Path, jobs: Option<&str>) {
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

fn wat_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
        .map(|p| {
            (
                p.file_stem().expect("stem").to_string_lossy().into_owned(),
                p,
            )
        })
        .collect();
    out.sort();
    out
}

fn const_name(name: &str) -> String {
    name.to_uppercase().replace('-', "_")
}

fn generate(
    examples: &[Guest],
    guests: &[Guest],
    wat_dir: &Path,
    wats: &[(String, PathBuf)],
) -> String {
    let mut s = String::from("// @generated by tests/artifacts/build.rs\n\n");
    for (kind, list) in [("example app", examples), ("test guest", guests)] {
        for g in list {
            let dir = if kind == "example app" {
                "examples"
            } else {
                "tests/guests"
            };
            writeln!(
                s,
                "/// The `{}` {kind} ({dir}/{}), built for {TARGET}.\npub const {}: &str = {:?};",
                g.name,
                g.name,
                const_name(&g.name),
                g.wasm.display().to_string()
            )
            .unwrap();
        }
    }
    for (name, path) in wats {
        writeln!(
            s,
            "/// tests/guests/wat/{name}.wat (WAT text: the runtime compiles it).\npub const {}_WAT: &str = {:?};",
            const_name(name),
            path.display().to_string()
        )
        .unwrap();
    }
    let table = |list: &[Guest]| -> String {
        list.iter()
            .map(|g| format!("({:?}, {}), ", g.name, const_name(&g.name)))
            .collect()
    };
    writeln!(s, "/// Every example app: `(name, path to the .wasm)`.\npub const EXAMPLES: &[(&str, &str)] = &[{}];", table(examples)).unwrap();
    writeln!(s, "/// Every Rust test guest: `(name, path to the .wasm)`.\npub const GUESTS: &[(&str, &str)] = &[{}];", table(guests)).unwrap();
    writeln!(
        s,
        "/// The directory of the hand-written WAT guests.\npub const WAT_DIR: &str = {:?};",
        wat_dir.display().to_string()
    )
    .unwrap();
    let wat_table: String = wats
        .iter()
        .map(|(n, _)| format!("({n:?}, {}_WAT), ", const_name(n)))
        .collect();
    writeln!(s, "/// Every WAT guest: `(name, path to the .wat)`.\npub const WATS: &[(&str, &str)] = &[{wat_table}];").unwrap();
    s
}
