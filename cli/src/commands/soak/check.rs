//! The soak's checker: from the calls the clients recorded, the ledgers the
//! apps kept, and the node kills the soak made, what went wrong.
//!
//! - every acknowledged call is in its app's ledger exactly once, at the
//!   position the app answered (else `lost`, `doubled`, `misplaced`);
//! - unless a node that held the app was killed after the call was
//!   acknowledged and the app restarted from a checkpoint taken before it
//!   (a node held the app if the control plane placed it there, or if it
//!   answered the app's last call before the kill: a move whose answer
//!   was lost completes where the control plane does not look):
//!   then it is `lost_to_restart`, counted apart, and only if the call came
//!   after the app's latest checkpoint the soak saw before the kill (the
//!   restart starts from that one or a newer one);
//! - no call, acknowledged or not, is applied twice (`doubled`), and no id
//!   is in a ledger it was not sent to (`phantom`);
//! - no two copies served at once (`split_brain`): a generation of an app
//!   answers from one node only, and once a generation has answered, no
//!   call sent afterwards is answered by an older one.

use std::collections::HashMap;

use serde::Serialize;

use super::load::{Call, Outcome};

/// A node killed, for one app: one such record per app per kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub at_ms: u64,
    pub app: u16,
    /// When the app's latest checkpoint the soak saw had been taken (ms
    /// since the soak started; negative: before it). `None`: none yet.
    pub checkpoint_ms: Option<i64>,
    /// The node killed (`node-N`: N).
    pub node: Option<u16>,
    /// The control plane placed the app on that node, or it was the
    /// source or target of the app's move.
    pub held: bool,
}

/// How far apart the client's clock readings and the kill's may be.
const SLACK_MS: i64 = 1000;

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub calls_sent: u64,
    pub calls_acked: u64,
    pub calls_failed: u64,
    pub calls_unknown: u64,
    /// Failed or unknown calls that were applied (once), as is allowed.
    pub unacked_applied: u64,
    pub lost: u64,
    pub lost_to_restart: u64,
    /// The oldest acknowledged write lost to a restart: ms from its
    /// acknowledgement to the kill.
    pub lost_to_restart_max_age_ms: u64,
    pub doubled: u64,
    pub misplaced: u64,
    pub phantom: u64,
    pub split_brain: u64,
    /// The first problems found, for a person to read.
    pub problems: Vec<String>,
}

impl Verdict {
    #[cfg(test)]
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.misplaced == 0
            && self.phantom == 0
            && self.split_brain == 0
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        }
    }
}

/// Checks `calls` against `ledgers` (one per app, by app index).
pub fn check(calls: &[Call], ledgers: &[Vec<u64>], kills: &[Kill]) -> Verdict {
    let mut v = Verdict::default();
    // id -> (app, positions) for every id in any ledger.
    let mut found: HashMap<u64, (u16, Vec<u64>)> = HashMap::new();
    for (app, ledger) in ledgers.iter().enumerate() {
        for (pos, id) in ledger.iter().enumerate() {
            let e = found.entry(*id).or_insert((app as u16, Vec::new()));
            if e.0 != app as u16 {
                v.phantom += 1;
                v.problem(format!(
                    "id {id} is in the ledgers of apps {} and {app}",
                    e.0
                ));
            }
            e.1.push(pos as u64);
        }
    }
    let kills = holding_kills(calls, kills);
    let mut sent: HashMap<u64, u16> = HashMap::with_capacity(calls.len());
    for c in calls {
        sent.insert(c.id, c.app);
        v.calls_sent += 1;
        let positions = match found.get(&c.id) {
            Some((app, p)) if *app == c.app => p.as_slice(),
            _ => &[],
        };
        if positions.len() > 1 {
            v.doubled += 1;
            v.problem(format!(
                "call {} to app {} was applied {} times (at {positions:?})",
                c.id,
                c.app,
                positions.len()
            ));
        }
        match c.outcome {
            Outcome::Acked { seq, .. } => {
                v.calls_acked += 1;
                match positions {
                    [] => match excuse(c, &kills) {
                        Some(age) => {
                            v.lost_to_restart += 1;
                            v.lost_to_restart_max_age_ms = v.lost_to_restart_max_age_ms.max(age);
                        }
                        None => {
                            v.lost += 1;
                            v.problem(format!(
                                "call {} to app {} was acknowledged at {} ms (position {seq}) and is not in its ledger",
                                c.id, c.app, c.done_ms
                            ));
                        }
                    },
                    [p] if *p != seq => {
                        v.misplaced += 1;
                        v.problem(format!(
                            "call {} to app {} was acknowledged at position {seq} but is at {p}",
                            c.id, c.app
                        ));
                    }
                    _ => {}
                }
            }
            Outcome::Failed | Outcome::Unknown => {
                if matches!(c.outcome, Outcome::Failed) {
                    v.calls_failed += 1;
                } else {
                    v.calls_unknown += 1;
                }
                if positions.len() == 1 {
                    v.unacked_applied += 1;
                }
            }
        }
    }
    for (id, (app, _)) in &found {
        if sent.get(id) != Some(app) {
            v.phantom += 1;
            v.problem(format!(
                "id {id} is in the ledger of app {app} but was not sent to it"
            ));
        }
    }
    split_brain(calls, &mut v);
    v
}

/// The kills of nodes that held the app: placed there, or the node that
/// answered the app's last call before the kill.
fn holding_kills(calls: &[Call], kills: &[Kill]) -> Vec<Kill> {
    let mut answers: HashMap<u16, Vec<(u64, Option<u16>)>> = HashMap::new();
    for c in calls {
        if let Outcome::Acked { node, .. } = c.outcome {
            answers.entry(c.app).or_default().push((c.done_ms, node));
        }
    }
    for a in answers.values_mut() {
        a.sort_unstable_by_key(|&(t, _)| t);
    }
    kills
        .iter()
        .filter(|k| {
            k.held
                || k.node.is_some_and(|n| {
                    let a = answers.get(&k.app).map_or(&[][..], Vec::as_slice);
                    let before = a.partition_point(|&(t, _)| t <= k.at_ms);
                    before > 0 && a[before - 1].1 == Some(n)
                })
        })
        .copied()
        .collect()
}

/// Why an acknowledged call may be missing: a kill of a node holding its
/// app, after the call, of an app whose checkpoint predates the call. The
/// age of the write at the kill.
fn excuse(c: &Call, kills: &[Kill]) -> Option<u64> {
    kills
        .iter()
        .filter(|k| k.app == c.app)
        .filter(|k| k.at_ms as i64 + SLACK_MS >= c.done_ms as i64)
        .filter(|k| {
            k.checkpoint_ms
                .is_none_or(|ck| c.done_ms as i64 + SLACK_MS >= ck)
        })
        .map(|k| k.at_ms.saturating_sub(c.done_ms))
        .min()
}

/// An acknowledged call: sent and answered (ms), by which generation and
/// node, its id.
type Answer = (u64, u64, u64, Option<u16>, u64);

/// Two copies serving at once: one generation from two nodes, or an older
/// generation answering a call sent after a newer one had answered.
fn split_brain(calls: &[Call], v: &mut Verdict) {
    let mut by_app: HashMap<u16, Vec<Answer>> = HashMap::new();
    for c in calls {
        if let Outcome::Acked {
            generation: Some(g),
            node,
            ..
        } = c.outcome
        {
            by_app
                .entry(c.app)
                .or_default()
                .push((c.sent_ms, c.done_ms, g, node, c.id));
        }
    }
    for (app, mut acked) in by_app {
        let mut owner: HashMap<u64, u16> = HashMap::new();
        for &(_, _, g, node, id) in &acked {
            if let Some(n) = node {
                match owner.insert(g, n) {
                    Some(other) if other != n => {
                        v.split_brain += 1;
                        v.problem(format!(
                            "app {app} generation {g} answered from node-{other} and node-{n} (call {id})"
                        ));
                    }
                    _ => {}
                }
            }
        }
        // Newest generation answered before each call was sent.
        let mut done: Vec<(u64, u64)> = acked.iter().map(|a| (a.1, a.2)).collect();
        done.sort_unstable();
        acked.sort_unstable();
        let (mut i, mut newest) = (0, 0);
        for &(sent, _, g, _, id) in &acked {
            while i < done.len() && done[i].0 < sent {
                newest = newest.max(done[i].1);
                i += 1;
            }
            if g < newest {
                v.split_brain += 1;
                v.problem(format!(
                    "app {app}: call {id}, sent at {sent} ms, was answered by generation {g} after generation {newest} had answered"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(id: u64, seq: u64, at: u64, generation: u64, node: u16) -> Call {
        Call {
            id,
            app: 0,
            sent_ms: at,
            done_ms: at + 1,
            outcome: Outcome::Acked {
                seq,
                generation: Some(generation),
                node: Some(node),
            },
        }
    }

    fn unknown(id: u64, at: u64) -> Call {
        Call {
            id,
            app: 0,
            sent_ms: at,
            done_ms: at + 1,
            outcome: Outcome::Unknown,
        }
    }

    #[test]
    fn a_clean_run_passes_and_counts() {
        let calls = [acked(1, 0, 0, 1, 1), unknown(2, 5), acked(3, 2, 10, 2, 2)];
        let v = check(&calls, &[vec![1, 2, 3]], &[]);
        assert!(v.passed(), "{v:?}");
        assert_eq!(
            (v.calls_acked, v.calls_unknown, v.unacked_applied),
            (2, 1, 1)
        );
    }

    #[test]
    fn a_lost_acknowledged_call_fails() {
        let v = check(
            &[acked(1, 0, 0, 1, 1), acked(2, 1, 5, 1, 1)],
            &[vec![1]],
            &[],
        );
        assert_eq!(v.lost, 1);
        assert!(!v.passed());
    }

    #[test]
    fn a_call_applied_twice_fails_even_unacknowledged() {
        let v = check(&[unknown(1, 0)], &[vec![1, 1]], &[]);
        assert_eq!(v.doubled, 1);
        assert!(!v.passed());
    }

    #[test]
    fn a_loss_after_the_checkpoint_and_before_a_kill_is_excused_and_counted() {
        let calls = [acked(1, 0, 2_000, 1, 1), acked(2, 1, 5_000, 1, 1)];
        let kill = |checkpoint_ms| Kill {
            at_ms: 6_000,
            app: 0,
            checkpoint_ms,
            node: Some(1),
            held: true,
        };
        let v = check(&calls, &[vec![1]], &[kill(Some(4_000))]);
        assert!(v.passed(), "{v:?}");
        assert_eq!((v.lost_to_restart, v.lost_to_restart_max_age_ms), (1, 999));
        // Lost from before the checkpoint the soak saw: not excused.
        let v = check(&calls, &[vec![2]], &[kill(Some(4_000))]);
        assert_eq!(v.lost, 1);
        // A kill before the call excuses nothing; nor a kill of another app.
        let early = Kill {
            at_ms: 50,
            ..kill(None)
        };
        let other = Kill {
            app: 1,
            ..kill(None)
        };
        assert_eq!(check(&calls, &[vec![2]], &[early, other]).lost, 1);
    }

    /// A move whose answer was lost completed anyway: the control plane
    /// (and the soak) placed the app on its source, the target answered its
    /// calls, and the target was killed as a node that only forwards. The
    /// loss is excused by the node that answered last, not by any kill.
    #[test]
    fn a_kill_of_the_node_that_answered_last_excuses_like_a_placed_one() {
        let calls = [acked(1, 0, 2_000, 1, 1), acked(2, 1, 5_000, 2, 4)];
        let forwarder = |node| Kill {
            at_ms: 6_000,
            app: 0,
            checkpoint_ms: Some(4_000),
            node: Some(node),
            held: false,
        };
        let v = check(&calls, &[vec![1]], &[forwarder(4)]);
        assert!(v.passed(), "{v:?}");
        assert_eq!(v.lost_to_restart, 1);
        // Node 1 answered before node 4 did: its kill excuses nothing.
        assert_eq!(check(&calls, &[vec![1]], &[forwarder(1)]).lost, 1);
        // Nor does node 4's kill before it answered.
        let early = Kill {
            at_ms: 4_500,
            ..forwarder(4)
        };
        assert_eq!(check(&calls, &[vec![1]], &[early]).lost, 1);
    }

    #[test]
    fn phantom_and_misplaced_ids_fail() {
        let v = check(&[acked(1, 1, 0, 1, 1)], &[vec![9, 1]], &[]);
        assert_eq!((v.phantom, v.misplaced), (1, 0));
        let v = check(&[acked(1, 0, 0, 1, 1), unknown(2, 0)], &[vec![2, 1]], &[]);
        assert_eq!(v.misplaced, 1);
    }

    #[test]
    fn one_generation_from_two_nodes_is_split_brain() {
        let calls = [acked(1, 0, 0, 3, 1), acked(2, 1, 10, 3, 2)];
        let v = check(&calls, &[vec![1, 2]], &[]);
        assert_eq!(v.split_brain, 1, "{v:?}");
    }

    #[test]
    fn an_old_generation_answering_after_a_newer_one_is_split_brain() {
        // Call 2 answered by generation 2 at 11 ms; call 3, sent at 20 ms,
        // by generation 1: the old copy still served.
        let calls = [
            acked(1, 0, 0, 1, 1),
            acked(2, 1, 10, 2, 2),
            acked(3, 2, 20, 1, 1),
        ];
        let v = check(&calls, &[vec![1, 2, 3]], &[]);
        assert_eq!(v.split_brain, 1, "{v:?}");
        // Overlapping calls may finish in either order.
        let calls = [acked(1, 0, 10, 2, 2), acked(2, 1, 10, 1, 1)];
        assert_eq!(check(&calls, &[vec![1, 2]], &[]).split_brain, 0);
    }
}
