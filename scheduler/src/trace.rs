//! Usage traces: the Azure Functions 2019 layout, parsed from text.
//!
//! Three CSV files describe one sample: per-minute invocation counts
//! (`HashOwner,HashApp,HashFunction,Trigger,<minute>...`), execution-time
//! statistics (`...,Average,...` in ms) and allocated memory
//! (`...,AverageAllocatedMb,...`), joined on `HashFunction`.
//!
//! A function's CPU demand: each invocation keeps one core busy for the
//! function's average duration, starting at a uniformly random moment of
//! its minute, so a 5-minute run spreads its 5 core-minutes over the 6
//! minutes it touches ([`spread_kernel`], [`FunctionTrace::cpu_series`]),
//! not into the minute it started. Its memory is its average allocated
//! memory.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::Resources;

/// Minutes in a day (time-of-day features wrap at this).
pub const MINUTES_PER_DAY: u64 = 1440;

/// Why a trace could not be read. Every message names the file and, where
/// there is one, the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TraceError {
    /// The file has no header line.
    #[error("{file}: empty file, expected a CSV header line")]
    Empty {
        /// Which of the three files.
        file: &'static str,
    },
    /// A column the format needs is not in the header.
    #[error("{file}: line 1: missing column `{column}` in the header")]
    MissingColumn {
        /// Which of the three files.
        file: &'static str,
        /// The column's name.
        column: &'static str,
    },
    /// A line that cannot be read.
    #[error("{file}: line {line}: {message}")]
    Malformed {
        /// Which of the three files.
        file: &'static str,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A function of the invocations file has no row in another file.
    #[error("{file}: no row for function {function} (invocations line {line}): the three files must come from the same sample")]
    MissingFunction {
        /// The file lacking the row.
        file: &'static str,
        /// The function's `HashFunction`.
        function: String,
        /// Its line in the invocations file.
        line: usize,
    },
    /// The invocations file has a header but no function rows or no minute columns.
    #[error("invocations: {0}")]
    NoData(&'static str),
}

/// One function's usage over the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionTrace {
    /// `HashFunction`.
    pub id: String,
    /// `HashOwner`.
    pub owner: String,
    /// `HashApp`.
    pub app: String,
    /// Trigger kind (`http`, `timer`, `queue`, ...).
    pub trigger: String,
    /// Invocations per minute, one per trace minute.
    pub invocations: Vec<u64>,
    /// Average execution time, milliseconds.
    pub avg_duration_ms: f64,
    /// Average allocated memory, MiB.
    pub memory_mb: f64,
}

impl FunctionTrace {
    /// CPU work *started* in minute `i`, in thousandths of a core over one
    /// minute (`invocations × duration / 60`): what the invocations of that
    /// minute will run in total, wherever it lands ([`Self::cpu_series`]).
    pub fn cpu_milli(&self, i: usize) -> f64 {
        self.invocations[i] as f64 * self.avg_duration_ms / 60.0
    }

    /// CPU demand of every minute of the trace, thousandths of a core, with
    /// each invocation's CPU spread over its execution time
    /// ([`spread_kernel`]). Work spilling past the trace's last minute is
    /// dropped; work started before its first minute is unknown.
    pub fn cpu_series(&self) -> Vec<f64> {
        let w = spread_kernel(self.avg_duration_ms);
        let n = self.invocations.len();
        let mut out = vec![0.0; n];
        for (t, &c) in self.invocations.iter().enumerate() {
            if c == 0 {
                continue;
            }
            for (k, wk) in w.iter().enumerate().take(n - t) {
                out[t + k] += c as f64 * wk * 1000.0;
            }
        }
        out
    }

    /// Memory demand, bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.memory_mb.max(0.0) * (1u64 << 20) as f64) as u64
    }

    /// Demand in minute `i`.
    pub fn demand(&self, i: usize) -> Resources {
        Resources::new(self.cpu_milli(i).round() as u64, self.memory_bytes())
    }
}

/// Where one invocation's CPU lands: `w[k]` is the core-minutes it runs in
/// the `k`-th minute after the minute it started in (`w[0]`: that minute),
/// for a run of `duration_ms` starting at a uniformly random moment of its
/// minute. The shares add up to the run's length in minutes.
///
/// With `D` the run in minutes and `H` the integral of `clamp(x, 0, D)`
/// (`H(z) = z²/2` up to `D`, `D²/2 + D·(z − D)` after), the time the run
/// spends in minute `k` averaged over its start is
/// `w[k] = H(k + 1) − 2·H(k) + H(k − 1)`.
pub fn spread_kernel(duration_ms: f64) -> Vec<f64> {
    let d = (duration_ms / 60_000.0).max(0.0);
    let h = |z: f64| {
        if z <= 0.0 {
            0.0
        } else if z <= d {
            z * z / 2.0
        } else {
            d * d / 2.0 + d * (z - d)
        }
    };
    let last = d.ceil() as usize;
    (0..=last)
        .map(|k| {
            let k = k as f64;
            (h(k + 1.0) - 2.0 * h(k) + h(k - 1.0)).max(0.0)
        })
        .collect()
}

/// A parsed trace: functions over a run of consecutive minutes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The minute labels of the columns (minute of the day in the Azure layout).
    pub minutes: Vec<u64>,
    /// Every function, in file order.
    pub functions: Vec<FunctionTrace>,
}

impl Trace {
    /// Number of minutes.
    pub fn len(&self) -> usize {
        self.minutes.len()
    }

    /// Whether the trace has no minutes.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// A short stable name for function `i` (`f007-1a2b3c4d`).
    pub fn app_name(&self, i: usize) -> String {
        let id = &self.functions[i].id;
        format!("f{i:03}-{}", &id[..id.len().min(8)])
    }
}

struct Csv<'a> {
    file: &'static str,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(file: &'static str, text: &'a str) -> Result<Self, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        let header = loop {
            match lines.next() {
                None => return Err(TraceError::Empty { file }),
                Some((_, l)) if l.trim().is_empty() => continue,
                Some((_, l)) => break split(l),
            }
        };
        let mut rows = Vec::new();
        for (line, l) in lines {
            if l.trim().is_empty() {
                continue;
            }
            let fields = split(l);
            if fields.len() != header.len() {
                return Err(TraceError::Malformed {
                    file,
                    line,
                    message: format!(
                        "expected {} fields like the header, found {}",
                        header.len(),
                        fields.len()
                    ),
                });
            }
            rows.push((line, fields));
        }
        Ok(Csv { file, header, rows })
    }

    fn column(&self, name: &'static str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or(TraceError::MissingColumn {
                file: self.file,
                column: name,
            })
    }

    fn number(&self, line: usize, column: &str, value: &str) -> Result<f64, TraceError> {
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(TraceError::Malformed {
                file: self.file,
                line,
                message: format!("column `{column}`: `{value}` is not a non-negative number"),
            }),
        }
    }

    /// `HashFunction` → (line, value of `column`).
    fn by_function(
        &self,
        column: &'static str,
    ) -> Result<HashMap<&'a str, (usize, f64)>, TraceError> {
        let id = self.column("HashFunction")?;
        let col = self.column(column)?;
        let mut map = HashMap::new();
        for (line, f) in &self.rows {
            let v = self.number(*line, column, f[col])?;
            map.entry(f[id]).or_insert((*line, v));
        }
        Ok(map)
    }
}

fn split(line: &str) -> Vec<&str> {
    line.split(',').map(str::trim).collect()
}

/// Parses one Azure Functions 2019 sample from the text of its three files.
///
/// Columns are found by header name, so the column order may differ between
/// files (it does in the published samples). A function missing from the
/// durations or memory file, a row with the wrong number of fields or a
/// field that is not a number is an error naming the file and line.
pub fn parse_azure(
    invocations_csv: &str,
    durations_csv: &str,
    memory_csv: &str,
) -> Result<Trace, TraceError> {
    let inv = Csv::parse("invocations", invocations_csv)?;
    let dur = Csv::parse("durations", durations_csv)?;
    let mem = Csv::parse("memory", memory_csv)?;

    let id_col = inv.column("HashFunction")?;
    let owner_col = inv.column("HashOwner")?;
    let app_col = inv.column("HashApp")?;
    let trigger_col = inv.column("Trigger")?;
    let fixed = [id_col, owner_col, app_col, trigger_col];
    let mut minute_cols = Vec::new();
    let mut minutes = Vec::new();
    for (i, h) in inv.header.iter().enumerate() {
        if fixed.contains(&i) {
            continue;
        }
        let m = h.parse::<u64>().map_err(|_| TraceError::Malformed {
            file: "invocations",
            line: 1,
            message: format!("header column `{h}` is not a minute number"),
        })?;
        minute_cols.push(i);
        minutes.push(m);
    }
    if minutes.is_empty() {
        return Err(TraceError::NoData("the header has no minute columns"));
    }
    if let Some(w) = minutes.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(TraceError::Malformed {
            file: "invocations",
            line: 1,
            message: format!(
                "minute columns must be consecutive, found {} after {}",
                w[1], w[0]
            ),
        });
    }
    if inv.rows.is_empty() {
        return Err(TraceError::NoData("no function rows after the header"));
    }

    let durations = dur.by_function("Average")?;
    let memory = mem.by_function("AverageAllocatedMb")?;

    let mut functions = Vec::with_capacity(inv.rows.len());
    for (line, f) in &inv.rows {
        let id = f[id_col];
        let mut invocations = Vec::with_capacity(minute_cols.len());
        for (&c, &m) in minute_cols.iter().zip(&minutes) {
            let v = f[c];
            let n = match v.parse::<u64>() {
                Ok(n) => n,
                Err(_) => match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 => x as u64,
                    _ => {
                        return Err(TraceError::Malformed {
                            file: "invocations",
                            line: *line,
                            message: format!(
                                "minute {m}: `{v}` is not a whole number of invocations"
                            ),
                        })
                    }
                },
            };
            invocations.push(n);
        }
        let missing = |file| TraceError::MissingFunction {
            file,
            function: id.to_string(),
            line: *line,
        };
        let (_, avg_duration_ms) = *durations.get(id).ok_or_else(|| missing("durations"))?;
        let (_, memory_mb) = *memory.get(id).ok_or_else(|| missing("memory"))?;
        functions.push(FunctionTrace {
            id: id.to_string(),
            owner: f[owner_col].to_string(),
            app: f[app_col].to_string(),
            trigger: f[trigger_col].to_string(),
            invocations,
            avg_duration_ms,
            memory_mb,
        });
    }
    Ok(Trace { minutes, functions })
}
