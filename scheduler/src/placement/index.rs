//! Placement at scale: the same decisions as [`super::place`] without
//! scoring every node for every app.
//!
//! Nodes that no app can tell apart before they hold anything (same
//! capacity, price, labels and health, and no latency entry of their own)
//! form a class; a class passes or fails the label filter as one, and has
//! one latency to a given user location. Within a class the nodes are kept
//! in order of their CPU share and of their memory share (of declared
//! requests, and of expected demand). Every policy's score falls as the
//! node's dominant share after placement grows (`requests` and `learned`
//! score `200 − 100 · max(cpu share, memory share)`, plus at most 100 for
//! spreading a group; `cost` scores `−(α·T + β·price·share)`), and that
//! share is at least the node's share of the resource the app weighs most
//! on plus the app's. So a class is read in the order of that resource,
//! emptiest first, and left as soon as no fuller node can beat the best
//! score found. Binding an app moves one node within its class's orders.
//!
//! Each node read is scored by the same arithmetic as [`super::place`]
//! (the functions it uses), ties go to the node listed first, and the
//! chosen node's terms come from the very function `place` explains with:
//! the choice and its score are the same; only the explanation is lighter
//! (the chosen node's terms, not every candidate's).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{decide, evaluate, requests_score, spread_score, GroupCount, PlacementContext, Policy};
use crate::cluster::{AppSpec, Cluster, NodeState, Resources};
use crate::cost::{LatencyTable, Terms};
use crate::ScheduleError;

/// A node's place in its class's order: its dominant share, then its index.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Key(f64, usize);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

struct Class {
    /// A member (all members look the same to the filters and the latency).
    first: usize,
    /// Members by their CPU and by their memory share of declared requests.
    requested: [BTreeSet<Key>; 2],
    /// Members by their CPU and by their memory share of expected demand.
    expected: [BTreeSet<Key>; 2],
}

impl Class {
    fn insert(&mut self, i: usize, n: &NodeState) {
        let (rc, rm) = n.requested.fractions_of(&n.capacity);
        let (ec, em) = n.expected.fractions_of(&n.capacity);
        self.requested[0].insert(Key(rc, i));
        self.requested[1].insert(Key(rm, i));
        self.expected[0].insert(Key(ec, i));
        self.expected[1].insert(Key(em, i));
    }

    fn remove(&mut self, i: usize, n: &NodeState) {
        let (rc, rm) = n.requested.fractions_of(&n.capacity);
        let (ec, em) = n.expected.fractions_of(&n.capacity);
        self.requested[0].remove(&Key(rc, i));
        self.requested[1].remove(&Key(rm, i));
        self.expected[0].remove(&Key(ec, i));
        self.expected[1].remove(&Key(em, i));
    }
}

/// How many apps of one group each node holds.
#[derive(Default)]
struct Group {
    per_node: HashMap<usize, usize>,
    /// How many nodes hold each count (above zero): the largest is the max.
    counts: BTreeMap<usize, usize>,
}

impl Group {
    fn max(&self) -> usize {
        self.counts.keys().next_back().copied().unwrap_or(0)
    }

    fn change(&mut self, node: usize, delta: isize) {
        let here = self.per_node.entry(node).or_insert(0);
        if *here > 0 {
            let c = self.counts.entry(*here).or_insert(0);
            *c -= 1;
            if *c == 0 {
                self.counts.remove(here);
            }
        }
        *here = here.saturating_add_signed(delta);
        if *here > 0 {
            *self.counts.entry(*here).or_insert(0) += 1;
        } else {
            self.per_node.remove(&node);
        }
    }
}

struct Bound {
    node: usize,
    requests: Resources,
    expected: Resources,
    group: Option<String>,
}

/// The node chosen for an app by a [`PlacementIndex`].
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// The chosen node.
    pub node: String,
    /// Its score (the same as [`super::place`] gives it).
    pub score: f64,
    /// The inputs and parts of its score.
    pub terms: Terms,
    /// Nodes judged to find it (the others could not win).
    pub judged: usize,
}

/// Nodes indexed for placing many apps quickly (see the module doc).
///
/// Built from a cluster; [`PlacementIndex::bind`] records each app placed.
/// Node health, labels and capacities are read once: rebuild the index
/// when they change.
pub struct PlacementIndex {
    nodes: Vec<NodeState>,
    by_name: HashMap<String, usize>,
    class_of: Vec<usize>,
    classes: Vec<Class>,
    latency: LatencyTable,
    /// Per user location, the latency to each class.
    latency_cache: HashMap<String, Vec<f64>>,
    groups: HashMap<String, Group>,
    apps: HashMap<String, Bound>,
}

impl PlacementIndex {
    /// Indexes `cluster`'s nodes and the apps bound to them. `latency` must
    /// be the table in the context of the placements (the index reads the
    /// latency of each class from it once).
    pub fn new(cluster: &Cluster, latency: &LatencyTable) -> Self {
        let mut nodes: Vec<NodeState> = cluster.nodes.clone();
        for n in &mut nodes {
            n.apps = Vec::new();
        }
        let by_name = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        type ClassKey = (
            Resources,
            u64,
            Vec<(String, String)>,
            bool,
            bool,
            Option<String>,
        );
        let mut keys: HashMap<ClassKey, usize> = HashMap::new();
        let mut classes: Vec<Class> = Vec::new();
        let mut class_of = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let own_latency = latency
                .entries
                .values()
                .any(|m| m.contains_key(&n.name))
                .then(|| n.name.clone());
            let key = (
                n.capacity,
                n.price.to_bits(),
                n.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                n.ready,
                n.draining,
                own_latency,
            );
            let c = *keys.entry(key).or_insert_with(|| {
                classes.push(Class {
                    first: i,
                    requested: Default::default(),
                    expected: Default::default(),
                });
                classes.len() - 1
            });
            classes[c].insert(i, n);
            class_of.push(c);
        }
        let mut index = PlacementIndex {
            nodes,
            by_name,
            class_of,
            classes,
            latency: latency.clone(),
            latency_cache: HashMap::new(),
            groups: HashMap::new(),
            apps: HashMap::new(),
        };
        for placed in cluster.apps.values() {
            if let Some(&i) = index.by_name.get(&placed.node) {
                if let Some(g) = &placed.spec.group {
                    index.groups.entry(g.clone()).or_default().change(i, 1);
                }
                index.apps.insert(
                    placed.spec.name.clone(),
                    Bound {
                        node: i,
                        requests: placed.spec.requests,
                        expected: placed.expected,
                        group: placed.spec.group.clone(),
                    },
                );
            }
        }
        index
    }

    fn latency_to(&mut self, location: &str) -> &[f64] {
        if !self.latency_cache.contains_key(location) {
            let per_class = self
                .classes
                .iter()
                .map(|c| self.latency.latency_ms(location, &self.nodes[c.first]))
                .collect();
            self.latency_cache.insert(location.to_string(), per_class);
        }
        &self.latency_cache[location]
    }

    /// Chooses a node for `app` as [`super::place`] would on the indexed
    /// cluster (same node, same score); the index is not changed: call
    /// [`PlacementIndex::bind`] with the choice.
    pub fn place(
        &mut self,
        app: &AppSpec,
        policy: Policy,
        ctx: &PlacementContext,
    ) -> Result<Choice, ScheduleError> {
        if self.nodes.is_empty() {
            return Err(ScheduleError::NoNodes);
        }
        let latency: Option<Vec<f64>> = match (policy, &app.user_location) {
            (Policy::Cost, Some(loc)) => Some(self.latency_to(loc).to_vec()),
            _ => None,
        };
        let group = app.group.as_ref().and_then(|g| self.groups.get(g));
        let max = group.map_or(0, Group::max);
        let group_of = |i: usize| GroupCount {
            here: group.and_then(|g| g.per_node.get(&i)).copied().unwrap_or(0),
            max,
        };
        let spread_max = if app.group.is_some() { 100.0 } else { 0.0 };
        let demand = match policy {
            Policy::Learned => ctx.predicted_demand.unwrap_or(app.requests),
            Policy::Requests | Policy::Cost => app.requests,
        };
        let w = &ctx.weights.scheduling;
        // The cost bound needs a score that falls as the share grows.
        let monotone = w.beta_resource >= 0.0;
        let mut best: Option<(f64, usize)> = None;
        let mut judged = 0;
        for (ci, class) in self.classes.iter().enumerate() {
            let first = &self.nodes[class.first];
            if !first.schedulable() || !first.matches(&app.node_selector) {
                continue;
            }
            let t = latency.as_ref().map_or(0.0, |l| l[ci]);
            // Read the class along the resource the app weighs most on: a
            // node's share after placement is at least its share of that
            // resource now plus the app's.
            let (dc, dm) = demand.fractions_of(&first.capacity);
            let axis = usize::from(dm > dc);
            let delta = dc.max(dm);
            let order = match policy {
                Policy::Learned => &class.expected[axis],
                Policy::Requests | Policy::Cost => &class.requested[axis],
            };
            for &Key(s, i) in order {
                let n = &self.nodes[i];
                if let Some((b, _)) = best {
                    // The best any node from here on can score.
                    let after = s + delta;
                    let bound = match policy {
                        Policy::Requests | Policy::Learned => 200.0 - 100.0 * after + spread_max,
                        Policy::Cost if monotone && n.price >= 0.0 => -w.cost(t, n.price * after),
                        Policy::Cost => f64::INFINITY,
                    };
                    if bound < b - 1e-9 {
                        break;
                    }
                }
                // The same score as `evaluate`, computed the same way.
                let score = match policy {
                    Policy::Requests | Policy::Cost => {
                        let after = n.requested + app.requests;
                        if !after.fits_in(&n.capacity) {
                            continue;
                        }
                        if policy == Policy::Cost {
                            -w.cost(t, n.price * after.dominant_share(&n.capacity))
                        } else {
                            requests_score(&after, &n.capacity, None)
                        }
                    }
                    Policy::Learned => {
                        let after = n.expected + demand;
                        if !after.fits_in(&n.capacity)
                            || (ctx.check_requests
                                && !(n.requested + app.requests).fits_in(&n.capacity))
                        {
                            continue;
                        }
                        requests_score(&after, &n.capacity, None)
                    }
                };
                let score = if app.group.is_some() && policy != Policy::Cost {
                    let g = group_of(i);
                    score + spread_score(g.here, g.max)
                } else {
                    score
                };
                judged += 1;
                let wins = match best {
                    None => true,
                    Some((b, bi)) => score > b || (score == b && i < bi),
                };
                if wins {
                    best = Some((score, i));
                }
            }
        }
        match best {
            Some((score, i)) => {
                let mut terms = Terms::new();
                let _ = evaluate(
                    &self.nodes[i],
                    app,
                    policy,
                    ctx,
                    group_of(i),
                    Some(&mut terms),
                );
                Ok(Choice {
                    node: self.nodes[i].name.clone(),
                    score,
                    terms,
                    judged,
                })
            }
            None => {
                // Nothing fits: say why, node by node, as `place` does.
                let by_name = &self.by_name;
                let d = decide(&self.nodes, app, policy, ctx, |n| {
                    group_of(by_name[n.name.as_str()])
                })?;
                let chosen = d.chosen();
                Ok(Choice {
                    node: d.node.clone(),
                    score: chosen.score,
                    terms: chosen.terms.clone(),
                    judged: d.candidates.len(),
                })
            }
        }
    }

    fn reorder(&mut self, i: usize, requested: Resources, expected: Resources) {
        let class = &mut self.classes[self.class_of[i]];
        class.remove(i, &self.nodes[i]);
        let n = &mut self.nodes[i];
        n.requested = requested;
        n.expected = expected;
        class.insert(i, n);
    }

    /// Records `app` bound to `node` with the demand expected from it
    /// (`None`: its requests), as [`Cluster::bind`] and
    /// [`Cluster::set_expected`] do.
    pub fn bind(
        &mut self,
        app: &AppSpec,
        node: &str,
        expected: Option<Resources>,
    ) -> Result<(), ScheduleError> {
        if self.apps.contains_key(&app.name) {
            return Err(ScheduleError::DuplicateApp(app.name.clone()));
        }
        let &i = self
            .by_name
            .get(node)
            .ok_or_else(|| ScheduleError::UnknownNode(node.to_string()))?;
        let expected = expected.unwrap_or(app.requests);
        let n = &self.nodes[i];
        let (r, e) = (n.requested + app.requests, n.expected + expected);
        self.reorder(i, r, e);
        if let Some(g) = &app.group {
            self.groups.entry(g.clone()).or_default().change(i, 1);
        }
        self.apps.insert(
            app.name.clone(),
            Bound {
                node: i,
                requests: app.requests,
                expected,
                group: app.group.clone(),
            },
        );
        Ok(())
    }

    /// Forgets `app` (removed, or about to be bound elsewhere).
    pub fn unbind(&mut self, app: &str) -> Result<(), ScheduleError> {
        let b = self
            .apps
            .remove(app)
            .ok_or_else(|| ScheduleError::UnknownApp(app.to_string()))?;
        let n = &self.nodes[b.node];
        let (r, e) = (
            n.requested.saturating_sub(&b.requests),
            n.expected.saturating_sub(&b.expected),
        );
        self.reorder(b.node, r, e);
        if let Some(g) = &b.group {
            if let Some(group) = self.groups.get_mut(g) {
                group.change(b.node, -1);
            }
        }
        Ok(())
    }
}
