//! `tern soak` on two control planes sharing an etcd store: the leader is
//! killed mid-move again and again, the standby takes over, and nothing is
//! lost, doubled or split.

use super::*;
use tern_artifacts::tools::Etcd;

#[test]
fn a_soak_on_two_control_planes_sharing_etcd_survives_killing_the_leader() {
    let etcd = Etcd::start();
    let store = etcd.store_url("soak-test");
    let out = tern(&[
        "soak",
        "--etcd",
        &store,
        "--migrations",
        "12",
        "--seed",
        "5",
        "--faults",
        "kill_control",
        "--fault-rate",
        "0.5",
        "--modes",
        "hot,cold",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["migrations"], 12, "{report:#}");
    assert!(
        report["faults"]["kill_control"].as_u64().unwrap() >= 2,
        "leaders were killed: {report:#}"
    );
    for check in ["lost", "doubled", "split_brain"] {
        assert_eq!(report[check], 0, "{check}: {report:#}");
    }
}
