//! Architecture invariants that can be checked, checked.

use std::path::Path;
use std::process::Command;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn depends_on(package: &str, dep: &str) -> bool {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build",
            "-p",
            package,
            "-i",
            dep,
        ])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo tree");
    // `cargo tree -i X` fails ("did not match any packages") when X is not a
    // dependency at all, and prints the inverted tree when it is.
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.lines().any(|l| l.contains(package))
}

#[test]
fn only_the_runtime_links_wasmtime() {
    assert!(
        depends_on("tern-runtime", "wasmtime"),
        "the check itself must see wasmtime under tern-runtime"
    );
    for package in [
        "tern-scheduler",
        "tern-sdk",
        "tern-api",
        "tern-control",
        "tern-util",
    ] {
        assert!(
            !depends_on(package, "wasmtime"),
            "{package} must not link wasmtime"
        );
    }
    // The node agent and the command line reach wasmtime only through the
    // engine: no other manifest names it.
    for manifest in member_manifests() {
        if manifest.ends_with("runtime/Cargo.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("wasmtime")),
            "{} depends on wasmtime itself: only tern-runtime may",
            manifest.display()
        );
    }
}

/// The Cargo.toml of every workspace member.
fn member_manifests() -> Vec<std::path::PathBuf> {
    let root = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let members = root
        .split("members = [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("the workspace lists its members");
    let found: Vec<_> = members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| workspace_root().join(m).join("Cargo.toml"))
        .collect();
    assert!(found.len() >= 9, "members: {found:?}");
    found
}

/// Every `.rs` file under `dir` that is not a test (no `tests/` directory,
/// no `tests.rs`), with its text.
fn sources(dir: &str) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    visit(&workspace_root().join(dir), &mut |p| {
        let is_test = p.components().any(|c| c.as_os_str() == "tests")
            || p.file_name().is_some_and(|n| n == "tests.rs");
        if p.extension().is_some_and(|e| e == "rs") && !is_test {
            out.push((p.to_path_buf(), std::fs::read_to_string(p).unwrap()));
        }
    });
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

const HOST_SOURCES: &[&str] = &[
    "runtime/src",
    "node/src",
    "control/src",
    "api/src",
    "util/src",
    "scheduler/src",
    "cli/src",
    "sdk/src",
];

#[test]
fn the_scheduler_does_no_io_and_reads_no_clock() {
    // Time is a parameter and randomness a seed: the same input gives the
    // same decision, in the control plane and in the simulator.
    for (path, text) in sources("scheduler/src") {
        for banned in [
            "std::fs",
            "std::net",
            "std::env",
            "std::process",
            "std::thread",
            "Instant",
            "SystemTime",
            "tokio",
            "File::",
        ] {
            assert!(
                !text.contains(banned),
                "{} uses {banned}: the scheduler is pure",
                path.display()
            );
        }
    }
    for dep in ["tokio", "hyper", "redb", "ureq", "rand"] {
        assert!(
            !depends_on("tern-scheduler", dep),
            "tern-scheduler must not depend on {dep}"
        );
    }
}

#[test]
fn no_source_file_is_a_warehouse() {
    // A file past this size does the work of several rooms: split it.
    const MAX_LINES: usize = 800;
    let mut big = Vec::new();
    for dir in HOST_SOURCES {
        for (path, text) in sources(dir) {
            let n = text.lines().count();
            if n > MAX_LINES {
                big.push(format!("{} ({n} lines)", path.display()));
            }
        }
    }
    assert!(
        big.is_empty(),
        "source files over {MAX_LINES} lines: {big:?}"
    );
}

#[test]
fn the_engine_knows_nothing_of_http() {
    assert!(
        depends_on("tern-node", "hyper"),
        "the check itself must see hyper under tern-node"
    );
    for dep in [
        "hyper",
        "hyper-util",
        "http",
        "tern-api",
        "tern-node",
        "ureq",
    ] {
        assert!(
            !depends_on("tern-runtime", dep),
            "tern-runtime must not depend on {dep}: HTTP belongs to the node agent"
        );
    }
}

#[test]
fn only_the_snapshot_module_encodes_persisted_or_wire_bytes() {
    // Binary formats (postcard, hand-made little-endian framing) are the
    // snapshot module's, and the guest ABI's encoding the SDK's codec.
    let owners = [
        workspace_root().join("runtime/src/snapshot"),
        workspace_root().join("sdk/src/codec.rs"),
    ];
    let mut offenders = Vec::new();
    for dir in HOST_SOURCES {
        for (path, text) in sources(dir) {
            if owners.iter().any(|o| path.starts_with(o)) {
                continue;
            }
            for marker in ["postcard::", "to_le_bytes", "from_le_bytes"] {
                if text.contains(marker) {
                    offenders.push(format!("{} ({marker})", path.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "byte formats outside runtime/src/snapshot: {offenders:?}"
    );
}

#[test]
fn the_snapshot_format_is_owned_by_one_module() {
    // The magic bytes appear in the snapshot module and nowhere else in code.
    let mut offenders = Vec::new();
    let owner = workspace_root().join("runtime/src/snapshot");
    for dir in [
        "runtime/src",
        "node/src",
        "control/src",
        "api/src",
        "scheduler/src",
        "cli/src",
        "sdk/src",
    ] {
        visit(&workspace_root().join(dir), &mut |p| {
            if p.extension().is_some_and(|e| e == "rs") && !p.starts_with(&owner) {
                let text = std::fs::read_to_string(p).unwrap();
                if [
                    concat!("TERN", "SNAP"),
                    concat!("TERN", "PAGE"),
                    concat!("TERN", "COMT"),
                    concat!("TERN", "RECD"),
                    "postcard::from_bytes::<Body",
                ]
                .iter()
                .any(|m| text.contains(m))
                {
                    offenders.push(p.display().to_string());
                }
            }
        });
    }
    assert!(
        offenders.is_empty(),
        "snapshot bytes handled outside runtime/src/snapshot: {offenders:?}"
    );
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            visit(&p, f);
        } else {
            f(&p);
        }
    }
}
