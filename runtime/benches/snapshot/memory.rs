//! One guest memory measured: capture, the restores (copying, copy-on-write,
//! verified), encoded and compressed sizes, each next to a memcpy of the
//! same bytes measured in the same repetition.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tern_runtime::snapshot::{Meta, SnapshotParts};
use tern_runtime::{
    AppConfig, Instance, LimitsState, LoadedModule, RestoreOptions, Runtime, Snapshot,
    SnapshotOptions, Val, WasiState,
};

use crate::report::{bw_ratio, bw_ratio_range, fmt_bytes, fmt_time, median, secs, time_range, Row};
use crate::{MIB, PAGE, WASM_PAGE};

/// A guest memory to measure.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    /// Memory size.
    pub(crate) mem_mib: usize,
    /// Every `stride`-th 4 KiB page is touched.
    pub(crate) stride: usize,
    /// Fill mode of the guest (0 random, 1 heap-like).
    pub(crate) mode: i32,
    /// Measure the restore rows.
    pub(crate) restores: bool,
    /// Measure `compress: true` rows.
    pub(crate) compressed: bool,
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

pub(crate) fn bench_case(
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

    let memcpy = median(t_memcpy.clone());
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
    // The first capture of the run writes into a fresh buffer (page
    // faults); the others reuse the buffer the one before gave back to
    // the pool, as a node's periodic checkpoints do.
    let first = t_capture[0];
    push(
        "capture, the first of the run (fresh buffer)",
        first,
        Some(tbu),
        bw_ratio(t_memcpy[0], first),
        "",
        "",
    );
    let (ratio, shown) = bw_ratio_range(&t_memcpy[1..], &t_capture[1..]);
    let cap = median(t_capture[1..].to_vec());
    let ok = |b: bool| if b { "yes" } else { "no" };
    push(
        "capture (no compression), median (range) of the others",
        cap,
        Some(tbu),
        shown,
        "≥ 0.80× bw",
        ok(ratio >= 0.8),
    );
    let t = median(t_capture_memory);
    push(
        "  old path, step 1: capture_memory (scan, copy)",
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
        let t = median(t_open.clone());
        push(
            "  of which Snapshot::open (header, body), median (range)",
            t,
            time_range(&t_open),
            if case.stride == 1 { "flat in size" } else { "" },
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
