//! Placement and simulation timings (plain `std::time`, no harness):
//! `cargo bench -p tern-scheduler`. Places 10,000 apps on 1,000 nodes with
//! each policy (every decision keeps all 1,000 candidates with their terms)
//! and replays the 100-function Azure sample with every policy and seed.

use std::time::{Duration, Instant};

use tern_scheduler::rng::SplitMix64;
use tern_scheduler::{
    compare, parse_azure, place, AppSpec, Cluster, NodeState, PlacementContext, Policy, Resources,
    SimConfig, SimPolicy,
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

fn place_all(policy: Policy, apps: &[(AppSpec, Resources)]) -> (Duration, usize, usize) {
    let mut c = cluster();
    let mut ctx = PlacementContext::default();
    let (mut placed, mut candidates) = (0, 0);
    let start = Instant::now();
    for (spec, predicted) in apps {
        ctx.predicted_demand = (policy == Policy::Learned).then_some(*predicted);
        if let Ok(d) = place(&c, spec, policy, &ctx) {
            candidates += d.candidates.len();
            c.bind(spec.clone(), &d.node).expect("known node");
            if policy == Policy::Learned {
                c.set_expected(&spec.name, *predicted).expect("just bound");
            }
            placed += 1;
        }
    }
    (start.elapsed(), placed, candidates)
}

fn main() {
    let apps = apps();
    println!(
        "{:<34} {:>10} {:>12} {:>14}",
        "benchmark", "time", "per app", "placed"
    );
    for policy in Policy::ALL {
        let (t, placed, candidates) = place_all(policy, &apps);
        assert_eq!(candidates, placed * NODES);
        println!(
            "{:<34} {:>8.1}ms {:>10.1}µs {:>8}/{APPS}",
            format!("place {APPS} apps on {NODES} nodes: {policy}"),
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / APPS as f64,
            placed
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
        "{:<34} {:>8.1}ms {:>12} {:>14}",
        "sim::compare 100-function trace, 4 policies x 5 seeds",
        t.as_secs_f64() * 1e3,
        "",
        format!("{} apps x {} min", c.setup.apps, c.setup.replayed_minutes)
    );
}
