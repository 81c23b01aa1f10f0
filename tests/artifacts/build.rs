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
//!
//! It also builds the C guests: each `tests/guests/c/<lib>_guest.c` (a thin
//! harness) together with every `.c` file of the third-party C library
//! vendored in `vendor/<lib>/`, compiled with clang for wasm32-wasi as a
//! reactor into `<outer target dir>/tern-guests/c/<lib>_guest.wasm`. That needs clang,
//! wasm-ld, the wasi-libc sysroot and compiler-rt's wasm32 builtins: on
//! Debian the packages in [`C_PACKAGES`], which `.ci/run` installs. Without
//! them this script fails and says so; it never skips the C guests.
//! `TERN_WASI_CLANG` names another clang, `WASI_SYSROOT` another sysroot.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "src/apt.rs"]
mod apt;
#[path = "../../examples/guest_build.rs"]
mod guest_build;

use guest_build::{
    build_workspace, ensure_wasm_target, guest_target_dir, members, watch, Guest, TARGET,
};

/// The target clang compiles the C guests for.
const C_TARGET: &str = "wasm32-wasi";

/// The Debian packages that give a clang able to build the C guests.
const C_PACKAGES: &str = "clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32";

/// Flags for every C guest: optimized, a WASI reactor (`_initialize` runs
/// the constructors, the harness's `export_name` functions are the exports).
const C_FLAGS: &[&str] = &["-O2", "-mexec-model=reactor"];

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
    // Before the (long) cargo builds, so a missing C toolchain fails fast.
    ensure_c_packages();
    let clang = find_c_toolchain(&out_dir);

    let sdk = root.join("sdk");
    let examples_ws = root.join("examples");
    let guests_ws = root.join("tests/guests");
    let wat_dir = guests_ws.join("wat");

    // Sources only, not the built modules: they are written while this script
    // runs, so cargo would find them newer than its run and run it again.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/apt.rs");
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

    let c_dir = guests_ws.join("c");
    watch(&c_dir);
    let vendor_dir = root.join("vendor");
    let c_out = guest_target_dir.join("c");
    fs::create_dir_all(&c_out).unwrap_or_else(|e| panic!("cannot create {}: {e}", c_out.display()));
    let c_guests = c_guests(&c_dir, &vendor_dir, &c_out);
    for g in &c_guests {
        watch(&g.harness);
        watch(&g.lib_dir);
        build_c_guest(&clang, g);
    }

    let wats = wat_files(&wat_dir);
    let code = generate(&built[0], &built[1], &c_guests, &wat_dir, &wats);
    fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

/// One C guest: a harness and the library it wraps.
struct CGuest {
    /// The harness's file stem, e.g. `zlib_guest`.
    name: String,
    /// `tests/guests/c/<lib>_guest.c`.
    harness: PathBuf,
    /// `vendor/<lib>/`: every `.c` in it is compiled in.
    lib_dir: PathBuf,
    /// Where the built module lands.
    wasm: PathBuf,
}

/// A clang that can build wasm32-wasi reactors, and how to call it.
struct CToolchain {
    clang: PathBuf,
    /// `--sysroot=...` when one was named or found at the usual place;
    /// empty when clang finds the sysroot itself (Debian's clang-14 looks in
    /// `/usr/include/wasm32-wasi` and `/usr/lib/wasm32-wasi`).
    sysroot_args: Vec<String>,
}

impl CToolchain {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.clang);
        cmd.arg(format!("--target={C_TARGET}"))
            .args(&self.sysroot_args)
            .args(C_FLAGS);
        // The guest build must not pick up flags meant for the host.
        for var in [
            "CFLAGS",
            "CPPFLAGS",
            "LDFLAGS",
            "CPATH",
            "C_INCLUDE_PATH",
            "LIBRARY_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Like the wasm32-wasip1 target, the C toolchain is installed when it is
/// missing and this machine can (Debian, as root): the README's two
/// commands then work on a fresh machine. Elsewhere `find_c_toolchain`
/// says what to install.
fn ensure_c_packages() {
    if env::var_os("TERN_WASI_CLANG").is_some() {
        return;
    }
    let have_clang = Command::new("clang-14")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let have_libc = Path::new("/usr/lib/wasm32-wasi/libc.a").exists();
    let have_ld = Command::new("wasm-ld-14")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_clang && have_libc && have_ld {
        return;
    }
    let packages: Vec<&str> = C_PACKAGES.split(' ').collect();
    println!("cargo:warning=installing the C toolchain for the test guests (if root, with apt-get): {C_PACKAGES}");
    apt::install(&packages);
}

/// Finds clang and the WASI sysroot and checks, by building a small reactor
/// that uses libc's heap, that together they can compile and link one.
/// Panics with the packages to install when they cannot.
fn find_c_toolchain(out_dir: &Path) -> CToolchain {
    println!("cargo:rerun-if-env-changed=TERN_WASI_CLANG");
    println!("cargo:rerun-if-env-changed=WASI_SYSROOT");
    let install = format!(
        "install the Debian packages `{C_PACKAGES}` (`apt-get install -y {C_PACKAGES}`; \
         .ci/run does this), or set TERN_WASI_CLANG to a clang that targets {C_TARGET} \
         and WASI_SYSROOT to a WASI sysroot"
    );
    let candidates: Vec<PathBuf> = match env::var_os("TERN_WASI_CLANG") {
        Some(c) => vec![c.into()],
        None => vec!["clang-14".into(), "clang".into()],
    };
    let clang = candidates
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the C test guests (tests/guests/c) need clang for {C_TARGET}, and none of {} \
                 can be run: {install}",
                candidates
                    .iter()
                    .map(|c| format!("`{}`", c.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    let sysroot = match env::var_os("WASI_SYSROOT") {
        Some(s) => {
            let s = PathBuf::from(s);
            assert!(
                s.is_dir(),
                "WASI_SYSROOT is {}, which is not a directory",
                s.display()
            );
            Some(s)
        }
        None => Some(PathBuf::from("/usr/share/wasi-sysroot")).filter(|s| s.is_dir()),
    };
    let tc = CToolchain {
        clang,
        sysroot_args: sysroot
            .map(|s| vec![format!("--sysroot={}", s.display())])
            .unwrap_or_default(),
    };

    let probe_c = out_dir.join("wasi_probe.c");
    let probe_wasm = out_dir.join("wasi_probe.wasm");
    fs::write(
        &probe_c,
        "#include <stdlib.h>\n#include <string.h>\n\
         __attribute__((export_name(\"probe\"))) int probe(int n) {\n\
         char *p = malloc(n + 1); memset(p, 1, n + 1); int r = p[n]; free(p); return r;\n}\n",
    )
    .expect("write wasi_probe.c");
    let out = tc
        .command()
        .arg("-o")
        .arg(&probe_wasm)
        .arg(&probe_c)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tc.clang.display()));
    if !out.status.success() {
        panic!(
            "`{}` cannot build a {C_TARGET} reactor, so the C test guests (tests/guests/c) \
             cannot be built: clang itself, the WASI sysroot (wasi-libc), wasm-ld (lld-14) or the \
             wasm32 compiler-rt builtins (libclang-rt-14-dev-wasm32) is missing or unfit; {install}.\n\
             The compiler said:\n{}",
            tc.clang.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tc
}

/// The C guests in `dir`: every `<lib>_guest.c`, with its library in
/// `vendor_dir/<lib>/`.
fn c_guests(dir: &Path, vendor_dir: &Path, out: &Path) -> Vec<CGuest> {
    let mut guests: Vec<CGuest> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .filter_map(|harness| {
            let name = harness.file_stem()?.to_string_lossy().into_owned();
            let lib = name.strip_suffix("_guest")?.to_owned();
            let lib_dir = vendor_dir.join(&lib);
            assert!(
                lib_dir.is_dir(),
                "{} has no library: expected its sources in {}",
                harness.display(),
                lib_dir.display()
            );
            Some(CGuest {
                wasm: out.join(format!("{name}.wasm")),
                name,
                harness,
                lib_dir,
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    guests
}

/// Compiles one C guest: its harness and every `.c` of its library, in one
/// clang run, written under a temporary name and renamed into place so a
/// concurrent build (another profile shares the dir) never sees half a file.
fn build_c_guest(tc: &CToolchain, g: &CGuest) {
    let mut sources: Vec<PathBuf> = fs::read_dir(&g.lib_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", g.lib_dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    let tmp = g
        .wasm
        .with_extension(format!("wasm.tmp{}", std::process::id()));
    let mut cmd = tc.command();
    cmd.arg("-I")
        .arg(&g.lib_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(&g.harness)
        .args(&sources);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tc.clang.display()));
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "building the C guest {} failed ({}):\n{}\nThe command: {cmd:?}",
            g.harness.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &g.wasm)
        .unwrap_or_else(|e| panic!("cannot move {} to {}: {e}", tmp.display(), g.wasm.display()));
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
    c_guests: &[CGuest],
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
    for g in c_guests {
        writeln!(
            s,
            "/// The `{}` C test guest (tests/guests/c/{}.c and the library it wraps, in vendor/), built with clang for {C_TARGET}.\npub const {}: &str = {:?};",
            g.name,
            g.name,
            const_name(&g.name),
            g.wasm.display().to_string()
        )
        .unwrap();
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
    let c_table: String = c_guests
        .iter()
        .map(|g| format!("({:?}, {}), ", g.name, const_name(&g.name)))
        .collect();
    writeln!(s, "/// Every C test guest: `(name, path to the .wasm)`.\npub const C_GUESTS: &[(&str, &str)] = &[{c_table}];").unwrap();
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
