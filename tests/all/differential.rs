//! Differential snapshot tests: for every guest in the corpus, N calls run
//! straight through must give the same results and the same final state as
//! the same calls stopped after call k, snapshotted, restored in a fresh
//! engine and continued — for many k, every way of moving a snapshot, and
//! two moves in a row.

use std::path::PathBuf;

use tern_runtime::Val;

use crate::support::{fresh_runtime, move_instance, show, start, state_digest, wat, Via};

/// A guest and the calls to make on it.
pub struct Case {
    pub name: &'static str,
    pub module: PathBuf,
    pub calls: Vec<(&'static str, Vec<Val>)>,
}

fn i32s(v: &[i32]) -> Vec<Val> {
    v.iter().map(|&x| Val::I32(x)).collect()
}
fn i64s(v: &[i64]) -> Vec<Val> {
    v.iter().map(|&x| Val::I64(x)).collect()
}

pub fn wat_cases() -> Vec<Case> {
    vec![
        Case {
            name: "contract counter (non-exported global + memory)",
            module: wat("contract_counter.wat"),
            calls: (1..=8)
                .map(|i| ("add", i64s(&[i * 3])))
                .chain([("get", vec![])])
                .collect(),
        },
        Case {
            name: "start section runs once",
            module: wat("start_section.wat"),
            calls: vec![
                ("bump", vec![]),
                ("starts", vec![]),
                ("bump", vec![]),
                ("starts", vec![]),
                ("bump", vec![]),
            ],
        },
        Case {
            name: "memory grown at run time, sparse pages",
            module: wat("misbehave.wat"),
            calls: vec![
                ("touch", i32s(&[0, 3, 7])),
                ("grow", i32s(&[20])),
                ("touch", i32s(&[200, 50, 9])),
                ("ok", vec![]),
                ("sum", i32s(&[0, 300])),
                ("grow", i32s(&[5])),
                ("touch", i32s(&[330, 2, 1])),
                ("pages", vec![]),
                ("sum", i32s(&[0, 400])),
            ],
        },
        Case {
            name: "globals of every numeric type, not exported",
            module: wat("globals.wat"),
            calls: (1..=6)
                .map(|i| ("step", i64s(&[i * 1000 - 7])))
                .chain([("peek", vec![]), ("get_f64", vec![]), ("steps", vec![])])
                .collect(),
        },
        Case {
            name: "table rewritten with table.set and grown",
            module: wat("table.wat"),
            calls: vec![
                ("set", i32s(&[2, 2])),
                ("apply_all", i64s(&[3])),
                ("set", i32s(&[0, 3])),
                ("grow", i32s(&[2])),
                ("set", i32s(&[5, 1])),
                ("rotate", vec![]),
                ("apply_all", i64s(&[5])),
                ("set", i32s(&[1, 9])),
                ("is_null", i32s(&[1])),
                ("apply_all", i64s(&[-4])),
                ("size", vec![]),
            ],
        },
        Case {
            name: "memory.grow with data segments",
            module: wat("grow.wat"),
            calls: vec![
                ("write", vec![Val::I32(0), Val::I64(11)]),
                ("grow", i32s(&[2])),
                ("write", vec![Val::I32(2), Val::I64(22)]),
                ("poke_data", i32s(&[3, 99])),
                ("data_checksum", vec![]),
                ("grow", i32s(&[1])),
                ("write", vec![Val::I32(3), Val::I64(33)]),
                ("sum", vec![]),
                ("grows", vec![]),
                ("size", vec![]),
                ("data_checksum", vec![]),
            ],
        },
    ]
}

/// Rust guests (wasm32-wasip1, built by tern-artifacts) with heap state.
pub fn rust_cases() -> Vec<Case> {
    vec![
        Case {
            name: "heapstate: HashMap and Vec on the heap, a grown buffer",
            module: tern_artifacts::HEAPSTATE.into(),
            calls: vec![
                ("push", i64s(&[5])),
                ("push", i64s(&[-17])),
                ("grow", i64s(&[40])),
                ("touch", i64s(&[300, 7])),
                ("push", i64s(&[5])),
                ("count", i64s(&[5])),
                ("digest", vec![]),
                ("grow", i64s(&[8])),
                ("touch", i64s(&[100, 9])),
                ("sum", vec![]),
                ("len", vec![]),
                ("digest", vec![]),
            ],
        },
        Case {
            name: "counter example",
            module: tern_artifacts::COUNTER.into(),
            calls: (1..=5)
                .map(|i| ("add", i64s(&[i])))
                .chain([("get", vec![])])
                .collect(),
        },
        Case {
            name: "life example: a long computation that grows its state",
            module: tern_artifacts::LIFE.into(),
            calls: (0..6).map(|_| ("steps", i64s(&[7]))).collect(),
        },
    ]
}

/// Runs all calls straight through: results and final state digest.
fn straight(case: &Case) -> (Vec<String>, u128) {
    let rt = fresh_runtime();
    let mut inst = start(&rt, &case.module);
    let results = case
        .calls
        .iter()
        .map(|(e, a)| {
            show(
                &inst
                    .call(e, a)
                    .unwrap_or_else(|err| panic!("{}: {e}: {err}", case.name)),
            )
        })
        .collect();
    (results, state_digest(&mut inst))
}

/// Runs the calls, moving the app before call `k1` and again before `k2`.
fn moved(
    case: &Case,
    k1: usize,
    k2: usize,
    via: Via,
    dir: &std::path::Path,
) -> (Vec<String>, u128) {
    let rt = fresh_runtime();
    let mut inst = start(&rt, &case.module);
    let mut results = Vec::new();
    for (i, (e, a)) in case.calls.iter().enumerate() {
        if i == k1 || i == k2 {
            inst = move_instance(&mut inst, via, dir);
        }
        results.push(show(&inst.call(e, a).unwrap_or_else(|err| {
            panic!("{} (moved at {k1},{k2} via {via:?}): {e}: {err}", case.name)
        })));
    }
    if k1 == case.calls.len() || k2 == case.calls.len() {
        inst = move_instance(&mut inst, via, dir);
    }
    (results, state_digest(&mut inst))
}

pub fn check_case(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let (want, want_digest) = straight(case);
    let n = case.calls.len();
    for via in [Via::BytesCopy, Via::FileCow, Via::FileCopy, Via::Compressed] {
        for k in 0..=n {
            let k2 = (k + n).div_ceil(2).max(k + 1);
            let (got, digest) = moved(case, k, k2, via, dir.path());
            assert_eq!(
                got, want,
                "{}: results differ when moved at {k} and {k2} via {via:?}",
                case.name
            );
            assert_eq!(
                digest, want_digest,
                "{}: final state differs when moved at {k} and {k2} via {via:?}",
                case.name
            );
        }
    }
}

#[test]
fn wat_guests_survive_snapshot_and_restore() {
    for case in wat_cases() {
        check_case(&case);
    }
}

#[test]
fn rust_guests_survive_snapshot_and_restore() {
    for case in rust_cases() {
        check_case(&case);
    }
}
