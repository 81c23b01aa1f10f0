//! A running app: its store and instance, calls into it under limits, and
//! capture and restore of its whole state at a safe point.
//!
//! A safe point is simply "no call in progress": every method here takes
//! `&mut self`, so while one runs no guest frame can be on the stack.
//!
//! This file holds the [`Instance`] type, what an app is given
//! ([`AppConfig`]), its start, and the accessors the other files share. The
//! other methods of [`Instance`] live by role:
//! - `call.rs`: calls under the app's per-call limits, and failed calls
//!   classified into errors a user can act on;
//! - `capture.rs`: the app's state into a [`Snapshot`](crate::Snapshot);
//! - `restore.rs`: an app rebuilt from a snapshot, and a state-only snapshot
//!   put in place on a running one;
//! - `pages.rs`: memory by pages and bytes (the regions dirty tracking
//!   watches, the pages a live migration reads and writes, the guest ABI's
//!   byte access).

mod call;
mod capture;
mod pages;
mod postcopy;
mod restore;

use std::sync::Arc;

use wasmtime::{Store, UpdateDeadline};

use crate::engine::{LoadedModule, Runtime};
use crate::error::{Error, Result};
use crate::memory::{self, ImageMapping, MemoryAccount};
use crate::rewrite::RESERVED_PREFIX;
use crate::sandbox::{check_call, AppLimiter, InterruptHandle};
use crate::snapshot::{LimitsState, Preopen, WasiState};
use crate::wasi::{build_ctx, GuestClock, Stdio};

pub use crate::wasi::HostState;
pub use capture::SnapshotOptions;
pub use pages::MemoryRegion;
pub use restore::RestoreOptions;

const WASM_PAGE: u64 = 64 * 1024;

/// What an app is given and the limits it runs under.
#[derive(Clone, Default)]
pub struct AppConfig {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub limits: LimitsState,
    pub stdio: Stdio,
    pub app: Option<String>,
    pub generation: u64,
    /// A fixed seed for the app's random source, for reproducible runs.
    pub random_seed: Option<u64>,
    /// A host directory whose files travel inside the app's snapshots (a
    /// node's per-app directory; see [`crate::carry`]).
    pub carry_dir: Option<std::path::PathBuf>,
    /// The handle that stops this app's calls, from its start on; `None`
    /// gives the instance a handle of its own
    /// ([`Instance::interrupt_handle`]). See [`crate::sandbox`].
    pub interrupt: Option<InterruptHandle>,
}

/// One instantiated app.
pub struct Instance {
    runtime: Arc<Runtime>,
    module: Arc<LoadedModule>,
    store: Store<HostState>,
    instance: wasmtime::Instance,
    config: AppConfig,
    clock: GuestClock,
    calls: u64,
    exited: Option<i32>,
    /// Per memory: whether all of it is anonymous (no snapshot image mapped),
    /// so untouched pages are known to be zero.
    anonymous: Vec<bool>,
    extra_meta: Vec<(String, String)>,
    /// A snapshot hook ran in this instance and it carries on: the next call
    /// first runs `tern_on_restore` (sdk/ABI.md, section 3).
    needs_on_restore: bool,
    /// A call was interrupted mid-way: the guest's state may be half
    /// updated, so the instance takes no more calls and no captures.
    torn: bool,
    /// Post-copy: the pager bringing this instance's pages in (see
    /// [`crate::postcopy`]); its failure ends the instance.
    pager: Option<Arc<crate::postcopy::Pager>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("module", &self.module.hash_hex())
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

/// A store for one app: its WASI context, its limiter (with the account
/// its memories report to), and the epoch callback that, at every tick of
/// a call, ends the call if it was interrupted or ran past its deadline.
fn new_store(
    runtime: &Runtime,
    config: &AppConfig,
    wasi: &WasiState,
    clock: &GuestClock,
) -> Result<(Store<HostState>, MemoryAccount)> {
    let ctx = build_ctx(wasi, &config.stdio, clock)?;
    let account = MemoryAccount::default();
    let mut store = Store::new(
        runtime.engine(),
        HostState {
            wasi: ctx,
            limits: AppLimiter::new(&config.limits, account.clone()),
            interrupt: config.interrupt.clone().unwrap_or_default(),
            deadline: None,
        },
    );
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| {
        let s = ctx.data();
        match check_call(&s.interrupt, s.deadline) {
            Some(stopped) => Err(wasmtime::Error::new(stopped)),
            None => Ok(UpdateDeadline::Continue(1)),
        }
    });
    store.set_epoch_deadline(1);
    store
        .set_fuel(u64::MAX)
        .map_err(|e| Error::Other(e.to_string()))?;
    Ok((store, account))
}

/// Instantiates `module` in `store`, its memories created over `images`
/// (a copy-on-write restore; empty otherwise) and counted in `account`.
fn instantiate(
    module: &LoadedModule,
    store: &mut Store<HostState>,
    account: MemoryAccount,
    images: Vec<Option<ImageMapping>>,
    resident: Vec<usize>,
    config: &AppConfig,
) -> Result<wasmtime::Instance> {
    memory::set_pending_images(images);
    memory::set_pending_resident(resident);
    memory::set_pending_account(account);
    let instantiated = module.pre.instantiate(&mut *store);
    memory::clear_pending_images();
    instantiated.map_err(|e| instantiate_error(e, config))
}

fn wasi_state(config: &AppConfig, monotonic_ns: u64) -> WasiState {
    WasiState {
        args: config.args.clone(),
        env: config.env.clone(),
        preopens: config.preopens.clone(),
        monotonic_ns,
        random_seed: config.random_seed,
    }
}

impl Instance {
    /// Instantiates a module afresh and runs its initialisation: the start
    /// function, then `_start` (a command) or `_initialize` (a reactor).
    /// A command that exits with status 0 is a success.
    pub fn start(
        runtime: &Arc<Runtime>,
        module: &Arc<LoadedModule>,
        config: AppConfig,
    ) -> Result<Instance> {
        let mut inst = Self::instantiate_only(runtime, module, config)?;
        if module.info.start.is_some() {
            inst.call_raw(&format!("{RESERVED_PREFIX}start"), &[])?;
        }
        let init = if module.info.has_start_export {
            Some("_start")
        } else if module.info.has_initialize_export {
            Some("_initialize")
        } else {
            None
        };
        if let Some(init) = init {
            match inst.call_raw(init, &[]) {
                Ok(_) => {}
                Err(Error::Exit(0)) => inst.exited = Some(0),
                Err(e) => return Err(e),
            }
        }
        Ok(inst)
    }

    /// Instantiates without running any guest code.
    pub fn instantiate_only(
        runtime: &Arc<Runtime>,
        module: &Arc<LoadedModule>,
        config: AppConfig,
    ) -> Result<Instance> {
        let clock = GuestClock::starting_at(0);
        let wasi = wasi_state(&config, 0);
        let (mut store, account) = new_store(runtime, &config, &wasi, &clock)?;
        let instance = instantiate(module, &mut store, account, Vec::new(), Vec::new(), &config)?;
        let anonymous = vec![true; module.info.memories.len()];
        Ok(Instance {
            runtime: runtime.clone(),
            module: module.clone(),
            store,
            instance,
            config,
            clock,
            calls: 0,
            exited: None,
            anonymous,
            extra_meta: Vec::new(),
            needs_on_restore: false,
            torn: false,
            pager: None,
        })
    }

    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// The runtime this instance belongs to.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Number of calls made into the guest so far (carried across restores).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Exit status, if the app called `proc_exit`.
    pub fn exited(&self) -> Option<i32> {
        self.exited
    }

    /// The handle that stops this instance's calls from another thread
    /// (see [`crate::sandbox`]).
    pub fn interrupt_handle(&self) -> InterruptHandle {
        self.store.data().interrupt.clone()
    }

    /// Whether a call was interrupted mid-way: the instance then takes no
    /// more calls or captures (drop it; restore the app from a snapshot).
    pub fn is_torn(&self) -> bool {
        self.torn
    }

    /// Platform fields kept in snapshot metadata.
    pub fn extra_meta_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.extra_meta
    }

    pub fn set_generation(&mut self, generation: u64) {
        self.config.generation = generation;
    }

    /// Whether the app exports a function of this name.
    pub fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Total bytes of linear memory.
    pub fn memory_bytes(&mut self) -> u64 {
        let mut total = 0;
        for idx in self.module.info.memories.clone() {
            if let Some(m) = self
                .instance
                .get_memory(&mut self.store, &format!("{RESERVED_PREFIX}memory_{idx}"))
            {
                total += m.data_size(&self.store) as u64;
            }
        }
        total
    }

    fn memories(&mut self) -> Result<Vec<wasmtime::Memory>> {
        let mut out = Vec::new();
        for idx in self.module.info.memories.clone() {
            let m = self
                .instance
                .get_memory(&mut self.store, &format!("{RESERVED_PREFIX}memory_{idx}"))
                .ok_or_else(|| {
                    Error::Other(format!("rewritten module lacks memory export {idx}"))
                })?;
            out.push(m);
        }
        Ok(out)
    }

    fn memory_by_index(&mut self, index: u32) -> Result<wasmtime::Memory> {
        self.instance
            .get_memory(&mut self.store, &format!("{RESERVED_PREFIX}memory_{index}"))
            .ok_or_else(|| Error::Incompatible(format!("memory {index} is not in this module")))
    }
}

fn instantiate_error(e: wasmtime::Error, config: &AppConfig) -> Error {
    let msg = format!("{e:#}");
    if msg.contains("memory minimum size") {
        let limit = match config.limits.memory_bytes {
            Some(n) => format!("its limit of {n} bytes for all its memories together"),
            None => format!(
                "what tern gives one memory ({} bytes)",
                crate::sandbox::MAX_MEMORY_BYTES
            ),
        };
        return Error::MemoryLimit(format!(
            "the module's initial memories need more than {limit}: {msg}"
        ));
    }
    Error::Link(msg)
}
