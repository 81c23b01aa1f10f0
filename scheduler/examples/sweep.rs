//! Every policy on both shipped samples at several fills (5 seeds each),
//! so that they are compared at equal utilisation:
//! `cargo run --release -p tern-scheduler --example sweep` prints the
//! tables; `... --example sweep -- svg 100` prints the 100-function sample's
//! plot (overload and unserved CPU against utilisation) instead.

use tern_scheduler::{plot_sweep_svg, render_sweep, sweep, SimConfig, SimPolicy};

const FILLS: [f64; 6] = [0.6, 0.7, 0.8, 0.85, 0.9, 0.95];

#[path = "shared/mod.rs"]
mod shared;
use shared::sample;

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
