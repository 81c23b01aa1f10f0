//! Runtime benchmarks: snapshot capture, restore (copying, copy-on-write,
//! verified), encoded sizes, and instantiate latency.
//!
//! Run with `cargo bench -p tern-runtime --bench snapshot`.
//!
//! The machines are shared and noisy, so every figure is printed next to a
//! baseline measured in the same run, interleaved with it repetition by
//! repetition, and compared as a ratio:
//! - moving memory (capture, restore) against a plain `copy_from_slice` of the
//!   same bytes into a pre-faulted buffer;
//! - instantiating against raw wasmtime (`Linker` + WASI p1 context +
//!   `InstancePre::instantiate` + drop) on the same module.
//!
//! Two reference rows show what first-touch page faults cost (memcpy into a
//! new `Vec`, and into a fresh `MADV_HUGEPAGE` mapping); two rows under a
//! capture time the path it replaced (`capture_memory` into an image of its
//! own, then `Snapshot::encode` copying it into the file: `Instance::snapshot`
//! now captures straight into the file's buffer); "of which" rows split a
//! copy-on-write restore into `Snapshot::open` and `Instance::restore`.
//!
//! Cases: 1, 16, 64 and 256 MiB fully touched (random data); 64 and 256 MiB
//! with 1 page in 10 touched (zero pages skipped); 64 MiB of heap-like,
//! compressible data; 1 GiB with 1 page in 6 touched (tens of thousands of
//! runs). Every restored guest is checked against the original's digest.
//!
//! Times are medians of N repetitions (7; 5 at 256 MiB; 3 at 1 GiB). Knobs
//! (for quick looks, not for the reported figures): `TERN_BENCH_SIZES=1,16`
//! (MiB of the fully touched cases), `TERN_BENCH_REPS=3`.
//!
//! Files: this one runs the cases and judges the aims; `memory.rs` measures
//! one guest memory (capture, restores, sizes); `instantiate.rs` measures
//! instantiation; `report.rs` holds the rows, medians and the table.

mod instantiate;
mod memory;
mod report;

use std::time::Instant;

use tern_runtime::{Runtime, RuntimeConfig};

use memory::Case;
use report::Row;

pub(crate) const MIB: usize = 1 << 20;
pub(crate) const PAGE: usize = 4096;
pub(crate) const WASM_PAGE: usize = 64 * 1024;

/// The guest: grows its memory, fills pages, touches pages, digests memory.
const GUEST: &str = r#"
(module
  (memory 1)
  ;; Grows the memory to $pages Wasm pages; returns the old size or -1.
  (func (export "grow_to") (param $pages i32) (result i32)
    (local $cur i32)
    (local.set $cur (memory.size))
    (if (result i32) (i32.gt_u (local.get $pages) (local.get $cur))
      (then (memory.grow (i32.sub (local.get $pages) (local.get $cur))))
      (else (local.get $cur))))
  ;; Fills every $stride-th 4 KiB page below page $n4k with xorshift64 words.
  ;; $mode 0: every word random (incompressible); 1: one random word per
  ;; 64 bytes, the other seven a fixed pattern (heap-like, compressible).
  (func (export "fill") (param $n4k i32) (param $stride i32) (param $mode i32) (param $seed i64)
    (local $p i32) (local $a i32) (local $end i32) (local $x i64) (local $w i64)
    (local.set $x (local.get $seed))
    (block $done
      (loop $pages
        (br_if $done (i32.ge_u (local.get $p) (local.get $n4k)))
        (local.set $a (i32.shl (local.get $p) (i32.const 12)))
        (local.set $end (i32.add (local.get $a) (i32.const 4096)))
        (loop $words
          (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
          (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
          (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
          (local.set $w (local.get $x))
          (if (i32.and (i32.ne (local.get $mode) (i32.const 0))
                       (i32.ne (i32.and (local.get $a) (i32.const 63)) (i32.const 0)))
            (then (local.set $w (i64.const 0x2d2d6b6f6f7b2022))))
          (i64.store (local.get $a) (local.get $w))
          (local.set $a (i32.add (local.get $a) (i32.const 8)))
          (br_if $words (i32.lt_u (local.get $a) (local.get $end))))
        (local.set $p (i32.add (local.get $p) (local.get $stride)))
        (br $pages))))
  ;; Writes one word in every $stride-th 4 KiB page below page $n4k.
  (func (export "touch") (param $n4k i32) (param $stride i32)
    (local $p i32) (local $a i32)
    (block $done
      (loop $pages
        (br_if $done (i32.ge_u (local.get $p) (local.get $n4k)))
        (local.set $a (i32.add (i32.shl (local.get $p) (i32.const 12)) (i32.const 8)))
        (i64.store (local.get $a) (i64.add (i64.load (local.get $a)) (i64.const 1)))
        (local.set $p (i32.add (local.get $p) (local.get $stride)))
        (br $pages))))
  ;; A position-sensitive digest of the whole memory.
  (func (export "digest") (result i64)
    (local $a i32) (local $end i32) (local $h i64)
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (block $done
      (loop $words
        (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $h (i64.xor (i64.rotl (local.get $h) (i64.const 5)) (i64.load (local.get $a))))
        (local.set $a (i32.add (local.get $a) (i32.const 8)))
        (br $words)))
    (local.get $h)))
"#;

fn env_usize_list(name: &str) -> Option<Vec<usize>> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn main() {
    let t0 = Instant::now();
    let reps_override = env_usize_list("TERN_BENCH_REPS").and_then(|v| v.first().copied());
    let sizes = env_usize_list("TERN_BENCH_SIZES").unwrap_or_else(|| vec![1, 16, 64, 256]);
    let reps_for = |mib: usize| {
        reps_override.unwrap_or(if mib >= 1024 {
            3
        } else if mib >= 256 {
            5
        } else {
            7
        })
    };

    let rt = Runtime::new(RuntimeConfig { cache_dir: None }).expect("runtime");
    let module = rt
        .load(wat::parse_str(GUEST).expect("guest WAT"))
        .expect("load guest");
    let dir = tempfile::tempdir().expect("temp dir");

    let mut cases = Vec::new();
    for &mib in &sizes {
        cases.push(Case {
            name: "full",
            mem_mib: mib,
            stride: 1,
            mode: 0,
            restores: true,
            compressed: mib == 64,
        });
    }
    for &mib in sizes.iter().filter(|&&m| m >= 64) {
        cases.push(Case {
            name: "sparse",
            mem_mib: mib,
            stride: 10,
            mode: 0,
            restores: true,
            compressed: false,
        });
    }
    if sizes.contains(&64) {
        cases.push(Case {
            name: "heap-like",
            mem_mib: 64,
            stride: 1,
            mode: 1,
            restores: false,
            compressed: true,
        });
    }
    if sizes.contains(&256) {
        // 43 691 one-page runs: more mappings than vm.max_map_count allows
        // if every run were mapped.
        cases.push(Case {
            name: "scattered",
            mem_mib: 1024,
            stride: 6,
            mode: 0,
            restores: true,
            compressed: false,
        });
    }

    eprintln!(
        "tern runtime bench: {} cases (medians; baselines measured in the same run)",
        cases.len()
    );
    let mut sections: Vec<(String, Vec<Row>)> = Vec::new();
    for mut case in cases {
        let mut rows = Vec::new();
        let name = format!("{}-{}MiB", case.name, case.mem_mib);
        case.name = Box::leak(name.clone().into_boxed_str());
        memory::bench_case(
            &rt,
            &module,
            dir.path(),
            &case,
            reps_for(case.mem_mib),
            &mut rows,
        );
        let title = match (case.mode, case.stride) {
            (1, _) => format!(
                "{} MiB, every page touched, heap-like (compressible) data",
                case.mem_mib
            ),
            (_, 1) => format!("{} MiB, every page touched, random data", case.mem_mib),
            (_, s) => format!("{} MiB, 1 page in {s} touched, random data", case.mem_mib),
        };
        sections.push((title, rows));
    }
    // Copy-on-write restore and `Snapshot::open` "flat in size": within 2×
    // of the smallest fully touched case.
    for kind in ["copy-on-write restore", "  of which Snapshot::open"] {
        let judged = |r: &Row| r.what.starts_with(kind) && r.aim == "flat in size";
        let smallest = sections
            .iter()
            .flat_map(|(_, rows)| rows.iter())
            .find(|r| judged(r))
            .and_then(|r| r.time);
        if let Some(t1) = smallest {
            for r in sections
                .iter_mut()
                .flat_map(|(_, rows)| rows.iter_mut())
                .filter(|r| judged(r))
            {
                let x = r.time.unwrap() / t1;
                r.aim = format!("≤ 2× smallest ({x:.1}×)");
                r.met = if x <= 2.0 { "yes" } else { "no" };
            }
        }
    }
    let mut rows = Vec::new();
    instantiate::bench_instantiate(&rt, reps_override.unwrap_or(15), &mut rows);
    sections.push(("instantiate".into(), rows));

    report::print(&sections);
    println!("total bench time: {:.1} s", t0.elapsed().as_secs_f64());
}
