//! Small helpers shared by the subcommands: sizes, durations, output.

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

/// Prints a value as one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        // A reader that stopped reading (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
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
