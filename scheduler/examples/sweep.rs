//! Every policy on both shipped samples at several fills (5 seeds each),
//! so that they are compared at equal utilisation:
//! `cargo run --release -p tern-scheduler --example sweep` prints the
//! tables; `... --example sweep -- svg 100` prints the 100-function sample's
//! plot (overload and unserved CPU against utilisation) instead.

use tern_scheduler::{
    parse_azure, plot_sweep_svg, render_sweep, sweep, SimConfig, SimPolicy, Trace,
};

const FILLS: [f64; 6] = [0.6, 0.7, 0.8, 0.85, 0.9, 0.95];

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = SimConfig::default();
    if args.first().map(String::as_str) == Some("svg") {
        let name = args.get(1).map_or("100", String::as_str);
        let s = sweep(&sample(name), &SimPolicy::ALL, &FILLS, &config);
        print!("{}", plot_sweep_svg(&s));
        return;
    }
    for name in ["10", "100"] {
        let start = std::time::Instant::now();
        let s = sweep(&sample(name), &SimPolicy::ALL, &FILLS, &config);
        println!(
            "== {name}-function sample, {} seeds ({:.1} s)",
            config.seeds,
            start.elapsed().as_secs_f64()
        );
        print!("{}", render_sweep(&s));
        println!();
    }
}
