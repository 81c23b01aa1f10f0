//! Small helpers shared by the subcommands: sizes and durations as people
//! type them, numbers and tables as people read them, where tern keeps its
//! data, and the signal that stops a foreground command.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Parses `64MiB`, `1GiB`, `512KiB`, `10MB`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.replace('_', "").parse().map_err(|_| {
        anyhow::anyhow!("`{s}` is not a size (try 64MiB, 1GiB or a number of bytes)")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => bail!(
            "`{s}`: unknown size unit `{other}` (use KiB, MiB, GiB, KB, MB, GB or plain bytes)"
        ),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("`{s}` is too large"))
}

/// Parses `500ms`, `2s`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| anyhow::anyhow!("`{s}` is not a duration ({e}); try 500ms or 2s"))
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}

/// Prints a value as one JSON document on stdout (through
/// [`crate::output`]: a reader that stopped reading is not an error).
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    crate::output::outln!("{text}")
}

/// The address of a control plane's dashboard, which the page at `/` reads
/// the cluster token from: `http://HOST:PORT/#token=TOKEN`. The token stays
/// in the fragment, which browsers do not send to the server.
pub fn dashboard_url(control_url: &str, token: &str) -> String {
    let mut t = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            t.push(b as char);
        } else {
            t.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}/#token={t}", control_url.trim_end_matches('/'))
}

/// Bytes in human units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `$TERN_DATA_DIR`, else `$XDG_DATA_HOME/tern`, else `~/.local/share/tern`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = non_empty("TERN_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(d).join("tern");
    }
    let home = non_empty("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local").join("share").join("tern")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Milliseconds in human units.
pub fn human_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "-".into()
    } else if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 10_000.0 {
        format!("{:.2} s", ms / 1000.0).replace(".00 s", " s")
    } else if ms < 120_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else {
        format!("{:.0} min", ms / 60_000.0)
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("4096", 4096),
            ("10MB", 10_000_000),
            ("2 KiB", 2048),
        ] {
            assert_eq!(parse_size(s).unwrap(), want, "{s}");
        }
        for s in ["", "MiB", "12XB", "-1", "99999999999999GiB"] {
            assert!(parse_size(s).is_err(), "{s} should be refused");
        }
    }

    #[test]
    fn tables_line_up() {
        let t = table(
            &["A", "BB"],
            vec![vec!["long".into(), "x".into()], vec!["s".into(), "".into()]],
        );
        assert_eq!(t, "A     BB\nlong  x\ns\n");
    }

    #[test]
    fn human_times() {
        assert_eq!(human_ms(0.25), "250 µs");
        assert_eq!(human_ms(12.34), "12.3 ms");
        assert_eq!(human_ms(1500.0), "1.50 s");
        assert_eq!(human_ms(30_000.0), "30 s");
    }

    #[test]
    fn dashboard_urls() {
        assert_eq!(
            dashboard_url("http://127.0.0.1:7070", "0123abcdef"),
            "http://127.0.0.1:7070/#token=0123abcdef"
        );
        assert_eq!(
            dashboard_url("http://127.0.0.1:7070/", "a b&c=d"),
            "http://127.0.0.1:7070/#token=a%20b%26c%3Dd"
        );
    }
}
