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

#[derive(Debug, Default, Serialize)]
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
#[derive(Debug, Default, Serialize)]
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
    /// The modes the moves were drawn from.
    pub modes: Vec<String>,
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
            modes: a.modes.clone(),
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
        // A mode whose moves all fail is broken, faults or not.
        if self.migrations_attempted >= 10 * self.modes.len() as u64 {
            for m in &self.modes {
                if self.by_mode.get(m).copied().unwrap_or(0) == 0 {
                    f.push(format!("no {m} move succeeded"));
                }
            }
        }
        // Moves fail under faults; without one, only rarely.
        if self.migrations_failed_without_fault * 20 > self.migrations_attempted.max(20) {
            f.push(format!(
                "{} of {} moves failed with no fault injected into them",
                self.migrations_failed_without_fault, self.migrations_attempted
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 400 moves over four modes, every call acknowledged, no fault asked.
    fn healthy() -> Report {
        let modes = ["hot", "cold", "hybrid", "postcopy"];
        Report {
            migrations_asked: 400,
            migrations: 400,
            migrations_attempted: 400,
            modes: modes.iter().map(|m| m.to_string()).collect(),
            by_mode: modes.iter().map(|m| (m.to_string(), 100)).collect(),
            calls_acked: 10_000,
            stopped_by: "the moves asked for were made".into(),
            ..Report::default()
        }
    }

    #[test]
    fn a_healthy_soak_passes() {
        assert_eq!(healthy().failures(), Vec::<String>::new());
    }

    #[test]
    fn a_mode_that_never_succeeds_fails_the_soak() {
        let mut r = healthy();
        r.by_mode.remove("postcopy");
        assert_eq!(r.failures(), vec!["no postcopy move succeeded".to_string()]);
    }

    #[test]
    fn moves_failing_without_faults_fail_the_soak() {
        let mut r = healthy();
        r.migrations_attempted = 500;
        r.migrations_failed = 100;
        r.migrations_failed_without_fault = 100;
        assert_eq!(
            r.failures(),
            vec!["100 of 500 moves failed with no fault injected into them".to_string()]
        );
        // A few, as faults elsewhere leave behind, do not.
        r.migrations_failed_without_fault = 10;
        assert_eq!(r.failures(), Vec::<String>::new());
    }

    #[test]
    fn a_lost_or_doubled_call_fails_the_soak() {
        let mut r = healthy();
        r.lost = 1;
        r.doubled = 2;
        r.split_brain = 3;
        assert_eq!(r.failures().len(), 3, "{:?}", r.failures());
    }
}
