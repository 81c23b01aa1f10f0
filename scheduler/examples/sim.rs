//! Replays the shipped Azure Functions samples with every policy and prints
//! the comparison tables (`cargo run --release -p tern-scheduler --example sim`).
//! With an argument `svg`, prints nothing but the 100-function plot.

use tern_scheduler::{compare, parse_azure, plot_svg, render_table, SimConfig, SimPolicy};

fn main() {
    let samples = [
        (
            "10",
            include_str!("../testdata/azure-functions-2019/10_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/10_durations.csv"),
            include_str!("../testdata/azure-functions-2019/10_memory.csv"),
        ),
        (
            "100",
            include_str!("../testdata/azure-functions-2019/100_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/100_durations.csv"),
            include_str!("../testdata/azure-functions-2019/100_memory.csv"),
        ),
    ];
    let svg = std::env::args().nth(1).as_deref() == Some("svg");
    for (name, inv, dur, mem) in samples {
        let trace = parse_azure(inv, dur, mem).expect("shipped trace parses");
        let start = std::time::Instant::now();
        let c = compare(&trace, &SimPolicy::ALL, &SimConfig::default());
        if svg {
            if name == "100" {
                print!("{}", plot_svg(&c));
            }
            continue;
        }
        println!(
            "== {name}-function sample ({:.2} s)",
            start.elapsed().as_secs_f64()
        );
        print!("{}", render_table(&c));
        println!();
    }
}
