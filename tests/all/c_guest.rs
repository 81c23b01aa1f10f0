//! A real program not written for tern: zlib 1.2.13, vendored unmodified in
//! vendor/zlib and compiled with clang for wasm32-wasi behind a thin
//! harness (tests/guests/c/zlib_guest.c). Its deflate and inflate streams,
//! their malloc'd windows and hash chains, and the realloc-grown buffers of
//! everything fed and compressed stay in linear memory between calls, so a
//! resumed app gives the same answers only if its heap came back intact.

use std::path::Path;
use std::sync::Arc;

use tern_runtime::{Instance, RestoreOptions, Runtime, Snapshot, SnapshotOptions, Val};

use crate::differential::{check_case, Case};
use crate::support::{fresh_runtime, show, start, state_digest};

fn i32s(v: &[i32]) -> Vec<Val> {
    v.iter().map(|&x| Val::I32(x)).collect()
}

/// Streams data through deflate with no flush, sync flushes, a partial
/// inflate of a stream still open, a finish, a call refused after it, and a
/// second stream at another level after a re-init (which frees the first).
fn zlib_calls() -> Vec<(&'static str, Vec<Val>)> {
    vec![
        ("init", i32s(&[6])),
        ("feed", i32s(&[50_000, 1])),
        ("feed", i32s(&[30_000, 2])),
        ("flush", vec![]),
        ("drain", vec![]),
        ("roundtrip_ok", vec![]),
        ("feed", i32s(&[200_000, 3])),
        ("out_crc", vec![]),
        ("drain", vec![]),
        ("feed", i32s(&[7, 4])),
        ("in_adler", vec![]),
        ("flush", vec![]),
        ("feed", i32s(&[90_000, 5])),
        ("finish", vec![]),
        ("roundtrip_ok", vec![]),
        ("drain", vec![]),
        ("out_len", vec![]),
        ("out_crc", vec![]),
        ("feed", i32s(&[10, 6])),
        ("init", i32s(&[1])),
        ("feed", i32s(&[40_000, 7])),
        ("finish", vec![]),
        ("roundtrip_ok", vec![]),
        ("out_crc", vec![]),
    ]
}

fn int(vals: &[Val]) -> i64 {
    match vals {
        [Val::I32(x)] => i64::from(*x),
        [Val::I64(x)] => *x,
        other => panic!("expected one integer result, got {other:?}"),
    }
}

/// The harness's answers make sense on their own (not just equal between
/// runs): the streams round-trip, and the refused call is refused.
#[test]
fn zlib_guest_answers_are_sane_when_run_straight() {
    let rt = fresh_runtime();
    let mut inst = start(&rt, Path::new(tern_artifacts::ZLIB_GUEST));
    assert!(inst.has_export("_initialize"), "built as a reactor");
    assert!(
        !inst.has_export("_start"),
        "built as a reactor, not a command"
    );
    let mut results = Vec::new();
    for (e, a) in zlib_calls() {
        results.push(int(&inst
            .call(e, &a)
            .unwrap_or_else(|err| panic!("{e}: {err}"))));
    }
    let fed = 50_000 + 30_000 + 200_000 + 7 + 90_000;
    assert_eq!(results[0], 0, "init returns Z_OK");
    assert!(
        results[3] > 0 && results[3] < 80_000 / 2,
        "flush: compressible input compresses: {results:?}"
    );
    assert_eq!(
        results[4], 80_000,
        "drain after a sync flush gets every byte back"
    );
    assert_eq!(results[5], 1, "roundtrip_ok after a flush");
    assert!(
        results[8] >= 80_000 && results[8] <= 280_000,
        "drain of a stream still open: {results:?}"
    );
    assert_eq!(results[13], results[16], "finish returns out_len");
    assert_eq!(results[14], 1, "roundtrip_ok after finish");
    assert_eq!(results[15], fed, "drain after finish gets every byte back");
    assert_eq!(
        results[18], -2,
        "feed after finish is refused (Z_STREAM_ERROR)"
    );
    assert_eq!(results[19], 0, "re-init returns Z_OK");
    assert_eq!(results[22], 1, "the second stream round-trips");
    assert_ne!(results[23], results[17], "a new stream, a new crc");
}

/// Moved at every k, twice, by every way a snapshot travels.
#[test]
fn zlib_guest_survives_snapshot_and_restore() {
    check_case(&Case {
        name: "zlib (C, clang wasm32-wasi reactor): streaming deflate and inflate on the heap",
        module: tern_artifacts::ZLIB_GUEST.into(),
        calls: zlib_calls(),
    });
}

/// Every C guest the artifacts crate knows is a reactor that starts.
#[test]
fn every_c_guest_starts_as_a_reactor() {
    assert!(!tern_artifacts::C_GUESTS.is_empty());
    for (name, path) in tern_artifacts::C_GUESTS {
        let rt = fresh_runtime();
        let mut inst = start(&rt, Path::new(path));
        assert!(inst.has_export("_initialize"), "{name} is not a reactor");
        assert!(!inst.has_export("_start"), "{name} is a command");
    }
}

/// Snapshots to a file, drops the instance and its runtime, and resumes from
/// the file in a fresh runtime. `embed` puts the module in the snapshot;
/// without it the new runtime loads the module itself.
fn cycle(
    inst: Instance,
    dir: &Path,
    name: &str,
    embed: bool,
    copy_on_write: bool,
) -> (Arc<Runtime>, Instance) {
    let mut inst = inst;
    let path = dir.join(name);
    let snap = inst
        .snapshot(SnapshotOptions {
            embed_module: embed,
            compress: false,
            hooks: true,
        })
        .expect("snapshot");
    snap.write_file(&path).expect("write snapshot file");
    drop(snap);
    drop(inst);
    let rt = fresh_runtime();
    let snap = Snapshot::open(&path, true).expect("open snapshot file");
    let module = (!embed).then(|| {
        rt.load_file(Path::new(tern_artifacts::ZLIB_GUEST))
            .expect("load module")
    });
    let inst = Instance::restore(
        &rt,
        &snap,
        module,
        RestoreOptions {
            copy_on_write,
            hooks: true,
            ..Default::default()
        },
    )
    .expect("restore");
    (rt, inst)
}

/// Two snapshot/resume cycles through files, each into a fresh runtime: the
/// resumed app finishes its streams with the same compressed bytes (crc32)
/// and round-trips, exactly as a run that never stopped.
#[test]
fn zlib_guest_resumes_twice_from_files() {
    let calls = zlib_calls();
    // Stop after the open stream has been partly drained (deflate and
    // inflate both mid-stream), and again just before finish.
    let (cut1, cut2) = (9, 13);

    let run = |inst: &mut Instance, range: std::ops::Range<usize>| -> Vec<String> {
        calls[range]
            .iter()
            .map(|(e, a)| show(&inst.call(e, a).unwrap_or_else(|err| panic!("{e}: {err}"))))
            .collect()
    };
    let check = |inst: &mut Instance| -> (i64, i64, i64) {
        let ok = int(&inst.call("roundtrip_ok", &[]).expect("roundtrip_ok"));
        let crc = int(&inst.call("out_crc", &[]).expect("out_crc"));
        let len = int(&inst.call("out_len", &[]).expect("out_len"));
        (ok, crc, len)
    };

    // The run that never stopped.
    let rt = fresh_runtime();
    let mut straight = start(&rt, Path::new(tern_artifacts::ZLIB_GUEST));
    let empty_memory = straight.memory_bytes();
    let mut want = run(&mut straight, 0..cut1);
    let heap_at_cut1 = straight.memory_bytes();
    want.extend(run(&mut straight, cut1..cut2));
    want.extend(run(&mut straight, cut2..calls.len()));
    let want_check = check(&mut straight);
    let want_digest = state_digest(&mut straight);
    assert!(
        heap_at_cut1 > empty_memory,
        "the guest's heap grew ({empty_memory} -> {heap_at_cut1} bytes)"
    );
    assert_eq!(want_check.0, 1, "the straight run round-trips");

    // The same calls, stopped twice.
    let dir = tempfile::tempdir().unwrap();
    let rt0 = fresh_runtime();
    let mut inst = start(&rt0, Path::new(tern_artifacts::ZLIB_GUEST));
    let mut got = run(&mut inst, 0..cut1);
    drop(rt0);
    // First cycle: module embedded, pages mapped copy-on-write from the file.
    let (_rt1, mut inst) = cycle(inst, dir.path(), "one.snap", true, true);
    assert_eq!(
        inst.memory_bytes(),
        heap_at_cut1,
        "memory size after the first resume"
    );
    got.extend(run(&mut inst, cut1..cut2));
    // Second cycle: module loaded by the new runtime, pages copied.
    let (_rt2, mut inst) = cycle(inst, dir.path(), "two.snap", false, false);
    got.extend(run(&mut inst, cut2..calls.len()));
    let got_check = check(&mut inst);

    assert_eq!(got, want, "results of the calls");
    assert_eq!(
        got_check, want_check,
        "(roundtrip_ok, out_crc, out_len) at the end"
    );
    assert_eq!(state_digest(&mut inst), want_digest, "final state");
}
