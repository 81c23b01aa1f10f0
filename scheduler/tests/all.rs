//! tern-scheduler's integration tests (one binary: fast to link, one place
//! to look). Sections: cluster and placement, cost models, predictor,
//! rebalancer, restart, traces, simulator, invariants.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use proptest::prelude::*;
use tern_scheduler::rebalance::predictive;
use tern_scheduler::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn node(name: &str, cpu: u64, mem_gib: u64) -> NodeState {
    NodeState::new(name, Resources::new(cpu, mem_gib * GIB))
}

fn app(name: &str, cpu: u64, mem_mib: u64) -> AppSpec {
    AppSpec::new(name, Resources::new(cpu, mem_mib * MIB))
}

fn ctx() -> PlacementContext {
    PlacementContext::default()
}

// ---------------------------------------------------------------- traces

fn trace10() -> &'static Trace {
    static T: OnceLock<Trace> = OnceLock::new();
    T.get_or_init(|| {
        parse_azure(
            include_str!("../testdata/azure-functions-2019/10_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/10_durations.csv"),
            include_str!("../testdata/azure-functions-2019/10_memory.csv"),
        )
        .expect("10-function sample parses")
    })
}

fn trace100() -> &'static Trace {
    static T: OnceLock<Trace> = OnceLock::new();
    T.get_or_init(|| {
        parse_azure(
            include_str!("../testdata/azure-functions-2019/100_invocations.csv"),
            include_str!("../testdata/azure-functions-2019/100_durations.csv"),
            include_str!("../testdata/azure-functions-2019/100_memory.csv"),
        )
        .expect("100-function sample parses")
    })
}

/// The default comparison of every policy (five seeds), computed once per
/// sample.
fn comparison(n: usize) -> &'static Comparison {
    static C10: OnceLock<Comparison> = OnceLock::new();
    static C100: OnceLock<Comparison> = OnceLock::new();
    let (cell, trace) = if n == 10 {
        (&C10, trace10())
    } else {
        (&C100, trace100())
    };
    cell.get_or_init(|| compare(trace, &SimPolicy::ALL, &SimConfig::default()))
}

fn result(c: &Comparison, p: SimPolicy) -> &PolicyResult {
    c.policies
        .iter()
        .find(|r| r.policy == p)
        .expect("policy simulated")
}

#[test]
fn shipped_traces_parse_with_their_documented_shape() {
    let t = trace10();
    assert_eq!((t.functions.len(), t.len()), (10, 1440));
    assert_eq!((t.minutes[0], t.minutes[1439]), (1, 1440));
    let t = trace100();
    assert_eq!((t.functions.len(), t.len()), (100, 480));
    assert_eq!((t.minutes[0], t.minutes[479]), (480, 959));
    // First 10-sample function: 197 invocations of 306 ms in minute 1, 204 MB.
    let f = &trace10().functions[0];
    assert_eq!(
        (f.invocations[0], f.avg_duration_ms, f.memory_mb),
        (197, 306.0, 204.0)
    );
    assert_eq!(f.demand(0), Resources::new(1005, 204 * MIB));
}

const INV: &str =
    "HashOwner,HashApp,HashFunction,Trigger,1,2,3\no,a,f1,http,1,2,3\no,a,f2,timer,0,0,1\n";
const DUR: &str = "HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,100,5\no,a,f2,60,1\n";
const MEM: &str = "HashFunction,HashOwner,HashApp,AverageAllocatedMb\nf1,o,a,128\nf2,o,a,64.5\n";

#[test]
fn small_trace_parses_and_joins_on_function_hash() {
    let t = parse_azure(INV, DUR, MEM).unwrap();
    assert_eq!(t.minutes, vec![1, 2, 3]);
    assert_eq!(t.functions[1].invocations, vec![0, 0, 1]);
    assert_eq!(t.functions[1].memory_mb, 64.5);
    assert_eq!(t.functions[0].cpu_milli(2), 3.0 * 100.0 / 60.0);
}

#[test]
fn trace_errors_name_the_file_and_line() {
    let check = |inv: &str, dur: &str, mem: &str, expect: &str| {
        let err = parse_azure(inv, dur, mem).unwrap_err().to_string();
        assert_eq!(err, expect);
    };
    check(
        "HashOwner,HashApp,HashFunction,Trigger,1,2,3\no,a,f1,http,1,2\n",
        DUR,
        MEM,
        "invocations: line 2: expected 7 fields like the header, found 6",
    );
    check(
        "HashOwner,HashApp,HashFunction,Trigger,1,2,3\no,a,f1,http,1,2,3\no,a,f2,timer,0,x,1\n",
        DUR,
        MEM,
        "invocations: line 3: minute 2: `x` is not a whole number of invocations",
    );
    check(
        INV,
        "HashOwner,HashApp,HashFunction,Count\no,a,f1,5\n",
        MEM,
        "durations: line 1: missing column `Average` in the header",
    );
    check(
        INV,
        "HashOwner,HashApp,HashFunction,Average,Count\no,a,f1,100,5\n",
        MEM,
        "durations: no row for function f2 (invocations line 3): the three files must come from the same sample",
    );
    check(
        INV,
        DUR,
        "HashFunction,HashOwner,HashApp,AverageAllocatedMb\nf1,o,a,-3\n",
        "memory: line 2: column `AverageAllocatedMb`: `-3` is not a non-negative number",
    );
    check(
        "",
        DUR,
        MEM,
        "invocations: empty file, expected a CSV header line",
    );
    check(
        "HashOwner,HashApp,HashFunction,Trigger,1,3\no,a,f1,http,1,2\n",
        DUR,
        MEM,
        "invocations: line 1: minute columns must be consecutive, found 3 after 1",
    );
}

/// A trace of whole functions: `(invocations per minute, duration ms, memory MiB)`.
fn toy_trace(functions: Vec<(Vec<u64>, f64, f64)>) -> Trace {
    let minutes = functions.first().map_or(0, |f| f.0.len());
    Trace {
        minutes: (0..minutes as u64).collect(),
        functions: functions
            .into_iter()
            .enumerate()
            .map(
                |(i, (invocations, avg_duration_ms, memory_mb))| trace::FunctionTrace {
                    id: format!("fn{i:05}"),
                    owner: "o".into(),
                    app: "a".into(),
                    trigger: "queue".into(),
                    invocations,
                    avg_duration_ms,
                    memory_mb,
                },
            )
            .collect(),
    }
}

#[test]
fn cpu_is_spread_over_each_invocations_execution_time() {
    // (invocations per minute, duration ms) -> CPU per minute, millicores.
    // One 150 s run from a random moment of minute 0: half of minute 0,
    // all of minute 1, 7/8 of minute 2, 1/8 of minute 3.
    // Ten 6 s runs: 1 core-minute, 5 % of it past the minute's end.
    let cases: [(&[u64], f64, &[f64]); 4] = [
        (
            &[1, 0, 0, 0, 0, 0],
            150_000.0,
            &[500.0, 1000.0, 875.0, 125.0, 0.0, 0.0],
        ),
        (&[10, 0, 0], 6_000.0, &[950.0, 50.0, 0.0]),
        (&[0, 2, 0, 0], 60_000.0, &[0.0, 1000.0, 1000.0, 0.0]),
        (&[3, 3, 3], 0.0, &[0.0, 0.0, 0.0]),
    ];
    for (invocations, ms, want) in cases {
        let t = toy_trace(vec![(invocations.to_vec(), ms, 64.0)]);
        let got = t.functions[0].cpu_series();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{ms} ms, {invocations:?}: {got:?}");
        }
    }
    // Mass is kept: the shares of a run add up to its length in minutes.
    for ms in [1.0, 999.0, 60_000.0, 61_000.0, 146_627.0, 600_000.0] {
        let w = trace::spread_kernel(ms);
        assert!(
            (w.iter().sum::<f64>() - ms / 60_000.0).abs() < 1e-9,
            "{ms}: {w:?}"
        );
        assert!(
            w.iter().all(|&x| (0.0..=1.0 + 1e-12).contains(&x)),
            "{ms}: {w:?}"
        );
    }
}

// ------------------------------------------------- cluster and placement

#[test]
fn policies_parse_and_print_as_the_cli_spells_them() {
    for p in Policy::ALL {
        assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
    }
    assert_eq!("LEARNED".parse::<Policy>().unwrap(), Policy::Learned);
    let err = "fastest".parse::<Policy>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown placement policy `fastest`: expected requests, cost or learned"
    );
    assert_eq!(serde_json::to_string(&Policy::Cost).unwrap(), "\"cost\"");
}

#[test]
fn requests_policy_prefers_the_least_allocated_balanced_node() {
    let mut c = Cluster::new(vec![node("a", 4000, 8), node("b", 4000, 8)]);
    c.bind(app("x", 3000, 1024), "a").unwrap();
    let d = place(&c, &app("y", 500, 512), Policy::Requests, &ctx()).unwrap();
    assert_eq!(d.node, "b");
    let b = d.chosen();
    assert!(b.terms["least_allocated"] > 90.0, "{:?}", b.terms);
    assert_eq!(d.candidates.len(), 2);
    assert!(
        d.explain().starts_with("y -> b by `requests`"),
        "{}",
        d.explain()
    );
}

#[test]
fn decisions_explain_the_best_candidates_and_score_all() {
    let mut c = Cluster::new(
        (0..20)
            .map(|i| node(&format!("n{i}"), 4000 + 100 * i, 8))
            .collect(),
    );
    c.bind(app("x", 4000, 64), "n0").unwrap();
    let ctx = PlacementContext {
        explain_top: 3,
        ..ctx()
    };
    for policy in Policy::ALL {
        let d = place(&c, &app("y", 1000, 64), policy, &ctx).unwrap();
        assert_eq!(d.candidates.len(), 20);
        assert_eq!(
            d.node, "n19",
            "{policy}: the largest node is the least allocated"
        );
        let explained: Vec<&str> = d
            .candidates
            .iter()
            .filter(|c| !c.terms.is_empty())
            .map(|c| c.node.as_str())
            .collect();
        assert_eq!(explained, ["n17", "n18", "n19"], "{policy}");
        assert!(d
            .candidates
            .iter()
            .filter(|c| c.feasible)
            .all(|c| c.score.is_finite()));
        assert!(!d.candidates[0].feasible);
        let ranked = d.ranked();
        assert_eq!(
            (ranked[0].node.as_str(), ranked[19].node.as_str()),
            ("n19", "n0")
        );
    }
    // JSON round trip, infeasible candidates included (their score is null).
    let d = place(&c, &app("y", 1000, 64), Policy::Cost, &ctx).unwrap();
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""node":"n0","feasible":false,"reason_if_not":"needs 1000m CPU, 0m free by requests","score":null"#), "{json}");
    let back: Decision = serde_json::from_str(&json).unwrap();
    assert_eq!((back.node.as_str(), back.candidates.len()), ("n19", 20));
    assert_eq!(back.candidates[0].score, f64::NEG_INFINITY);
    for (a, b) in back.candidates.iter().zip(&d.candidates).skip(1) {
        assert!((a.score - b.score).abs() < 1e-12 && a.terms.len() == b.terms.len());
    }
    assert_eq!(
        d.chosen().terms.keys().collect::<Vec<_>>(),
        ["C", "R", "T_ms", "alpha*T", "beta*R"]
    );
}

#[test]
fn filters_say_why_a_node_was_rejected() {
    let mut c = Cluster::new(vec![
        node("full", 1000, 8),
        node("down", 8000, 8),
        node("drain", 8000, 8),
        node("x86", 8000, 8).with_label("arch", "x86_64"),
        node("arm", 8000, 8).with_label("arch", "aarch64"),
    ]);
    c.bind(app("big", 900, 10), "full").unwrap();
    c.node_mut("down").unwrap().ready = false;
    c.node_mut("drain").unwrap().draining = true;
    let a = app("new", 500, 10).with_selector("arch", "aarch64");
    let d = place(&c, &a, Policy::Requests, &ctx()).unwrap();
    assert_eq!(d.node, "arm");
    let reason = |n: &str| {
        d.candidates
            .iter()
            .find(|c| c.node == n)
            .unwrap()
            .reason_if_not
            .clone()
    };
    assert_eq!(
        reason("full").as_deref(),
        Some("missing label arch=aarch64")
    );
    assert_eq!(reason("down").as_deref(), Some("node not ready"));
    assert_eq!(reason("drain").as_deref(), Some("node draining"));
    assert_eq!(reason("arm"), None);

    let a = app("huge", 9000, 10);
    match place(&c, &a, Policy::Requests, &ctx()) {
        Err(ScheduleError::NoFeasibleNode {
            summary,
            candidates,
            ..
        }) => {
            assert_eq!(candidates.len(), 5);
            assert!(summary.contains("1 node(s): node not ready"), "{summary}");
            assert!(summary.contains("3 node(s): needs 9000m CPU"), "{summary}");
        }
        other => panic!("expected NoFeasibleNode, got {other:?}"),
    }
    assert_eq!(
        place(&Cluster::default(), &a, Policy::Cost, &ctx()).unwrap_err(),
        ScheduleError::NoNodes
    );
}

#[test]
fn cost_policy_trades_latency_against_resource_cost() {
    let nodes = vec![
        node("near", 4000, 8).with_label("zone", "paris"),
        node("far", 4000, 8).with_label("zone", "tokyo"),
    ];
    let mut c = Cluster::new(nodes);
    let edge = app("edge", 500, 64).with_user_location("paris");
    // Empty cluster: the node next to the users wins.
    let d = place(&c, &edge, Policy::Cost, &ctx()).unwrap();
    assert_eq!(d.node, "near");
    assert_eq!(d.chosen().terms["T_ms"], 1.0);
    // A busy near node loses once β·R outweighs α·T ...
    c.bind(app("hog", 3400, 64), "near").unwrap();
    let d = place(&c, &edge, Policy::Cost, &ctx()).unwrap();
    assert_eq!(d.node, "far", "{}", d.explain());
    // ... unless latency weighs more.
    let mut heavy = ctx();
    heavy.weights.scheduling.alpha_latency_per_ms = 0.1;
    assert_eq!(place(&c, &edge, Policy::Cost, &heavy).unwrap().node, "near");
    // A measured latency overrides the zone guess.
    let mut measured = ctx();
    measured.latency.insert("paris", "far", 0.5);
    measured.weights.scheduling.alpha_latency_per_ms = 0.1;
    assert_eq!(
        place(&c, &edge, Policy::Cost, &measured).unwrap().node,
        "far"
    );
}

#[test]
fn learned_policy_places_by_predicted_demand_not_requests() {
    let mut c = Cluster::new(vec![node("a", 4000, 8), node("b", 4000, 8)]);
    // `quiet` declared a lot but uses little; `busy` declared little but uses a lot.
    c.bind(app("quiet", 3000, 64), "a").unwrap();
    c.bind(app("busy", 100, 64), "b").unwrap();
    c.set_expected("quiet", Resources::new(200, 64 * MIB))
        .unwrap();
    c.set_expected("busy", Resources::new(3500, 64 * MIB))
        .unwrap();
    let new = app("new", 600, 64);
    assert_eq!(place(&c, &new, Policy::Requests, &ctx()).unwrap().node, "b");
    let mut learned = ctx();
    learned.predicted_demand = Some(Resources::new(800, 64 * MIB));
    let d = place(&c, &new, Policy::Learned, &learned).unwrap();
    assert_eq!(d.node, "a");
    assert_eq!(d.chosen().terms["app_predicted_cpu_milli"], 800.0);
    // Only 500m left on `b` by prediction: rejected, and said so.
    let b = d.candidates.iter().find(|c| c.node == "b").unwrap();
    assert_eq!(
        b.reason_if_not.as_deref(),
        Some("needs 800m CPU, 500m free by predicted demand")
    );
}

#[test]
fn replicas_of_a_group_spread_over_nodes() {
    let mut c = Cluster::new(vec![node("a", 8000, 8), node("b", 8000, 8)]);
    let mut r0 = app("web-0", 100, 64);
    r0.group = Some("web".into());
    c.bind(r0, "a").unwrap();
    // `a` is emptier than `b`, so only spreading can send web-1 to `b`.
    c.bind(app("other", 300, 64), "b").unwrap();
    let mut r1 = app("web-1", 100, 64);
    r1.group = Some("web".into());
    assert_eq!(place(&c, &r1, Policy::Requests, &ctx()).unwrap().node, "b");
    r1.group = None;
    assert_eq!(place(&c, &r1, Policy::Requests, &ctx()).unwrap().node, "a");
}

#[test]
fn cluster_bookkeeping_follows_binds_moves_and_removals() {
    let mut c = Cluster::new(vec![node("a", 4000, 8), node("b", 4000, 8)]);
    c.bind(app("x", 1000, 100), "a").unwrap();
    assert_eq!(
        c.bind(app("x", 1, 1), "b").unwrap_err(),
        ScheduleError::DuplicateApp("x".into())
    );
    assert_eq!(
        c.bind(app("y", 1, 1), "zz").unwrap_err(),
        ScheduleError::UnknownNode("zz".into())
    );
    c.set_expected("x", Resources::new(1500, 100 * MIB))
        .unwrap();
    c.move_app("x", "b").unwrap();
    assert_eq!(c.node_of("x"), Some("b"));
    let (a, b) = (c.node("a").unwrap(), c.node("b").unwrap());
    assert_eq!(
        (a.requested, a.expected, a.apps.len()),
        (Resources::ZERO, Resources::ZERO, 0)
    );
    assert_eq!(
        (b.requested.cpu_milli, b.expected.cpu_milli, b.apps.clone()),
        (1000, 1500, vec!["x".to_string()])
    );
    assert!(c.unbind("x").is_some());
    assert_eq!(c.node("b").unwrap().requested, Resources::ZERO);
    // JSON round trip (the control plane stores and sends these).
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Cluster>(&json).unwrap(), c);
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeState>> {
    prop::collection::vec((100u64..8000, 1u64..16, any::<bool>()), 1..12).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, ready))| {
                let mut n = node(&format!("n{i}"), cpu, mem);
                n.ready = ready || i == 0;
                n
            })
            .collect()
    })
}

fn arb_apps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..3000, 0u64..4096), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(1), ..ProptestConfig::default() })]

    #[test]
    fn requests_policy_never_over_commits_a_node(nodes in arb_nodes(), apps in arb_apps()) {
        let mut c = Cluster::new(nodes);
        for (i, (cpu, mem)) in apps.into_iter().enumerate() {
            let a = app(&format!("a{i}"), cpu, mem);
            if let Ok(d) = place(&c, &a, Policy::Requests, &ctx()) {
                c.bind(a, &d.node).unwrap();
            }
            for n in &c.nodes {
                prop_assert!(n.requested.fits_in(&n.capacity), "{} over-committed: {:?} > {:?}", n.name, n.requested, n.capacity);
            }
        }
    }

    #[test]
    fn placement_is_deterministic(nodes in arb_nodes(), apps in arb_apps(), policy in prop::sample::select(Policy::ALL.to_vec())) {
        let run = || {
            let mut c = Cluster::new(nodes.clone());
            let mut out = Vec::new();
            for (i, (cpu, mem)) in apps.iter().enumerate() {
                let a = app(&format!("a{i}"), *cpu, *mem).with_user_location("zone-1");
                let d = place(&c, &a, policy, &ctx());
                if let Ok(d) = &d {
                    c.bind(a, &d.node).unwrap();
                }
                out.push(d);
            }
            out
        };
        prop_assert_eq!(run(), run());
    }
}

/// A cluster of a few node shapes in a few zones (so that the index has
/// classes of several nodes), some not ready, some draining, some aarch64.
fn arb_shaped_nodes() -> impl Strategy<Value = Vec<NodeState>> {
    prop::collection::vec((0usize..3, 0usize..3, 0u8..10), 1..40).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (shape, zone, state))| {
                let (cpu, mem) = [(4000, 8), (8000, 16), (2000, 4)][shape];
                let mut n =
                    node(&format!("n{i}"), cpu, mem).with_label("zone", format!("zone-{zone}"));
                n.ready = state != 0 || i == 0;
                n.draining = state == 1 && i != 0;
                if state == 2 {
                    n = n.with_label("arch", "aarch64");
                }
                n
            })
            .collect()
    })
}

/// (cpu request, memory MiB, predicted cpu, group, wants aarch64, users' zone, unbind an earlier app)
type ArbPlaced = (u64, u64, u64, Option<u8>, bool, u8, Option<usize>);

fn arb_placed_apps() -> impl Strategy<Value = Vec<ArbPlaced>> {
    prop::collection::vec(
        (
            0u64..2500,
            0u64..3000,
            0u64..3000,
            prop::option::of(0u8..3),
            prop::bool::weighted(0.1),
            0u8..3,
            prop::option::weighted(0.1, 0usize..100),
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, rng_seed: proptest::test_runner::RngSeed::Fixed(2), ..ProptestConfig::default() })]

    #[test]
    fn the_placement_index_chooses_as_place_does(
        nodes in arb_shaped_nodes(),
        apps in arb_placed_apps(),
        policy in prop::sample::select(Policy::ALL.to_vec()),
        check_requests in any::<bool>(),
    ) {
        let mut c = Cluster::new(nodes);
        let latency = LatencyTable::default();
        let mut index = PlacementIndex::new(&c, &latency);
        let mut ctx = PlacementContext { check_requests, ..ctx() };
        let mut bound: Vec<String> = Vec::new();
        for (i, &(cpu, mem, predicted, group, arm, zone, unbind)) in apps.iter().enumerate() {
            if let Some(k) = unbind.filter(|_| !bound.is_empty()) {
                let gone = bound.remove(k % bound.len());
                c.unbind(&gone);
                index.unbind(&gone).unwrap();
            }
            let mut a = app(&format!("a{i}"), cpu, mem).with_user_location(format!("zone-{zone}"));
            a.group = group.map(|g| format!("g{g}"));
            if arm {
                a = a.with_selector("arch", "aarch64");
            }
            let demand = Resources::new(predicted, mem * MIB);
            ctx.predicted_demand = (policy == Policy::Learned).then_some(demand);
            let full = place(&c, &a, policy, &ctx);
            let fast = index.place(&a, policy, &ctx);
            match (&full, &fast) {
                (Ok(d), Ok(choice)) => {
                    prop_assert_eq!(&d.node, &choice.node);
                    prop_assert_eq!(d.chosen().score, choice.score);
                    prop_assert_eq!(&d.chosen().terms, &choice.terms);
                    let expected = ctx.predicted_demand;
                    c.bind(a.clone(), &d.node).unwrap();
                    if let Some(e) = expected {
                        c.set_expected(&a.name, e).unwrap();
                    }
                    index.bind(&a, &choice.node, expected).unwrap();
                    bound.push(a.name.clone());
                }
                (Err(e), Err(f)) => prop_assert_eq!(e, f),
                _ => prop_assert!(false, "place: {:?}\nindex: {:?}", full.map(|d| d.node), fast),
            }
        }
    }
}

// ------------------------------------------------------------ cost models

#[test]
fn cost_models_data_driven() {
    // (latency ms, resource share) -> C with default weights α=0.01, β=1.
    for (t, r, want) in [
        (0.0, 0.0, 0.0),
        (50.0, 0.0, 0.5),
        (0.0, 0.75, 0.75),
        (10.0, 0.5, 0.6),
    ] {
        let c = scheduling_cost(&SchedulingWeights::default(), t, r);
        assert!((c.value - want).abs() < 1e-9, "C({t}, {r}) = {}", c.value);
        assert!((c.terms["alpha*T"] + c.terms["beta*R"] - c.value).abs() < 1e-12);
    }
    // (state MiB, dirty MiB/s) -> (wire MiB, seconds, C) at 1 GiB/s, 50 ms setup.
    let w = MigrationWeights {
        bandwidth_bytes_per_s: 1024.0 * MIB as f64,
        setup_s: 0.05,
        ..MigrationWeights::default()
    };
    for (state, dirty, wire, secs) in [
        (0.0, 0.0, 0.0, 0.05),
        (1024.0, 0.0, 1024.0, 1.05),
        (1024.0, 512.0, 2048.0, 2.05), // half the link dirtied: the state goes twice
        (64.0, 4096.0, 640.0, 0.675),  // dirtier than the link: capped at 10×
    ] {
        let c = migration_cost(
            &w,
            &MigrationInput {
                state_bytes: (state * MIB as f64) as u64,
                dirty_bytes_per_s: dirty * MIB as f64,
            },
        );
        assert!(
            (c.terms["B_mib"] - wire).abs() < 1e-6,
            "wire {state}/{dirty}: {:?}",
            c.terms
        );
        assert!(
            (c.terms["T_s"] - secs).abs() < 1e-6,
            "time {state}/{dirty}: {:?}",
            c.terms
        );
        let want = 0.001 * state + 0.001 * wire + secs;
        assert!(
            (c.value - want).abs() < 1e-9,
            "C {state}/{dirty}: {} vs {want}",
            c.value
        );
    }
    // The defaults are the measured hot moves (BENCHMARKS.md, 1 % dirty):
    // 16 MiB in 20.7 ms and 64 MiB in 74.9 ms total, within 10 %.
    for (mib, measured_s) in [(16, 0.0207), (64, 0.0749)] {
        let input = MigrationInput {
            state_bytes: mib * MIB,
            dirty_bytes_per_s: 0.0,
        };
        let t = migration_seconds(&MigrationWeights::default(), &input);
        assert!((t / measured_s - 1.0).abs() < 0.1, "{mib} MiB: {t} s");
        assert_eq!(
            t,
            migration_cost(&MigrationWeights::default(), &input).terms["T_s"]
        );
    }
    // (snapshot MiB, share after, wait s) -> D ms with α=0.5 ms/MiB, β=20 ms, γ=1000 ms/s.
    for (s, r, t, want) in [
        (0.0, 0.0, 0.0, 0.0),
        (64.0, 0.0, 0.0, 32.0),
        (64.0, 1.0, 0.0, 52.0),
        (0.0, 0.5, 2.0, 2010.0),
    ] {
        let d = start_delay(
            &StartDelayWeights::default(),
            &StartInput {
                snapshot_bytes: (s as u64) * MIB,
                node_share_after: r,
                wait_s: t,
            },
        );
        assert!(
            (d.value - want).abs() < 1e-9,
            "D({s}, {r}, {t}) = {}",
            d.value
        );
    }
}

#[test]
fn cost_weights_load_from_partial_config() {
    let w: CostWeights =
        serde_json::from_str(r#"{"scheduling": {"alpha_latency_per_ms": 0.5}}"#).unwrap();
    assert_eq!(w.scheduling.alpha_latency_per_ms, 0.5);
    assert_eq!(w.scheduling.beta_resource, 1.0);
    assert_eq!(w.migration, MigrationWeights::default());
}

// -------------------------------------------------------------- predictor

fn cpu_series(t: &Trace) -> Vec<Vec<f64>> {
    t.functions
        .iter()
        .map(|f| (0..t.len()).map(|i| f.cpu_milli(i)).collect())
        .collect()
}

#[test]
fn predictor_beats_every_baseline_on_both_shipped_traces() {
    for c in [comparison(10), comparison(100)] {
        let p = &c.predictor;
        assert!(p.points > 5000, "{p:?}");
        let baselines = [
            p.last_value_mae,
            p.moving_average_mae,
            p.seasonal_mae,
            p.exp_smoothing_mae,
        ];
        assert_eq!(
            p.best_baseline_mae,
            baselines.iter().copied().fold(f64::INFINITY, f64::min)
        );
        assert!(p.mae < p.best_baseline_mae, "log1p: {p:?}");
        let raw = [
            p.last_value_mae_raw,
            p.moving_average_mae_raw,
            p.seasonal_mae_raw,
            p.exp_smoothing_mae_raw,
        ];
        assert!(raw.iter().all(|&b| p.mae_raw < b), "raw: {p:?}");
        assert!(p.r2.unwrap() > 0.7, "{p:?}");
        // The upper forecast is an upper quantile (q0.9), roughly calibrated.
        assert!((0.8..0.97).contains(&p.upper_coverage), "{p:?}");
    }
}

#[test]
fn baselines_find_a_period_and_fit_their_smoothing_on_the_history() {
    // A timer: 900 every 7th minute, 20 otherwise; and a level that steps
    // up once and stays, which exponential smoothing follows.
    let timer: Vec<f64> = (0..300)
        .map(|m| if m % 7 == 0 { 900.0 } else { 20.0 })
        .collect();
    let level: Vec<f64> = (0..300)
        .map(|m| if m < 100 { 50.0 } else { 400.0 })
        .collect();
    let series = vec![timer.clone(), level];
    let b = Baselines::fit(&series, 200);
    assert_eq!(b.periods, vec![7, 1]);
    assert!(b.alphas.iter().all(|a| (0.0..=1.0).contains(a)), "{b:?}");
    let cfg = PredictorConfig::default();
    let f = b.forecasts(&cfg, 0, &timer, 200, 300);
    assert_eq!(f[2], timer[200..].to_vec(), "seasonal repeats the period");
    assert_eq!(f[0], timer[199..299].to_vec(), "last value");
    // Perfect forecasts: no error, and seasonal is the baseline to beat.
    let exact: Vec<Vec<Forecast>> = series
        .iter()
        .map(|s| s[200..].iter().map(|&v| Forecast::point(v)).collect())
        .collect();
    let r = evaluate(&cfg, &series, &exact, 200, "test");
    assert_eq!((r.mae, r.points), (0.0, 200));
    assert_eq!(
        (r.seasonal_mae, r.best_baseline.as_str()),
        (0.0, "seasonal")
    );
    assert!(r.last_value_mae > 0.0 && r.exp_smoothing_mae > 0.0);
}

#[test]
fn backtest_forecasts_use_no_future_values() {
    let t = trace10();
    let series = cpu_series(t);
    let cfg = PredictorConfig {
        refit_every: 120,
        ..PredictorConfig::default()
    };
    let split = 720;
    let a = backtest(&cfg, &series, t.minutes[0], split);
    // Change everything from minute 900 on: forecasts up to 900 must not move.
    let mut changed = series.clone();
    for s in &mut changed {
        for v in &mut s[900..] {
            *v = *v * 3.0 + 100.0;
        }
    }
    let b = backtest(&cfg, &changed, t.minutes[0], split);
    for (fa, fb) in a.forecasts.iter().zip(&b.forecasts) {
        assert_eq!(fa[..900 - split], fb[..900 - split]);
        assert_ne!(fa[900 - split + 1..], fb[900 - split + 1..]);
    }
}

#[test]
fn demand_predictor_learns_a_periodic_app() {
    let mut p = DemandPredictor::new(PredictorConfig::default());
    // A timer: 900m every 5th minute, 20m otherwise, 256 MiB.
    let usage = |m: u64| Resources::new(if m.is_multiple_of(5) { 900 } else { 20 }, 256 * MIB);
    for m in 0..600 {
        p.observe("timer", m, usage(m));
    }
    assert!(p.fit() >= 2);
    let f = p.predict("timer").unwrap();
    // Next minute is 600: a firing minute.
    assert!((800..=1000).contains(&f.median.cpu_milli), "{f:?}");
    assert!(f.mean.memory_bytes.abs_diff(256 * MIB) < MIB, "{f:?}");
    p.observe("timer", 600, usage(600));
    let f = p.predict("timer").unwrap();
    assert!(f.median.cpu_milli < 100, "{f:?}");
    assert!(p.predict("unknown").is_none());
    // A new app without a model yet: its last value.
    p.observe("new", 600, Resources::new(300, MIB));
    assert_eq!(p.predict("new").unwrap().median.cpu_milli, 300);
}

#[test]
fn predictor_fills_gaps_and_ignores_old_samples() {
    let mut p = Predictor::new(PredictorConfig::default());
    p.observe("a", 10, 5.0);
    p.observe("a", 13, 7.0); // 11 and 12 missing: held at 5
    p.observe("a", 12, 100.0); // older than the last sample: ignored
    p.observe("a", 13, 8.0); // same interval: replaces
    assert_eq!(p.history_len("a"), 4);
    assert!((p.last("a").unwrap() - 8.0).abs() < 1e-9);
}

// ------------------------------------------------------------- rebalancer

fn rebalance_fixture() -> (Cluster, BTreeMap<String, Resources>, BTreeMap<String, u64>) {
    let mut c = Cluster::new(vec![node("hot", 4000, 8), node("cool", 4000, 8)]);
    let mut demand = BTreeMap::new();
    let mut state = BTreeMap::new();
    for (name, cpu, st) in [("big", 2000, 2048), ("small", 1500, 64), ("tiny", 800, 16)] {
        c.bind(app(name, 100, 64), "hot").unwrap();
        demand.insert(name.to_string(), Resources::new(cpu, 64 * MIB));
        state.insert(name.to_string(), st * MIB);
    }
    (c, demand, state)
}

#[test]
fn rebalancer_moves_the_cheapest_app_that_fixes_an_overload() {
    let (c, demand, state) = rebalance_fixture();
    let last = BTreeMap::new();
    let input = RebalanceInput {
        demand: &demand,
        state_bytes: &state,
        last_moved: &last,
        now: 100,
    };
    let moves = plan_rebalance(&c, &input, &RebalanceConfig::default());
    // 4300m expected on 4000m (target 3600m): moving `tiny` (800m, 16 MiB)
    // is enough and cheaper than moving `small` or `big`.
    assert_eq!(moves.len(), 1, "{moves:?}");
    let m = &moves[0];
    assert_eq!(
        (m.app.as_str(), m.from.as_str(), m.to.as_str()),
        ("tiny", "hot", "cool")
    );
    assert!(matches!(
        m.reason,
        MoveReason::Overload {
            expected_cpu_milli: 4300,
            capacity_cpu_milli: 4000,
            ..
        }
    ));
    assert!(m.terms.contains_key("S_mib") && m.terms.contains_key("target_C"));
    assert!(m
        .reason
        .to_string()
        .starts_with("overload: source expected at 4300m of 4000m CPU"));

    // `tiny` moved recently: cool-down; `small` fixes it next.
    let last = BTreeMap::from([("tiny".to_string(), 95)]);
    let input = RebalanceInput {
        demand: &demand,
        state_bytes: &state,
        last_moved: &last,
        now: 100,
    };
    let moves = plan_rebalance(&c, &input, &RebalanceConfig::default());
    assert_eq!(
        moves.iter().map(|m| m.app.as_str()).collect::<Vec<_>>(),
        ["small"]
    );
    // After the cool-down it is movable again.
    let input = RebalanceInput { now: 105, ..input };
    assert_eq!(
        plan_rebalance(&c, &input, &RebalanceConfig::default())[0].app,
        "tiny"
    );
}

#[test]
fn rebalancer_drains_nodes_and_follows_users() {
    let (mut c, demand, state) = rebalance_fixture();
    c.node_mut("hot").unwrap().draining = true;
    let last = BTreeMap::new();
    let input = RebalanceInput {
        demand: &demand,
        state_bytes: &state,
        last_moved: &last,
        now: 0,
    };
    let cfg = RebalanceConfig {
        max_moves: 10,
        ..RebalanceConfig::default()
    };
    let moves = plan_rebalance(&c, &input, &cfg);
    // `cool` takes what fits under 90%: 2000 + 1500 = 3500m; 800m more would not fit.
    let moved: Vec<&str> = moves.iter().map(|m| m.app.as_str()).collect();
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Draining && m.to == "cool"));
    assert_eq!(moved.len(), 2, "{moves:?}");

    let mut c = Cluster::new(vec![
        node("paris-1", 4000, 8).with_label("zone", "paris"),
        node("tokyo-1", 4000, 8).with_label("zone", "tokyo"),
    ]);
    c.bind(app("edge", 100, 64).with_user_location("tokyo"), "paris-1")
        .unwrap();
    let demand = BTreeMap::from([("edge".to_string(), Resources::new(100, 64 * MIB))]);
    let input = RebalanceInput {
        demand: &demand,
        state_bytes: &BTreeMap::new(),
        last_moved: &last,
        now: 0,
    };
    let moves = plan_rebalance(&c, &input, &RebalanceConfig::default());
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].to, "tokyo-1");
    assert_eq!(
        moves[0].reason,
        MoveReason::UsersMoved {
            location: "tokyo".into(),
            from_ms: 50.0,
            to_ms: 1.0
        }
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(3), ..ProptestConfig::default() })]

    #[test]
    fn rebalancer_respects_its_move_limit_and_cool_down(
        nodes in arb_nodes(),
        apps in prop::collection::vec((0u64..3000, 0u64..2000, 0u64..40, 0usize..100), 1..60),
        max_moves in 0usize..5,
        draining in any::<bool>(),
    ) {
        let mut c = Cluster::new(nodes);
        let n = c.nodes.len();
        c.nodes[0].draining = draining;
        let (mut demand, mut last) = (BTreeMap::new(), BTreeMap::new());
        for (i, (req, used, moved_at, on)) in apps.into_iter().enumerate() {
            let name = format!("a{i}");
            let target = c.nodes[on % n].name.clone();
            c.bind(app(&name, req, 64), &target).unwrap();
            demand.insert(name.clone(), Resources::new(used * 3, 64 * MIB));
            if moved_at < 30 {
                last.insert(name, moved_at);
            }
        }
        let cfg = RebalanceConfig { max_moves, cooldown: 10, ..RebalanceConfig::default() };
        let input = RebalanceInput { demand: &demand, state_bytes: &BTreeMap::new(), last_moved: &last, now: 35 };
        let moves = plan_rebalance(&c, &input, &cfg);
        prop_assert!(moves.len() <= max_moves);
        let mut seen = std::collections::BTreeSet::new();
        for m in &moves {
            prop_assert!(seen.insert(m.app.clone()), "{} moved twice", m.app);
            prop_assert!(last.get(&m.app).is_none_or(|t| 35 >= t + 10), "{} moved in its cool-down", m.app);
            prop_assert_ne!(&m.from, &m.to);
            let to = c.node(&m.to).unwrap();
            prop_assert!(to.schedulable());
        }
        // Same input, same plan.
        prop_assert_eq!(moves, plan_rebalance(&c, &input, &cfg));
    }
}

/// Nodes of 1000m and apps `(name, node, forecast CPU, variance)` with
/// 64 MiB each and a request of 100m; exact when the variance is 0.
fn forecast_fixture(
    nodes: usize,
    apps: &[(&str, usize, f64, f64)],
) -> (Cluster, BTreeMap<String, AppForecast>) {
    let mut c = Cluster::new(
        (0..nodes)
            .map(|i| node(&format!("n{i}"), 1000, 8))
            .collect(),
    );
    let mut fc = BTreeMap::new();
    for &(name, on, cpu, var) in apps {
        c.bind(app(name, 100, 64), &format!("n{on}")).unwrap();
        fc.insert(
            name.to_string(),
            AppForecast {
                cpu_mean: cpu,
                cpu_var: var,
                memory_bytes: 64 * MIB,
            },
        );
    }
    (c, fc)
}

fn plan_for(c: &Cluster, fc: &BTreeMap<String, AppForecast>, cfg: &PredictiveConfig) -> Vec<Move> {
    let input = PredictiveInput {
        forecast: fc,
        state_bytes: &BTreeMap::new(),
        last_moved: &BTreeMap::new(),
        now: 100,
        error_shape: None,
    };
    plan_predictive(c, &input, cfg)
}

#[test]
fn predictive_rebalancer_data_driven() {
    let cfg = PredictiveConfig::default();
    // (case, nodes, apps (name, node, cpu, variance), moves, nodes whose
    // expected demand is over capacity after them, apps that must move)
    type Case<'a> = (
        &'a str,
        usize,
        Vec<(&'a str, usize, f64, f64)>,
        usize,
        usize,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "nothing over: nothing moves",
            2,
            vec![
                ("a", 0, 600.0, 0.0),
                ("b", 0, 300.0, 0.0),
                ("c", 1, 200.0, 0.0),
            ],
            0,
            0,
            vec![],
        ),
        (
            // Only `b` fits next to `c`.
            "a forecast overload moves the app that fixes it",
            2,
            vec![
                ("a", 0, 700.0, 0.0),
                ("b", 0, 400.0, 0.0),
                ("c", 1, 500.0, 0.0),
            ],
            1,
            0,
            vec!["b"],
        ),
        (
            // n1 has 150m of room, both apps of n0 are bigger: no move
            // fits, a swap does.
            "a swap where no move fits",
            2,
            vec![
                ("big", 0, 600.0, 0.0),
                ("mid", 0, 450.0, 0.0),
                ("x", 1, 330.0, 0.0),
                ("y", 1, 200.0, 0.0),
                ("z", 1, 320.0, 0.0),
            ],
            2,
            0,
            vec![],
        ),
        (
            // 2208m on 2000m: 208m cannot be served. Moving `s` (100m) off
            // n1 leaves it 2m short of full, room for the move's copying
            // (a core for the ~75 ms a 64 MiB app takes: 1.25m over the
            // minute), and n0 with all the overflow: one overloaded node
            // instead of two, the same CPU unserved.
            "triage gathers an overflow that cannot be avoided",
            2,
            vec![
                ("a", 0, 600.0, 0.0),
                ("b", 0, 410.0, 0.0),
                ("r", 0, 100.0, 0.0),
                ("c", 1, 600.0, 0.0),
                ("d", 1, 398.0, 0.0),
                ("s", 1, 100.0, 0.0),
            ],
            1,
            1,
            vec!["s"],
        ),
        (
            // The same with n1 2m fuller: moving `s` off would leave n1
            // exactly full but for the move's copying, which overloads it
            // (two overloads still). The planner counts its moves' copying
            // and gathers the overflow by swapping `a` for `d` instead.
            "a move whose own copying would overload its source is not made",
            2,
            vec![
                ("a", 0, 600.0, 0.0),
                ("b", 0, 410.0, 0.0),
                ("r", 0, 100.0, 0.0),
                ("c", 1, 600.0, 0.0),
                ("d", 1, 400.0, 0.0),
                ("s", 1, 100.0, 0.0),
            ],
            2,
            1,
            vec!["a", "d"],
        ),
        (
            // n1 expects 800m, n0 300m, nothing is over; but n1's apps are
            // uncertain (sd 200m each): splitting them makes an overload
            // unlikely on both nodes.
            "uncertain apps get room",
            2,
            vec![
                ("a", 0, 200.0, 0.0),
                ("b", 0, 100.0, 0.0),
                ("u", 1, 500.0, 40_000.0),
                ("v", 1, 300.0, 40_000.0),
            ],
            1,
            0,
            vec!["v"],
        ),
    ];
    for (case, nodes, apps, n_moves, over_after, must_move) in cases {
        let (c, fc) = forecast_fixture(nodes, &apps);
        let moves = plan_for(&c, &fc, &cfg);
        assert_eq!(moves.len(), n_moves, "{case}: {moves:?}");
        let mut after = c.clone();
        for m in &moves {
            after.move_app(&m.app, &m.to).unwrap();
        }
        let over = after
            .nodes
            .iter()
            .filter(|n| n.apps.iter().map(|a| fc[a].cpu_mean).sum::<f64>() > 1000.0)
            .count();
        assert_eq!(over, over_after, "{case}: {moves:?}");
        for a in must_move {
            assert!(
                moves.iter().any(|m| m.app == a),
                "{case}: {a} stays: {moves:?}"
            );
        }
        if case.starts_with("triage") {
            assert!(
                matches!(moves[0].reason, MoveReason::Triage { .. }),
                "{moves:?}"
            );
            let total: f64 = fc.values().map(|f| f.cpu_mean).sum();
            assert_eq!(total - 2000.0, 208.0, "the same CPU goes unserved");
        }
    }
}

/// The planner weighs a node's risk by how the forecasts have erred when it
/// is given their error shape, instead of by the normal.
#[test]
fn predictive_rebalancer_weighs_risk_by_the_error_shape() {
    // n0 expects 900m of 1000m with a standard deviation of 100m (one sd
    // of room); n1 is empty.
    let (c, fc) = forecast_fixture(2, &[("a", 0, 450.0, 5000.0), ("b", 0, 450.0, 5000.0)]);
    let cfg = PredictiveConfig::default();
    let plan = |shape: Option<&ErrorShape>| {
        let input = PredictiveInput {
            forecast: &fc,
            state_bytes: &BTreeMap::new(),
            last_moved: &BTreeMap::new(),
            now: 100,
            error_shape: shape,
        };
        let moves = plan_predictive(&c, &input, &cfg);
        (moves.len(), predictive::expected_cost(&c, &input, &cfg))
    };
    // (case, standardized errors seen, moves)
    let cases: Vec<(&str, Vec<f64>, usize)> = vec![
        // P(Z > 1) = 16 %: worth a move.
        ("the normal", vec![], 1),
        // Never more than half a spread over: no risk at one spread of room.
        (
            "errors never above half a spread",
            vec![-1.0, -0.5, 0.0, 0.5],
            0,
        ),
        // A third of the minutes three spreads over: move.
        ("bursts of three spreads", vec![-0.5, -0.5, 3.0], 1),
    ];
    for (case, errors, moves) in cases {
        let shape = ErrorShape::new(errors.iter().copied());
        let (n, _) = plan((!shape.is_empty()).then_some(&shape));
        assert_eq!(n, moves, "{case}");
    }
    // The node's expected cost by the shape: weight × P(Z > 1) plus sd ×
    // E[(Z − 1)⁺] = 0.1 × 1000 × 1/3 + 100 × 2/3.
    let shape = ErrorShape::new([-0.5, -0.5, 3.0]);
    let (_, cost) = plan(Some(&shape));
    assert!((cost - (100.0 / 3.0 + 200.0 / 3.0)).abs() < 1e-6, "{cost}");
    // Non-finite errors are dropped.
    assert_eq!(ErrorShape::new([f64::NAN, 1.0, f64::INFINITY]).len(), 1);
}

/// What the simulator compares each node's demand with: the mean and
/// variance the planner reckons, replicas of a group erring together.
#[test]
fn node_forecasts_add_a_groups_spreads() {
    let mut c = Cluster::new(vec![node("n0", 1000, 8), node("n1", 1000, 8)]);
    let mut fc = BTreeMap::new();
    // (app, node, group, mean, standard deviation)
    for (name, on, group, mean, sd) in [
        ("g-0", "n0", Some("g"), 100.0, 10.0),
        ("g-1", "n0", Some("g"), 100.0, 10.0),
        ("solo", "n0", None, 50.0, 10.0),
        ("g-2", "n1", Some("g"), 100.0, 10.0),
        ("exact", "n1", None, 300.0, 0.0),
    ] {
        let mut spec = app(name, 100, 64);
        spec.group = group.map(str::to_string);
        c.bind(spec, on).unwrap();
        fc.insert(
            name.to_string(),
            AppForecast {
                cpu_mean: mean,
                cpu_var: sd * sd,
                memory_bytes: 64 * MIB,
            },
        );
    }
    let input = PredictiveInput {
        forecast: &fc,
        state_bytes: &BTreeMap::new(),
        last_moved: &BTreeMap::new(),
        now: 100,
        error_shape: None,
    };
    let nodes = node_forecasts(&c, &input, &PredictiveConfig::default());
    // n0: (10 + 10)² for the group, 10² for `solo`; n1: one replica.
    assert_eq!(nodes, vec![(250.0, 500.0), (400.0, 100.0)]);
}

/// Three nodes of 1000m, 45m and twice 50m over (3145m on 3000m: 145m
/// cannot be served). Every app but `a` and `b` is pinned to its node; `a`
/// may only go where the `ssd` label is (n0, n1). No single move or swap
/// lowers the cost: `a` moved to n1 or `b` to n0 or n1 only adds an
/// overload's worth of unserved CPU, and `a` cannot swap with `b` (n2 has
/// no `ssd`). The chain does: `a` to n1, `b` into the room `a` leaves on
/// n0, so that the whole overflow sits on n1, and n0 (5m short of full,
/// room for the two moves' copying) and n2 are served.
#[test]
fn triage_chains_a_move_with_the_one_that_fills_its_room() {
    let pinned = |name: &str, on: &str| app(name, 100, 64).with_selector("host", on);
    let mut c = Cluster::new(vec![
        node("n0", 1000, 8)
            .with_label("host", "n0")
            .with_label("disk", "ssd"),
        node("n1", 1000, 8)
            .with_label("host", "n1")
            .with_label("disk", "ssd"),
        node("n2", 1000, 8).with_label("host", "n2"),
    ]);
    let apps = [
        (app("a", 100, 64).with_selector("disk", "ssd"), "n0", 250.0),
        (pinned("p", "n0"), "n0", 795.0),
        (pinned("q", "n1"), "n1", 1050.0),
        (app("b", 100, 64), "n2", 200.0),
        (pinned("s", "n2"), "n2", 850.0),
    ];
    let mut fc = BTreeMap::new();
    for (spec, on, cpu) in apps {
        fc.insert(
            spec.name.clone(),
            AppForecast {
                cpu_mean: cpu,
                cpu_var: 0.0,
                memory_bytes: 64 * MIB,
            },
        );
        c.bind(spec, on).unwrap();
    }
    let cfg = PredictiveConfig::default();
    let moves = plan_for(&c, &fc, &cfg);
    let moved: Vec<(&str, &str)> = moves
        .iter()
        .map(|m| (m.app.as_str(), m.to.as_str()))
        .collect();
    assert_eq!(moved, vec![("a", "n1"), ("b", "n0")], "{moves:?}");
    assert!(
        matches!(moves[0].reason, MoveReason::Triage { .. }),
        "{moves:?}"
    );
    let mut after = c.clone();
    for m in &moves {
        after.move_app(&m.app, &m.to).unwrap();
    }
    let load = |n: &NodeState| n.apps.iter().map(|a| fc[a].cpu_mean).sum::<f64>();
    let loads: Vec<f64> = after.nodes.iter().map(load).collect();
    assert_eq!(loads, vec![995.0, 1300.0, 850.0]);
    // The cost the planner weighs went down, from three overloads to one.
    let input = PredictiveInput {
        forecast: &fc,
        state_bytes: &BTreeMap::new(),
        last_moved: &BTreeMap::new(),
        now: 100,
        error_shape: None,
    };
    let before = predictive::expected_cost(&c, &input, &cfg);
    let now = predictive::expected_cost(&after, &input, &cfg);
    assert!(now < before - 40.0, "{before} -> {now}");
}

#[test]
fn capacity_advice_asks_for_nodes_when_the_forecast_does_not_fit() {
    // (apps' forecasts (cpu, variance), z) -> extra nodes of 1000m.
    for (apps, z, want) in [
        (vec![(900.0, 0.0), (800.0, 0.0)], 1.0, 0),
        (vec![(900.0, 0.0), (900.0, 0.0), (300.0, 0.0)], 0.0, 1),
        (vec![(900.0, 10_000.0), (1000.0, 0.0)], 0.0, 0),
        (vec![(900.0, 10_000.0), (1000.0, 0.0)], 2.0, 1),
        (vec![(2000.0, 0.0), (2100.0, 0.0)], 0.0, 3),
    ] {
        let named: Vec<(String, usize, f64, f64)> = apps
            .iter()
            .enumerate()
            .map(|(i, &(cpu, var))| (format!("a{i}"), i % 2, cpu, var))
            .collect();
        let refs: Vec<(&str, usize, f64, f64)> = named
            .iter()
            .map(|(n, on, c, v)| (n.as_str(), *on, *c, *v))
            .collect();
        let (c, fc) = forecast_fixture(2, &refs);
        let advice = capacity_advice(&c, &fc, z);
        assert_eq!(advice.capacity_cpu_milli, 2000);
        assert_eq!(advice.extra_nodes, want, "{apps:?} z={z}: {advice:?}");
    }
}

/// An app for the planner's property test: (request, mean, sd, memory
/// MiB, node, in a group, moved recently).
type ArbApp = (u64, f64, f64, u64, usize, bool, bool);

fn arb_forecast_cluster() -> impl Strategy<Value = (Vec<NodeState>, Vec<ArbApp>)> {
    (
        arb_nodes(),
        prop::collection::vec(
            (
                0u64..1500,
                0.0f64..2000.0,
                0.0f64..400.0,
                1u64..2048,
                0usize..100,
                any::<bool>(),
                any::<bool>(),
            ),
            1..40,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, rng_seed: proptest::test_runner::RngSeed::Fixed(4), ..ProptestConfig::default() })]

    #[test]
    fn predictive_rebalancer_keeps_its_limits_and_lowers_the_cost(
        (nodes, apps) in arb_forecast_cluster(),
        max_moves in 0usize..6,
        budget in 0.05f64..2.0,
    ) {
        let mut c = Cluster::new(nodes);
        c.nodes[0].draining = true;
        let n = c.nodes.len();
        let (mut fc, mut last, mut state) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (i, &(req, mean, sd, mem, on, grouped, recent)) in apps.iter().enumerate() {
            let name = format!("a{i}");
            let mut spec = app(&name, req, mem);
            spec.group = grouped.then(|| "g".to_string());
            c.bind(spec, &c.nodes[on % n].name.clone()).unwrap();
            fc.insert(name.clone(), AppForecast { cpu_mean: mean, cpu_var: sd * sd, memory_bytes: mem * MIB });
            state.insert(name.clone(), mem * MIB);
            if recent {
                last.insert(name, 98u64);
            }
        }
        let cfg = PredictiveConfig { max_moves, max_move_seconds: Some(budget), cooldown: 5, ..PredictiveConfig::default() };
        let input = PredictiveInput { forecast: &fc, state_bytes: &state, last_moved: &last, now: 100, error_shape: None };
        let moves = plan_predictive(&c, &input, &cfg);
        prop_assert!(moves.len() <= max_moves);
        let seconds: f64 = moves.iter().map(|m| m.terms["T_s"]).sum();
        prop_assert!(seconds <= budget + 1e-9, "{seconds} s of moves on a {budget} s budget");
        let mut after = c.clone();
        let mut seen = std::collections::BTreeSet::new();
        for m in &moves {
            prop_assert!(seen.insert(m.app.clone()), "{} moved twice", m.app);
            prop_assert!(!last.contains_key(&m.app), "{} moved in its cool-down", m.app);
            let to = after.node(&m.to).unwrap();
            prop_assert!(to.schedulable());
            let req = after.apps[&m.app].spec.requests;
            prop_assert!((to.requested + req).fits_in(&to.capacity), "{} over-commits {}", m.app, m.to);
            after.move_app(&m.app, &m.to).unwrap();
        }
        // Every step gained more than its migrations cost.
        let before = predictive::expected_cost(&c, &input, &cfg);
        let planned = predictive::expected_cost(&after, &input, &cfg);
        prop_assert!(planned <= before + 1e-6, "{before} -> {planned}");
        prop_assert_eq!(moves, plan_predictive(&c, &input, &cfg));
    }
}

// ---------------------------------------------------------------- restart

#[test]
fn restart_decisions_data_driven() {
    let mut c = Cluster::new(vec![
        node("a", 4000, 8),
        node("b", 4000, 8),
        node("c", 4000, 8),
    ]);
    c.bind(app("filler", 3500, 64), "b").unwrap();
    let crashed = Exit::Crashed {
        message: "wasm trap: unreachable".into(),
    };
    // (policy, exit, is node `a` alive, expected: None = stays, Some(node))
    let cases: [(RestartPolicy, &Exit, bool, Option<&str>); 10] = [
        (RestartPolicy::Never, &crashed, true, None),
        (RestartPolicy::Never, &Exit::NodeLost, false, None),
        (RestartPolicy::OnFailure, &Exit::Ok, true, None),
        (RestartPolicy::OnFailure, &crashed, true, Some("a")),
        (RestartPolicy::OnFailure, &Exit::NodeLost, false, Some("c")),
        (RestartPolicy::Always, &Exit::Ok, true, Some("a")),
        (RestartPolicy::Always, &crashed, false, Some("c")),
        (RestartPolicy::Always, &Exit::NodeLost, false, Some("c")),
        (RestartPolicy::Always, &Exit::Stopped, true, None),
        (RestartPolicy::OnFailure, &Exit::Stopped, true, None),
    ];
    for (policy, exit, alive, want) in cases {
        let mut c = c.clone();
        c.node_mut("a").unwrap().ready = alive;
        let mut spec = app("svc", 1000, 64);
        spec.restart = policy;
        c.bind(spec.clone(), "a").unwrap();
        let got = decide_restart(&c, &spec, "a", exit, 0, Policy::Requests, &ctx()).unwrap();
        match (want, &got) {
            (None, RestartDecision::Stay { .. }) => {}
            (
                Some(n),
                RestartDecision::Restart {
                    node, delay_ms: 0, ..
                },
            ) if node == n => {}
            _ => {
                panic!("{policy} after {exit:?} (node alive: {alive}): got {got:?}, want {want:?}")
            }
        }
    }
    assert_eq!(
        "on-failure".parse::<RestartPolicy>().unwrap(),
        RestartPolicy::OnFailure
    );
    assert_eq!(RestartPolicy::Always.to_string(), "always");
    assert!("sometimes".parse::<RestartPolicy>().is_err());
    assert_eq!(
        [0, 1, 2, 3, 20].map(backoff_ms),
        [0, 500, 1000, 2000, 300_000]
    );
}

// -------------------------------------------------------------- simulator

/// A cluster of `nodes` nodes of `cpu` millicores where every function runs
/// as one app, one seed.
fn toy_config(nodes: usize, cpu: u64) -> SimConfig {
    SimConfig {
        nodes,
        node_capacity: Some(Resources::new(cpu, 8 * GIB)),
        replica_cpu_milli: Some(1_000_000),
        seeds: 1,
        ..SimConfig::default()
    }
}

#[test]
fn unserved_cpu_is_the_demand_beyond_capacity() {
    // One function on one node of 2 cores: 1 core in the history (so that
    // its request fits), then 3 cores (180 one-second calls a minute).
    // Whatever the policy, each replayed minute overloads the node and
    // leaves one core-minute unserved (less the 0.02 core-minute the last
    // history minute's calls still run in the first replayed one).
    let calls: Vec<u64> = (0..40).map(|m| if m < 20 { 60 } else { 180 }).collect();
    let t = toy_trace(vec![(calls, 1000.0, 64.0)]);
    let c = compare(&t, &SimPolicy::ALL, &toy_config(1, 2000));
    let minutes = c.setup.replayed_minutes as f64;
    assert_eq!(minutes, 20.0);
    for p in &c.policies {
        assert_eq!(p.overload_minutes, minutes, "{}", p.policy);
        assert!(
            (p.unserved_cpu - minutes).abs() < 0.02,
            "{}: {}",
            p.policy,
            p.unserved_cpu
        );
        assert_eq!((p.slo_misses, p.migrations), (minutes, 0.0), "{}", p.policy);
    }
    // An app that no node can take (its requests do not fit next to the
    // first's) leaves its whole demand unserved.
    let t = toy_trace(vec![
        (vec![60; 40], 1000.0, 64.0),
        (vec![60; 40], 1000.0, 64.0),
    ]);
    let c = compare(&t, &SimPolicy::ALL, &toy_config(1, 1500));
    for p in &c.policies {
        assert_eq!(p.unplaced_app_minutes, minutes, "{}", p.policy);
        assert_eq!(p.overload_minutes, 0.0, "{}", p.policy);
        assert!(
            (p.unserved_cpu - minutes).abs() < 1e-6,
            "{}: {}",
            p.policy,
            p.unserved_cpu
        );
    }
}

/// Four functions on two nodes of 1000m: `A` always needs 600m; in each
/// 10-minute phase of the replayed hour one of `B`, `C`, `D` needs 600m and
/// the other two 300m. No fixed placement fits every phase (whatever shares
/// `A`'s node overloads it in its phase, and without a partner `B + C + D`
/// = 1200m overloads the other), but one swap before each phase fits it.
/// In the history hour `B`, `C` and `D` need 200m each, so their declared
/// requests leave a node room for one more while a swap is under way (the
/// rules never let a node hold more requests than its capacity, not even
/// between the two moves of a swap).
fn rotating_trace() -> Trace {
    let minutes = 120;
    let per_min = |milli: u64| milli * 60 / 60; // 60 ms calls: n calls = n millicores
    let a = vec![per_min(600); minutes];
    let phase = |who: usize| -> Vec<u64> {
        (0..minutes)
            .map(|m| match m {
                0..60 => per_min(200),
                _ if (m / 10) % 3 == who => per_min(600),
                _ => per_min(300),
            })
            .collect()
    };
    toy_trace(vec![
        (a, 60.0, 16.0),
        (phase(0), 60.0, 16.0),
        (phase(1), 60.0, 16.0),
        (phase(2), 60.0, 16.0),
    ])
}

#[test]
fn the_oracle_fits_what_no_fixed_placement_fits() {
    let c = compare(
        &rotating_trace(),
        &SimPolicy::ALL,
        &SimConfig {
            seeds: 3,
            ..toy_config(2, 1000)
        },
    );
    let oracle = result(&c, SimPolicy::Oracle);
    assert_eq!(oracle.overload_minutes, 0.0, "{}", render_table(&c));
    assert_eq!(oracle.unserved_cpu, 0.0, "{}", render_table(&c));
    assert!(oracle.migrations > 0.0, "{}", render_table(&c));
    // `requests` only sees a phase once it has begun.
    let requests = result(&c, SimPolicy::Requests);
    assert!(requests.overload_minutes > 0.0, "{}", render_table(&c));
    let g = c.gain.as_ref().expect("requests, learned and oracle ran");
    assert!(g.oracle_share_overload.is_some());
}

#[test]
fn every_policy_keeps_to_the_same_rules() {
    let cfg = SimConfig {
        max_moves_per_minute: 3,
        move_seconds_per_minute: 0.4,
        cooldown_minutes: 5,
        seeds: 2,
        fill: 0.9,
        ..SimConfig::default()
    };
    for trace in [trace10(), &rotating_trace()] {
        let c = compare(trace, &SimPolicy::ALL, &cfg);
        assert_eq!(c.setup.rules.max_moves_per_minute, 3);
        let mut moved = 0.0;
        for p in &c.policies {
            moved += p.migrations;
            for r in &p.runs {
                let a = &r.audit;
                assert!(a.max_moves_in_a_minute <= 3, "{}: {a:?}", p.policy);
                assert!(
                    a.max_move_seconds_in_a_minute <= 0.4 + 1e-9,
                    "{}: {a:?}",
                    p.policy
                );
                assert_eq!(a.moves_within_cooldown, 0, "{}: {a:?}", p.policy);
                assert!(a.max_requested_share <= 1.0, "{}: {a:?}", p.policy);
                let seconds = r.migration_seconds;
                assert!(seconds <= 0.4 * c.setup.replayed_minutes as f64 + 1e-9);
            }
        }
        assert!(moved > 0.0, "the rules were put to the test");
    }
}

#[test]
fn migrations_are_charged_at_the_measured_cost() {
    // The rotating trace makes the oracle swap; each move costs C and T
    // for the app's memory (16 MiB).
    let c = compare(
        &rotating_trace(),
        &[SimPolicy::Oracle],
        &toy_config(2, 1000),
    );
    let p = &c.policies[0];
    assert!(p.migrations > 0.0);
    let one = migration_cost(
        &MigrationWeights::default(),
        &MigrationInput {
            state_bytes: 16 * MIB,
            dirty_bytes_per_s: 0.0,
        },
    );
    assert!(
        (p.migration_cost - p.migrations * one.value).abs() < 1e-9,
        "{p:?}"
    );
    assert!((p.migration_seconds - p.migrations * one.terms["T_s"]).abs() < 1e-9);
}

#[test]
fn learned_improves_on_requests_on_the_100_function_sample() {
    // What the learned policy is for, on the default cluster (mean of five
    // seeds): fewer overloaded node-minutes and less CPU left unserved.
    let c = comparison(100);
    let (req, learned) = (
        result(c, SimPolicy::Requests),
        result(c, SimPolicy::Learned),
    );
    assert!(req.overload_minutes > 0.0, "{}", render_table(c));
    assert!(
        learned.overload_minutes < req.overload_minutes,
        "{}",
        render_table(c)
    );
    assert!(
        learned.unserved_cpu < req.unserved_cpu,
        "{}",
        render_table(c)
    );
}

#[test]
fn learned_gathers_the_overflow_on_the_10_function_sample() {
    // The default cluster (fill 0.8, seeds 1-5): when two busy functions
    // fill every node with four 250m apps, the two replicas of a third fit
    // nowhere. Tipping two nodes each (`requests`: 237.2 node-minutes) or
    // gathering the overflow on one (the oracle: 171.0, its planner
    // counting its moves' copying, and swapping only where one of the two
    // moves fits before the other leaves). `learned`, weighing its risks by
    // how its forecasts have erred, gathers in most of those minutes
    // (185.2) and leaves less CPU unserved than `requests` (13.2
    // core-minutes against 16.3). The bounds leave room for small changes,
    // not for losing either.
    let c = comparison(10);
    let (req, learned, oracle) = (
        result(c, SimPolicy::Requests),
        result(c, SimPolicy::Learned),
        result(c, SimPolicy::Oracle),
    );
    assert!(
        learned.overload_minutes < 0.85 * req.overload_minutes,
        "{}",
        render_table(c)
    );
    assert!(
        learned.unserved_cpu < 0.85 * req.unserved_cpu,
        "{}",
        render_table(c)
    );
    assert!(
        oracle.overload_minutes < 0.75 * req.overload_minutes,
        "{}",
        render_table(c)
    );
    assert!(
        oracle.overload_minutes < learned.overload_minutes,
        "{}",
        render_table(c)
    );
}

#[test]
fn cost_policy_places_apps_next_to_their_users() {
    // Three nodes in three zones with room to spare: the objective puts
    // every app in its users' zone (1 ms); nothing overloads, so nothing
    // moves them.
    let t = toy_trace((0..9).map(|i| (vec![30 + i; 60], 200.0, 32.0)).collect());
    let c = compare(
        &t,
        &[SimPolicy::Requests, SimPolicy::Cost],
        &SimConfig {
            seeds: 3,
            ..toy_config(3, 8000)
        },
    );
    let (req, cost) = (result(&c, SimPolicy::Requests), result(&c, SimPolicy::Cost));
    assert_eq!(cost.mean_latency_ms, 1.0, "{}", render_table(&c));
    assert_eq!((cost.migrations, req.migrations), (0.0, 0.0));
    assert!(req.mean_latency_ms >= cost.mean_latency_ms);
}

#[test]
fn simulation_is_deterministic_for_a_seed() {
    let cfg = SimConfig {
        seed: 7,
        seeds: 1,
        ..SimConfig::default()
    };
    let a = compare(trace10(), &SimPolicy::ALL, &cfg);
    let b = compare(trace10(), &SimPolicy::ALL, &cfg);
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    // A different seed changes user locations and arrival order, not the
    // trace or the forecasts.
    let c = compare(trace10(), &SimPolicy::ALL, &SimConfig { seed: 8, ..cfg });
    assert_eq!(a.predictor, c.predictor);
    assert_ne!(a.policies, c.policies);
    // Several seeds: the mean of their runs, in seed order.
    let five = comparison(10);
    assert_eq!(five.setup.seeds, vec![1, 2, 3, 4, 5]);
    for p in &five.policies {
        let mean = p.runs.iter().map(|r| r.unserved_cpu).sum::<f64>() / 5.0;
        assert!((p.unserved_cpu - mean).abs() < 1e-9);
        assert!(p.range.unserved_cpu[0] <= mean && mean <= p.range.unserved_cpu[1]);
    }
}

#[test]
fn comparison_json_has_the_cli_contract_fields() {
    let c = comparison(10);
    let v: serde_json::Value = serde_json::to_value(c).unwrap();
    let policies = v["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 4);
    for (p, name) in policies
        .iter()
        .zip(["requests", "cost", "learned", "oracle"])
    {
        assert_eq!(p["policy"], name);
        for field in [
            "overload_minutes",
            "unserved_cpu",
            "slo_misses",
            "migrations",
            "migration_cost",
            "mean_utilization",
            "nodes_used",
        ] {
            assert!(p[field].is_number(), "{field} in {p}");
        }
        assert!(
            p["runs"][0].get("node_load").is_none(),
            "the plot series stays out of the JSON"
        );
    }
    for field in [
        "mae",
        "last_value_mae",
        "moving_average_mae",
        "seasonal_mae",
        "exp_smoothing_mae",
        "best_baseline_mae",
    ] {
        assert!(v["predictor"][field].is_number(), "{field}");
    }
    assert!(v["predictor"]["model"].as_str().unwrap().contains("linfa"));
    assert!(v["gain"]["overload_reduction"].is_number());
    let back: Comparison = serde_json::from_value(v).unwrap();
    assert_eq!(
        back.policies[0].overload_minutes,
        c.policies[0].overload_minutes
    );
}

#[test]
fn tables_line_up_and_plots_have_a_panel_or_line_per_policy() {
    let c = comparison(100);
    let table = render_table(c);
    let lines: Vec<&str> = table.lines().collect();
    let head = lines.iter().position(|l| l.starts_with("policy")).unwrap();
    for (line, p) in lines[head + 1..head + 5]
        .iter()
        .zip(["requests", "cost", "learned", "oracle"])
    {
        assert!(line.starts_with(p), "{table}");
        assert_eq!(
            line.chars().count(),
            lines[head].chars().count(),
            "columns line up:\n{table}"
        );
    }
    assert!(table.contains("last value") && table.contains("seasonal"));
    assert!(table.contains("share of the oracle's gain"));

    let svg = plot_svg(c);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 4 * c.setup.nodes);
    assert_eq!(svg.matches(">capacity</text>").count(), 4);
    for p in ["requests:", "cost:", "learned:", "oracle:"] {
        assert!(svg.contains(p), "panel {p}");
    }

    let cfg = SimConfig {
        seeds: 1,
        ..SimConfig::default()
    };
    let policies = [SimPolicy::Requests, SimPolicy::Learned];
    let s = sweep(trace10(), &policies, &[0.7, 0.9], &cfg);
    assert_eq!(s.points.len(), 2);
    assert_eq!(s.points[1].setup.fill, 0.9);
    assert!(s.points[0].setup.node_capacity.cpu_milli > s.points[1].setup.node_capacity.cpu_milli);
    let text = render_sweep(&s);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("0.")).count(),
        4,
        "{text}"
    );
    let svg = plot_sweep_svg(&s);
    // Two panels (overload, unserved), a line per policy, a point per fill.
    assert_eq!(svg.matches("<polyline").count(), 2 * policies.len());
    assert_eq!(svg.matches("<circle").count(), 2 * policies.len() * 2);
}

#[test]
fn explicit_cluster_size_is_used_as_given() {
    let cfg = SimConfig {
        nodes: 3,
        node_capacity: Some(Resources::new(8000, 16 * GIB)),
        seeds: 1,
        ..SimConfig::default()
    };
    let c = compare(trace10(), &[SimPolicy::Requests], &cfg);
    assert_eq!((c.setup.nodes, c.setup.node_capacity.cpu_milli), (3, 8000));
    assert_eq!(c.policies.len(), 1);
    let load = &c.policies[0].runs[0].node_load;
    assert_eq!(load.len(), 3);
    assert_eq!(load[0].len(), c.setup.replayed_minutes);
}

#[test]
fn policy_names_parse_with_the_oracle() {
    for p in SimPolicy::ALL.into_iter().chain([SimPolicy::Observed]) {
        assert_eq!(p.to_string().parse::<SimPolicy>().unwrap(), p);
    }
    assert_eq!("Learned".parse::<SimPolicy>().unwrap(), SimPolicy::Learned);
    assert_eq!(
        "psychic".parse::<SimPolicy>().unwrap_err().to_string(),
        "unknown policy `psychic`: expected requests, cost, learned, oracle or observed"
    );
    assert_eq!(SimPolicy::Oracle.placement(), Policy::Learned);
    assert_eq!(
        "observed".parse::<SimPolicy>().unwrap(),
        SimPolicy::Observed
    );
    assert!(!SimPolicy::ALL.contains(&SimPolicy::Observed));
}

// -------------------------------------------------------------- invariants

#[test]
fn scheduler_never_links_wasmtime() {
    let manifest = include_str!("../Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    for line in deps.lines().filter(|l| !l.trim().is_empty()) {
        let name = line.split(['.', '=', ' ']).next().unwrap();
        assert!(
            ["serde", "linfa", "linfa-linear", "ndarray", "thiserror"].contains(&name),
            "unexpected dependency: {line}"
        );
    }
}

#[test]
fn short_traces_simulate_without_panicking() {
    let t = parse_azure(INV, DUR, MEM).unwrap();
    let c = compare(&t, &SimPolicy::ALL, &SimConfig::default());
    assert_eq!(c.setup.replayed_minutes, 0);
    assert!(c
        .policies
        .iter()
        .all(|p| p.overload_minutes == 0.0 && p.migrations == 0.0));
    // 30 minutes: too short for per-app models; forecasts fall back to the last value.
    let header: Vec<String> = (1..=30).map(|m| m.to_string()).collect();
    let row: Vec<String> = (1..=30).map(|m| (m % 7).to_string()).collect();
    let inv = format!(
        "HashOwner,HashApp,HashFunction,Trigger,{}\no,a,f1,http,{}\n",
        header.join(","),
        row.join(",")
    );
    let t = parse_azure(&inv, DUR, MEM).unwrap();
    let c = compare(&t, &SimPolicy::ALL, &SimConfig::default());
    assert_eq!(
        (c.setup.history_minutes, c.setup.replayed_minutes),
        (15, 15)
    );
    assert_eq!(c.predictor.points, 15);
    // Without a model the forecast is the last minute's started work (plus
    // what still runs): for 100 ms calls, all but the last value.
    assert!(
        (c.predictor.mae - c.predictor.last_value_mae).abs() < 0.01,
        "{:?}",
        c.predictor
    );
}
