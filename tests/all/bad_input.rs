//! Bad input gets a clear error and loses nothing.

use tern_runtime::{
    AppConfig, Error, Instance, RestoreOptions, Snapshot, SnapshotError, SnapshotOptions, Val,
};

use crate::limits::wat_bytes;
use crate::support::{fresh_runtime, start, wat};

#[test]
fn modules_that_do_not_validate_are_refused_clearly() {
    let rt = fresh_runtime();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not wasm at all".to_vec(), "not valid WebAssembly"),
        (b"\0asm\x01\0\0\0\x01\xff".to_vec(), "not valid WebAssembly"),
        (
            wat_bytes("(module (func (export \"f\") (result i32) (i64.const 1)))"),
            "not valid WebAssembly",
        ),
        (
            wat_bytes("(module (func (export \"__tern_global_0\")))"),
            "reserved",
        ),
        (
            wat_bytes("(module (import \"env\" \"mem\" (memory 1)))"),
            "imports a memory",
        ),
        (
            wat_bytes("(module (import \"env\" \"host_fn\" (func)))"),
            "env",
        ),
    ];
    for (bytes, needle) in cases {
        let e = match rt.load(bytes) {
            Ok(_) => panic!("module accepted; expected an error mentioning `{needle}`"),
            Err(e) => e,
        };
        assert!(
            e.to_string().contains(needle),
            "`{e}` should mention `{needle}`"
        );
    }
}

fn counter_snapshot() -> Snapshot {
    let rt = fresh_runtime();
    let mut inst = start(&rt, &wat("contract_counter.wat"));
    inst.call("add", &[Val::I64(41)]).unwrap();
    inst.snapshot(SnapshotOptions::default()).unwrap()
}

#[test]
fn a_corrupted_byte_is_an_error_not_a_wrong_answer() {
    let snap = counter_snapshot();
    let bytes = snap.as_bytes().to_vec();
    // Flip one byte at many places, stepping through the whole file.
    let step = (bytes.len() / 997).max(1);
    let mut refused = 0;
    for pos in (0..bytes.len()).step_by(step) {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x5a;
        match Snapshot::from_bytes(bad) {
            Err(_) => refused += 1,
            Ok(s) => {
                // Only padding that no reader looks at may change silently:
                // the restored app must then be exactly the original.
                let rt = fresh_runtime();
                let mut inst = Instance::restore(&rt, &s, None, RestoreOptions::default()).unwrap();
                assert_eq!(
                    inst.call("get", &[]).unwrap()[0].unwrap_i64(),
                    41,
                    "byte {pos} changed the state silently"
                );
            }
        }
    }
    assert!(refused > 0);
}

#[test]
fn truncated_and_foreign_snapshots_are_refused() {
    let snap = counter_snapshot();
    let bytes = snap.as_bytes();
    for keep in [0, 7, 63, 4096, bytes.len() / 2, bytes.len() - 1] {
        let e = Snapshot::from_bytes(bytes[..keep].to_vec()).unwrap_err();
        let ok = matches!(e, SnapshotError::Truncated { .. } | SnapshotError::BadMagic);
        assert!(ok, "keep {keep}: {e}");
    }
    let e = Snapshot::from_bytes(wat_bytes("(module)")).unwrap_err();
    assert!(e.to_string().contains("not a tern snapshot"), "{e}");
}

#[test]
fn a_snapshot_of_another_module_is_refused() {
    let snap = counter_snapshot();
    let rt = fresh_runtime();
    let other = rt.load_file(&wat("misbehave.wat")).unwrap();
    let e = Instance::restore(&rt, &snap, Some(other), RestoreOptions::default()).unwrap_err();
    assert!(matches!(e, Error::ModuleMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("deploy the same module first"),
        "{e}"
    );
}

#[test]
fn a_snapshot_without_its_module_needs_the_module() {
    let rt = fresh_runtime();
    let mut inst = start(&rt, &wat("contract_counter.wat"));
    inst.call("add", &[Val::I64(2)]).unwrap();
    let snap = inst
        .snapshot(SnapshotOptions {
            embed_module: false,
            ..Default::default()
        })
        .unwrap();
    let rt2 = fresh_runtime();
    let e = Instance::restore(&rt2, &snap, None, RestoreOptions::default()).unwrap_err();
    assert!(matches!(e, Error::ModuleMissing(_)), "{e}");
    let m = rt2.load_file(&wat("contract_counter.wat")).unwrap();
    let mut back = Instance::restore(&rt2, &snap, Some(m), RestoreOptions::default()).unwrap();
    assert_eq!(back.call("get", &[]).unwrap()[0].unwrap_i64(), 2);
    let _ = AppConfig::default();
}
