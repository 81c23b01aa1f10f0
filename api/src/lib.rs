//! tern's HTTP API, shared by the node agent, the control plane and the
//! clients: the JSON types they exchange ([`types`]), the token check and
//! response helpers for servers ([`server`]), and a small client ([`client`]).
//!
//! Every endpoint is versioned under `/v1/` and requires the cluster token as
//! `Authorization: Bearer TOKEN`, except app ingress (`/apps/NAME/...`) and
//! the dashboard's static page.

//! # Node API (`tern node`)
//!
//! | method and path | body → answer |
//! |---|---|
//! | `GET /v1/health` | → `NodeInfo` |
//! | `GET /v1/status` | → `Heartbeat` (usage and every app) |
//! | `HEAD /v1/modules/SHA256` | → 200 if the node has the module, 404 if not |
//! | `PUT /v1/modules/SHA256` | wasm bytes → 201; 400 if the bytes do not hash to SHA256 or do not validate |
//! | `POST /v1/apps` | `StartApp` → 201 `AppStatus`; 409 if the name runs or the generation is older than one seen |
//! | `GET /v1/apps`, `GET /v1/apps/NAME` | → `[AppStatus]`, `AppStatus` |
//! | `POST /v1/apps/NAME/invoke` | `InvokeRequest` → `InvokeResponse` |
//! | `POST /v1/apps/NAME/stop`, `.../start` | → `AppStatus` |
//! | `DELETE /v1/apps/NAME` | → 204 |
//! | `GET /v1/apps/NAME/logs?from=N&wait_ms=M` | → `LogsResponse` |
//! | `POST /v1/apps/NAME/snapshot` | → snapshot bytes (the app goes on) |
//! | `POST /v1/restore?name=N&generation=G&restart=R` | snapshot bytes → 201 `AppStatus` |
//! | `POST /v1/apps/NAME/migrate` | `MigrateRequest` → `MigrationReport` (the node drives the move) |
//! | `/v1/migrations/...` | node to node, the migration protocol itself |
//! | `ANY /apps/NAME/REST` | app ingress (no token): the SDK handler's response, forwarded to the node that runs the app |
//!
//! # Control API (`tern control`)
//!
//! | method and path | body → answer |
//! |---|---|
//! | `POST /v1/nodes` | `NodeInfo` → 200 (register or re-register) |
//! | `POST /v1/nodes/NAME/heartbeat` | `Heartbeat` → 200 |
//! | `GET /v1/nodes` | → `[NodeView]` |
//! | `PUT /v1/modules/SHA256`, `HEAD`, `GET` | wasm bytes |
//! | `POST /v1/apps` | `DeployRequest` → 201 `{"app": AppView, "decision": ...}` |
//! | `GET /v1/apps`, `GET /v1/apps/NAME` | → `[AppView]`, `AppView` |
//! | `POST /v1/apps/NAME/invoke` | `InvokeRequest` → `InvokeResponse` |
//! | `POST /v1/apps/NAME/call?path=/P&method=M` | body → the app's response body (status passed through) |
//! | `POST /v1/apps/NAME/migrate` | `{"to": NODE, "mode": "hot"}` → `MigrationReport` |
//! | `POST /v1/apps/NAME/snapshot` | → snapshot bytes |
//! | `POST /v1/restore?name=N&node=NODE` | snapshot bytes → 201 `AppView` |
//! | `POST /v1/apps/NAME/stop`, `.../start`, `DELETE /v1/apps/NAME` | → `AppView` / 204 |
//! | `GET /v1/apps/NAME/logs?from=N&wait_ms=M` | → `LogsResponse` |
//! | `PUT /v1/checkpoints/NAME?generation=G`, `GET /v1/checkpoints/NAME` | the app's latest checkpoint (snapshot bytes) |
//! | `GET /v1/migrations` | → `[MigrationReport]`, newest last |

pub mod client;
pub mod local;
pub mod metrics;
pub mod names;
pub mod server;
pub mod tls;
pub mod types;

/// Header carrying the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Largest JSON body an endpoint accepts.
pub const MAX_JSON_BODY: usize = 4 << 20;
/// Largest module or snapshot body an endpoint accepts.
pub const MAX_BLOB_BODY: usize = 2 << 30;
