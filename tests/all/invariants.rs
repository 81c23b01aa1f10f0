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
    for package in ["tern-scheduler", "tern-sdk", "tern-api", "tern-control"] {
        assert!(
            !depends_on(package, "wasmtime"),
            "{package} must not link wasmtime"
        );
    }
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
                if text.contains(concat!("TERN", "SNAP"))
                    || text.contains("postcard::from_bytes::<Body")
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
