//! The cluster model: resources, nodes, apps and which app runs where.
//!
//! Everything here is plain data (serde, JSON-friendly) plus a few methods on
//! [`Cluster`] that keep the per-node bookkeeping (`apps`, `requested`,
//! `expected`) consistent when apps are bound, moved or removed.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ScheduleError;

/// An amount of CPU and memory: a capacity, a request, a usage or a demand.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Resources {
    /// CPU in thousandths of a core (1000 = one core busy for the whole interval).
    pub cpu_milli: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl Resources {
    /// No CPU, no memory.
    pub const ZERO: Resources = Resources {
        cpu_milli: 0,
        memory_bytes: 0,
    };

    /// `cpu_milli` thousandths of a core and `memory_bytes` bytes.
    pub const fn new(cpu_milli: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu_milli,
            memory_bytes,
        }
    }

    /// Whether `self` fits in `other` on every resource.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_milli <= other.cpu_milli && self.memory_bytes <= other.memory_bytes
    }

    /// Component-wise subtraction that stops at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.saturating_sub(other.cpu_milli),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// Component-wise addition that stops at `u64::MAX`.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.saturating_add(other.cpu_milli),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// Scales both components by `factor` (rounded down, never negative).
    pub fn scale(&self, factor: f64) -> Resources {
        let f = factor.max(0.0);
        Resources {
            cpu_milli: (self.cpu_milli as f64 * f) as u64,
            memory_bytes: (self.memory_bytes as f64 * f) as u64,
        }
    }

    /// Fractions `(cpu, memory)` of `capacity` that `self` takes; a zero
    /// capacity counts as fully used when anything is asked of it.
    pub fn fractions_of(&self, capacity: &Resources) -> (f64, f64) {
        fn frac(x: u64, cap: u64) -> f64 {
            if cap == 0 {
                if x == 0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                x as f64 / cap as f64
            }
        }
        (
            frac(self.cpu_milli, capacity.cpu_milli),
            frac(self.memory_bytes, capacity.memory_bytes),
        )
    }

    /// The larger of the two fractions of `capacity` (the dominant share).
    pub fn dominant_share(&self, capacity: &Resources) -> f64 {
        let (c, m) = self.fractions_of(capacity);
        c.max(m)
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, rhs: Resources) -> Resources {
        self.saturating_add(&rhs)
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, rhs: Resources) {
        *self = self.saturating_add(&rhs);
    }
}

impl std::iter::Sum for Resources {
    fn sum<I: Iterator<Item = Resources>>(iter: I) -> Resources {
        iter.fold(Resources::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}m CPU, {} MiB",
            self.cpu_milli,
            self.memory_bytes / (1 << 20)
        )
    }
}

fn default_true() -> bool {
    true
}

fn default_price() -> f64 {
    1.0
}

/// What the control plane knows about one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// Unique node name (`node-1`, ...).
    pub name: String,
    /// What the node offers to apps.
    pub capacity: Resources,
    /// Live usage as last reported by the node's heartbeat.
    #[serde(default)]
    pub usage: Resources,
    /// Sum of the declared requests of the apps bound here (kept by [`Cluster`]).
    #[serde(default)]
    pub requested: Resources,
    /// Sum of the demand the scheduler expects from the apps bound here
    /// (predicted demand, or the request of an app without a prediction);
    /// kept by [`Cluster`], refreshed with [`Cluster::set_expected`].
    #[serde(default)]
    pub expected: Resources,
    /// Node labels (`zone`, `arch`, `latency-ms-<location>`, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Names of the apps bound to this node (kept by [`Cluster`]).
    #[serde(default)]
    pub apps: Vec<String>,
    /// Whether the node is healthy (heartbeats arrive); only ready nodes get apps.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Whether the operator is draining the node: it gets no new apps and
    /// the rebalancer moves its apps away.
    #[serde(default)]
    pub draining: bool,
    /// Relative price of this node's capacity (1.0 = baseline); the `cost`
    /// policy's resource term scales with it.
    #[serde(default = "default_price")]
    pub price: f64,
}

impl NodeState {
    /// A ready, empty node with baseline price and no labels.
    pub fn new(name: impl Into<String>, capacity: Resources) -> Self {
        NodeState {
            name: name.into(),
            capacity,
            usage: Resources::ZERO,
            requested: Resources::ZERO,
            expected: Resources::ZERO,
            labels: BTreeMap::new(),
            apps: Vec::new(),
            ready: true,
            draining: false,
            price: 1.0,
        }
    }

    /// Adds a label (builder style).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Whether new apps may be placed here (ready and not draining).
    pub fn schedulable(&self) -> bool {
        self.ready && !self.draining
    }

    /// Whether the node carries every label of `selector` with the same value.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// When an app that stopped is started again (from its latest checkpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart it (the default: nothing happens that was not asked for).
    #[default]
    Never,
    /// Restart it after a trap or when its node is lost, not after a clean exit.
    OnFailure,
    /// Restart it whenever it stops, unless an operator stopped it.
    Always,
}

impl RestartPolicy {
    /// The policy's name as the CLI spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RestartPolicy {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "never" | "no" => Ok(RestartPolicy::Never),
            "on-failure" | "onfailure" | "on_failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(ScheduleError::UnknownRestartPolicy(s.to_string())),
        }
    }
}

/// What an operator declares for an app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Unique app name.
    pub name: String,
    /// Resources the app declares it needs (the `requests` policy reserves them).
    #[serde(default)]
    pub requests: Resources,
    /// Hard limits enforced by the runtime sandbox, if any.
    #[serde(default)]
    pub limits: Option<Resources>,
    /// The app's own labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels a node must carry to run this app (e.g. `arch=aarch64`).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Edge apps: where the app's users are (a location or zone name), so
    /// the `cost` and `learned` policies can keep latency low.
    #[serde(default)]
    pub user_location: Option<String>,
    /// What to do when the app exits or its node is lost.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Replicas of one service share a group: placement spreads them over
    /// nodes and the rebalancer treats their demand as moving together.
    #[serde(default)]
    pub group: Option<String>,
}

impl AppSpec {
    /// An app with the given requests and nothing else declared.
    pub fn new(name: impl Into<String>, requests: Resources) -> Self {
        AppSpec {
            name: name.into(),
            requests,
            limits: None,
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            user_location: None,
            restart: RestartPolicy::default(),
            group: None,
        }
    }

    /// Requires a node label (builder style).
    pub fn with_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_selector.insert(key.into(), value.into());
        self
    }

    /// Sets where the app's users are (builder style).
    pub fn with_user_location(mut self, location: impl Into<String>) -> Self {
        self.user_location = Some(location.into());
        self
    }
}

/// An app bound to a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacedApp {
    /// The app as declared.
    pub spec: AppSpec,
    /// The node it is bound to.
    pub node: String,
    /// The demand the scheduler expects from it (its requests until a
    /// prediction is set with [`Cluster::set_expected`]).
    pub expected: Resources,
}

/// Nodes and the apps bound to them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// All nodes, in a stable order (the order ties are broken in).
    pub nodes: Vec<NodeState>,
    /// Every bound app by name.
    pub apps: BTreeMap<String, PlacedApp>,
}

impl Cluster {
    /// A cluster of these nodes with no apps (per-node app bookkeeping is reset).
    pub fn new(nodes: Vec<NodeState>) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|mut n| {
                n.apps.clear();
                n.requested = Resources::ZERO;
                n.expected = Resources::ZERO;
                n
            })
            .collect();
        Cluster {
            nodes,
            apps: BTreeMap::new(),
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node called `name`, mutably (for heartbeats: `usage`, `ready`).
    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    fn node_index(&self, name: &str) -> Result<usize, ScheduleError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| ScheduleError::UnknownNode(name.to_string()))
    }

    /// The node `app` is bound to.
    pub fn node_of(&self, app: &str) -> Option<&str> {
        self.apps.get(app).map(|p| p.node.as_str())
    }

    /// Binds `app` to `node` (after [`crate::place`] chose it, or because the
    /// operator asked for that node). Fails if the node is unknown or an app
    /// of that name is already bound.
    pub fn bind(&mut self, app: AppSpec, node: &str) -> Result<(), ScheduleError> {
        if self.apps.contains_key(&app.name) {
            return Err(ScheduleError::DuplicateApp(app.name));
        }
        let idx = self.node_index(node)?;
        let n = &mut self.nodes[idx];
        n.requested += app.requests;
        n.expected += app.requests;
        n.apps.push(app.name.clone());
        let expected = app.requests;
        self.apps.insert(
            app.name.clone(),
            PlacedApp {
                spec: app,
                node: node.to_string(),
                expected,
            },
        );
        Ok(())
    }

    /// Removes `app` from the cluster, returning where it was.
    pub fn unbind(&mut self, app: &str) -> Option<PlacedApp> {
        let placed = self.apps.remove(app)?;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == placed.node) {
            n.requested = n.requested.saturating_sub(&placed.spec.requests);
            n.expected = n.expected.saturating_sub(&placed.expected);
            n.apps.retain(|a| a != app);
        }
        Some(placed)
    }

    /// Moves a bound app to another node (the bookkeeping side of a migration).
    pub fn move_app(&mut self, app: &str, to: &str) -> Result<(), ScheduleError> {
        let to_idx = self.node_index(to)?;
        let placed = self
            .unbind(app)
            .ok_or_else(|| ScheduleError::UnknownApp(app.to_string()))?;
        let expected = placed.expected;
        let n = &mut self.nodes[to_idx];
        n.requested += placed.spec.requests;
        n.expected += expected;
        n.apps.push(app.to_string());
        self.apps.insert(
            app.to_string(),
            PlacedApp {
                node: to.to_string(),
                ..placed
            },
        );
        Ok(())
    }

    /// Records the demand the predictor expects from a bound app; the
    /// `learned` policy and the node's `expected` total use it.
    pub fn set_expected(&mut self, app: &str, demand: Resources) -> Result<(), ScheduleError> {
        let placed = self
            .apps
            .get_mut(app)
            .ok_or_else(|| ScheduleError::UnknownApp(app.to_string()))?;
        let old = placed.expected;
        placed.expected = demand;
        let node = placed.node.clone();
        let idx = self.node_index(&node)?;
        let n = &mut self.nodes[idx];
        n.expected = n.expected.saturating_sub(&old).saturating_add(&demand);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Resources;

    #[test]
    fn resource_arithmetic_saturates_and_shares_are_dominant() {
        let a = Resources::new(500, 1 << 30);
        let cap = Resources::new(2000, 2 << 30);
        assert_eq!(a.saturating_sub(&cap), Resources::ZERO);
        assert_eq!(
            Resources::new(u64::MAX, 1) + Resources::new(1, 1),
            Resources::new(u64::MAX, 2)
        );
        assert_eq!(a.fractions_of(&cap), (0.25, 0.5));
        assert_eq!(a.dominant_share(&cap), 0.5);
        assert!(a.fits_in(&cap) && !cap.fits_in(&a));
        assert_eq!(
            Resources::new(1, 0).dominant_share(&Resources::ZERO),
            f64::INFINITY
        );
        assert_eq!(
            [a, a].into_iter().sum::<Resources>(),
            Resources::new(1000, 2 << 30)
        );
        assert_eq!(a.to_string(), "500m CPU, 1024 MiB");
    }
}
