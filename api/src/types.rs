//! The JSON documents of the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// CPU in thousandths of a core and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
}

/// How an app moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Stop, snapshot, copy, restore.
    Cold,
    /// Live pre-copy while the app serves, then a short stop-and-copy.
    Hot,
    /// The target restores a checkpoint it holds; only the delta moves live.
    Hybrid,
    /// The app stops, only its state without pages moves, and it resumes on
    /// the target at once; pages follow, fetched on first touch and pushed
    /// in the background.
    Postcopy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "cold" => Ok(Mode::Cold),
            "hot" => Ok(Mode::Hot),
            "hybrid" => Ok(Mode::Hybrid),
            "postcopy" => Ok(Mode::Postcopy),
            other => Err(format!(
                "unknown migration mode `{other}` (use cold, hot, hybrid or postcopy)"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Cold => "cold",
            Mode::Hot => "hot",
            Mode::Hybrid => "hybrid",
            Mode::Postcopy => "postcopy",
        })
    }
}

/// The life of an app on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppState {
    /// Waiting for its start time.
    Pending,
    Running,
    /// Stopped by an operator (its state is kept).
    Stopped,
    /// Crashed (trap in initialisation, exit with an error...).
    Failed,
    /// Exited by itself.
    Exited,
    /// Being moved away from this node.
    Migrating,
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What a node is and has (registration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// Base URL of the node's API, e.g. `http://127.0.0.1:7101`.
    pub url: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// CPU architecture (`x86_64`, `aarch64`...).
    pub arch: String,
    pub version: String,
}

/// A node's periodic report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    pub name: String,
    pub usage: Resources,
    pub apps: Vec<AppStatus>,
    /// Migrations arriving on the node, not committed yet.
    #[serde(default)]
    pub migrations_in: Vec<IncomingMigration>,
}

/// A migration arriving on a node (a target session), as its status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingMigration {
    pub id: String,
    pub app: String,
    pub from: String,
    pub mode: Mode,
    pub generation: u64,
    /// Since the session opened.
    pub age_ms: u64,
    /// Since its last step: a session idle for the node's time-to-live is
    /// dropped with everything it holds.
    pub idle_ms: u64,
}

/// An app as its node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub module_sha256: String,
    pub state: AppState,
    pub generation: u64,
    pub memory_bytes: u64,
    /// Requests served through ingress and invokes, since deploy (carried across moves).
    pub requests_served: u64,
    /// CPU time spent in the guest, in ms, since deploy on this node.
    pub cpu_ms: u64,
    pub restart: String,
    pub last_error: Option<String>,
    /// Unix ms of the start time, while pending.
    pub start_at_unix_ms: Option<u64>,
    /// The limits the app runs under (its own, or the node's defaults).
    #[serde(default)]
    pub limits: AppLimits,
    /// The app's latest checkpoint on its node, or why the last one failed.
    #[serde(default)]
    pub checkpoint: Option<CheckpointStatus>,
    /// Calls waiting for the app (queued, or held during a move's pause).
    #[serde(default)]
    pub queued: u64,
    /// How long the call running now has been running (none running: null).
    #[serde(default)]
    pub in_call_ms: Option<u64>,
    /// Why the app's calls are held, not run, now (a post-copy target whose
    /// source stopped answering); absent when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<String>,
    /// Pages of the app's memory not here yet (a post-copy move's target,
    /// or a lazy restore): they come as the app touches them and in the
    /// background; absent when every page is here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_pending: Option<u64>,
}

/// The limits an app runs under. `None`: unbounded (a deployed app always
/// gets the cluster's defaults for memory and time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppLimits {
    /// All the app's linear memories together, in bytes.
    pub memory_bytes: Option<u64>,
    /// Wall time per call, in ms.
    pub timeout_ms: Option<u64>,
    /// Fuel per call.
    pub fuel: Option<u64>,
}

impl AppLimits {
    /// Each limit that is unset here taken from `defaults`.
    pub fn or(self, defaults: AppLimits) -> AppLimits {
        AppLimits {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            timeout_ms: self.timeout_ms.or(defaults.timeout_ms),
            fuel: self.fuel.or(defaults.fuel),
        }
    }

    /// The defaults a cluster gives apps that set none: 1 GiB of memory,
    /// 30 s per call.
    pub const DEFAULT: AppLimits = AppLimits {
        memory_bytes: Some(1 << 30),
        timeout_ms: Some(30_000),
        fuel: None,
    };
}

/// An app's latest checkpoint on its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointStatus {
    /// When the latest good checkpoint was taken (Unix ms).
    pub unix_ms: Option<u64>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Why the last attempt failed, if it did (a full disk...): a restart
    /// would start from an older state.
    pub error: Option<String>,
}

/// Start an app on a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartApp {
    pub name: String,
    pub module_sha256: String,
    pub generation: u64,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub memory_limit: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    /// `never`, `on-failure` or `always`.
    pub restart: String,
    /// Start at this Unix time (ms) rather than now.
    pub start_at_unix_ms: Option<u64>,
}

impl StartApp {
    /// The app's own limits.
    pub fn limits(&self) -> AppLimits {
        AppLimits {
            memory_bytes: self.memory_limit,
            timeout_ms: self.timeout_ms,
            fuel: self.fuel,
        }
    }

    /// Sets every limit the app left unset from `defaults`.
    pub fn with_default_limits(mut self, defaults: AppLimits) -> StartApp {
        let l = self.limits().or(defaults);
        self.memory_limit = l.memory_bytes;
        self.timeout_ms = l.timeout_ms;
        self.fuel = l.fuel;
        self
    }
}

/// Call an exported function with numeric arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvokeRequest {
    pub export: String,
    pub args: Vec<String>,
}

/// The result of an invoke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeResponse {
    pub export: String,
    pub args: Vec<serde_json::Value>,
    pub results: Vec<serde_json::Value>,
    pub node: String,
}

/// `POST /v1/restore/lazy?name=N&generation=G&restart=R` on a node: start
/// the app from a checkpoint its control plane holds, fetching its pages
/// as they are touched (and all of them in the background) rather than
/// the whole file first. The node reads the file from its own control
/// plane (`GET /v1/checkpoints/N?digest=D&offset=O&len=L`), never from a
/// place the request names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyRestore {
    /// xxh3-128 of the whole file, 32 hex digits: checked once every byte
    /// came in.
    pub digest: String,
    /// The file's length.
    pub bytes: u64,
}

/// Ask a source node to move one of its apps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub to_name: String,
    pub to_url: String,
    pub mode: Mode,
    /// The generation the app will have on the target.
    pub generation: u64,
    /// For hybrid: where the target can fetch the checkpoint if it lacks it.
    pub checkpoint_url: Option<String>,
    /// Hot: switch to post-copy after this many pre-copy rounds if they
    /// have not converged by then (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_after_rounds: Option<u32>,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub app: String,
    pub mode: String,
    pub from: String,
    pub to: String,
    /// From the app's pause on the source to its resume on the target.
    pub downtime_ms: f64,
    pub total_ms: f64,
    /// Bytes the source sent to the target.
    pub bytes_sent: u64,
    /// Pre-copy rounds (0 for cold).
    pub rounds: u32,
    pub pages_sent: u64,
    /// Requests that arrived during the pause, held and replayed on the target.
    pub requests_held: u64,
    /// How written pages were found (`uffd`, `hash`, or `none`).
    pub dirty_tracking: String,
    pub generation: u64,
    /// Unix ms when the migration started.
    pub started_unix_ms: u64,
    /// Hybrid: bytes of the checkpoint the target fetched from the control
    /// plane (not from the source) because it did not hold it yet.
    #[serde(default)]
    pub checkpoint_bytes_fetched: u64,
    /// Anything the operator should know (a fallback taken, for instance).
    #[serde(default)]
    pub note: Option<String>,
    /// Who asked for the move: `operator`, or the rebalancer's reason.
    /// Filled in by the control plane.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Node to node: open a migration on the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationOpen {
    pub app: String,
    pub from: String,
    pub mode: Mode,
    /// The app as the target must run it (its generation is the new one).
    pub spec: StartApp,
    /// Hybrid: the checkpoint the target restores first, by digest, and
    /// where to fetch it if the target does not hold it.
    pub checkpoint_digest: Option<String>,
    pub checkpoint_url: Option<String>,
    /// The source's URL: it keeps that checkpoint for the move's length and
    /// serves it (`GET /v1/checkpoints/APP?digest=D`) when `checkpoint_url`
    /// already holds a newer one (the app was checkpointed meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
}

/// The target's answer to [`MigrationOpen`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationOpened {
    pub id: String,
    /// Bytes of checkpoint fetched from the control plane.
    pub checkpoint_bytes_fetched: u64,
    /// Post-copy asked for but not possible on the target: why (the move
    /// goes hot instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcopy_unavailable: Option<String>,
}

/// The target's acknowledgement: the app runs there now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationAck {
    pub generation: u64,
    /// Time the target took from receiving the last message to resuming.
    pub resume_ms: f64,
}

/// Client: deploy an app.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployRequest {
    pub name: String,
    /// The module must have been uploaded (`PUT /v1/modules/SHA256`).
    pub module_sha256: String,
    pub node: Option<String>,
    pub memory_limit: Option<u64>,
    pub cpu_milli: Option<u64>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub restart: Option<String>,
    pub start_at_unix_ms: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// Placement policy for this app (`requests`, `cost`, `learned`); default: the cluster's.
    pub policy: Option<String>,
    /// Where the app's users are (for the cost policy).
    pub user_location: Option<String>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
}

/// The control plane's view of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub node: Option<String>,
    pub state: String,
    pub generation: u64,
    pub memory_bytes: u64,
    pub requests_served: u64,
    pub module_sha256: String,
    pub restart: String,
    pub last_error: Option<String>,
    /// The limits the app runs under.
    #[serde(default)]
    pub limits: AppLimits,
    /// The app's latest checkpoint as its node reported it.
    #[serde(default)]
    pub checkpoint: Option<CheckpointStatus>,
}

/// The control plane's view of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub url: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub usage: Resources,
    pub apps: Vec<String>,
    /// `ready`, `down` or `draining`.
    pub state: String,
    pub last_heartbeat_ms_ago: Option<u64>,
    /// The node's CPU architecture (`x86_64`, `aarch64`...): apps move
    /// between architectures as they are.
    #[serde(default)]
    pub arch: String,
}

/// Log lines from sequence number `from` on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsResponse {
    pub next: u64,
    pub lines: Vec<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Control plane (or operator) to a target node: a migration of `app` from
/// node `from`, at `generation`, is coming. The target refuses a migration
/// that was not announced, or that comes from another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationExpect {
    pub app: String,
    pub from: String,
    pub generation: u64,
}

/// A node asks to join (`POST /v1/join`, no credential but the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token (`tern token create --scope join`).
    pub token: String,
    pub name: String,
    /// The URL the node will serve at: its host goes into the certificate.
    pub url: String,
    /// A PKCS#10 certificate request (PEM) for the node's key.
    pub csr_pem: String,
}

/// The control plane's answer to a join: the node's certificate and the
/// cluster's CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything (client commands).
    Operator,
    /// Read the dashboard's data and the cluster's state; change nothing.
    Dashboard,
    /// Join one node, once.
    Join,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "operator" => Ok(Scope::Operator),
            "dashboard" | "read" => Ok(Scope::Dashboard),
            "join" => Ok(Scope::Join),
            other => Err(format!(
                "unknown scope `{other}` (use operator, dashboard or join)"
            )),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Operator => "operator",
            Scope::Dashboard => "dashboard",
            Scope::Join => "join",
        })
    }
}

/// `POST /v1/tokens`: make a credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreate {
    pub scope: Scope,
    /// Seconds it stays valid (`None`: until revoked; join tokens default
    /// to one hour).
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
}

/// The answer: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub scope: Scope,
    pub token: String,
    pub expires_unix_ms: Option<u64>,
}

/// A credential as `tern token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialView {
    /// `tok-…` for a token, `node/NAME/SERIAL` for a node certificate, `cluster` for the cluster token.
    pub id: String,
    /// `operator`, `dashboard`, `join` or `node`.
    pub scope: String,
    pub created_unix_ms: u64,
    pub expires_unix_ms: Option<u64>,
    /// `active`, `used` (a join token), `expired` or `revoked`.
    pub state: String,
    pub note: Option<String>,
}

/// Decodes `bytes` as every body a tern server or client reads from the
/// network, and checks each value it accepts survives a round trip; how
/// many accepted. Never panics: the API fuzz target (`api/fuzz`) and its
/// corpus under `cargo test` hold it to that.
pub fn decode_every_body(bytes: &[u8]) -> usize {
    fn one<T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
    ) -> usize {
        match serde_json::from_slice::<T>(bytes) {
            Ok(v) => {
                let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("encodes"))
                    .expect("a re-encoded body decodes");
                assert_eq!(again, v, "a body changed in a round trip");
                1
            }
            Err(_) => 0,
        }
    }
    one::<NodeInfo>(bytes)
        + one::<Heartbeat>(bytes)
        + one::<StartApp>(bytes)
        + one::<InvokeRequest>(bytes)
        + one::<InvokeResponse>(bytes)
        + one::<MigrateRequest>(bytes)
        + one::<MigrationReport>(bytes)
        + one::<MigrationOpen>(bytes)
        + one::<MigrationOpened>(bytes)
        + one::<MigrationAck>(bytes)
        + one::<DeployRequest>(bytes)
        + one::<AppView>(bytes)
        + one::<Vec<AppView>>(bytes)
        + one::<NodeView>(bytes)
        + one::<Vec<NodeView>>(bytes)
        + one::<AppStatus>(bytes)
        + one::<LogsResponse>(bytes)
        + one::<ErrorBody>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_corpus_never_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/api_bodies");
        let mut accepted = 0;
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz corpus dir") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            accepted += decode_every_body(&bytes);
            n += 1;
        }
        assert!(n >= 5, "corpus at {} has {n} files", dir.display());
        assert!(accepted >= 5, "the seeds must be bodies the API reads");
    }

    #[test]
    fn the_seeds_decode_as_what_they_are() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/api_bodies");
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
        let hb: Heartbeat = serde_json::from_slice(&read("heartbeat.json")).unwrap();
        assert_eq!(
            hb.apps[0].checkpoint.as_ref().unwrap().error.as_deref(),
            Some("disk full")
        );
        assert_eq!(hb.migrations_in[0].mode, Mode::Hot);
        let open: MigrationOpen = serde_json::from_slice(&read("migration-open.json")).unwrap();
        assert_eq!(open.spec.generation, 9);
        let m: MigrateRequest = serde_json::from_slice(&read("migrate-request.json")).unwrap();
        assert_eq!(m.generation, u64::MAX);
    }
}
