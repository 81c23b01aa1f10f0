//! The runtime's error type: one variant per thing a caller may act on.

use crate::rewrite::RewriteError;
use crate::snapshot::SnapshotError;

/// Why a runtime operation failed. Messages say what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Module(#[from] RewriteError),
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module cannot be instantiated: {0}")]
    Link(String),
    #[error("`{export}` trapped: {message}")]
    Trap { export: String, message: String },
    #[error("`{export}` ran past its time limit of {limit_ms} ms and was stopped")]
    Timeout { export: String, limit_ms: u64 },
    #[error(
        "`{export}` used up its fuel ({fuel} units) and was stopped; give it more with --fuel"
    )]
    OutOfFuel { export: String, fuel: u64 },
    #[error("`{export}` overflowed its stack and was stopped")]
    StackOverflow { export: String },
    #[error("`{export}` was interrupted: the app is being stopped")]
    Interrupted { export: String },
    #[error("a call into this app was interrupted mid-way, so its state may be half updated: it takes no more calls or snapshots; restore it from its last snapshot")]
    Torn,
    #[error(
        "the app's memory is incomplete ({0}): it was stopped rather than run on part of its state"
    )]
    PostcopyLost(String),
    #[error("`{export}` failed: {message}")]
    CallFailed { export: String, message: String },
    #[error("the app exited with status {0}")]
    Exit(i32),
    #[error("the app has exited (status {0}); it cannot be called any more")]
    Exited(i32),
    #[error("module has no exported function `{0}`{1}")]
    NoSuchExport(String, String),
    #[error("bad arguments for `{export}`: {message}")]
    BadArguments { export: String, message: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("snapshot was taken from module {snapshot}, but this app runs module {module}: deploy the same module first")]
    ModuleMismatch { snapshot: String, module: String },
    #[error("snapshot does not carry its module (sha256 {0}): give the module file too")]
    ModuleMissing(String),
    #[error("snapshot does not fit its module: {0}")]
    Incompatible(String),
    #[error("app state cannot be captured: {0}")]
    NotMigratable(String),
    #[error("memory limit: {0}")]
    MemoryLimit(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the guest misbehaved (trap, timeout, fuel, stack, a host
    /// call it made wrongly, an exit) rather than the host or the input.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self,
            Error::Trap { .. }
                | Error::Timeout { .. }
                | Error::OutOfFuel { .. }
                | Error::StackOverflow { .. }
                | Error::CallFailed { .. }
                | Error::Exit(_)
        )
    }

    /// Whether the engine stopped the call with a trap, as Wasm and
    /// wasmtime count them: the guest's own (unreachable, out of bounds,
    /// stack) or the platform's (time limit, fuel, an interrupt). `tern
    /// run` exits 134 for these, as wasmtime does.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Error::Trap { .. }
                | Error::Timeout { .. }
                | Error::OutOfFuel { .. }
                | Error::StackOverflow { .. }
                | Error::Interrupted { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
