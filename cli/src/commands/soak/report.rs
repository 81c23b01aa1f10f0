//! What a soak prints: one value, rendered as text or as one JSON document,
//! and the reasons it failed, if it did.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::check::Verdict;
use super::moves::Stats;
use super::SoakArgs;
use crate::output::outln;
use crate::util::print_json;

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(values: &[f64]) -> Percentiles {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            }
        };
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The outcome of a soak.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub apps: usize,
    pub fault_rate: f64,
    pub migrations_asked: u64,
    pub migrations: u64,
    pub migrations_attempted: u64,
    pub migrations_failed: u64,
    pub migrations_failed_without_fault: u64,
    pub by_mode: BTreeMap<String, u64>,
    pub faults_injected: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub restarts: u64,
    pub calls_sent: u64,
    pub calls_acked: u64,
    /// Failed and unknown calls together (`calls_unknown` of them unknown).
    pub calls_failed: u64,
    pub calls_unknown: u64,
    pub unacked_applied: u64,
    pub lost: u64,
    pub lost_to_restart: u64,
    pub lost_to_restart_max_age_ms: u64,
    pub doubled: u64,
    pub misplaced: u64,
    pub phantom: u64,
    pub split_brain: u64,
    pub downtime_ms: Percentiles,
    pub duration_s: f64,
    pub stopped_by: String,
    pub problems: Vec<String>,
    pub move_errors: Vec<String>,
    pub passed: bool,
}

impl Report {
    pub fn new(a: &SoakArgs, s: Stats, v: Verdict, took: Duration, stopped_by: &str) -> Report {
        let mut r = Report {
            seed: a.seed,
            nodes: a.nodes,
            apps: a.apps,
            fault_rate: a.fault_rate,
            migrations_asked: a.migrations,
            migrations: s.migrations,
            migrations_attempted: s.attempted,
            migrations_failed: s.failed,
            migrations_failed_without_fault: s.failed_without_fault,
            faults_injected: s.faults_injected(),
            by_mode: s.by_mode,
            faults: s.faults,
            restarts: s.restarts,
            calls_sent: v.calls_sent,
            calls_acked: v.calls_acked,
            calls_failed: v.calls_failed + v.calls_unknown,
            calls_unknown: v.calls_unknown,
            unacked_applied: v.unacked_applied,
            lost: v.lost,
            lost_to_restart: v.lost_to_restart,
            lost_to_restart_max_age_ms: v.lost_to_restart_max_age_ms,
            doubled: v.doubled,
            misplaced: v.misplaced,
            phantom: v.phantom,
            split_brain: v.split_brain,
            downtime_ms: Percentiles::of(&s.downtime_ms),
            duration_s: took.as_secs_f64(),
            stopped_by: stopped_by.to_string(),
            problems: v.problems,
            move_errors: s.errors,
            passed: false,
        };
        r.passed = r.failures().is_empty();
        r
    }

    /// Why the soak failed: a broken guarantee, or too little done to
    /// show anything.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (n, what) in [
            (self.lost, "acknowledged calls lost"),
            (self.doubled, "calls applied twice"),
            (self.misplaced, "calls applied elsewhere than acknowledged"),
            (self.phantom, "ids in a ledger they were not sent to"),
            (self.split_brain, "times two copies of an app served"),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        // Never a pass by doing nothing.
        let floor = if self.stopped_by.contains("--duration") {
            1
        } else {
            self.migrations_asked
        };
        if self.migrations < floor {
            f.push(format!(
                "only {} of {} moves were made ({})",
                self.migrations, self.migrations_asked, self.stopped_by
            ));
        }
        if self.calls_acked < self.migrations.max(1) {
            f.push(format!(
                "only {} calls were acknowledged over {} moves: the clients did not get through",
                self.calls_acked, self.migrations
            ));
        }
        let expected_faults = self.fault_rate * self.migrations_attempted as f64;
        if expected_faults >= 10.0 && (self.faults_injected as f64) < expected_faults / 3.0 {
            f.push(format!(
                "only {} faults were injected, {expected_faults:.0} expected",
                self.faults_injected
            ));
        }
        f
    }

    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            return print_json(self);
        }
        let modes = self
            .by_mode
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let faults = self
            .faults
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        outln!(
            "soak {} (seed {}, {} nodes, {} apps, {:.0} s)",
            if self.passed { "passed" } else { "FAILED" },
            self.seed,
            self.nodes,
            self.apps,
            self.duration_s
        )?;
        outln!(
            "  moves        {} made of {} tried ({modes}); {} failed, {} of them with no fault",
            self.migrations,
            self.migrations_attempted,
            self.migrations_failed,
            self.migrations_failed_without_fault
        )?;
        outln!(
            "  faults       {} ({faults}); {} restarts",
            self.faults_injected,
            self.restarts
        )?;
        outln!(
            "  calls        {} sent, {} acknowledged, {} failed ({} unknown; {} of those applied)",
            self.calls_sent,
            self.calls_acked,
            self.calls_failed,
            self.calls_unknown,
            self.unacked_applied
        )?;
        outln!(
            "  checks       lost {}, doubled {}, split {}, misplaced {}, phantom {}; lost to a restart from a checkpoint {} (oldest {} ms before its kill)",
            self.lost,
            self.doubled,
            self.split_brain,
            self.misplaced,
            self.phantom,
            self.lost_to_restart,
            self.lost_to_restart_max_age_ms
        )?;
        outln!(
            "  downtime     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.downtime_ms.p50,
            self.downtime_ms.p99,
            self.downtime_ms.max
        )?;
        for p in self.problems.iter().chain(&self.move_errors) {
            outln!("  ! {p}")?;
        }
        Ok(())
    }
}
