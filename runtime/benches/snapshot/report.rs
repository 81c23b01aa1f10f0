//! The bench's rows, medians and units, and the Markdown table it prints.

use std::time::Instant;

use crate::MIB;

pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) size: String,
    /// Median time in seconds (None for size-only rows).
    pub(crate) time: Option<f64>,
    /// Bytes moved, for a bandwidth.
    pub(crate) bytes: Option<u64>,
    pub(crate) baseline: String,
    pub(crate) ratio: String,
    pub(crate) aim: String,
    pub(crate) met: &'static str,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

pub(crate) fn fmt_bw(bytes: u64, s: f64) -> String {
    let gib = bytes as f64 / s / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.2} GiB/s")
    } else {
        format!("{:.0} MiB/s", gib * 1024.0)
    }
}

pub(crate) fn fmt_bytes(b: u64) -> String {
    if b >= MIB as u64 {
        format!("{:.1} MiB", b as f64 / MIB as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

pub(crate) fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Per-repetition bandwidth ratios (each repetition against the memcpy of
/// the same repetition): the median and the range, never the best alone.
pub(crate) fn bw_ratio_range(base: &[f64], t: &[f64]) -> (f64, String) {
    let r: Vec<f64> = base.iter().zip(t).map(|(b, t)| b / t).collect();
    let lo = r.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = r.iter().cloned().fold(0.0, f64::max);
    let m = median(r);
    (m, format!("{m:.2}× bw ({lo:.2}–{hi:.2})"))
}

/// A time's median with its range.
pub(crate) fn time_range(t: &[f64]) -> String {
    let lo = t.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = t.iter().cloned().fold(0.0, f64::max);
    format!(
        "{} ({}–{})",
        fmt_time(median(t.to_vec())),
        fmt_time(lo),
        fmt_time(hi)
    )
}

/// Ratio of bandwidths (same bytes): how fast this is relative to memcpy.
pub(crate) fn bw_ratio(base: f64, t: f64) -> String {
    format!("{:.2}× bw", base / t)
}

/// Prints every section's rows as one Markdown table, then the
/// copy-on-write restore times by memory size and what the ratios mean.
pub(crate) fn print(sections: &[(String, Vec<Row>)]) {
    println!();
    println!("| what | size | time | bandwidth | baseline (same run) | ratio | aim | met |");
    println!("|---|---|---|---|---|---|---|---|");
    for (title, rows) in sections {
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
}
