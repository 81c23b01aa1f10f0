//! The three cost models, each returning its value *and* its terms, so an
//! operator can see why a node or a move was chosen:
//!
//! - scheduling: `C = α·T + β·R` (latency to the users, resource cost);
//! - migration: `C = α·S + β·B + γ·T` (state size, bytes on the wire, time);
//! - start delay: `D = α·S + β·R + γ·T` (snapshot size, resource
//!   availability, time spent waiting), an estimate in milliseconds.
//!
//! All weights live in [`CostWeights`] (with defaults), which the control
//! plane reads from its config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::NodeState;

/// Named terms of a score or a cost (`"T_ms"`, `"R"`, `"alpha*T"`, ...).
pub type Terms = BTreeMap<String, f64>;

const MIB: f64 = (1u64 << 20) as f64;

/// A cost model's result: the value and the terms it was computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// The total (lower is better).
    pub value: f64,
    /// Inputs and weighted parts, by name.
    pub terms: Terms,
}

/// Weights of the scheduling objective `C = α·T + β·R`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulingWeights {
    /// α: cost per millisecond of latency between the app's users and the node.
    pub alpha_latency_per_ms: f64,
    /// β: cost per unit of resource cost (node price × dominant share after placement).
    pub beta_resource: f64,
}

impl SchedulingWeights {
    /// `α·T + β·R` without its terms (the hot path of placement).
    pub fn cost(&self, latency_ms: f64, resource: f64) -> f64 {
        self.alpha_latency_per_ms * latency_ms + self.beta_resource * resource
    }
}

impl Default for SchedulingWeights {
    /// 50 ms of latency weighs as much as half a baseline node.
    fn default() -> Self {
        SchedulingWeights {
            alpha_latency_per_ms: 0.01,
            beta_resource: 1.0,
        }
    }
}

/// Weights of the migration cost `C = α·S + β·B + γ·T`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationWeights {
    /// α: cost per MiB of app state (memory, globals, files) to capture and restore.
    pub alpha_state_per_mib: f64,
    /// β: cost per MiB sent on the wire (state plus re-sent dirty pages).
    pub beta_wire_per_mib: f64,
    /// γ: cost per second the migration is estimated to take.
    pub gamma_time_per_s: f64,
    /// Link bandwidth assumed between nodes, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Fixed time of a migration besides the transfer (connect, fetch the
    /// module, restore, acknowledge), seconds.
    pub setup_s: f64,
}

impl Default for MigrationWeights {
    /// A hot move as measured (BENCHMARKS.md, migration rows at 1 % dirty
    /// per 10 ms): 16 MiB in ~21 ms and 64 MiB in ~75 ms total, i.e. about
    /// 880 MiB/s on the wire plus 3 ms of fixed work; the app itself is
    /// paused for under a millisecond of it.
    fn default() -> Self {
        MigrationWeights {
            alpha_state_per_mib: 0.001,
            beta_wire_per_mib: 0.001,
            gamma_time_per_s: 1.0,
            bandwidth_bytes_per_s: 880.0 * MIB,
            setup_s: 0.003,
        }
    }
}

/// Weights of the start-delay estimate `D = α·S + β·R + γ·T` (milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartDelayWeights {
    /// α: milliseconds per MiB of snapshot to load (0 for a fresh start).
    pub alpha_ms_per_mib: f64,
    /// β: milliseconds added when the node is fully busy (scaled by its
    /// dominant share after the start).
    pub beta_ms_when_busy: f64,
    /// γ: milliseconds per second of waiting (a scheduled start, queued starts).
    pub gamma_ms_per_s: f64,
}

impl Default for StartDelayWeights {
    /// ~2 GiB/s snapshot decode (MEASURED.md), 20 ms on a saturated node.
    fn default() -> Self {
        StartDelayWeights {
            alpha_ms_per_mib: 0.5,
            beta_ms_when_busy: 20.0,
            gamma_ms_per_s: 1000.0,
        }
    }
}

/// All cost-model weights, as the control plane's config holds them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostWeights {
    /// Placement objective `C = α·T + β·R`.
    pub scheduling: SchedulingWeights,
    /// Migration cost `C = α·S + β·B + γ·T`.
    pub migration: MigrationWeights,
    /// Start delay `D = α·S + β·R + γ·T`.
    pub start_delay: StartDelayWeights,
}

/// Latency between user locations and nodes.
///
/// Lookup order: an explicit entry; the node label `latency-ms-<location>`;
/// `same_zone_ms` when the node's `zone` label equals the location;
/// otherwise `default_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyTable {
    /// Measured latencies: location → node → milliseconds.
    pub entries: BTreeMap<String, BTreeMap<String, f64>>,
    /// Latency to a node in the users' own zone.
    pub same_zone_ms: f64,
    /// Latency when nothing better is known.
    pub default_ms: f64,
}

impl Default for LatencyTable {
    fn default() -> Self {
        LatencyTable {
            entries: BTreeMap::new(),
            same_zone_ms: 1.0,
            default_ms: 50.0,
        }
    }
}

impl LatencyTable {
    /// Records a measured latency from `location` to `node`.
    pub fn insert(&mut self, location: impl Into<String>, node: impl Into<String>, ms: f64) {
        self.entries
            .entry(location.into())
            .or_default()
            .insert(node.into(), ms);
    }

    /// Milliseconds between users at `location` and `node` (see the type's doc).
    pub fn latency_ms(&self, location: &str, node: &NodeState) -> f64 {
        if let Some(ms) = self.entries.get(location).and_then(|m| m.get(&node.name)) {
            return *ms;
        }
        // One pass over the node's (few) labels: `latency-ms-<location>`
        // wins over `zone`.
        const PREFIX: &str = "latency-ms-";
        let mut same_zone = false;
        for (k, v) in &node.labels {
            if let Some(loc) = k.strip_prefix(PREFIX) {
                if loc == location {
                    if let Ok(ms) = v.parse::<f64>() {
                        return ms;
                    }
                }
            } else if k == "zone" {
                same_zone = v == location;
            }
        }
        if same_zone {
            self.same_zone_ms
        } else {
            self.default_ms
        }
    }
}

/// Scheduling cost `C = α·T + β·R` of putting an app on a node.
///
/// `latency_ms` is T (0 when the app has no user location); `resource` is R,
/// the node's price times its dominant share after placement.
pub fn scheduling_cost(w: &SchedulingWeights, latency_ms: f64, resource: f64) -> Cost {
    let at = w.alpha_latency_per_ms * latency_ms;
    let br = w.beta_resource * resource;
    let mut terms = Terms::new();
    terms.insert("T_ms".into(), latency_ms);
    terms.insert("R".into(), resource);
    terms.insert("alpha*T".into(), at);
    terms.insert("beta*R".into(), br);
    Cost {
        value: at + br,
        terms,
    }
}

/// What a migration estimate needs to know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationInput {
    /// Bytes of app state (sparse memory, globals, files).
    pub state_bytes: u64,
    /// Rate at which the app dirties memory while a hot pre-copy runs, bytes
    /// per second (0 for a cold move or an idle app).
    pub dirty_bytes_per_s: f64,
}

/// Migration cost `C = α·S + β·B + γ·T`.
///
/// S is the state in MiB. B is the MiB sent: iterative pre-copy re-sends
/// what is dirtied meanwhile, a geometric series `S / (1 − d/bw)` (capped at
/// 10·S when the app dirties memory nearly as fast as the link sends it).
/// T is `B / bandwidth + setup` in seconds.
pub fn migration_cost(w: &MigrationWeights, input: &MigrationInput) -> Cost {
    let s_mib = input.state_bytes as f64 / MIB;
    let wire_mib = wire_bytes(w, input) / MIB;
    let time_s = migration_seconds(w, input);
    let (a, b, g) = (
        w.alpha_state_per_mib * s_mib,
        w.beta_wire_per_mib * wire_mib,
        w.gamma_time_per_s * time_s,
    );
    let mut terms = Terms::new();
    terms.insert("S_mib".into(), s_mib);
    terms.insert("B_mib".into(), wire_mib);
    terms.insert("T_s".into(), time_s);
    terms.insert("alpha*S".into(), a);
    terms.insert("beta*B".into(), b);
    terms.insert("gamma*T".into(), g);
    Cost {
        value: a + b + g,
        terms,
    }
}

/// Bytes a migration sends: the state, plus what pre-copy re-sends.
fn wire_bytes(w: &MigrationWeights, input: &MigrationInput) -> f64 {
    let bw = w.bandwidth_bytes_per_s.max(1.0);
    let ratio = (input.dirty_bytes_per_s.max(0.0) / bw).min(0.9);
    input.state_bytes as f64 / (1.0 - ratio)
}

/// T of the migration cost: the seconds a migration is estimated to take
/// (`B / bandwidth + setup`), what a move budget is counted in.
pub fn migration_seconds(w: &MigrationWeights, input: &MigrationInput) -> f64 {
    wire_bytes(w, input) / w.bandwidth_bytes_per_s.max(1.0) + w.setup_s
}

/// What a start-delay estimate needs to know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartInput {
    /// Bytes of snapshot to restore (0 for a fresh start).
    pub snapshot_bytes: u64,
    /// The node's dominant resource share once the app runs (0 = idle, 1 = full).
    pub node_share_after: f64,
    /// Seconds the start waits: a `--start-after`, or starts queued ahead.
    pub wait_s: f64,
}

/// Start delay `D = α·S + β·R + γ·T` in milliseconds: how long until the app serves.
pub fn start_delay(w: &StartDelayWeights, input: &StartInput) -> Cost {
    let s_mib = input.snapshot_bytes as f64 / MIB;
    let r = input.node_share_after.max(0.0);
    let t = input.wait_s.max(0.0);
    let (a, b, g) = (
        w.alpha_ms_per_mib * s_mib,
        w.beta_ms_when_busy * r,
        w.gamma_ms_per_s * t,
    );
    let mut terms = Terms::new();
    terms.insert("S_mib".into(), s_mib);
    terms.insert("R_share".into(), r);
    terms.insert("T_s".into(), t);
    terms.insert("alpha*S".into(), a);
    terms.insert("beta*R".into(), b);
    terms.insert("gamma*T".into(), g);
    Cost {
        value: a + b + g,
        terms,
    }
}
