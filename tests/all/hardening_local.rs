//! Security regression suite, the engine's part (issue 11, items 2, 3, 5
//! and 12): each probe as the issue wrote it, run against the runtime, and
//! the clear error or bounded outcome it must get now. The command-line
//! side of the same items (warnings, exit statuses, `--dir`, stdin) is in
//! `cli/tests/cli.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_runtime::engine::LoadedModule;
use tern_runtime::sdk::{self, Request};
use tern_runtime::wasi::{regrant, NotGranted};
use tern_runtime::{
    AppConfig, Error, Instance, InterruptHandle, LimitsState, LogBuffer, Preopen, RestoreOptions,
    Runtime, Snapshot, SnapshotOptions, Stdio, Val, WasiState,
};

use crate::support::fresh_runtime;

fn load(rt: &Arc<Runtime>, wat: &str) -> Arc<LoadedModule> {
    rt.load(wat::parse_str(wat).expect("test WAT parses"))
        .expect("test module loads")
}

fn call_i32(inst: &mut Instance, export: &str, args: &[Val]) -> i32 {
    inst.call(export, args)
        .unwrap_or_else(|e| panic!("{export}: {e}"))[0]
        .unwrap_i32()
}

/// Round trip through the bytes of a file, as a snapshot from elsewhere comes.
fn through_bytes(snap: &Snapshot) -> Snapshot {
    Snapshot::from_bytes(snap.as_bytes().to_vec()).expect("snapshot decodes")
}

// ---------------------------------------------------------------------------
// Item 2: a snapshot is data, not authority.

/// Asks WASI what it was given: a preopened directory at fd 3, a file in
/// it, how many variables and arguments.
pub(crate) const WHAT_AM_I_GIVEN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "secret")
  (func (export "prestat") (param i32) (result i32) (call $prestat (local.get 0) (i32.const 0)))
  ;; opens `secret` in the directory at fd 3 for reading: 0, or an errno
  (func (export "open_secret") (result i32)
    (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 0)
      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
  (func (export "env_count") (result i32)
    (drop (call $env (i32.const 0) (i32.const 4))) (i32.load (i32.const 0)))
  (func (export "arg_count") (result i32)
    (drop (call $args (i32.const 0) (i32.const 4))) (i32.load (i32.const 0))))"#;

const ERRNO_BADF: i32 = 8;
const ERRNO_NOENT: i32 = 44;

#[test]
fn a_restored_snapshot_gets_only_what_the_restore_grants() {
    // The probe: an app given a directory as `/`, a variable and an
    // argument is snapshotted; the file is resumed where none is granted.
    let rt = fresh_runtime();
    let m = load(&rt, WHAT_AM_I_GIVEN);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "the host's").unwrap();
    let mut inst = Instance::start(
        &rt,
        &m,
        AppConfig {
            args: vec!["app".into(), "--flag".into()],
            env: vec![("TOKEN".into(), "hunter2".into())],
            preopens: vec![Preopen {
                host: host.path().display().to_string(),
                guest: "/".into(),
                read_only: false,
            }],
            limits: LimitsState {
                memory_bytes: Some(1 << 30),
                timeout_ms_per_call: Some(60_000),
                fuel_per_call: None,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let given = |inst: &mut Instance| {
        [
            call_i32(inst, "prestat", &[Val::I32(3)]),
            call_i32(inst, "open_secret", &[]),
            call_i32(inst, "env_count", &[]),
            call_i32(inst, "arg_count", &[]),
        ]
    };
    assert_eq!(given(&mut inst), [0, 0, 1, 2]);
    let snap = through_bytes(&inst.snapshot(SnapshotOptions::default()).unwrap());

    // (what the restore grants, what the app then sees, what goes unsaid)
    let other = tempfile::tempdir().unwrap();
    let only_program = WasiState {
        args: vec!["app".into()],
        ..Default::default()
    };
    let another_dir = WasiState {
        args: vec!["app".into(), "--flag".into()],
        env: vec![("TOKEN".into(), "given again".into())],
        preopens: vec![Preopen {
            host: other.path().display().to_string(),
            guest: "/".into(),
            read_only: false,
        }],
        ..Default::default()
    };
    let cases: Vec<(&str, WasiState, [i32; 4], Vec<NotGranted>)> = vec![
        (
            "nothing granted",
            only_program,
            [ERRNO_BADF, ERRNO_BADF, 0, 1],
            vec![
                NotGranted::Dir {
                    host: host.path().display().to_string(),
                    guest: "/".into(),
                },
                NotGranted::Env("TOKEN".into()),
                NotGranted::Args(vec!["--flag".into()]),
            ],
        ),
        (
            // The guest path is granted again, but as the command line's
            // host directory, not the file's: `secret` is not there.
            "another directory as /",
            another_dir,
            [0, ERRNO_NOENT, 1, 2],
            vec![],
        ),
    ];
    for (what, grant, sees, unsaid) in cases {
        let (wasi, missing) = regrant(&snap.body.wasi, &grant);
        assert_eq!(missing, unsaid, "{what}");
        assert_eq!(wasi.monotonic_ns, snap.body.wasi.monotonic_ns, "{what}");
        let mut back = Instance::restore(
            &rt,
            &snap,
            None,
            RestoreOptions {
                wasi_override: Some(wasi),
                limits_override: Some(LimitsState::LOCAL_DEFAULTS),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(given(&mut back), sees, "{what}");
        assert_eq!(back.config().limits, LimitsState::LOCAL_DEFAULTS, "{what}");
    }
    // What a request not granted says (the variable's value is not in it).
    let said: Vec<String> = regrant(&snap.body.wasi, &WasiState::default())
        .1
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        said,
        [
            format!("directory {} as /", host.path().display()),
            "environment variable TOKEN".to_string(),
            r#"arguments ["--flag"]"#.to_string(),
        ]
    );
}

#[test]
fn granted_directories_keep_the_snapshot_order_of_file_descriptors() {
    let asked = WasiState {
        preopens: ["/a", "/b", "/c"]
            .iter()
            .map(|g| Preopen {
                host: format!("/host{g}"),
                guest: g.to_string(),
                read_only: false,
            })
            .collect(),
        ..Default::default()
    };
    let grant = WasiState {
        preopens: ["/x", "/c", "/a"]
            .iter()
            .map(|g| Preopen {
                host: "/elsewhere".into(),
                guest: g.to_string(),
                read_only: *g == "/a",
            })
            .collect(),
        ..Default::default()
    };
    let (wasi, missing) = regrant(&asked, &grant);
    let order: Vec<&str> = wasi.preopens.iter().map(|p| p.guest.as_str()).collect();
    assert_eq!(order, ["/a", "/c", "/x"]);
    assert!(wasi.preopens.iter().all(|p| p.host == "/elsewhere"));
    assert_eq!(
        missing,
        [
            NotGranted::DirWritable { guest: "/a".into() },
            NotGranted::Dir {
                host: "/host/b".into(),
                guest: "/b".into()
            },
        ]
    );
}

// ---------------------------------------------------------------------------
// Item 3 (engine): a running call can be interrupted from another thread.

/// Says `spinning` on stdout, then loops forever: in a call (`spin`), in
/// an SDK request handler (`tern_handle`). `ok` counts the calls it served.
const STUCK: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "spinning\n")
  (global $calls (mut i32) (i32.const 0))
  (func $say
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "ok") (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (global.get $calls))
  (func (export "spin") (call $say) (loop $l (br $l)))
  (func (export "tern_abi_version") (result i32) (i32.const 1))
  (func (export "tern_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "tern_free") (param i32 i32))
  (func (export "tern_handle") (param i32 i32) (result i64)
    (call $say) (loop $l (br $l)) (i64.const 0)))"#;

/// A command whose `_start` says `spinning` and never returns.
const STUCK_AT_START: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "spinning\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $l (br $l))))"#;

fn stuck(rt: &Arc<Runtime>, logs: &Arc<LogBuffer>) -> Instance {
    Instance::start(
        rt,
        &load(rt, STUCK),
        AppConfig {
            stdio: Stdio::Capture(logs.clone()),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Runs `work` on a thread, waits until the guest says it is spinning,
/// interrupts it through `handle`, and returns what `work` returned and
/// how long after the interrupt it did.
fn interrupt_while_spinning<T: Send + 'static>(
    logs: &Arc<LogBuffer>,
    handle: &InterruptHandle,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let worker = std::thread::spawn(move || {
        let out = work();
        (out, Instant::now())
    });
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (next, lines) = logs.wait_since(seen, Duration::from_secs(1));
        if lines.iter().any(|l| l == "spinning") {
            break;
        }
        seen = next;
        assert!(
            Instant::now() < deadline,
            "the guest never started spinning"
        );
    }
    let asked = Instant::now();
    handle.interrupt();
    let (out, done) = worker.join().expect("worker thread");
    (out, done.saturating_duration_since(asked))
}

#[test]
fn an_endless_loop_is_interrupted_within_100_ms() {
    let rt = fresh_runtime();
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let logs = LogBuffer::new();
        let mut inst = stuck(&rt, &logs);
        let handle = inst.interrupt_handle();
        let ((inst, result), took) = interrupt_while_spinning(&logs, &handle, move || {
            let r = inst.call("spin", &[]);
            (inst, r)
        });
        let mut inst = inst;
        let e = result.unwrap_err();
        assert!(matches!(e, Error::Interrupted { .. }), "{e}");
        assert!(e.to_string().contains("interrupted"), "{e}");
        assert!(e.is_trap() && !e.is_guest_fault());
        // Cut off mid-call: no more calls or captures, even after a reset.
        assert!(inst.is_torn());
        handle.reset();
        assert!(matches!(inst.call("ok", &[]), Err(Error::Torn)));
        let refused = inst.snapshot(SnapshotOptions::default()).unwrap_err();
        assert!(matches!(refused, Error::Torn), "{refused}");
        assert!(refused.to_string().contains("restore it"), "{refused}");
        latencies.push(took);
    }
    latencies.sort();
    eprintln!(
        "interrupt of a `loop {{}}` guest: median {:?}, max {:?} over {} runs",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
    assert!(
        latencies[latencies.len() - 1] < Duration::from_millis(100),
        "{latencies:?}"
    );
}

#[test]
fn an_interrupt_between_calls_refuses_calls_until_reset_and_tears_nothing() {
    let rt = fresh_runtime();
    let logs = LogBuffer::new();
    let mut inst = stuck(&rt, &logs);
    let mut other = stuck(&rt, &logs);
    assert_eq!(call_i32(&mut inst, "ok", &[]), 1);
    let handle = inst.interrupt_handle();
    handle.interrupt();
    // Refused before any guest code runs: the state is intact.
    let e = inst.call("ok", &[]).unwrap_err();
    assert!(matches!(e, Error::Interrupted { .. }), "{e}");
    assert!(!inst.is_torn());
    // Another app of the same runtime is not touched.
    assert_eq!(call_i32(&mut other, "ok", &[]), 1);
    // Its state can still be captured, and it goes on after a reset.
    let snap = inst.snapshot(SnapshotOptions::default()).unwrap();
    handle.reset();
    assert_eq!(call_i32(&mut inst, "ok", &[]), 2);
    let mut back = Instance::restore(&rt, &through_bytes(&snap), None, Default::default()).unwrap();
    assert_eq!(call_i32(&mut back, "ok", &[]), 2);
}

#[test]
fn a_start_and_a_request_handler_can_be_interrupted() {
    let rt = fresh_runtime();

    // `_start` that never returns, stopped through a handle given up front.
    let logs = LogBuffer::new();
    let handle = InterruptHandle::new();
    let config = AppConfig {
        stdio: Stdio::Capture(logs.clone()),
        interrupt: Some(handle.clone()),
        ..Default::default()
    };
    let m = load(&rt, STUCK_AT_START);
    let rt2 = rt.clone();
    let (started, took) = interrupt_while_spinning(&logs, &handle, move || {
        Instance::start(&rt2, &m, config).map(drop)
    });
    let e = started.unwrap_err();
    assert!(
        matches!(e, Error::Interrupted { ref export } if export == "_start"),
        "{e}"
    );
    assert!(took < Duration::from_millis(100), "{took:?}");

    // A request whose handler never returns: a 500 that says why.
    let logs = LogBuffer::new();
    let mut inst = stuck(&rt, &logs);
    assert!(sdk::check_app(&mut inst).unwrap());
    let handle = inst.interrupt_handle();
    let ((_, resp), took) = interrupt_while_spinning(&logs, &handle, move || {
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            body: vec![],
        };
        let resp = sdk::handle(&mut inst, &req);
        (inst, resp)
    });
    assert_eq!(resp.status, 500);
    let body = String::from_utf8_lossy(&resp.body);
    assert!(body.contains("interrupted"), "{body}");
    assert!(took < Duration::from_millis(100), "{took:?}");
}

#[test]
fn the_interrupt_handle_is_send_sync_and_clone() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<InterruptHandle>();
    let a = InterruptHandle::new();
    let b = a.clone();
    b.interrupt();
    assert!(a.is_interrupted());
    a.reset();
    assert!(!b.is_interrupted());
}

#[test]
fn deployed_defaults_fill_only_what_is_unset() {
    let set = LimitsState {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let d = LimitsState::DEPLOYED_DEFAULTS;
    assert_eq!(
        set.or_defaults(&d),
        LimitsState {
            memory_bytes: Some(64 << 20),
            fuel_per_call: d.fuel_per_call,
            timeout_ms_per_call: Some(30_000),
        }
    );
    assert_eq!(LimitsState::default().or_defaults(&d), d);
}

// ---------------------------------------------------------------------------
// Item 5: --memory limits the app, not each memory.

/// `n` memories of `min` pages each; `growN` grows memory N, `tgrowN` table N.
fn many_memories(n: usize, min: u32) -> String {
    let mut w = String::from("(module\n");
    for i in 0..n {
        w += &format!("  (memory $m{i} {min})\n");
    }
    w += "  (table $t0 0 funcref) (table $t1 0 funcref)\n";
    for i in 0..n {
        w += &format!(
            "  (func (export \"grow{i}\") (param i32) (result i32) (memory.grow $m{i} (local.get 0)))\n"
        );
        w += &format!(
            "  (func (export \"touch{i}\") (param i32) (i32.store8 $m{i} (local.get 0) (i32.const 7)))\n"
        );
    }
    for t in 0..2 {
        w += &format!(
            "  (func (export \"tgrow{t}\") (param i32) (result i32) (table.grow $t{t} (ref.null func) (local.get 0)))\n"
        );
    }
    w + ")"
}

const MIB: u64 = 1 << 20;

#[test]
fn sixteen_memories_under_64_mib_hold_64_mib_together() {
    let rt = fresh_runtime();
    let m = load(&rt, &many_memories(16, 1));
    let limits = LimitsState {
        memory_bytes: Some(64 * MIB),
        ..Default::default()
    };
    let mut inst = Instance::start(
        &rt,
        &m,
        AppConfig {
            limits: limits.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(inst.memory_bytes(), 16 * 64 * 1024);
    // The probe: every memory grown to 64 MiB (it reached 1 GiB in all).
    // None fits beside the other fifteen.
    for i in 0..16 {
        let r = call_i32(&mut inst, &format!("grow{i}"), &[Val::I32(1023)]);
        assert_eq!(r, -1, "memory {i}");
    }
    assert_eq!(inst.memory_bytes(), MIB);
    // (memory, Wasm pages to grow by, what memory.grow returns): the total
    // reaches the limit (1024 Wasm pages) exactly, and not one page more.
    let steps: &[(usize, i32, i32)] = &[
        (1, 1009, -1), // 1 page over
        (1, 1008, 1),  // exactly full
        (2, 1, -1),
        (0, 1, -1),
        (15, 0, 1), // growing by nothing always works
    ];
    for &(mem, pages, want) in steps {
        let got = call_i32(&mut inst, &format!("grow{mem}"), &[Val::I32(pages)]);
        assert_eq!(got, want, "grow{mem}({pages})");
    }
    assert_eq!(inst.memory_bytes(), 64 * MIB);
    for i in 0..16 {
        inst.call(&format!("touch{i}"), &[Val::I32(4096)]).unwrap();
    }
    // Tables count together too: 1 Mi elements over both.
    assert_eq!(call_i32(&mut inst, "tgrow0", &[Val::I32(600_000)]), 0);
    assert_eq!(call_i32(&mut inst, "tgrow1", &[Val::I32(600_000)]), -1);
    assert_eq!(call_i32(&mut inst, "tgrow1", &[Val::I32(400_000)]), 0);

    // It moves: a restore compares the same total.
    let snap = through_bytes(&inst.snapshot(SnapshotOptions::default()).unwrap());
    let mut back = Instance::restore(
        &fresh_runtime(),
        &snap,
        None,
        RestoreOptions {
            limits_override: Some(limits),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(back.memory_bytes(), 64 * MIB);
    assert_eq!(call_i32(&mut back, "grow3", &[Val::I32(1)]), -1);
    let e = Instance::restore(
        &fresh_runtime(),
        &snap,
        None,
        RestoreOptions {
            limits_override: Some(LimitsState {
                memory_bytes: Some(32 * MIB),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::MemoryLimit(_)), "{e}");
    assert!(e.to_string().contains("in all"), "{e}");
}

#[test]
fn initial_memories_over_the_limit_together_do_not_instantiate() {
    let rt = fresh_runtime();
    // 16 × 80 pages = 80 MiB: each fits 64 MiB alone, not together.
    let m = load(&rt, &many_memories(16, 80));
    let e = Instance::start(
        &rt,
        &m,
        AppConfig {
            limits: LimitsState {
                memory_bytes: Some(64 * MIB),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::MemoryLimit(_)), "{e}");
    assert!(e.to_string().contains("together"), "{e}");
}

#[test]
fn without_a_limit_no_memory_grows_past_4_gib() {
    let rt = fresh_runtime();
    let m = load(
        &rt,
        r#"(module (memory i64 1)
             (func (export "grow") (param i64) (result i64) (memory.grow (local.get 0))))"#,
    );
    let mut inst = Instance::start(&rt, &m, AppConfig::default()).unwrap();
    let r = inst.call("grow", &[Val::I64(65536)]).unwrap()[0].unwrap_i64();
    assert_eq!(r, -1, "a 64-bit memory stops at 4 GiB");
    let r = inst.call("grow", &[Val::I64(16)]).unwrap()[0].unwrap_i64();
    assert_eq!(r, 1);
}

// ---------------------------------------------------------------------------
// Item 12: a crafted file gets an error, never an abort.

#[test]
fn the_crafted_lz4_probe_is_refused_when_opened_as_a_file() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/fuzz/corpus/snapshot_decode/seed-lz4-run-declaring-8-mi-pages");
    for verify_image in [false, true] {
        let e = Snapshot::open(&seed, verify_image).unwrap_err();
        assert!(e.to_string().contains("a memory can hold"), "{e}");
    }
}
