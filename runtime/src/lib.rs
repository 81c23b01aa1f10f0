//! tern's engine: everything that touches wasmtime. It runs apps, captures
//! and restores their whole state, and tracks the pages they write; it knows
//! nothing of HTTP (the node agent, `tern-node`, drives it).
//!
//! - [`engine`]: the [`Runtime`] (engine, linker, module cache, epoch ticker);
//! - [`rewrite`]: the migratability rewrite applied to every module at load;
//! - [`instance`]: a running app (`mod.rs`: the type, its config, its start),
//!   calls under limits (`call.rs`), capture (`capture.rs`), restore
//!   (`restore.rs`), page access for migration (`pages.rs`);
//! - [`memory`]: linear memories tern owns (copy-on-write restore, residency);
//! - [`resident`]: a bounded stock of resident, zeroed memory that a
//!   migration target's memories take their pages from (no page faults);
//! - [`sandbox`]: what bounds a running app: one limiter over all its
//!   memories and tables, the [`InterruptHandle`] that stops a call from
//!   another thread, the default limits;
//! - [`dirty`]: which pages a guest wrote since the last look (`mod.rs`: the
//!   tracker interface and the choice; `uffd.rs`: userfaultfd and
//!   `PAGEMAP_SCAN`, over the raw bindings of `sys.rs`; `hash.rs`: hashing);
//! - [`snapshot`]: the snapshot value and its byte format (the only module
//!   that knows those bytes), and [`sha256`], by which modules are named;
//! - [`wasi`]: what an app is given, its clock, its logs, and the store's
//!   data ([`HostState`](wasi::HostState));
//! - [`carry`]: the app's own directory, carried inside its snapshots;
//! - [`sdk`]: the host side of the guest ABI (requests, ticks, hooks);
//! - [`values`]: numeric arguments and results as text and JSON;
//! - [`error`]: the runtime's [`Error`], worded for people.
//!
//! Imports point one way. `rewrite`, `snapshot`, `dirty` and `resident`
//! use no other module; `error` uses `rewrite` and `snapshot`; `memory`,
//! `carry` and `values` use nothing but those five; `sandbox` uses `memory` (and what
//! it uses); `wasi` uses `sandbox`; `engine` uses `memory` and `wasi` (and
//! what they use); `instance` uses the engine and everything below it;
//! `sdk` drives an `instance`. No module uses one that is above it.

pub mod carry;
pub mod dirty;
pub mod engine;
pub mod error;
pub mod instance;
pub mod memory;
pub mod postcopy;
pub mod resident;
pub mod rewrite;
pub mod sandbox;
pub mod sdk;
pub mod snapshot;
pub mod values;
pub mod wasi;

pub use engine::{sha256, LoadedModule, Runtime, RuntimeConfig};
pub use error::{Error, Result};
pub use instance::{AppConfig, Instance, MemoryRegion, RestoreOptions, SnapshotOptions};
pub use sandbox::InterruptHandle;
pub use snapshot::{LimitsState, Preopen, Snapshot, SnapshotError, WasiState};
pub use wasi::{LogBuffer, Stdio};

/// Re-exported for callers that pass values in and out.
pub use wasmtime::{Val, ValType};
