//! `tern inspect`: what a snapshot holds (format, module, memories,
//! globals, tables, carried files), what it asks for (directories,
//! variables by name, arguments, limits: requests that `tern resume`
//! grants only when its own command line does) and whether its checksums
//! hold.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tern_runtime::{LimitsState, Snapshot};

use crate::output::outln;
use crate::util::{human_bytes, print_json};

#[derive(Args)]
pub struct InspectArgs {
    /// The snapshot file.
    snapshot: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct InspectReport {
    path: String,
    format_version: u32,
    tern_version: String,
    module_sha256: String,
    module_embedded: bool,
    app: Option<String>,
    generation: u64,
    calls: u64,
    file_bytes: u64,
    image_bytes: u64,
    memories: Vec<InspectMemory>,
    globals: Vec<InspectGlobal>,
    tables: Vec<InspectTable>,
    wasi: InspectWasi,
    limits: LimitsState,
    /// What the snapshot asks to be given on resume: requests, not grants.
    requests: InspectRequests,
    /// Files of the app's own directory carried in the snapshot.
    files: Vec<InspectFile>,
    checksum: String,
}

#[derive(Serialize)]
struct InspectFile {
    path: String,
    bytes: u64,
}

#[derive(Serialize)]
struct InspectMemory {
    index: u32,
    bytes: u64,
    pages_total: u64,
    pages_stored: u64,
    runs: usize,
    compressed_runs: usize,
}

#[derive(Serialize)]
struct InspectGlobal {
    index: u32,
    value: String,
}

#[derive(Serialize)]
struct InspectTable {
    index: u32,
    size: u32,
    non_null: usize,
}

#[derive(Serialize)]
struct InspectWasi {
    args: Vec<String>,
    /// Variable names only: values may be secrets.
    env: Vec<String>,
    preopens: Vec<String>,
    monotonic_ns: u64,
}

#[derive(Serialize)]
struct InspectRequests {
    note: &'static str,
    dirs: Vec<InspectDir>,
    env: Vec<String>,
    args: Vec<String>,
    limits: LimitsState,
}

#[derive(Serialize)]
struct InspectDir {
    host: String,
    guest: String,
    read_only: bool,
}

const REQUESTS_NOTE: &str = "requests, not grants: tern resume gives only the --dir, --env, arguments and limits of its own command line";

pub fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let snap = Snapshot::open(&a.snapshot, false)
        .with_context(|| format!("cannot inspect `{}`", a.snapshot.display()))?;
    let checksum = match snap.verify_image() {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("FAILED: {e}"),
    };
    let b = &snap.body;
    let report = InspectReport {
        path: a.snapshot.display().to_string(),
        format_version: tern_runtime::snapshot::FORMAT_VERSION,
        tern_version: b.meta.tern_version.clone(),
        module_sha256: hex::encode(b.meta.module_sha256),
        module_embedded: b.module.is_some(),
        app: b.meta.app.clone(),
        generation: b.meta.generation,
        calls: b.meta.calls,
        file_bytes: snap.as_bytes().len() as u64,
        image_bytes: snap.image().len() as u64,
        memories: b
            .memories
            .iter()
            .map(|m| InspectMemory {
                index: m.index,
                bytes: m.byte_size,
                pages_total: m.byte_size / 4096,
                pages_stored: m.runs.iter().fold(0u64, |n, r| n.saturating_add(r.pages)),
                runs: m.runs.len(),
                compressed_runs: m
                    .runs
                    .iter()
                    .filter(|r| r.encoding == tern_runtime::snapshot::Encoding::Lz4)
                    .count(),
            })
            .collect(),
        globals: b
            .globals
            .iter()
            .map(|g| InspectGlobal {
                index: g.index,
                value: match g.value {
                    tern_runtime::snapshot::Value::I32(v) => format!("i32 {v}"),
                    tern_runtime::snapshot::Value::I64(v) => format!("i64 {v}"),
                    tern_runtime::snapshot::Value::F32(v) => format!("f32 {}", f32::from_bits(v)),
                    tern_runtime::snapshot::Value::F64(v) => format!("f64 {}", f64::from_bits(v)),
                    tern_runtime::snapshot::Value::V128(v) => format!("v128 {v:#x}"),
                    tern_runtime::snapshot::Value::NullRef => "ref null".into(),
                },
            })
            .collect(),
        tables: b
            .tables
            .iter()
            .map(|t| InspectTable {
                index: t.index,
                size: t.size,
                non_null: t.runs.iter().map(|r| r.1.len()).sum(),
            })
            .collect(),
        wasi: InspectWasi {
            args: b.wasi.args.clone(),
            env: b.wasi.env.iter().map(|(k, _)| k.clone()).collect(),
            preopens: b
                .wasi
                .preopens
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}{}",
                        p.host,
                        p.guest,
                        if p.read_only { " (ro)" } else { "" }
                    )
                })
                .collect(),
            monotonic_ns: b.wasi.monotonic_ns,
        },
        limits: b.limits.clone(),
        requests: InspectRequests {
            note: REQUESTS_NOTE,
            dirs: b
                .wasi
                .preopens
                .iter()
                .map(|p| InspectDir {
                    host: p.host.clone(),
                    guest: p.guest.clone(),
                    read_only: p.read_only,
                })
                .collect(),
            env: b.wasi.env.iter().map(|(k, _)| k.clone()).collect(),
            args: b.wasi.args.iter().skip(1).cloned().collect(),
            limits: b.limits.clone(),
        },
        files: b
            .files
            .iter()
            .map(|(p, bytes)| InspectFile {
                path: p.clone(),
                bytes: bytes.len() as u64,
            })
            .collect(),
        checksum: checksum.clone(),
    };
    if a.json {
        print_json(&report)?;
    } else {
        print_inspect(&report)?;
    }
    if checksum != "ok" {
        bail!("{}: {checksum}", a.snapshot.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_inspect(r: &InspectReport) -> Result<()> {
    outln!("snapshot       {}", r.path)?;
    outln!(
        "format         version {} (written by tern {})",
        r.format_version,
        r.tern_version
    )?;
    outln!(
        "module         sha256 {}{}",
        r.module_sha256,
        if r.module_embedded {
            " (embedded)"
        } else {
            " (not embedded)"
        }
    )?;
    if let Some(app) = &r.app {
        outln!("app            {app} (generation {})", r.generation)?;
    }
    outln!("calls so far   {}", r.calls)?;
    outln!(
        "size           {} file, {} memory image",
        human_bytes(r.file_bytes),
        human_bytes(r.image_bytes)
    )?;
    for m in &r.memories {
        outln!(
            "memory {}       {} ({} of {} 4-KiB pages stored, {} runs, {} compressed)",
            m.index,
            human_bytes(m.bytes),
            m.pages_stored,
            m.pages_total,
            m.runs,
            m.compressed_runs
        )?;
    }
    for g in &r.globals {
        outln!("global {:<7} {}", g.index, g.value)?;
    }
    for t in &r.tables {
        outln!(
            "table {:<8} {} elements, {} set",
            t.index,
            t.size,
            t.non_null
        )?;
    }
    outln!("clock          {:.3} ms", r.wasi.monotonic_ns as f64 / 1e6)?;
    let q = &r.requests;
    outln!("requests       ({})", q.note)?;
    outln!("  args         {:?}", q.args)?;
    if !q.env.is_empty() {
        outln!("  env          {} (names only)", q.env.join(" "))?;
    }
    for d in &q.dirs {
        outln!(
            "  dir          {} as {}{}",
            d.host,
            d.guest,
            if d.read_only { " (read-only)" } else { "" }
        )?;
    }
    let show = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or("none".to_string(), f);
    outln!(
        "  limits       memory {}, time per call {}, fuel per call {}",
        show(q.limits.memory_bytes, &human_bytes),
        show(q.limits.timeout_ms_per_call, &|ms| format!("{ms} ms")),
        show(q.limits.fuel_per_call, &|n| n.to_string())
    )?;
    if !r.files.is_empty() {
        let total = r.files.iter().fold(0u64, |n, f| n.saturating_add(f.bytes));
        outln!(
            "files          {} carried from the app's directory, {}",
            r.files.len(),
            crate::util::human_bytes(total)
        )?;
        for f in r.files.iter().take(20) {
            outln!(
                "  /data/{:<30} {}",
                f.path,
                crate::util::human_bytes(f.bytes)
            )?;
        }
        if r.files.len() > 20 {
            outln!(
                "  … and {} more (--json lists them all)",
                r.files.len() - 20
            )?;
        }
    }
    outln!("checksum       {}", r.checksum)
}
