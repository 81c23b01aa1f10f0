//! Replays the shipped Azure Functions samples with every policy and prints
//! the comparison tables (`cargo run --release -p tern-scheduler --example sim`).
//! With an argument `svg`, prints nothing but the 100-function plot.

use tern_scheduler::{compare, plot_svg, render_table, SimConfig, SimPolicy};

#[path = "shared/mod.rs"]
mod shared;
use shared::sample;

fn main() {
    let svg = std::env::args().nth(1).as_deref() == Some("svg");
    for name in ["10", "100"] {
        let trace = sample(name);
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
