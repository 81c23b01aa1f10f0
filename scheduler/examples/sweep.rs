//! Sensitivity of the policy comparison to the simulator's cluster size and
//! fill, summed over three seeds, on both shipped samples:
//! `cargo run --release -p tern-scheduler --example sweep` (about a minute).
//! The defaults of [`SimConfig`] are one point of this grid; this shows
//! whether a conclusion holds away from it.

use tern_scheduler::{compare, parse_azure, Policy, SimConfig, Trace};

fn sample(n: &str) -> Trace {
    let (inv, dur, mem) = match n {
        "10" => (
            include_str!("../testdata/azure-functions-2019/10_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/10_durations.csv"),
            include_str!("../testdata/azure-functions-2019/10_memory.csv"),
        ),
        _ => (
            include_str!("../testdata/azure-functions-2019/100_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/100_durations.csv"),
            include_str!("../testdata/azure-functions-2019/100_memory.csv"),
        ),
    };
    parse_azure(inv, dur, mem).expect("shipped trace parses")
}

fn main() {
    println!(
        "sample nodes fill | overload node-min (requests cost learned) | migrations | mean util"
    );
    for name in ["10", "100"] {
        let trace = sample(name);
        for nodes in [4, 8, 16] {
            for fill in [0.7, 0.8, 0.9] {
                let mut overloads = [0u64; 3];
                let mut migrations = [0u64; 3];
                let mut util = [0f64; 3];
                for seed in 1..=3 {
                    let c = compare(
                        &trace,
                        &Policy::ALL,
                        &SimConfig {
                            nodes,
                            fill,
                            seed,
                            ..SimConfig::default()
                        },
                    );
                    for (i, p) in c.policies.iter().enumerate() {
                        overloads[i] += p.overload_minutes;
                        migrations[i] += p.migrations;
                        util[i] += p.mean_utilization / 3.0;
                    }
                }
                println!(
                    "{name:>6} {nodes:>5} {fill:>4} | {:>5} {:>5} {:>5} | {:>5} {:>5} {:>5} | {:.3} {:.3} {:.3}",
                    overloads[0], overloads[1], overloads[2], migrations[0], migrations[1], migrations[2], util[0], util[1], util[2]
                );
            }
        }
    }
}
