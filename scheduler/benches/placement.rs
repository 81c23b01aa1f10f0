//! Placement and simulation timings (plain `std::time`, no harness):
//! `cargo bench -p tern-scheduler`. Places 10,000 apps on 1,000 nodes
//! (10 zones; users in random zones; requests of 50–1500m and 64–2048 MiB)
//! with each policy, through the [`PlacementIndex`] (the chosen node and
//! its terms; median and range of `TERN_BENCH_RUNS` runs, default 7) and
//! through `place` (every decision lists all 1,000 candidates; one run),
//! and replays the 100-function Azure sample with every policy and seed.

use std::time::{Duration, Instant};

use tern_scheduler::rng::SplitMix64;
use tern_scheduler::{
    compare, parse_azure, place, AppSpec, Cluster, LatencyTable, NodeState, PlacementContext,
    PlacementIndex, Policy, Resources, SimConfig, SimPolicy,
};

const NODES: usize = 1_000;
const APPS: usize = 10_000;
const MIB: u64 = 1 << 20;

fn cluster() -> Cluster {
    Cluster::new(
        (0..NODES)
            .map(|i| {
                NodeState::new(format!("node-{i}"), Resources::new(16_000, 64 << 30))
                    .with_label("zone", format!("zone-{}", i % 10))
            })
            .collect(),
    )
}

fn apps() -> Vec<(AppSpec, Resources)> {
    let mut rng = SplitMix64::new(42);
    (0..APPS)
        .map(|i| {
            let cpu = 50 + rng.below(1450);
            let mem = (64 + rng.below(1984)) * MIB;
            let spec = AppSpec::new(format!("app-{i}"), Resources::new(cpu, mem))
                .with_user_location(format!("zone-{}", rng.below(10)));
            // What a predictor would expect: between half and twice the request.
            let predicted = Resources::new(cpu / 2 + rng.below(cpu * 3 / 2 + 1), mem);
            (spec, predicted)
        })
        .collect()
}

/// Every app placed with `place` (full explanation); the nodes chosen.
fn place_all(policy: Policy, apps: &[(AppSpec, Resources)]) -> (Duration, Vec<String>) {
    let mut c = cluster();
    let mut ctx = PlacementContext::default();
    let mut chosen = Vec::with_capacity(apps.len());
    let start = Instant::now();
    for (spec, predicted) in apps {
        ctx.predicted_demand = (policy == Policy::Learned).then_some(*predicted);
        if let Ok(d) = place(&c, spec, policy, &ctx) {
            assert_eq!(d.candidates.len(), NODES);
            c.bind(spec.clone(), &d.node).expect("known node");
            if policy == Policy::Learned {
                c.set_expected(&spec.name, *predicted).expect("just bound");
            }
            chosen.push(d.node);
        }
    }
    (start.elapsed(), chosen)
}

/// Every app placed through the index (built inside the timing); the nodes chosen.
fn index_all(policy: Policy, apps: &[(AppSpec, Resources)]) -> (Duration, Vec<String>) {
    let c = cluster();
    let mut ctx = PlacementContext::default();
    let mut chosen = Vec::with_capacity(apps.len());
    let start = Instant::now();
    let mut index = PlacementIndex::new(&c, &LatencyTable::default());
    for (spec, predicted) in apps {
        ctx.predicted_demand = (policy == Policy::Learned).then_some(*predicted);
        if let Ok(choice) = index.place(spec, policy, &ctx) {
            index
                .bind(spec, &choice.node, ctx.predicted_demand)
                .expect("known node");
            chosen.push(choice.node);
        }
    }
    (start.elapsed(), chosen)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("TERN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    let apps = apps();
    println!("{:<48} {:>26} {:>14}", "benchmark", "time", "placed");
    for policy in Policy::ALL {
        let mut times = Vec::with_capacity(runs);
        let mut chosen = Vec::new();
        for _ in 0..runs {
            let (t, c) = index_all(policy, &apps);
            times.push(t);
            chosen = c;
        }
        times.sort();
        println!(
            "{:<48} {:>26} {:>8}/{APPS}",
            format!("index: {APPS} apps on {NODES} nodes, {policy}"),
            format!(
                "{:.1} ms ({:.1}–{:.1}, {runs} runs)",
                ms(times[runs / 2]),
                ms(times[0]),
                ms(times[runs - 1])
            ),
            chosen.len()
        );
        let (t, full) = place_all(policy, &apps);
        assert_eq!(full, chosen, "the index chooses as `place` does");
        println!(
            "{:<48} {:>26} {:>8}/{APPS}",
            format!("place (all candidates): same, {policy}"),
            format!("{:.1} ms (1 run)", ms(t)),
            full.len()
        );
    }

    let trace = parse_azure(
        include_str!("../testdata/azure-functions-2019/100_invocations.csv"),
        include_str!("../testdata/azure-functions-2019/100_durations.csv"),
        include_str!("../testdata/azure-functions-2019/100_memory.csv"),
    )
    .expect("shipped trace parses");
    let start = Instant::now();
    let c = compare(&trace, &SimPolicy::ALL, &SimConfig::default());
    let t = start.elapsed();
    println!(
        "{:<48} {:>26} {:>14}",
        "sim::compare 100-function trace, 4 policies x 5 seeds",
        format!("{:.1} ms (1 run)", ms(t)),
        format!("{} apps x {} min", c.setup.apps, c.setup.replayed_minutes)
    );
}
