//! What bounds a running app besides Wasm itself: one limiter over the
//! total of its linear memories and tables, the handle another thread uses
//! to stop a call in progress, and the limits an app runs under when nobody
//! chose any.
//!
//! # The limiter
//! [`AppLimiter`] is every store's `ResourceLimiter`. A memory limit
//! (`LimitsState::memory_bytes`, `tern run --memory`) bounds the sum of all
//! of an app's linear memories, not each one: 16 memories under 64 MiB hold
//! 64 MiB together. Growth past it fails as Wasm says (`memory.grow`
//! returns -1); a module whose initial memories exceed it does not
//! instantiate; a restore compares the same total. No memory grows past
//! [`MAX_MEMORY_BYTES`] (4 GiB), and all tables together hold at most
//! [`MAX_TABLE_ELEMENTS`] elements; an app has at most one instance,
//! [`MAX_MEMORIES`] memories and [`MAX_TABLES`] tables.
//!
//! # Interrupting a call
//! Every instance has an [`InterruptHandle`] (`Send + Sync + Clone`;
//! [`Instance::interrupt_handle`](crate::Instance::interrupt_handle), or
//! given up front in `AppConfig::interrupt` / `RestoreOptions::interrupt`
//! so that a start or a restore hook can be stopped too). Another thread
//! calls [`InterruptHandle::interrupt`]; the call running in the instance
//! fails within an epoch tick ([`EPOCH_TICK`](crate::engine::EPOCH_TICK),
//! 2 ms) with [`Error::Interrupted`](crate::Error::Interrupted). The
//! request stays set until [`InterruptHandle::reset`]: every later call
//! fails at once, without entering the guest. Two cases afterwards:
//! - the interrupt came between two calls (no guest code was cut off): the
//!   instance is intact; after `reset` it may be called and snapshotted
//!   again;
//! - a call was cut off mid-way: its memory may hold half-done work (a lock
//!   taken, a structure half updated), so the instance refuses every later
//!   call and capture ([`Error::Torn`](crate::Error::Torn)) even after a
//!   reset. Drop it, and restore the app from its last snapshot if it
//!   should go on.
//!
//! Only guest code is interrupted. A guest inside a WASI host call (a
//! `poll_oneoff` sleep, a read of stdin) is stopped when that call returns
//! to it; apps on a node get no stdin and no sockets, so a sleep is the only
//! such wait they can make.
//!
//! # Defaults for deployed apps
//! The engine enforces the limits it is given and no others: a field of
//! `LimitsState` left `None` is unbounded (within the bounds above). Who
//! runs an app decides its defaults: [`LimitsState::DEPLOYED_DEFAULTS`] (a
//! memory limit of 1 GiB and 30 s per call) is what a node should apply to
//! a deployed app whose deployer set none, with
//! [`LimitsState::or_defaults`]; [`LimitsState::LOCAL_DEFAULTS`] is what
//! `tern run` and `tern resume` apply when the command line sets none. A
//! snapshot's limits are a record of what the app ran under, never a
//! grant: a restore from a file that is not the platform's own runs under
//! the caller's limits (see `RestoreOptions`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

use crate::memory::MemoryAccount;
pub use crate::snapshot::{LimitsState, MAX_MEMORY_BYTES, MAX_TABLE_ELEMENTS};

/// At most this many linear memories per app.
pub const MAX_MEMORIES: usize = 16;
/// At most this many tables per app.
pub const MAX_TABLES: usize = 64;

impl LimitsState {
    /// What a node runs a deployed app under when its deployer set no
    /// limit: 1 GiB of memory in all, 30 s per call, no fuel limit.
    pub const DEPLOYED_DEFAULTS: LimitsState = LimitsState {
        memory_bytes: Some(1 << 30),
        fuel_per_call: None,
        timeout_ms_per_call: Some(30_000),
    };

    /// What `tern run` and `tern resume` run an app under when the command
    /// line sets no limit: 4 GiB of memory in all (one full 32-bit
    /// memory), no time or fuel limit (the user at the terminal stops it).
    pub const LOCAL_DEFAULTS: LimitsState = LimitsState {
        memory_bytes: Some(1 << 32),
        fuel_per_call: None,
        timeout_ms_per_call: None,
    };

    /// These limits, with every field left `None` taken from `defaults`.
    pub fn or_defaults(&self, defaults: &LimitsState) -> LimitsState {
        LimitsState {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            fuel_per_call: self.fuel_per_call.or(defaults.fuel_per_call),
            timeout_ms_per_call: self.timeout_ms_per_call.or(defaults.timeout_ms_per_call),
        }
    }
}

/// The store's limiter: the app's memories and tables counted together.
pub(crate) struct AppLimiter {
    memory_limit: Option<u64>,
    memories: MemoryAccount,
    table_elements: u64,
}

impl AppLimiter {
    pub(crate) fn new(limits: &LimitsState, memories: MemoryAccount) -> AppLimiter {
        AppLimiter {
            memory_limit: limits.memory_bytes,
            memories,
            table_elements: 0,
        }
    }
}

impl ResourceLimiter for AppLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > MAX_MEMORY_BYTES || maximum.is_some_and(|m| desired > m as u64) {
            return Ok(false);
        }
        // The account holds every memory of the store, this one at its
        // current size (a memory being created is not in it yet, and its
        // current size is 0).
        let after = self
            .memories
            .bytes()
            .saturating_sub(current as u64)
            .saturating_add(desired);
        Ok(self.memory_limit.is_none_or(|limit| after <= limit))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        // Counted when granted: a growth that fails afterwards (allocation)
        // is still counted, which can only make the bound stricter.
        let after = self.table_elements + (desired - current) as u64;
        if after > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = after;
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Stops the call running in an instance, from any thread (see the module
/// documentation). Cheap to clone; every clone is the same handle.
#[derive(Clone, Default)]
pub struct InterruptHandle {
    requested: Arc<AtomicBool>,
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHandle")
            .field("interrupted", &self.is_interrupted())
            .finish()
    }
}

impl InterruptHandle {
    /// A handle not yet interrupted.
    pub fn new() -> InterruptHandle {
        InterruptHandle::default()
    }

    /// Makes the call in progress fail within an epoch tick, and every later
    /// call fail at once, until [`reset`](Self::reset).
    pub fn interrupt(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Whether an interrupt is requested.
    pub fn is_interrupted(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Withdraws the request. An instance whose call was cut off stays
    /// unusable all the same.
    pub fn reset(&self) {
        self.requested.store(false, Ordering::Release);
    }
}

/// Why the engine stopped a call from its epoch callback.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// [`InterruptHandle::interrupt`] was called.
    Interrupted,
    /// The call's time limit passed.
    TimedOut,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Interrupted => "the call was interrupted",
            Stopped::TimedOut => "the call ran past its time limit",
        })
    }
}

impl std::error::Error for Stopped {}

/// What the epoch callback checks at every tick of a call: an interrupt,
/// then the call's deadline.
pub(crate) fn check_call(
    interrupt: &InterruptHandle,
    deadline: Option<Instant>,
) -> Option<Stopped> {
    if interrupt.is_interrupted() {
        return Some(Stopped::Interrupted);
    }
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Some(Stopped::TimedOut);
    }
    None
}
