//! Placement: filter the nodes that can run an app, score the rest with the
//! chosen [`Policy`], keep every candidate's terms so the decision can be
//! explained.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::{AppSpec, Cluster, NodeState, Resources};
use crate::cost::{scheduling_cost, CostWeights, LatencyTable, Terms};
use crate::ScheduleError;

mod index;

pub use index::{Choice, PlacementIndex};

/// How the scheduler picks a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Demand-based, Kubernetes-like: reserve the declared requests (never
    /// over-commit them), score LeastAllocated + BalancedAllocation.
    Requests,
    /// Objective-based: among nodes that fit the requests, minimise
    /// `C = α·T + β·R` (latency to the app's users, node price × share used).
    Cost,
    /// Machine-learning-based: fit and score (LeastAllocated +
    /// BalancedAllocation, like `requests`) by the demand the predictor
    /// expects from the app and the nodes' expected load, not by requests.
    Learned,
}

impl Policy {
    /// All policies, in display order.
    pub const ALL: [Policy; 3] = [Policy::Requests, Policy::Cost, Policy::Learned];

    /// The policy's name as the CLI spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Policy::Requests => "requests",
            Policy::Cost => "cost",
            Policy::Learned => "learned",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "requests" => Ok(Policy::Requests),
            "cost" => Ok(Policy::Cost),
            "learned" => Ok(Policy::Learned),
            _ => Err(ScheduleError::UnknownPolicy(s.to_string())),
        }
    }
}

/// Everything besides the cluster and the app that a placement may use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlacementContext {
    /// Cost-model weights (the scheduling objective's α and β).
    pub weights: CostWeights,
    /// Latency between user locations and nodes.
    pub latency: LatencyTable,
    /// The predictor's next-interval demand for *this* app (`learned`);
    /// `None` (no history yet) falls back to the app's requests.
    pub predicted_demand: Option<Resources>,
    /// How many of the best candidates get their score's terms (the chosen
    /// node always does); the others carry their score and verdict only.
    pub explain_top: usize,
    /// Whether `learned` also keeps declared requests within a node's
    /// capacity, as `requests` and `cost` always do (the simulator holds
    /// every policy to that rule).
    pub check_requests: bool,
}

impl Default for PlacementContext {
    fn default() -> Self {
        PlacementContext {
            weights: CostWeights::default(),
            latency: LatencyTable::default(),
            predicted_demand: None,
            explain_top: 10,
            check_requests: false,
        }
    }
}

/// One node as the scheduler saw it for one app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Node name.
    pub node: String,
    /// Whether the node passed the filters.
    pub feasible: bool,
    /// Why it did not (`None` when feasible).
    pub reason_if_not: Option<String>,
    /// The policy's score: higher is better (the `cost` policy scores
    /// `-C`); `f64::NEG_INFINITY` when not feasible (`null` in JSON).
    #[serde(with = "score_json")]
    pub score: f64,
    /// The inputs and parts of the score, by name (filled for the chosen
    /// node and the `explain_top` best; empty for the others).
    pub terms: Terms,
}

/// Where an app goes and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The app placed.
    pub app: String,
    /// The chosen node.
    pub node: String,
    /// The policy that chose it.
    pub policy: Policy,
    /// Every node, in cluster order, with its verdict and score (and the
    /// best ones with their terms).
    pub candidates: Vec<Candidate>,
}

impl Decision {
    /// The chosen node's candidate entry.
    pub fn chosen(&self) -> &Candidate {
        self.candidates
            .iter()
            .find(|c| c.node == self.node)
            .expect("a decision always lists its chosen node")
    }

    /// Feasible candidates best first, then the infeasible ones.
    pub fn ranked(&self) -> Vec<&Candidate> {
        let mut v: Vec<&Candidate> = self.candidates.iter().collect();
        v.sort_by(|a, b| {
            b.feasible
                .cmp(&a.feasible)
                .then(b.score.total_cmp(&a.score))
        });
        v
    }

    /// A short explanation for people: the winner, its terms, the runner-up.
    pub fn explain(&self) -> String {
        let ranked = self.ranked();
        let fmt_terms = |c: &Candidate| {
            c.terms
                .iter()
                .map(|(k, v)| format!("{k}={v:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut s = format!(
            "{} -> {} by `{}` (score {:.3}: {})",
            self.app,
            self.node,
            self.policy,
            self.chosen().score,
            fmt_terms(self.chosen())
        );
        if let Some(second) = ranked.iter().find(|c| c.node != self.node && c.feasible) {
            s.push_str(&format!(
                "; runner-up {} (score {:.3})",
                second.node, second.score
            ));
        }
        let rejected = ranked.iter().filter(|c| !c.feasible).count();
        if rejected > 0 {
            s.push_str(&format!("; {rejected} node(s) filtered out"));
        }
        s
    }
}

/// JSON has no infinities: an infeasible candidate's score is `null`.
mod score_json {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(score: &f64, s: S) -> Result<S::Ok, S::Error> {
        if score.is_finite() {
            s.serialize_f64(*score)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Filters shared by every policy: readiness, draining, required labels.
fn basic_filter(node: &NodeState, app: &AppSpec) -> Option<String> {
    if !node.ready {
        return Some("node not ready".to_string());
    }
    if node.draining {
        return Some("node draining".to_string());
    }
    if !node.matches(&app.node_selector) {
        let missing: Vec<String> = app
            .node_selector
            .iter()
            .filter(|(k, v)| node.labels.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return Some(format!("missing label {}", missing.join(",")));
    }
    None
}

/// Whether `need` fits next to `used` within `capacity`; the reason if not.
fn fit_reason(
    used: &Resources,
    need: &Resources,
    capacity: &Resources,
    basis: &str,
) -> Option<String> {
    let free = capacity.saturating_sub(used);
    if need.cpu_milli > free.cpu_milli {
        return Some(format!(
            "needs {}m CPU, {}m free by {basis}",
            need.cpu_milli, free.cpu_milli
        ));
    }
    if need.memory_bytes > free.memory_bytes {
        return Some(format!(
            "needs {} MiB memory, {} MiB free by {basis}",
            mib(need.memory_bytes),
            mib(free.memory_bytes)
        ));
    }
    None
}

/// Kubernetes' LeastAllocated + BalancedAllocation on the shares after
/// placement; the terms go to `terms` when it is given.
fn requests_score(after: &Resources, capacity: &Resources, terms: Option<&mut Terms>) -> f64 {
    let (c, m) = after.fractions_of(capacity);
    let least = ((1.0 - c) + (1.0 - m)) / 2.0 * 100.0;
    let balanced = (1.0 - (c - m).abs() / 2.0) * 100.0;
    if let Some(terms) = terms {
        terms.insert("cpu_share_after".into(), c);
        terms.insert("mem_share_after".into(), m);
        terms.insert("least_allocated".into(), least);
        terms.insert("balanced_allocation".into(), balanced);
    }
    least + balanced
}

/// `-C` with `C = α·T + β·R`, R = price × dominant share of `after`.
fn cost_score(
    node: &NodeState,
    app: &AppSpec,
    after: &Resources,
    ctx: &PlacementContext,
    terms: Option<&mut Terms>,
) -> f64 {
    let t = app
        .user_location
        .as_deref()
        .map_or(0.0, |loc| ctx.latency.latency_ms(loc, node));
    let r = node.price * after.dominant_share(&node.capacity);
    let c = ctx.weights.scheduling.cost(t, r);
    if let Some(terms) = terms {
        terms.extend(scheduling_cost(&ctx.weights.scheduling, t, r).terms);
        terms.insert("C".into(), c);
    }
    -c
}

/// Kubernetes' SelectorSpread: 100 on the nodes with the fewest replicas of
/// the app's group, down to 0 on the ones with the most.
fn spread_score(same_group: usize, max_same_group: usize) -> f64 {
    if max_same_group == 0 {
        100.0
    } else {
        100.0 * (max_same_group - same_group) as f64 / max_same_group as f64
    }
}

/// How many of the app's group mates are on a node, and the most on any.
#[derive(Clone, Copy)]
struct GroupCount {
    here: usize,
    max: usize,
}

/// Judges one node for one app under `policy`: its score, or why it cannot
/// run the app. The score's terms go to `terms` when it is given.
fn evaluate(
    node: &NodeState,
    app: &AppSpec,
    policy: Policy,
    ctx: &PlacementContext,
    group: GroupCount,
    mut terms: Option<&mut Terms>,
) -> Result<f64, String> {
    if let Some(reason) = basic_filter(node, app) {
        return Err(reason);
    }
    let mut score = match policy {
        Policy::Requests | Policy::Cost => {
            if let Some(reason) =
                fit_reason(&node.requested, &app.requests, &node.capacity, "requests")
            {
                return Err(reason);
            }
            let after = node.requested + app.requests;
            if policy == Policy::Requests {
                requests_score(&after, &node.capacity, terms.as_deref_mut())
            } else {
                return Ok(cost_score(node, app, &after, ctx, terms));
            }
        }
        Policy::Learned => {
            if ctx.check_requests {
                if let Some(reason) =
                    fit_reason(&node.requested, &app.requests, &node.capacity, "requests")
                {
                    return Err(reason);
                }
            }
            let demand = ctx.predicted_demand.unwrap_or(app.requests);
            if let Some(reason) =
                fit_reason(&node.expected, &demand, &node.capacity, "predicted demand")
            {
                return Err(reason);
            }
            let after = node.expected + demand;
            if let Some(t) = terms.as_deref_mut() {
                t.insert("app_predicted_cpu_milli".into(), demand.cpu_milli as f64);
                t.insert(
                    "node_expected_cpu_milli".into(),
                    node.expected.cpu_milli as f64,
                );
            }
            requests_score(&after, &node.capacity, terms.as_deref_mut())
        }
    };
    if app.group.is_some() {
        let spread = spread_score(group.here, group.max);
        if let Some(t) = terms {
            t.insert("selector_spread".into(), spread);
        }
        score += spread;
    }
    Ok(score)
}

/// Chooses a node for `app` under `policy`.
///
/// Nodes that are not ready, are draining, lack a required label or cannot
/// hold the app (by requests for `requests`/`cost`, by predicted demand for
/// `learned`) are filtered out; the feasible node with the highest score
/// wins, ties going to the node listed first. The cluster is not changed:
/// call [`Cluster::bind`] with the decision's node.
pub fn place(
    cluster: &Cluster,
    app: &AppSpec,
    policy: Policy,
    ctx: &PlacementContext,
) -> Result<Decision, ScheduleError> {
    let mut same: std::collections::HashMap<&str, usize> = Default::default();
    if let Some(g) = &app.group {
        for p in cluster.apps.values() {
            if p.spec.group.as_ref() == Some(g) {
                *same.entry(p.node.as_str()).or_default() += 1;
            }
        }
    }
    let max = same.values().copied().max().unwrap_or(0);
    let group_of = |n: &NodeState| GroupCount {
        here: same.get(n.name.as_str()).copied().unwrap_or(0),
        max,
    };
    decide(&cluster.nodes, app, policy, ctx, group_of)
}

/// [`place`] on `nodes`, with the app's group mates counted by `group_of`.
fn decide(
    nodes: &[NodeState],
    app: &AppSpec,
    policy: Policy,
    ctx: &PlacementContext,
    group_of: impl Fn(&NodeState) -> GroupCount,
) -> Result<Decision, ScheduleError> {
    if nodes.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    // Score every node (cheap: no terms), then explain the best few.
    let mut candidates: Vec<Candidate> = nodes
        .iter()
        .map(|n| {
            let (feasible, reason_if_not, score) =
                match evaluate(n, app, policy, ctx, group_of(n), None) {
                    Ok(score) => (true, None, score),
                    Err(reason) => (false, Some(reason), f64::NEG_INFINITY),
                };
            Candidate {
                node: n.name.clone(),
                feasible,
                reason_if_not,
                score,
                terms: Terms::new(),
            }
        })
        .collect();
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if c.feasible && best.is_none_or(|b| c.score > candidates[b].score) {
            best = Some(i);
        }
    }
    let mut ranked: Vec<(f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.feasible)
        .map(|(i, c)| (c.score, i))
        .collect();
    let top = ctx.explain_top.max(1);
    if ranked.len() > top {
        ranked.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(top);
    }
    if let Some(b) = best {
        if !ranked.iter().any(|(_, i)| *i == b) {
            ranked.push((candidates[b].score, b));
        }
    }
    for (_, i) in ranked {
        let n = &nodes[i];
        let _ = evaluate(
            n,
            app,
            policy,
            ctx,
            group_of(n),
            Some(&mut candidates[i].terms),
        );
    }
    match best {
        Some(i) => Ok(Decision {
            app: app.name.clone(),
            node: candidates[i].node.clone(),
            policy,
            candidates,
        }),
        None => {
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for c in &candidates {
                let r = c.reason_if_not.clone().unwrap_or_default();
                // Group "needs 500m CPU, 120m free" reasons under their first words.
                let key = match r.find(',') {
                    Some(p) if r.starts_with("needs") => r[..p].to_string(),
                    _ => r,
                };
                *counts.entry(key).or_default() += 1;
            }
            let summary = counts
                .iter()
                .map(|(reason, n)| format!("{n} node(s): {reason}"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(ScheduleError::NoFeasibleNode {
                app: app.name.clone(),
                summary,
                candidates,
            })
        }
    }
}
