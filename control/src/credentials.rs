//! The cluster's credentials: who may call the control plane, and for
//! what.
//!
//! - The cluster token (`DATA_DIR/token`, or etcd's): the operator's first
//!   credential; it can be revoked once another operator token exists.
//! - Tokens made with `tern token create`: `operator` (everything),
//!   `dashboard` (read the cluster's state, change nothing) and `join`
//!   (let one node join, once, before it expires). Only a SHA-256 of each
//!   secret is kept.
//! - Node certificates, signed by the cluster's CA when a node joins (or
//!   directly, for the nodes of `tern up`): a node may register itself,
//!   report, send its own apps' checkpoints and fetch what its own moves
//!   need, nothing more. A revoked certificate's serial is refused here
//!   and, through the heartbeat answers, by every node.
//!
//! Everything here is one small record in the store, written whole on
//! every change, so revocations and new tokens take effect at once and
//! survive a restart; several control planes on one etcd share it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tern_api::types::{CredentialView, Scope};

/// The id under which the cluster token is listed.
pub const CLUSTER_TOKEN_ID: &str = "cluster";
/// How long a join token lasts when its maker says nothing.
pub const DEFAULT_JOIN_TTL_SECS: u64 = 3600;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Credentials {
    pub tokens: BTreeMap<String, TokenRec>,
    /// Node certificates seen or issued, by serial.
    pub certs: BTreeMap<String, CertRec>,
    pub cluster_token_revoked: bool,
    /// The key of the tag on snapshots that leave the cluster (hex).
    pub snapshot_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRec {
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub created_unix_ms: u64,
    pub expires_unix_ms: Option<u64>,
    pub note: Option<String>,
    /// A join token that was used.
    #[serde(default)]
    pub used: bool,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRec {
    pub node: String,
    pub first_seen_unix_ms: u64,
    /// `join` (issued for a join token) or `seen` (a node of this process).
    pub via: String,
    #[serde(default)]
    pub revoked: bool,
}

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(Scope, String),
    /// Known but no longer good (expired, used, revoked): why.
    Refused(String),
    Unknown,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    tern_api::tls::rand_bytes(&mut b);
    hex::encode(b)
}

impl Credentials {
    /// Makes sure the snapshot key exists; whether anything changed.
    pub fn ensure_snapshot_key(&mut self) -> bool {
        if self.snapshot_key.len() == 64 {
            return false;
        }
        self.snapshot_key = random_hex(32);
        true
    }

    pub fn snapshot_key(&self) -> Vec<u8> {
        hex::decode(&self.snapshot_key).unwrap_or_default()
    }

    /// A new token: (id, the secret token to hand out).
    pub fn create(
        &mut self,
        scope: Scope,
        ttl_secs: Option<u64>,
        note: Option<String>,
        now: u64,
    ) -> (String, String) {
        let id = format!("tok-{}", random_hex(4));
        let secret = random_hex(16);
        let ttl = match (scope, ttl_secs) {
            (_, Some(t)) => Some(t),
            (Scope::Join, None) => Some(DEFAULT_JOIN_TTL_SECS),
            _ => None,
        };
        self.tokens.insert(
            id.clone(),
            TokenRec {
                scope,
                secret_sha256: sha256_hex(&secret),
                created_unix_ms: now,
                expires_unix_ms: ttl.map(|t| now + t * 1000),
                note,
                used: false,
                revoked: false,
            },
        );
        let token = format!("{id}.{secret}");
        (id, token)
    }

    /// Checks a bearer token made by [`Credentials::create`].
    pub fn check(&self, token: &str, now: u64) -> TokenCheck {
        let Some((id, secret)) = token.split_once('.') else {
            return TokenCheck::Unknown;
        };
        let Some(rec) = self.tokens.get(id) else {
            return TokenCheck::Unknown;
        };
        let want = sha256_hex(secret);
        if !tern_api::server::constant_time_eq(want.as_bytes(), rec.secret_sha256.as_bytes()) {
            return TokenCheck::Unknown;
        }
        if rec.revoked {
            return TokenCheck::Refused(format!("token {id} was revoked"));
        }
        if rec.expires_unix_ms.is_some_and(|e| e <= now) {
            return TokenCheck::Refused(format!("token {id} has expired"));
        }
        if rec.used {
            return TokenCheck::Refused(format!("join token {id} was used already"));
        }
        TokenCheck::Valid(rec.scope, id.to_string())
    }

    /// Records a node certificate's serial the first time it is seen.
    pub fn see_cert(&mut self, serial: &str, node: &str, via: &str, now: u64) -> bool {
        if self.certs.contains_key(serial) {
            return false;
        }
        self.certs.insert(
            serial.to_string(),
            CertRec {
                node: node.to_string(),
                first_seen_unix_ms: now,
                via: via.to_string(),
                revoked: false,
            },
        );
        true
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.certs.get(serial).is_some_and(|c| c.revoked)
    }

    /// The serials of revoked certificates (what nodes refuse too).
    pub fn revoked_serials(&self) -> Vec<String> {
        self.certs
            .iter()
            .filter(|(_, c)| c.revoked)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Revokes a token (`tok-…`), the cluster token (`cluster`), a node's
    /// certificates (`node/NAME`: every one seen for it) or one certificate
    /// (`node/NAME/SERIAL`). Returns what was revoked.
    pub fn revoke(&mut self, id: &str) -> Result<Vec<String>, String> {
        if id == CLUSTER_TOKEN_ID {
            let other_operator = self
                .tokens
                .values()
                .any(|t| t.scope == Scope::Operator && !t.revoked);
            if !other_operator {
                return Err("revoking the cluster token would lock every operator out: create an operator token first (`tern token create --scope operator`)".into());
            }
            self.cluster_token_revoked = true;
            return Ok(vec![CLUSTER_TOKEN_ID.to_string()]);
        }
        if let Some(t) = self.tokens.get_mut(id) {
            t.revoked = true;
            return Ok(vec![id.to_string()]);
        }
        if let Some(rest) = id.strip_prefix("node/") {
            let (node, serial) = match rest.split_once('/') {
                Some((n, s)) => (n, Some(s)),
                None => (rest, None),
            };
            let mut done = Vec::new();
            for (s, c) in self.certs.iter_mut() {
                if c.node == node && serial.is_none_or(|x| x == s) {
                    c.revoked = true;
                    done.push(format!("node/{node}/{s}"));
                }
            }
            if done.is_empty() {
                return Err(format!("no certificate of node {node} is known here"));
            }
            return Ok(done);
        }
        Err(format!(
            "no credential {id}: see `tern token list` (tokens are tok-…, node certificates node/NAME)"
        ))
    }

    pub fn list(&self, now: u64) -> Vec<CredentialView> {
        let mut out = vec![CredentialView {
            id: CLUSTER_TOKEN_ID.into(),
            scope: "operator".into(),
            created_unix_ms: 0,
            expires_unix_ms: None,
            state: if self.cluster_token_revoked {
                "revoked"
            } else {
                "active"
            }
            .into(),
            note: Some("the cluster token (DATA_DIR/token)".into()),
        }];
        for (id, t) in &self.tokens {
            let state = if t.revoked {
                "revoked"
            } else if t.used {
                "used"
            } else if t.expires_unix_ms.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            out.push(CredentialView {
                id: id.clone(),
                scope: t.scope.to_string(),
                created_unix_ms: t.created_unix_ms,
                expires_unix_ms: t.expires_unix_ms,
                state: state.into(),
                note: t.note.clone(),
            });
        }
        for (serial, c) in &self.certs {
            out.push(CredentialView {
                id: format!("node/{}/{serial}", c.node),
                scope: "node".into(),
                created_unix_ms: c.first_seen_unix_ms,
                expires_unix_ms: None,
                state: if c.revoked { "revoked" } else { "active" }.into(),
                note: Some(format!("certificate ({})", c.via)),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_expire_and_revoke() {
        let mut c = Credentials::default();
        let (id, tok) = c.create(Scope::Dashboard, Some(60), None, 1_000);
        assert_eq!(
            c.check(&tok, 2_000),
            TokenCheck::Valid(Scope::Dashboard, id.clone())
        );
        assert!(matches!(c.check(&tok, 61_000), TokenCheck::Refused(_)));
        let wrong = format!("{id}.{}", "0".repeat(32));
        assert_eq!(c.check(&wrong, 2_000), TokenCheck::Unknown);
        assert!(
            c.revoke(CLUSTER_TOKEN_ID).is_err(),
            "not without another operator token"
        );
        c.revoke(&id).unwrap();
        assert!(matches!(c.check(&tok, 2_000), TokenCheck::Refused(_)));
        c.see_cert("ab", "n1", "join", 1);
        c.see_cert("cd", "n1", "seen", 2);
        assert_eq!(c.revoke("node/n1").unwrap().len(), 2);
        assert_eq!(c.revoked_serials(), ["ab", "cd"]);
        let (_, join) = c.create(Scope::Join, None, None, 0);
        assert!(matches!(
            c.check(&join, 3_599_000),
            TokenCheck::Valid(Scope::Join, _)
        ));
        assert!(matches!(c.check(&join, 3_600_000), TokenCheck::Refused(_)));
    }
}
