//! Errors of the scheduling API.

use thiserror::Error;

use crate::placement::Candidate;

/// Why a scheduling call could not do what was asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScheduleError {
    /// The cluster has no nodes at all.
    #[error(
        "the cluster has no nodes: start a node (`tern node ...`) or wait for its first heartbeat"
    )]
    NoNodes,
    /// Every node was filtered out; `summary` says why, per reason.
    #[error("no node can run app `{app}`: {summary}")]
    NoFeasibleNode {
        /// The app that could not be placed.
        app: String,
        /// Why nodes were rejected, counted per reason.
        summary: String,
        /// Every node with its reason, for `tern deploy` to show.
        candidates: Vec<Candidate>,
    },
    /// A node name that the cluster does not know.
    #[error("unknown node `{0}`: `tern nodes` lists the known ones")]
    UnknownNode(String),
    /// An app name that is not bound in the cluster.
    #[error("unknown app `{0}`: `tern ps` lists the running ones")]
    UnknownApp(String),
    /// An app name that is already bound.
    #[error("an app named `{0}` already exists: choose another name or remove it first")]
    DuplicateApp(String),
    /// A policy name that is not `requests`, `cost` or `learned`.
    #[error("unknown placement policy `{0}`: expected requests, cost or learned")]
    UnknownPolicy(String),
    /// A simulator policy name that is not `requests`, `cost`, `learned`,
    /// `oracle` or `observed`.
    #[error("unknown policy `{0}`: expected requests, cost, learned, oracle or observed")]
    UnknownSimPolicy(String),
    /// A restart policy name that is not `never`, `on-failure` or `always`.
    #[error("unknown restart policy `{0}`: expected never, on-failure or always")]
    UnknownRestartPolicy(String),
}
