//! Who may call what on a node.
//!
//! - The operator's token (when the node was given one) and the control
//!   plane's certificate may call everything.
//! - Another node (its certificate, signed by the cluster's CA and not
//!   revoked) may only take part in a migration the control plane (or the
//!   operator) announced to this node first: open it if it is the source
//!   named, send its steps, upload the module, ask whether the target took
//!   over and replay the calls it held for that app; or, as the target of
//!   a move out of this node, fetch the app's checkpoint.
//! - Anonymous clients reach app ingress (`/apps/...`) only.
//!
//! Revoked certificates (serials the control plane lists in its heartbeat
//! answers) are refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tern_api::tls::Peer;
use tern_api::types::MigrationExpect;

use crate::node::lock;

/// How long an announced migration waits for its source.
const EXPECT_TTL: Duration = Duration::from_secs(600);

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The operator's token, or the control plane's certificate.
    Operator,
    /// Another node of the cluster.
    Node(String),
    /// Nobody known (no credential, a wrong one, or a revoked certificate).
    Nobody(&'static str),
}

#[derive(Default)]
pub(crate) struct Auth {
    /// Announced migrations to this node: app → (source, generation, when).
    expected: Mutex<HashMap<String, (String, u64, Instant)>>,
    /// Open sessions: id → (app, source node).
    sessions: Mutex<HashMap<String, (String, String)>>,
    /// Moves out of this node under way: app → target node.
    outgoing: Mutex<HashMap<String, String>>,
    /// Serials of revoked certificates.
    revoked: RwLock<HashSet<String>>,
}

impl Auth {
    pub(crate) fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }

    /// The revocation list, as the control plane last sent it.
    pub(crate) fn set_revoked(&self, serials: HashSet<String>) {
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = serials;
    }

    /// Who a request comes from.
    pub(crate) fn caller(&self, peer: Option<&Peer>, bearer: Option<&str>, token: &str) -> Caller {
        if let Some(p) = peer {
            if self.is_revoked(&p.serial) {
                return Caller::Nobody("its certificate is revoked");
            }
            if p.is_control() {
                return Caller::Operator;
            }
        }
        if let Some(given) = bearer {
            if !token.is_empty()
                && tern_api::server::constant_time_eq(given.as_bytes(), token.as_bytes())
            {
                return Caller::Operator;
            }
        }
        match peer.and_then(Peer::node) {
            Some(n) => Caller::Node(n.to_string()),
            None => Caller::Nobody("no valid credential"),
        }
    }

    pub(crate) fn expect(&self, e: MigrationExpect) {
        let mut m = lock(&self.expected);
        m.retain(|_, (_, _, at)| at.elapsed() < EXPECT_TTL);
        m.insert(e.app, (e.from, e.generation, Instant::now()));
    }

    /// Whether `from` was announced as the source of `app` at `generation`.
    pub(crate) fn may_open(&self, from: &str, app: &str, generation: u64) -> Result<(), String> {
        match lock(&self.expected).get(app) {
            Some((f, g, at)) if f == from && *g == generation && at.elapsed() < EXPECT_TTL => {
                Ok(())
            }
            Some((f, g, _)) => Err(format!(
                "this node expects {app} from {f} at generation {g}, not from {from} at generation {generation}"
            )),
            None => Err(format!(
                "no migration of {app} to this node was announced by the control plane"
            )),
        }
    }

    /// Whether `from` is the announced source of any move here.
    pub(crate) fn is_expected_source(&self, from: &str) -> bool {
        lock(&self.expected)
            .values()
            .any(|(f, _, at)| f == from && at.elapsed() < EXPECT_TTL)
    }

    /// Whether `from` is the announced (or current) source of `app`.
    pub(crate) fn is_source_of(&self, from: &str, app: &str) -> bool {
        lock(&self.expected)
            .get(app)
            .is_some_and(|(f, _, at)| f == from && at.elapsed() < EXPECT_TTL)
    }

    pub(crate) fn opened(&self, id: &str, app: &str, from: &str) {
        lock(&self.sessions).insert(id.to_string(), (app.to_string(), from.to_string()));
    }

    /// Whether the session `id` was opened by `from`.
    pub(crate) fn owns_session(&self, from: &str, id: &str) -> bool {
        lock(&self.sessions).get(id).is_some_and(|(_, f)| f == from)
    }

    pub(crate) fn session_ended(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    pub(crate) fn moving_out(&self, app: &str, to: &str) {
        lock(&self.outgoing).insert(app.to_string(), to.to_string());
    }

    pub(crate) fn moved_out(&self, app: &str) {
        lock(&self.outgoing).remove(app);
    }

    /// Whether a move of `app` from here is under way.
    pub(crate) fn is_moving_out(&self, app: &str) -> bool {
        lock(&self.outgoing).contains_key(app)
    }

    /// Whether `app` is being moved from here to `to`.
    pub(crate) fn is_target_of(&self, to: &str, app: &str) -> bool {
        lock(&self.outgoing).get(app).is_some_and(|t| t == to)
    }
}
