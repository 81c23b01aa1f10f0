//! The official WASI preview-1 test suite under `tern run`: every test of
//! the pinned copy in `tests/wasi-testsuite/` (its README says where from),
//! run as the suite's own runner runs a runtime (its wasmtime adapter:
//! `--env K=V` per variable, the test's `root` directory as `/`, the
//! arguments after the module, stdin an open pipe), must end with the exit
//! status its spec expects and print what it expects on stdout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The suite's size at the pinned commit: 19 AssemblyScript, 11 C and 42
/// Rust tests. A pin that loses tests fails here rather than passing with
/// fewer.
const TESTS: usize = 72;

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/wasi-testsuite")
}

/// A test's spec: the JSON file beside its binary, all fields optional.
struct Spec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    root: Option<String>,
    exit_code: i32,
    stdout: Option<String>,
}

fn spec(wasm: &Path) -> Spec {
    let text = std::fs::read_to_string(wasm.with_extension("json")).unwrap_or_else(|_| "{}".into());
    let doc: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: spec is not JSON: {e}", wasm.display()));
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    Spec {
        args: strings(&doc["args"]),
        env: doc["env"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        root: doc["root"].as_str().map(str::to_string),
        exit_code: doc["exit_code"].as_i64().unwrap_or(0) as i32,
        stdout: doc["stdout"].as_str().map(str::to_string),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs one test; `None` if it passed, else what went wrong.
fn run(wasm: &Path, cache: &Path) -> Option<String> {
    let spec = spec(wasm);
    let scratch = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.arg("run").arg(wasm);
    for (k, v) in &spec.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    if let Some(root) = &spec.root {
        // Each test gets its own copy: tests create and remove files.
        let copy = scratch.path().join("root");
        copy_dir(&wasm.parent().unwrap().join(root), &copy);
        cmd.arg("--dir").arg(format!("{}::/", copy.display()));
    }
    if !spec.args.is_empty() {
        cmd.arg("--").args(&spec.args);
    }
    let mut child = cmd
        .env("TERN_CACHE_DIR", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern");
    // Open, as the suite's runner leaves it; the guest sees no input.
    let stdin = child.stdin.take();
    let out = child.wait_with_output().expect("wait for tern");
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut wrong = Vec::new();
    if out.status.code() != Some(spec.exit_code) {
        wrong.push(format!(
            "exit status {:?}, expected {}",
            out.status.code(),
            spec.exit_code
        ));
    }
    if let Some(want) = &spec.stdout {
        // The runner reads as many bytes as it expects and compares them.
        if !stdout.starts_with(want.as_str()) {
            wrong.push(format!("stdout {stdout:?}, expected {want:?}"));
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{}: {}; stderr: {}",
            wasm.display(),
            wrong.join(", "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

#[test]
fn the_wasi_preview1_testsuite_passes() {
    let cache = tempfile::tempdir().unwrap();
    let mut tests = Vec::new();
    for suite in ["assemblyscript", "c", "rust"] {
        let dir = suite_dir().join(suite);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wasm") {
                tests.push(path);
            }
        }
    }
    tests.sort();
    assert_eq!(tests.len(), TESTS, "the pinned suite changed size");
    let failures: Vec<String> = tests.iter().filter_map(|t| run(t, cache.path())).collect();
    eprintln!(
        "WASI preview-1 test suite: {}/{} passed",
        tests.len() - failures.len(),
        tests.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
