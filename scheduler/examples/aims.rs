//! The aims of `learned` against `requests` and the oracle at fills 0.7,
//! 0.8 and 0.9 on both shipped samples (5 seeds from the first argument,
//! default 1): `cargo run --release -p tern-scheduler --example aims -- 6`.
//! `... -- 1 table` prints every policy's figures as BENCHMARKS.md's
//! trace-simulation table, with learned's capacity advice; `... -- 1
//! moves` the move-limit table (1, 2, 6 and 60 moves a minute).

use tern_scheduler::sim::{prepare, run};
use tern_scheduler::{SimConfig, SimPolicy};

#[path = "shared/mod.rs"]
mod shared;
use shared::sample;

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let config = SimConfig {
        seed,
        ..SimConfig::default()
    };
    match std::env::args().nth(2).as_deref() {
        Some("table") => return table(&config),
        Some("moves") => return moves(&config),
        _ => {}
    }
    let policies = [SimPolicy::Requests, SimPolicy::Learned, SimPolicy::Oracle];
    println!("functions fill | overload requests/learned/oracle | unserved requests/learned/oracle | reduction overload/unserved | share overload/unserved | aims");
    for name in ["10", "100"] {
        let prepared = prepare(&sample(name), &config);
        for fill in [0.7, 0.8, 0.9] {
            let c = run(
                &prepared,
                &policies,
                &SimConfig {
                    fill,
                    ..config.clone()
                },
            );
            let p = |k: usize| &c.policies[k];
            let g = c.gain.as_ref().expect("all three policies ran");
            let so = g.oracle_share_overload.unwrap_or(1.0);
            let su = g.oracle_share_unserved.unwrap_or(1.0);
            let met = (g.overload_reduction >= 0.25 || p(0).overload_minutes < 1.0)
                && p(1).unserved_cpu <= p(0).unserved_cpu
                && so >= 2.0 / 3.0
                && su >= 2.0 / 3.0;
            println!(
                "{name:>3} {fill:.1} | {:7.1} {:7.1} {:7.1} | {:6.1} {:6.1} {:6.1} | {:6.1} % {:6.1} % | {:4.0} % {:4.0} % | {}",
                p(0).overload_minutes,
                p(1).overload_minutes,
                p(2).overload_minutes,
                p(0).unserved_cpu,
                p(1).unserved_cpu,
                p(2).unserved_cpu,
                -100.0 * g.overload_reduction,
                -100.0 * g.unserved_reduction,
                100.0 * so,
                100.0 * su,
                if met { "met" } else { "missed" }
            );
        }
    }
}

fn table(config: &SimConfig) {
    let policies = [
        SimPolicy::Requests,
        SimPolicy::Cost,
        SimPolicy::Learned,
        SimPolicy::Oracle,
        SimPolicy::Observed,
    ];
    let mut advice = Vec::new();
    for name in ["10", "100"] {
        let prepared = prepare(&sample(name), config);
        for fill in [0.7, 0.8, 0.9] {
            let c = run(
                &prepared,
                &policies,
                &SimConfig {
                    fill,
                    ..config.clone()
                },
            );
            for p in &c.policies {
                let r = &p.range;
                let policy = if p.policy == SimPolicy::Learned {
                    "**learned**".to_string()
                } else {
                    p.policy.to_string()
                };
                println!(
                    "| {name} | {fill} | {policy} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.1} % ({:.1} %–{:.1} %) |",
                    p.overload_minutes,
                    r.overload_minutes[0],
                    r.overload_minutes[1],
                    p.unserved_cpu,
                    r.unserved_cpu[0],
                    r.unserved_cpu[1],
                    p.slo_misses,
                    r.slo_misses[0],
                    r.slo_misses[1],
                    p.migrations,
                    r.migrations[0],
                    r.migrations[1],
                    100.0 * p.mean_utilization,
                    100.0 * r.mean_utilization[0],
                    100.0 * r.mean_utilization[1],
                );
                if p.policy == SimPolicy::Learned {
                    let checks: Vec<String> = p
                        .runs
                        .iter()
                        .filter_map(|run| run.capacity.as_ref())
                        .map(|k| {
                            format!(
                                "{}/{} announced, {} false",
                                k.announced, k.short_minutes, k.false_alarms
                            )
                        })
                        .collect();
                    advice.push(format!("{name} @ {fill}: {}", checks.join("; ")));
                }
            }
        }
    }
    println!();
    for a in advice {
        println!("capacity advice (learned, per seed) {a}");
    }
}

fn moves(config: &SimConfig) {
    let policies = [SimPolicy::Requests, SimPolicy::Learned, SimPolicy::Oracle];
    for name in ["10", "100"] {
        let prepared = prepare(&sample(name), config);
        for fill in [0.7, 0.8, 0.9] {
            for max_moves in [1, 2, 6, 60] {
                let c = run(
                    &prepared,
                    &policies,
                    &SimConfig {
                        fill,
                        max_moves_per_minute: max_moves,
                        ..config.clone()
                    },
                );
                let cell = |k: usize| {
                    format!(
                        "{:.1} / {:.1}",
                        c.policies[k].overload_minutes, c.policies[k].unserved_cpu
                    )
                };
                println!(
                    "| {name} | {fill} | {max_moves} | {} | {} | {} |",
                    cell(0),
                    cell(1),
                    cell(2)
                );
            }
        }
    }
}
