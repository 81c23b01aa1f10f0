//! Every example app, driven through the guest ABI in a conversation, and
//! moved (snapshot, fresh runtime, restore) before every step: each response
//! equals the one of a run that never moved. Also: every example has a
//! conversation here (a new example without one fails this test).

use tern_runtime::sdk::{self, Request, Response};
use tern_runtime::{AppConfig, Instance};

use crate::support::{fresh_runtime, move_instance, Via};

/// One request and what must be true of its response.
struct Step {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    status: u16,
    contains: &'static str,
}

const fn step(
    method: &'static str,
    path: &'static str,
    body: &'static str,
    status: u16,
    contains: &'static str,
) -> Step {
    Step {
        method,
        path,
        body,
        status,
        contains,
    }
}

fn conversations() -> Vec<(&'static str, &'static str, Vec<Step>)> {
    vec![
        (
            "counter",
            tern_artifacts::COUNTER,
            vec![
                step("POST", "/", "", 200, "1"),
                step("POST", "/", "5", 200, "6"),
                step("GET", "/", "", 200, "6"),
                step("POST", "/", "x", 400, ""),
                step("POST", "/", "-2", 200, "4"),
                step("GET", "/nope", "", 404, ""),
            ],
        ),
        (
            "kv",
            tern_artifacts::KV,
            vec![
                step("PUT", "/kv/alpha", "one", 201, ""),
                step("PUT", "/kv/beta", "two", 201, ""),
                step("GET", "/kv/alpha", "", 200, "one"),
                step("PUT", "/kv/alpha", "uno", 204, ""),
                step("DELETE", "/kv/beta", "", 204, ""),
                step("GET", "/kv/beta", "", 404, ""),
                step("GET", "/kv", "", 200, "alpha"),
                step("GET", "/kv/alpha", "", 200, "uno"),
            ],
        ),
        (
            "ledger",
            tern_artifacts::LEDGER,
            vec![
                step("POST", "/ledger", "41", 200, "0"),
                step("POST", "/ledger", "7", 200, "1"),
                step("POST", "/ledger", "41", 200, "2"),
                step("POST", "/ledger", "x", 400, ""),
                step("GET", "/ledger?from=1", "", 200, "3\n7\n41\n"),
                step("GET", "/", "", 200, "3 ids"),
                step("DELETE", "/ledger", "", 405, ""),
            ],
        ),
        (
            "todo",
            tern_artifacts::TODO,
            vec![
                step("GET", "/", "", 200, "<html"),
                step(
                    "POST",
                    "/api/todos",
                    r#"{"title":"buy milk"}"#,
                    201,
                    "buy milk",
                ),
                step(
                    "POST",
                    "/api/todos",
                    r#"{"title":"move app"}"#,
                    201,
                    "move app",
                ),
                step("PATCH", "/api/todos/1", r#"{"done":true}"#, 200, "true"),
                step("DELETE", "/api/todos/2", "", 204, ""),
                step("POST", "/api/todos", r#"{"title":""}"#, 400, ""),
                step("GET", "/api/todos", "", 200, "buy milk"),
            ],
        ),
        (
            "life",
            tern_artifacts::LIFE,
            vec![
                step("GET", "/", "", 200, "generation"),
                step("POST", "/step?n=5", "", 200, ""),
                step("POST", "/step?n=20", "", 200, ""),
                step("GET", "/", "", 200, "population"),
                step("POST", "/step", "", 200, ""),
                step("GET", "/", "", 200, "hash"),
            ],
        ),
        (
            "sensor",
            tern_artifacts::SENSOR,
            vec![
                step(
                    "POST",
                    "/readings",
                    "a 1.0\na 1.2\na 0.9\nb 20\nb 21",
                    200,
                    "",
                ),
                step(
                    "POST",
                    "/readings",
                    "a 1.1\na 1.0\na 0.95\na 1.05\na 1.02\na 0.98\na 1.01",
                    200,
                    "",
                ),
                step("GET", "/stats", "", 200, "\"a\""),
                step("POST", "/readings", "a 50.0", 200, ""),
                step("GET", "/anomalies", "", 200, "50"),
                step("GET", "/stats", "", 200, "\"b\""),
            ],
        ),
    ]
}

fn start_app(path: &str) -> Instance {
    let rt = fresh_runtime();
    let m = rt.load_file(std::path::Path::new(path)).unwrap();
    let mut inst = Instance::start(
        &rt,
        &m,
        AppConfig {
            random_seed: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(sdk::check_app(&mut inst).unwrap(), "{path} is an SDK app");
    sdk::init(&mut inst).unwrap();
    inst
}

fn send(inst: &mut Instance, s: &Step) -> Response {
    let (path, query) = s.path.split_once('?').unwrap_or((s.path, ""));
    let req = Request {
        method: s.method.into(),
        path: path.into(),
        query: query.into(),
        headers: vec![],
        body: s.body.as_bytes().to_vec(),
    };
    sdk::handle(inst, &req)
}

/// Response text with wall-clock fields blanked (they differ run to run).
fn normalized(r: &Response) -> String {
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let mut text = text;
    for key in ["\"created_ms\":", "\"at_ms\":"] {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i + key.len()]);
            rest = rest[i + key.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
            out.push('T');
        }
        out.push_str(rest);
        text = out;
    }
    format!("{} {}", r.status, text)
}

#[test]
fn every_example_keeps_its_state_across_moves() {
    let dir = tempfile::tempdir().unwrap();
    for (name, path, steps) in conversations() {
        let mut straight = start_app(path);
        let want: Vec<String> = steps
            .iter()
            .map(|s| {
                let r = send(&mut straight, s);
                assert_eq!(
                    r.status,
                    s.status,
                    "{name} {} {}: {}",
                    s.method,
                    s.path,
                    String::from_utf8_lossy(&r.body)
                );
                assert!(
                    String::from_utf8_lossy(&r.body).contains(s.contains),
                    "{name} {} {}: {:?} lacks {:?}",
                    s.method,
                    s.path,
                    String::from_utf8_lossy(&r.body),
                    s.contains
                );
                normalized(&r)
            })
            .collect();
        for k in 0..steps.len() {
            for via in [Via::BytesCopy, Via::FileCow] {
                let mut inst = start_app(path);
                let mut got = Vec::new();
                for (i, s) in steps.iter().enumerate() {
                    if i == k {
                        inst = move_instance(&mut inst, via, dir.path());
                    }
                    got.push(normalized(&send(&mut inst, s)));
                }
                assert_eq!(got, want, "{name}: moved before step {k} via {via:?}");
            }
        }
    }
}

#[test]
fn every_example_has_a_conversation() {
    let covered: Vec<&str> = conversations().iter().map(|c| c.0).collect();
    for (name, _) in tern_artifacts::EXAMPLES {
        assert!(
            covered.contains(name),
            "example `{name}` has no test in tests/all/examples.rs"
        );
    }
}

#[test]
fn a_trapping_request_is_a_500_and_the_app_goes_on() {
    // An app (ABI v1, no SDK) whose handler traps on every second request.
    let wat = r#"(module
      (memory (export "memory") 1)
      (global $n (mut i32) (i32.const 0))
      (func (export "tern_abi_version") (result i32) (i32.const 1))
      (func (export "tern_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "tern_free") (param i32 i32))
      (func (export "tern_handle") (param i32 i32) (result i64)
        (global.set $n (i32.add (global.get $n) (i32.const 1)))
        (if (i32.rem_u (global.get $n) (i32.const 2)) (then unreachable))
        ;; response: status 200, no headers, empty body (12 bytes at 2048)
        (i32.store (i32.const 2048) (i32.const 200))
        (i64.or (i64.shl (i64.const 2048) (i64.const 32)) (i64.const 12)))
      (func (export "count") (result i32) (global.get $n)))"#;
    let rt = fresh_runtime();
    let m = rt.load(wat::parse_str(wat).unwrap()).unwrap();
    let mut inst = Instance::start(&rt, &m, AppConfig::default()).unwrap();
    assert!(sdk::check_app(&mut inst).unwrap());
    for i in 1..=6 {
        let r = send(&mut inst, &step("GET", "/", "", 0, ""));
        let want = if i % 2 == 1 { 500 } else { 200 };
        assert_eq!(
            r.status,
            want,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(inst.call("count", &[]).unwrap()[0].unwrap_i32(), 6);
}

#[test]
fn the_raw_abi_guest_answers_through_the_host() {
    // The raw-ABI WAT guest follows sdk/ABI.md without the Rust SDK.
    let rt = fresh_runtime();
    let m = rt
        .load_file(std::path::Path::new(tern_artifacts::RAW_ABI_WAT))
        .unwrap();
    let mut inst = Instance::start(&rt, &m, AppConfig::default()).unwrap();
    assert!(sdk::check_app(&mut inst).unwrap());
    sdk::init(&mut inst).unwrap();
    let r = send(&mut inst, &step("GET", "/hi", "", 200, ""));
    assert_eq!(r.status, 200);
    assert!(
        String::from_utf8_lossy(&r.body).contains("hello from wat /hi"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
}
