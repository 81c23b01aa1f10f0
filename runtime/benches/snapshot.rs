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

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tern_runtime::snapshot::{Meta, SnapshotParts};
use tern_runtime::{
    AppConfig, Instance, LimitsState, LoadedModule, RestoreOptions, Runtime, RuntimeConfig,
    Snapshot, SnapshotOptions, Val, WasiState,
};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const WASM_PAGE: usize = 64 * 1024;

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

/// A guest memory to measure.
struct Case {
    name: &'static str,
    /// Memory size.
    mem_mib: usize,
    /// Every `stride`-th 4 KiB page is touched.
    stride: usize,
    /// Fill mode of the guest (0 random, 1 heap-like).
    mode: i32,
    /// Measure the restore rows.
    restores: bool,
    /// Measure `compress: true` rows.
    compressed: bool,
}

struct Row {
    what: String,
    size: String,
    /// Median time in seconds (None for size-only rows).
    time: Option<f64>,
    /// Bytes moved, for a bandwidth.
    bytes: Option<u64>,
    baseline: String,
    ratio: String,
    aim: String,
    met: &'static str,
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_bw(bytes: u64, s: f64) -> String {
    let gib = bytes as f64 / s / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB/s")
    } else {
        format!("{:.0} MiB/s", gib * 1024.0)
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= MIB as u64 {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn env_usize_list(name: &str) -> Option<Vec<usize>> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn guest(rt: &Arc<Runtime>, module: &Arc<LoadedModule>, case: &Case, seed: i64) -> Instance {
    let mut inst = Instance::start(rt, module, AppConfig::default()).expect("start guest");
    let wasm_pages = (case.mem_mib * MIB / WASM_PAGE) as i32;
    let old = inst.call("grow_to", &[Val::I32(wasm_pages)]).expect("grow")[0].unwrap_i32();
    assert!(old >= 0, "memory.grow to {} MiB failed", case.mem_mib);
    let n4k = (case.mem_mib * MIB / PAGE) as i32;
    inst.call(
        "fill",
        &[
            Val::I32(n4k),
            Val::I32(case.stride as i32),
            Val::I32(case.mode),
            Val::I64(seed),
        ],
    )
    .expect("fill");
    inst
}

/// A fresh private anonymous mapping that asks for huge pages.
struct HugeBuf(*mut u8, usize);

impl HugeBuf {
    fn new(len: usize) -> HugeBuf {
        // SAFETY: a fresh anonymous mapping, unmapped on drop.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
            HugeBuf(p.cast(), len)
        }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// Residency of a guest memory as `Instance::snapshot` passes it (mincore).
fn residency(mem: &[u8]) -> Option<Vec<u8>> {
    let mut v = vec![0u8; mem.len().div_ceil(PAGE)];
    // SAFETY: the range is the guest's accessible memory.
    let rc = unsafe { libc::mincore(mem.as_ptr() as *mut _, mem.len(), v.as_mut_ptr()) };
    (rc == 0).then_some(v)
}

fn digest(inst: &mut Instance) -> i64 {
    inst.call("digest", &[]).expect("digest")[0].unwrap_i64()
}

fn restore(rt: &Arc<Runtime>, snap: &Snapshot, module: &Arc<LoadedModule>, cow: bool) -> Instance {
    Instance::restore(
        rt,
        snap,
        Some(module.clone()),
        RestoreOptions {
            copy_on_write: cow,
            ..Default::default()
        },
    )
    .expect("restore")
}

/// Ratio of bandwidths (same bytes): how fast this is relative to memcpy.
fn bw_ratio(base: f64, t: f64) -> String {
    format!("{:.2}× bw", base / t)
}

fn bench_case(
    rt: &Arc<Runtime>,
    module: &Arc<LoadedModule>,
    dir: &Path,
    case: &Case,
    reps: usize,
    rows: &mut Vec<Row>,
) {
    let started = Instant::now();
    let mut inst = guest(
        rt,
        module,
        case,
        0x9e37_79b9_7f4a_7c15u64 as i64 ^ case.mem_mib as i64,
    );
    let n4k = case.mem_mib * MIB / PAGE;
    let touched: Vec<usize> = (0..n4k).step_by(case.stride).collect();
    let tb = touched.len() * PAGE;
    let size = if case.stride == 1 {
        format!("{} MiB", case.mem_mib)
    } else {
        format!("{} MiB, {} touched", case.mem_mib, fmt_bytes(tb as u64))
    };
    let plain = SnapshotOptions {
        embed_module: false,
        compress: false,
        hooks: false,
    };
    let packed = SnapshotOptions {
        embed_module: false,
        compress: true,
        hooks: false,
    };

    // One snapshot written to a file (atomically, fsynced) for the file restores.
    let snap = inst.snapshot(plain).expect("snapshot");
    let encoded = snap.as_bytes().len() as u64;
    let path = dir.join(format!("{}.snap", case.name));
    snap.write_file(&path).expect("write snapshot");
    let bytes = snap.as_bytes().to_vec();
    drop(snap);
    let packed_snap = case
        .compressed
        .then(|| inst.snapshot(packed).expect("compressed snapshot"));
    let packed_len = packed_snap.as_ref().map(|s| s.as_bytes().len() as u64);
    let packed_bytes = packed_snap.map(|s| s.as_bytes().to_vec());

    let mut dst = vec![0xa5u8; tb]; // pre-faulted
    let n4k_i = n4k as i32;
    let stride_i = case.stride as i32;

    let mut t_memcpy = Vec::new();
    let mut t_fresh = Vec::new();
    let mut t_huge = Vec::new();
    let mut t_capture = Vec::new();
    let mut t_capture_memory = Vec::new();
    let mut t_encode = Vec::new();
    let mut t_open = Vec::new();
    let mut t_packed = Vec::new();
    let mut t_packed_restore = Vec::new();
    let mut t_decode = Vec::new();
    let mut t_bytes = Vec::new();
    let mut t_file_copy = Vec::new();
    let mut t_cow = Vec::new();
    let mut t_touch = Vec::new();
    let mut t_verified = Vec::new();
    let mut t_resident_touch = Vec::new();
    let mut last: Vec<(&'static str, Instance)> = Vec::new();

    for rep in 0..reps {
        let keep = rep + 1 == reps;
        // Baseline: memcpy of the touched bytes into a pre-faulted buffer.
        {
            let src = inst.memory_data(0).unwrap();
            let t = Instant::now();
            if case.stride == 1 {
                dst.copy_from_slice(&src[..tb]);
            } else {
                for (i, p) in touched.iter().enumerate() {
                    dst[i * PAGE..(i + 1) * PAGE].copy_from_slice(&src[p * PAGE..(p + 1) * PAGE]);
                }
            }
            black_box(&mut dst);
            t_memcpy.push(secs(t));
        }
        // Reference: the same copy into a freshly allocated buffer (page faults).
        {
            let src = inst.memory_data(0).unwrap();
            let t = Instant::now();
            let mut v: Vec<u8> = Vec::with_capacity(tb);
            if case.stride == 1 {
                v.extend_from_slice(&src[..tb]);
            } else {
                for p in &touched {
                    v.extend_from_slice(&src[p * PAGE..(p + 1) * PAGE]);
                }
            }
            black_box(&mut v);
            t_fresh.push(secs(t));
            drop(v);
        }
        // Reference: the same copy into fresh memory backed by huge pages.
        {
            let src = inst.memory_data(0).unwrap();
            let t = Instant::now();
            let buf = HugeBuf::new(tb);
            // SAFETY: `buf` is a fresh private mapping of `tb` bytes.
            let v = unsafe { std::slice::from_raw_parts_mut(buf.0, tb) };
            if case.stride == 1 {
                v.copy_from_slice(&src[..tb]);
            } else {
                for (i, p) in touched.iter().enumerate() {
                    v[i * PAGE..(i + 1) * PAGE].copy_from_slice(&src[p * PAGE..(p + 1) * PAGE]);
                }
            }
            black_box(&mut *v);
            t_huge.push(secs(t));
            drop(buf);
        }
        // Capture.
        {
            let t = Instant::now();
            let s = inst.snapshot(plain).expect("snapshot");
            t_capture.push(secs(t));
            assert_eq!(
                s.as_bytes().len() as u64,
                encoded,
                "encoding is deterministic"
            );
            drop(s);
            // The two-step path it replaced, for comparison: zero-page scan,
            // copy and hash into an image of its own ...
            let src = inst.memory_data(0).unwrap();
            let resident = residency(src);
            let t = Instant::now();
            let cap = tern_runtime::snapshot::capture_memory(0, src, resident.as_deref(), false);
            t_capture_memory.push(secs(t));
            // ... then laying out the file, copying the image again.
            let parts = SnapshotParts {
                meta: Meta::default(),
                limits: LimitsState::default(),
                wasi: WasiState::default(),
                globals: vec![],
                tables: vec![],
                memories: vec![cap],
                module: None,
                files: vec![],
            };
            let t = Instant::now();
            let s = Snapshot::encode(parts);
            t_encode.push(secs(t));
            drop(s);
        }
        if case.compressed {
            let t = Instant::now();
            let s = inst.snapshot(packed).expect("compressed snapshot");
            t_packed.push(secs(t));
            drop(s);
            let b = packed_bytes.as_ref().unwrap().clone();
            let t = Instant::now();
            let s = Snapshot::from_bytes(b).expect("decode compressed");
            let r = restore(rt, &s, module, false);
            t_packed_restore.push(secs(t));
            if keep {
                last.push(("restore from compressed bytes", r));
            }
        }
        if !case.restores {
            continue;
        }
        // Copying restore from bytes: decode (header, body, image checksum) + restore.
        {
            let b = bytes.clone();
            let t = Instant::now();
            let s = Snapshot::from_bytes(b).expect("decode");
            let decoded = secs(t);
            let r = restore(rt, &s, module, false);
            t_bytes.push(secs(t));
            t_decode.push(decoded);
            // Reference for the copy-on-write touch: the same guest touch on
            // memory that is already private and resident.
            let mut r = r;
            let t = Instant::now();
            r.call("touch", &[Val::I32(n4k_i), Val::I32(stride_i)])
                .expect("touch");
            t_resident_touch.push(secs(t));
            drop(r);
        }
        // Copying restore from a file (no image verification).
        {
            let t = Instant::now();
            let s = Snapshot::open(&path, false).expect("open");
            let r = restore(rt, &s, module, false);
            t_file_copy.push(secs(t));
            if keep {
                last.push(("copying restore from file", r));
            }
        }
        // Copy-on-write restore, then the guest touching every touched page.
        {
            let t = Instant::now();
            let s = Snapshot::open(&path, false).expect("open");
            t_open.push(secs(t));
            let mut r = restore(rt, &s, module, true);
            t_cow.push(secs(t));
            let t = Instant::now();
            r.call("touch", &[Val::I32(n4k_i), Val::I32(stride_i)])
                .expect("touch");
            t_touch.push(secs(t));
            drop(r);
        }
        // Verified open (every stored byte hashed) + copy-on-write restore.
        {
            let t = Instant::now();
            let s = Snapshot::open(&path, true).expect("open verified");
            let r = restore(rt, &s, module, true);
            t_verified.push(secs(t));
            if keep {
                last.push(("verified copy-on-write restore", r));
            }
        }
    }
    // Every restored guest must hold exactly the original memory. (Digests
    // read every page, which would make untouched pages resident: only now.)
    let want = digest(&mut inst);
    if case.restores {
        // One more from bytes, untouched, for the check.
        let s = Snapshot::from_bytes(bytes.clone()).expect("decode");
        last.push(("copying restore from bytes", restore(rt, &s, module, false)));
    }
    for (what, r) in &mut last {
        assert_eq!(
            digest(r),
            want,
            "{what} of {} restored a different memory",
            case.name
        );
    }
    drop(last);

    let memcpy = median(t_memcpy);
    let base = format!("memcpy {}", fmt_time(memcpy));
    let tbu = tb as u64;
    let mut push =
        |what: &str, t: f64, bytes: Option<u64>, ratio: String, aim: &str, met: &'static str| {
            rows.push(Row {
                what: what.into(),
                size: size.clone(),
                time: Some(t),
                bytes,
                baseline: base.clone(),
                ratio,
                aim: aim.into(),
                met,
            });
        };
    push(
        "memcpy → pre-faulted buffer (baseline)",
        memcpy,
        Some(tbu),
        "1.00× bw".into(),
        "",
        "",
    );
    let fresh = median(t_fresh);
    push(
        "memcpy → new Vec (incl. page faults)",
        fresh,
        Some(tbu),
        bw_ratio(memcpy, fresh),
        "",
        "",
    );
    let huge = median(t_huge);
    push(
        "memcpy → fresh mmap + MADV_HUGEPAGE",
        huge,
        Some(tbu),
        bw_ratio(memcpy, huge),
        "",
        "",
    );
    let cap = median(t_capture);
    let ok = |b: bool| if b { "yes" } else { "no" };
    push(
        "capture (no compression)",
        cap,
        Some(tbu),
        bw_ratio(memcpy, cap),
        "≥ 0.50× bw",
        ok(memcpy / cap >= 0.5),
    );
    let t = median(t_capture_memory);
    push(
        "  old path, step 1: capture_memory (scan, copy + page hashes)",
        t,
        Some(tbu),
        bw_ratio(memcpy, t),
        "",
        "",
    );
    let t = median(t_encode);
    push(
        "  old path, step 2: Snapshot::encode (copy into the file, image hash)",
        t,
        Some(tbu),
        bw_ratio(memcpy, t),
        "",
        "",
    );
    rows.push(Row {
        what: "encoded size".into(),
        size: size.clone(),
        time: None,
        bytes: None,
        baseline: format!("touched {}", fmt_bytes(tbu)),
        ratio: format!(
            "{} = {:.3}× touched",
            fmt_bytes(encoded),
            encoded as f64 / tbu as f64
        ),
        aim: String::new(),
        met: "",
    });
    if case.compressed {
        let t = median(t_packed);
        let pl = packed_len.unwrap();
        let mut push = |what: &str, t: f64, ratio: String| {
            rows.push(Row {
                what: what.into(),
                size: size.clone(),
                time: Some(t),
                bytes: Some(tbu),
                baseline: base.clone(),
                ratio,
                aim: String::new(),
                met: "",
            });
        };
        push("capture, compress: true", t, bw_ratio(memcpy, t));
        rows.push(Row {
            what: "compressed size".into(),
            size: size.clone(),
            time: None,
            bytes: None,
            baseline: format!("touched {}", fmt_bytes(tbu)),
            ratio: format!("{} = {:.3}× touched", fmt_bytes(pl), pl as f64 / tbu as f64),
            aim: String::new(),
            met: "",
        });
        let t = median(t_packed_restore);
        let mut push = |what: &str, t: f64, ratio: String| {
            rows.push(Row {
                what: what.into(),
                size: size.clone(),
                time: Some(t),
                bytes: Some(tbu),
                baseline: base.clone(),
                ratio,
                aim: String::new(),
                met: "",
            });
        };
        push(
            "restore from compressed bytes (decode + copy)",
            t,
            bw_ratio(memcpy, t),
        );
    }
    if case.restores {
        let mut push = |what: &str, t: f64, ratio: String, aim: &str, met: &'static str| {
            rows.push(Row {
                what: what.into(),
                size: size.clone(),
                time: Some(t),
                bytes: Some(tbu),
                baseline: base.clone(),
                ratio,
                aim: aim.into(),
                met,
            });
        };
        let t = median(t_decode);
        push(
            "  Snapshot::from_bytes alone (checksums)",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_bytes);
        push(
            "copying restore, from_bytes + restore",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_file_copy);
        push(
            "copying restore, open(verify=false) + restore",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t_inst: Vec<f64> = t_cow.iter().zip(&t_open).map(|(c, o)| c - o).collect();
        let cow = median(t_cow);
        let (aim, met) = match (case.mem_mib, case.stride) {
            (64, 1) => ("< 1 ms", ok(cow < 1e-3)),
            (_, 1) => ("flat in size", ""), // judged against the 1 MiB case in main
            _ => ("", ""),
        };
        push(
            "copy-on-write restore, open(verify=false) + restore",
            cow,
            bw_ratio(memcpy, cow),
            aim,
            met,
        );
        let t = median(t_open);
        push(
            "  of which Snapshot::open (header, body, page hashes)",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_inst);
        push(
            "  of which Instance::restore (instantiate, map runs)",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_touch);
        push(
            "  then guest writes every touched page (deferred)",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_resident_touch);
        push(
            "  same writes on resident memory (reference)",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
        let t = median(t_verified);
        push(
            "verified restore, open(verify=true) + CoW restore",
            t,
            bw_ratio(memcpy, t),
            "",
            "",
        );
    }
    eprintln!(
        "  {:<14} {:>6.1} s",
        case.name,
        started.elapsed().as_secs_f64()
    );
}

/// Instantiate latency: tern's `Instance::start` against raw wasmtime.
fn bench_instantiate(rt: &Arc<Runtime>, reps: usize, rows: &mut Vec<Row>) {
    use wasmtime::{Config, Engine, Linker, Module, Store};
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::WasiCtxBuilder;

    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests/wat/contract_counter.wat");
    let wasm = wat::parse_file(&path).expect("contract_counter.wat");
    let loaded = rt.load(wasm.clone()).expect("load");

    // Raw wasmtime, default engine, the original module.
    let engine = Engine::new(&Config::new()).unwrap();
    let module = Module::new(&engine, &wasm).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |t| t).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();

    // Raw wasmtime on tern's engine (fuel, epochs, tern's memory creator) and
    // the rewritten module: splits tern's overhead into engine and wrapper.
    let mut tlinker: Linker<WasiP1Ctx> = Linker::new(rt.engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut tlinker, |t| t).unwrap();
    let tpre = tlinker.instantiate_pre(&loaded.module).unwrap();

    const K: usize = 300;
    let (mut raw, mut raw_tern, mut tern) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..K {
            let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
            let i = pre.instantiate(&mut store).unwrap();
            black_box(i);
            drop(store);
        }
        raw.push(secs(t) / K as f64);
        let t = Instant::now();
        for _ in 0..K {
            let mut store = Store::new(rt.engine(), WasiCtxBuilder::new().build_p1());
            let i = tpre.instantiate(&mut store).unwrap();
            black_box(i);
            drop(store);
        }
        raw_tern.push(secs(t) / K as f64);
        let t = Instant::now();
        for _ in 0..K {
            let i = Instance::start(rt, &loaded, AppConfig::default()).unwrap();
            drop(black_box(i));
        }
        tern.push(secs(t) / K as f64);
    }
    let raw = median(raw);
    let raw_tern = median(raw_tern);
    let tern = median(tern);
    let base = format!("raw wasmtime {}", fmt_time(raw));
    let size = "contract_counter".to_string();
    let mut push = |what: &str, t: f64, aim: &str, met: &'static str| {
        rows.push(Row {
            what: what.into(),
            size: size.clone(),
            time: Some(t),
            bytes: None,
            baseline: base.clone(),
            ratio: format!("{:.2}× time", t / raw),
            aim: aim.into(),
            met,
        });
    };
    push(
        "raw wasmtime: Store + WASI p1 + instantiate + drop (baseline)",
        raw,
        "",
        "",
    );
    push(
        "  same on tern's engine and rewritten module",
        raw_tern,
        "",
        "",
    );
    push(
        "Instance::start + drop",
        tern,
        "≤ 1.5× time",
        if tern / raw <= 1.5 { "yes" } else { "no" },
    );
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
        bench_case(
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
    // Copy-on-write restore "flat in size": within 2× of the 1 MiB case.
    let is_cow = |r: &Row| r.what.starts_with("copy-on-write restore") && r.aim == "flat in size";
    let smallest = sections
        .iter()
        .flat_map(|(_, rows)| rows.iter())
        .find(|r| is_cow(r))
        .and_then(|r| r.time);
    if let Some(t1) = smallest {
        for r in sections
            .iter_mut()
            .flat_map(|(_, rows)| rows.iter_mut())
            .filter(|r| is_cow(r))
        {
            let x = r.time.unwrap() / t1;
            r.aim = format!("≤ 2× smallest ({x:.1}×)");
            r.met = if x <= 2.0 { "yes" } else { "no" };
        }
    }
    let mut rows = Vec::new();
    bench_instantiate(&rt, reps_override.unwrap_or(15), &mut rows);
    sections.push(("instantiate".into(), rows));

    println!();
    println!("| what | size | time | bandwidth | baseline (same run) | ratio | aim | met |");
    println!("|---|---|---|---|---|---|---|---|");
    for (title, rows) in &sections {
        println!("| **{title}** | | | | | | | |");
        for r in rows {
            let time = r.time.map(fmt_time).unwrap_or_default();
            let bw = match (r.time, r.bytes) {
                (Some(t), Some(b)) => fmt_bw(b, t),
                _ => String::new(),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.what, r.size, time, bw, r.baseline, r.ratio, r.aim, r.met
            );
        }
    }
    // Copy-on-write restore against memory size, in one line.
    let cow: Vec<String> = sections
        .iter()
        .flat_map(|(_, rows)| rows.iter())
        .filter(|r| r.what.starts_with("copy-on-write restore") && !r.size.contains("touched"))
        .map(|r| format!("{}: {}", r.size, fmt_time(r.time.unwrap())))
        .collect();
    println!();
    println!(
        "copy-on-write restore by memory size (all pages touched): {}",
        cow.join(", ")
    );
    println!(
        "ratios: \"× bw\" = bandwidth relative to the memcpy baseline of the same bytes (higher is better); \
         \"× time\" = time relative to raw wasmtime (lower is better)."
    );
    println!("total bench time: {:.1} s", t0.elapsed().as_secs_f64());
}
