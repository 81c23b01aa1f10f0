//! A running app: its store and instance, calls into it under limits, and
//! capture and restore of its whole state at a safe point.
//!
//! A safe point is simply "no call in progress": every method here takes
//! `&mut self`, so while one runs no guest frame can be on the stack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Func, Ref, Store, StoreLimitsBuilder, Val, ValType};

use crate::engine::{LoadedModule, Runtime, EPOCH_TICK};
use crate::error::{Error, Result};
use crate::memory::{self, ImageMapping};
use crate::rewrite::{GlobalKind, RESERVED_PREFIX};
use crate::snapshot::{
    GlobalState, LimitsState, Meta, Preopen, Snapshot, SnapshotParts, TableState, Value, WasiState,
    PAGE_SIZE,
};
use crate::wasi::{build_ctx, GuestClock, Stdio};

pub use crate::wasi::HostState;

const WASM_PAGE: u64 = 64 * 1024;
/// Tables may not grow past this many elements.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

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
}

/// Options for a capture.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOptions {
    /// Put the module's bytes in the snapshot (so it needs nothing else).
    pub embed_module: bool,
    /// Compress page runs with LZ4 where that halves them (smaller files,
    /// but compressed runs cannot be mapped copy-on-write).
    pub compress: bool,
    /// Call the SDK's `tern_on_snapshot` hook first, if the app has one.
    pub hooks: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            embed_module: true,
            compress: false,
            hooks: true,
        }
    }
}

/// Options for a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Map raw page runs of a file-backed snapshot copy-on-write instead of
    /// copying them (restore cost then does not grow with memory size).
    pub copy_on_write: bool,
    /// Call the SDK's `tern_on_restore` hook after, if the app has one.
    pub hooks: bool,
    /// Replace what the app is given (directories move with the app).
    pub wasi_override: Option<WasiState>,
    /// Limits to run under instead of the snapshot's.
    pub limits_override: Option<LimitsState>,
    pub stdio: Stdio,
    /// Write the snapshot's carried files here, replacing what the
    /// directory holds, and carry it in later snapshots.
    pub carry_dir: Option<std::path::PathBuf>,
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
}

/// Where one linear memory lives (for dirty-page tracking).
#[derive(Debug, Clone, Copy)]
pub struct MemoryRegion {
    pub index: u32,
    pub base: *mut u8,
    pub size: usize,
    /// The whole reservation (the memory can grow up to it).
    pub reserved: usize,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("module", &self.module.hash_hex())
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

fn new_store(
    runtime: &Runtime,
    config: &AppConfig,
    wasi: &WasiState,
    clock: &GuestClock,
) -> Result<Store<HostState>> {
    let ctx = build_ctx(wasi, &config.stdio, clock)?;
    let mut limits = StoreLimitsBuilder::new()
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(1)
        .memories(16)
        .tables(64);
    if let Some(m) = config.limits.memory_bytes {
        limits = limits.memory_size(m as usize);
    }
    let mut store = Store::new(
        runtime.engine(),
        HostState {
            wasi: ctx,
            limits: limits.build(),
        },
    );
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(u64::MAX / 2);
    store
        .set_fuel(u64::MAX)
        .map_err(|e| Error::Other(e.to_string()))?;
    Ok(store)
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
        let mut store = new_store(runtime, &config, &wasi, &clock)?;
        memory::clear_pending_images();
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| instantiate_error(e, &config))?;
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
        })
    }

    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Number of calls made into the guest so far (carried across restores).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Exit status, if the app called `proc_exit`.
    pub fn exited(&self) -> Option<i32> {
        self.exited
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

    /// The parameter and result types of an exported function.
    pub fn func_type(&mut self, export: &str) -> Result<(Vec<ValType>, Vec<ValType>)> {
        let f = self.func(export)?;
        let ty = f.ty(&self.store);
        Ok((ty.params().collect(), ty.results().collect()))
    }

    fn func(&mut self, export: &str) -> Result<Func> {
        if export.starts_with(RESERVED_PREFIX) {
            return Err(Error::NoSuchExport(
                export.into(),
                " (names starting with `__tern_` are the runtime's own)".into(),
            ));
        }
        self.instance
            .get_func(&mut self.store, export)
            .ok_or_else(|| {
                let mut names: Vec<String> = self
                    .module
                    .module
                    .exports()
                    .filter(|e| {
                        matches!(e.ty(), wasmtime::ExternType::Func(_))
                            && !e.name().starts_with(RESERVED_PREFIX)
                    })
                    .map(|e| e.name().to_string())
                    .collect();
                names.sort();
                let hint = if names.is_empty() {
                    " (it exports no functions)".into()
                } else {
                    format!("; it exports: {}", names.join(", "))
                };
                Error::NoSuchExport(export.into(), hint)
            })
    }

    /// Calls an export with arguments given as text, parsed by its signature.
    pub fn call_text(&mut self, export: &str, args: &[String]) -> Result<Vec<Val>> {
        let (params, _) = self.func_type(export)?;
        let vals = crate::values::parse_args(export, &params, args)?;
        self.call(export, &vals)
    }

    /// Calls an export under the app's per-call limits.
    pub fn call(&mut self, export: &str, args: &[Val]) -> Result<Vec<Val>> {
        if export.starts_with(RESERVED_PREFIX) {
            return Err(Error::NoSuchExport(
                export.into(),
                " (names starting with `__tern_` are the runtime's own)".into(),
            ));
        }
        self.call_raw(export, args)
    }

    pub(crate) fn call_raw(&mut self, export: &str, args: &[Val]) -> Result<Vec<Val>> {
        if let Some(code) = self.exited {
            return Err(Error::Exited(code));
        }
        if self.needs_on_restore && export != "tern_on_restore" {
            self.needs_on_restore = false;
            if self.has_export("tern_on_restore") {
                self.call_raw("tern_on_restore", &[])?;
            }
        }
        let f = self.func(export).or_else(|_| {
            self.instance
                .get_func(&mut self.store, export)
                .ok_or_else(|| Error::NoSuchExport(export.into(), String::new()))
        })?;
        let ty = f.ty(&self.store);
        if ty.params().len() != args.len() {
            return Err(Error::BadArguments {
                export: export.into(),
                message: format!(
                    "it takes {} argument(s), {} given",
                    ty.params().len(),
                    args.len()
                ),
            });
        }
        let mut results = vec![Val::I32(0); ty.results().len()];
        let limits = self.config.limits.clone();
        let fuel = limits.fuel_per_call.unwrap_or(u64::MAX);
        self.store
            .set_fuel(fuel)
            .map_err(|e| Error::Other(e.to_string()))?;
        match limits.timeout_ms_per_call {
            Some(ms) => {
                let ticks = Duration::from_millis(ms)
                    .as_nanos()
                    .div_ceil(EPOCH_TICK.as_nanos())
                    .max(1) as u64;
                self.store.set_epoch_deadline(ticks);
            }
            None => self.store.set_epoch_deadline(u64::MAX / 2),
        }
        self.calls += 1;
        let sp = self.module.info.stack_pointer.and_then(|g| {
            let global = self
                .instance
                .get_global(&mut self.store, &format!("{RESERVED_PREFIX}global_{g}"))?;
            Some((global, global.get(&mut self.store)))
        });
        let outcome = f.call(&mut self.store, args, &mut results);
        self.store.set_epoch_deadline(u64::MAX / 2);
        match outcome {
            Ok(()) => Ok(results),
            Err(e) => {
                let err = classify(export, e, &limits);
                if let Error::Exit(code) = err {
                    self.exited = Some(code);
                } else if let Some((global, value)) = sp {
                    // A trapped call never popped its shadow-stack frame.
                    let _ = global.set(&mut self.store, value);
                }
                Err(err)
            }
        }
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

    /// Maps each function that can be in a table to its index.
    fn func_indices(&mut self) -> HashMap<usize, u32> {
        let mut map = HashMap::new();
        for idx in self.module.info.table_funcs.clone() {
            if let Some(f) = self
                .instance
                .get_func(&mut self.store, &format!("{RESERVED_PREFIX}func_{idx}"))
            {
                map.insert(f.to_raw(&mut self.store) as usize, idx);
            }
        }
        map
    }

    /// Captures the app's whole state. Must be called between two calls
    /// (which `&mut self` guarantees).
    pub fn snapshot(&mut self, opts: SnapshotOptions) -> Result<Snapshot> {
        self.run_snapshot_hook(opts.hooks)?;
        let module_len = if opts.embed_module {
            self.module.original.len()
        } else {
            0
        };
        let mut images = Snapshot::image_writer(module_len);
        let (parts, states) = self.capture_parts(opts, Some(&mut images))?;
        Ok(Snapshot::encode_captured(parts, states, images))
    }

    /// Runs `tern_on_snapshot` (if asked and exported); the instance then
    /// owes the app a `tern_on_restore` before its next call.
    pub fn run_snapshot_hook(&mut self, hooks: bool) -> Result<()> {
        if hooks && self.exited.is_none() && self.has_export("tern_on_snapshot") {
            self.call_raw("tern_on_snapshot", &[])?;
            self.needs_on_restore = true;
        }
        Ok(())
    }

    /// Captures everything but memory pages: globals, tables, WASI, metadata,
    /// and each memory's size. The stop-and-copy of a live migration sends
    /// this with the last dirty pages.
    pub fn snapshot_state_only(&mut self) -> Result<Snapshot> {
        let (parts, states) = self.capture_parts(
            SnapshotOptions {
                embed_module: false,
                compress: false,
                hooks: false,
            },
            None,
        )?;
        Ok(Snapshot::encode_captured(
            parts,
            states,
            Snapshot::image_writer(0),
        ))
    }

    /// Everything but the memory images, and each memory's state; with
    /// `images`, the memories' pages are captured into it.
    fn capture_parts(
        &mut self,
        opts: SnapshotOptions,
        mut images: Option<&mut crate::snapshot::ImageWriter>,
    ) -> Result<(SnapshotParts, Vec<crate::snapshot::MemoryState>)> {
        let info = self.module.info.clone();
        // Globals.
        let mut globals = Vec::with_capacity(info.mutable_globals.len());
        for (idx, kind) in &info.mutable_globals {
            let g = self
                .instance
                .get_global(&mut self.store, &format!("{RESERVED_PREFIX}global_{idx}"))
                .ok_or_else(|| {
                    Error::Other(format!("rewritten module lacks global export {idx}"))
                })?;
            let value = match (g.get(&mut self.store), kind) {
                (Val::I32(v), _) => Value::I32(v),
                (Val::I64(v), _) => Value::I64(v),
                (Val::F32(v), _) => Value::F32(v),
                (Val::F64(v), _) => Value::F64(v),
                (Val::V128(v), _) => Value::V128(v.as_u128()),
                (
                    Val::FuncRef(None)
                    | Val::ExternRef(None)
                    | Val::AnyRef(None)
                    | Val::ExnRef(None)
                    | Val::ContRef(None),
                    _,
                ) => Value::NullRef,
                (_, _) => {
                    return Err(Error::NotMigratable(format!(
                        "global {idx} holds a non-null reference"
                    )))
                }
            };
            globals.push(GlobalState { index: *idx, value });
        }
        // Tables.
        let mut tables = Vec::with_capacity(info.tables.len());
        if !info.tables.is_empty() {
            let funcs = self.func_indices();
            for idx in &info.tables {
                let t = self
                    .instance
                    .get_table(&mut self.store, &format!("{RESERVED_PREFIX}table_{idx}"))
                    .ok_or_else(|| {
                        Error::Other(format!("rewritten module lacks table export {idx}"))
                    })?;
                let size = t.size(&self.store);
                let mut runs: Vec<(u32, Vec<Option<u32>>)> = Vec::new();
                for i in 0..size {
                    let elem = match t.get(&mut self.store, i) {
                        Some(Ref::Func(None))
                        | Some(Ref::Extern(None))
                        | Some(Ref::Any(None))
                        | None => None,
                        Some(Ref::Func(Some(f))) => {
                            let raw = f.to_raw(&mut self.store) as usize;
                            Some(*funcs.get(&raw).ok_or_else(|| {
                                Error::NotMigratable(format!(
                                    "table {idx} element {i} is a function the module cannot name"
                                ))
                            })?)
                        }
                        Some(_) => {
                            return Err(Error::NotMigratable(format!(
                                "table {idx} element {i} is a non-function reference"
                            )))
                        }
                    };
                    if let Some(f) = elem {
                        match runs.last_mut() {
                            Some((start, elems)) if *start as u64 + elems.len() as u64 == i => {
                                elems.push(Some(f))
                            }
                            _ => runs.push((i as u32, vec![Some(f)])),
                        }
                    }
                }
                tables.push(TableState {
                    index: *idx,
                    size: size as u32,
                    runs,
                });
            }
        }
        // Memories.
        let mut memories = Vec::new();
        for (i, m) in self.memories()?.into_iter().enumerate() {
            let data = m.data(&self.store);
            let Some(images) = images.as_deref_mut() else {
                memories.push(crate::snapshot::MemoryState {
                    index: info.memories[i],
                    byte_size: data.len() as u64,
                    runs: vec![],
                    page_hashes: vec![],
                });
                continue;
            };
            let resident = if self.anonymous.get(i).copied().unwrap_or(false) {
                memory::residency(data.as_ptr(), data.len())
            } else {
                None
            };
            memories.push(images.capture(
                info.memories[i],
                data,
                resident.as_deref(),
                opts.compress,
            ));
        }
        let parts = SnapshotParts {
            meta: Meta {
                module_sha256: self.module.sha256,
                tern_version: env!("CARGO_PKG_VERSION").to_string(),
                app: self.config.app.clone(),
                generation: self.config.generation,
                calls: self.calls,
                extra: self.extra_meta.clone(),
            },
            limits: self.config.limits.clone(),
            wasi: wasi_state(&self.config, self.clock.observed()),
            globals,
            tables,
            module: opts
                .embed_module
                .then(|| self.module.original.as_ref().clone()),
            files: match &self.config.carry_dir {
                Some(dir) => crate::carry::read_files(dir)?,
                None => Vec::new(),
            },
            memories: Vec::new(),
        };
        Ok((parts, memories))
    }

    /// Restores an app from a snapshot. `module` may be given (it must be the
    /// same module); otherwise the snapshot must carry it.
    pub fn restore(
        runtime: &Arc<Runtime>,
        snap: &Snapshot,
        module: Option<Arc<LoadedModule>>,
        opts: RestoreOptions,
    ) -> Result<Instance> {
        let body = &snap.body;
        let want = body.meta.module_sha256;
        let module = match module {
            Some(m) if m.sha256 != want => {
                return Err(Error::ModuleMismatch {
                    snapshot: short_hash(&want),
                    module: short_hash(&m.sha256),
                })
            }
            Some(m) => m,
            None => match runtime.loaded(&want) {
                Some(m) => m,
                None => match &body.module {
                    Some(bytes) => runtime.load(bytes.clone())?,
                    None => return Err(Error::ModuleMissing(hex::encode(want))),
                },
            },
        };
        check_shape(snap, &module)?;
        let wasi = opts
            .wasi_override
            .clone()
            .unwrap_or_else(|| body.wasi.clone());
        let limits = opts
            .limits_override
            .clone()
            .unwrap_or_else(|| body.limits.clone());
        let config = AppConfig {
            args: wasi.args.clone(),
            env: wasi.env.clone(),
            preopens: wasi.preopens.clone(),
            limits,
            stdio: opts.stdio.clone(),
            app: body.meta.app.clone(),
            generation: body.meta.generation,
            random_seed: wasi.random_seed,
            carry_dir: opts.carry_dir.clone(),
        };
        if let Some(limit) = config.limits.memory_bytes {
            let total: u64 = body.memories.iter().map(|m| m.byte_size).sum();
            if total > limit {
                return Err(Error::MemoryLimit(format!(
                    "the snapshot holds {total} bytes of memory, more than the limit of {limit} bytes: raise --memory"
                )));
            }
        }
        let clock = GuestClock::starting_at(body.wasi.monotonic_ns);
        let mut store = new_store(runtime, &config, &wasi, &clock)?;

        // Copy-on-write only when every memory can be mapped and the module's
        // data segments are known (they are written again at instantiation).
        let images: Option<Vec<Option<ImageMapping>>> =
            if opts.copy_on_write && module.info.data_ranges.is_some() {
                body.memories
                    .iter()
                    .map(|m| memory::image_mapping(snap, m).map(Some))
                    .collect()
            } else {
                None
            };
        let cow = images.is_some();
        memory::set_pending_images(images.unwrap_or_default());
        let instantiated = module.pre.instantiate(&mut store);
        memory::clear_pending_images();
        let instance = instantiated.map_err(|e| instantiate_error(e, &config))?;

        let mut inst = Instance {
            runtime: runtime.clone(),
            module: module.clone(),
            store,
            instance,
            config,
            clock,
            calls: body.meta.calls,
            exited: None,
            anonymous: vec![!cow; module.info.memories.len()],
            extra_meta: body.meta.extra.clone(),
            needs_on_restore: false,
        };
        inst.restore_memories(snap, cow)?;
        inst.restore_globals(snap)?;
        inst.restore_tables(snap)?;
        // The app's files, once everything else checked out (a failed
        // restore leaves the directory as it was).
        if let Some(dir) = &inst.config.carry_dir {
            crate::carry::write_files(dir, &body.files)?;
        }
        if opts.hooks && inst.has_export("tern_on_restore") {
            inst.call_raw("tern_on_restore", &[])?;
        }
        Ok(inst)
    }

    fn restore_memories(&mut self, snap: &Snapshot, cow: bool) -> Result<()> {
        let mems = self.memories()?;
        let data_ranges = self.module.info.data_ranges.clone();
        for (mem_state, m) in snap.body.memories.iter().zip(mems) {
            let cur = m.data_size(&self.store) as u64;
            if mem_state.byte_size > cur {
                let delta = (mem_state.byte_size - cur) / WASM_PAGE;
                m.grow(&mut self.store, delta).map_err(|e| {
                    Error::MemoryLimit(format!(
                        "cannot grow memory {} to {} bytes: {e}",
                        mem_state.index, mem_state.byte_size
                    ))
                })?;
            } else if mem_state.byte_size < cur {
                return Err(Error::Incompatible(format!(
                    "memory {} is {} bytes in the snapshot, smaller than the module's minimum of {cur}",
                    mem_state.index, mem_state.byte_size
                )));
            }
            // Pages the data segments wrote at instantiation must hold the
            // snapshot's bytes (or zero) again.
            let segment_pages: Vec<(u64, u64)> = match &data_ranges {
                Some(ranges) => ranges
                    .iter()
                    .filter(|(mi, _, len)| *mi == mem_state.index && *len > 0)
                    .map(|(_, off, len)| {
                        (
                            off / PAGE_SIZE as u64,
                            (off + len).div_ceil(PAGE_SIZE as u64),
                        )
                    })
                    .collect(),
                None => vec![(0, mem_state.byte_size / PAGE_SIZE as u64)],
            };
            let data = m.data_mut(&mut self.store);
            for (first, end) in &segment_pages {
                let end = (*end).min(data.len() as u64 / PAGE_SIZE as u64);
                if *first < end {
                    data[*first as usize * PAGE_SIZE..end as usize * PAGE_SIZE].fill(0);
                }
            }
            for run in &mem_state.runs {
                let overlaps = segment_pages
                    .iter()
                    .any(|(a, b)| run.first_page < *b && *a < run.first_page + run.pages);
                if cow && !overlaps {
                    continue;
                }
                let bytes = snap.run_data(run)?;
                let start = run.first_page as usize * PAGE_SIZE;
                if cow {
                    // Only the pages the segments touched.
                    for (a, b) in &segment_pages {
                        let lo = (*a).max(run.first_page);
                        let hi = (*b).min(run.first_page + run.pages);
                        if lo < hi {
                            let src = (lo - run.first_page) as usize * PAGE_SIZE
                                ..(hi - run.first_page) as usize * PAGE_SIZE;
                            data[lo as usize * PAGE_SIZE..hi as usize * PAGE_SIZE]
                                .copy_from_slice(&bytes[src]);
                        }
                    }
                } else {
                    data[start..start + bytes.len()].copy_from_slice(&bytes);
                }
            }
        }
        Ok(())
    }

    fn restore_globals(&mut self, snap: &Snapshot) -> Result<()> {
        for g in &snap.body.globals {
            let global = self
                .instance
                .get_global(
                    &mut self.store,
                    &format!("{RESERVED_PREFIX}global_{}", g.index),
                )
                .ok_or_else(|| {
                    Error::Incompatible(format!(
                        "global {} is not a mutable global of this module",
                        g.index
                    ))
                })?;
            let val = match g.value {
                Value::I32(v) => Val::I32(v),
                Value::I64(v) => Val::I64(v),
                Value::F32(v) => Val::F32(v),
                Value::F64(v) => Val::F64(v),
                Value::V128(v) => Val::V128(v.into()),
                Value::NullRef => match global.ty(&self.store).content() {
                    ValType::Ref(r) => Val::null_ref(r.heap_type()),
                    _ => {
                        return Err(Error::Incompatible(format!(
                            "global {} is not a reference",
                            g.index
                        )))
                    }
                },
            };
            global.set(&mut self.store, val).map_err(|e| {
                Error::Incompatible(format!(
                    "global {} does not take the stored value: {e}",
                    g.index
                ))
            })?;
        }
        Ok(())
    }

    fn restore_tables(&mut self, snap: &Snapshot) -> Result<()> {
        if snap.body.tables.is_empty() {
            return Ok(());
        }
        let mut funcs: HashMap<u32, Func> = HashMap::new();
        for idx in self.module.info.table_funcs.clone() {
            if let Some(f) = self
                .instance
                .get_func(&mut self.store, &format!("{RESERVED_PREFIX}func_{idx}"))
            {
                funcs.insert(idx, f);
            }
        }
        for t in &snap.body.tables {
            let table = self
                .instance
                .get_table(
                    &mut self.store,
                    &format!("{RESERVED_PREFIX}table_{}", t.index),
                )
                .ok_or_else(|| {
                    Error::Incompatible(format!("table {} is not in this module", t.index))
                })?;
            let cur = table.size(&self.store);
            if (t.size as u64) > cur {
                table
                    .grow(&mut self.store, t.size as u64 - cur, Ref::Func(None))
                    .map_err(|e| {
                        Error::Incompatible(format!(
                            "cannot grow table {} to {}: {e}",
                            t.index, t.size
                        ))
                    })?;
            }
            // Everything not in a run is null.
            let mut want: Vec<Option<u32>> = vec![None; t.size as usize];
            for (start, elems) in &t.runs {
                for (k, e) in elems.iter().enumerate() {
                    want[*start as usize + k] = *e;
                }
            }
            for (i, w) in want.iter().enumerate() {
                let r = match w {
                    None => Ref::Func(None),
                    Some(f) => Ref::Func(Some(*funcs.get(f).ok_or_else(|| {
                        Error::Incompatible(format!("table {} names unknown function {f}", t.index))
                    })?)),
                };
                table.set(&mut self.store, i as u64, r).map_err(|e| {
                    Error::Incompatible(format!("cannot set table {} element {i}: {e}", t.index))
                })?;
            }
        }
        Ok(())
    }

    /// Where each memory lives, for dirty-page tracking.
    pub fn memory_regions(&mut self) -> Result<Vec<MemoryRegion>> {
        let mut out = Vec::new();
        for (i, m) in self.memories()?.into_iter().enumerate() {
            let base = m.data_ptr(&self.store);
            let size = m.data_size(&self.store);
            let reserved = memory::reservation_of(base).unwrap_or(size);
            out.push(MemoryRegion {
                index: self.module.info.memories[i],
                base,
                size,
                reserved,
            });
        }
        Ok(out)
    }

    /// Reads the given 4 KiB pages of a memory into a chunk.
    pub fn read_pages(&mut self, memory: u32, pages: &[u64]) -> Result<crate::snapshot::PageChunk> {
        let m = self.memory_by_index(memory)?;
        let data = m.data(&self.store);
        let mut out = Vec::with_capacity(pages.len() * PAGE_SIZE);
        let mut kept = Vec::with_capacity(pages.len());
        for &p in pages {
            let start = p as usize * PAGE_SIZE;
            if start + PAGE_SIZE <= data.len() {
                out.extend_from_slice(&data[start..start + PAGE_SIZE]);
                kept.push(p);
            }
        }
        Ok(crate::snapshot::PageChunk {
            memory,
            byte_size: data.len() as u64,
            pages: kept,
            data: out,
        })
    }

    /// The pages of `[first, end)` of a memory that are not all zero (a
    /// range past the memory's end is cut short), encoded as a page chunk
    /// straight from the memory; and how many pages it holds.
    pub fn encode_nonzero_pages(
        &mut self,
        memory: u32,
        first: u64,
        end: u64,
    ) -> Result<(Vec<u8>, u64)> {
        let m = self.memory_by_index(memory)?;
        let data = m.data(&self.store);
        let end = end.min((data.len() / PAGE_SIZE) as u64);
        let pages: Vec<u64> = (first..end)
            .filter(|&p| {
                !crate::snapshot::is_zero_page(
                    &data[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE],
                )
            })
            .collect();
        let n = pages.len() as u64;
        Ok((
            crate::snapshot::PageChunk::encode_from(memory, data, &pages),
            n,
        ))
    }

    /// Every page of a memory whose content differs from a checkpoint's
    /// (by the checkpoint's per-page hashes; pages it did not store are zero).
    pub fn pages_differing_from(
        &mut self,
        checkpoint: &Snapshot,
    ) -> Result<Vec<crate::snapshot::PageChunk>> {
        let zero_hash = xxhash_rust::xxh3::xxh3_64(&[0u8; PAGE_SIZE]);
        let mut chunks = Vec::new();
        for ms in &checkpoint.body.memories {
            let mut known: HashMap<u64, u64> = HashMap::new();
            let mut hashes = ms.page_hashes.iter();
            for run in &ms.runs {
                for p in run.first_page..run.first_page + run.pages {
                    if let Some(h) = hashes.next() {
                        known.insert(p, *h);
                    }
                }
            }
            let m = self.memory_by_index(ms.index)?;
            let data = m.data(&self.store);
            let differing: Vec<u64> = data
                .chunks_exact(PAGE_SIZE)
                .enumerate()
                .filter(|(p, page)| {
                    let want = known.get(&(*p as u64)).copied().unwrap_or(zero_hash);
                    xxhash_rust::xxh3::xxh3_64(page) != want
                })
                .map(|(p, _)| p as u64)
                .collect();
            chunks.push(self.read_pages(ms.index, &differing)?);
        }
        Ok(chunks)
    }

    /// Writes a chunk's pages (growing the memory to the chunk's size first).
    pub fn apply_chunk(&mut self, chunk: &crate::snapshot::PageChunk) -> Result<()> {
        self.apply_pages(chunk.memory, chunk.byte_size, &chunk.pages, &chunk.data)
    }

    /// [`Instance::apply_chunk`] for a chunk decoded in place.
    pub fn apply_chunk_ref(&mut self, chunk: &crate::snapshot::PageChunkRef<'_>) -> Result<()> {
        self.apply_pages(chunk.memory, chunk.byte_size, &chunk.pages, chunk.data)
    }

    fn apply_pages(
        &mut self,
        memory: u32,
        byte_size: u64,
        pages: &[u64],
        bytes: &[u8],
    ) -> Result<()> {
        let m = self.memory_by_index(memory)?;
        let cur = m.data_size(&self.store) as u64;
        if byte_size > cur {
            m.grow(&mut self.store, (byte_size - cur) / WASM_PAGE)
                .map_err(|e| {
                    Error::MemoryLimit(format!(
                        "cannot grow memory {memory} to {byte_size} bytes: {e}"
                    ))
                })?;
        }
        let data = m.data_mut(&mut self.store);
        for (k, &p) in pages.iter().enumerate() {
            let start = p as usize * PAGE_SIZE;
            data[start..start + PAGE_SIZE]
                .copy_from_slice(&bytes[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]);
        }
        Ok(())
    }

    /// Puts a state-only snapshot in place: memory sizes, globals, tables,
    /// the clock, counters and metadata (the pages came in chunks).
    pub fn apply_state(&mut self, state: &Snapshot) -> Result<()> {
        check_shape(state, &self.module)?;
        for ms in &state.body.memories {
            let m = self.memory_by_index(ms.index)?;
            let cur = m.data_size(&self.store) as u64;
            if ms.byte_size > cur {
                m.grow(&mut self.store, (ms.byte_size - cur) / WASM_PAGE)
                    .map_err(|e| {
                        Error::MemoryLimit(format!(
                            "cannot grow memory {} to {} bytes: {e}",
                            ms.index, ms.byte_size
                        ))
                    })?;
            }
        }
        self.restore_globals(state)?;
        self.restore_tables(state)?;
        self.clock.continue_from(state.body.wasi.monotonic_ns);
        self.calls = state.body.meta.calls;
        self.config.generation = state.body.meta.generation;
        self.extra_meta = state.body.meta.extra.clone();
        if let Some(dir) = &self.config.carry_dir {
            crate::carry::write_files(dir, &state.body.files)?;
        }
        Ok(())
    }

    /// Runs `tern_on_restore` now if the app has it (after a move).
    pub fn run_restore_hook(&mut self) -> Result<()> {
        self.needs_on_restore = false;
        if self.has_export("tern_on_restore") {
            self.call_raw("tern_on_restore", &[])?;
        }
        Ok(())
    }

    fn memory_by_index(&mut self, index: u32) -> Result<wasmtime::Memory> {
        self.instance
            .get_memory(&mut self.store, &format!("{RESERVED_PREFIX}memory_{index}"))
            .ok_or_else(|| Error::Incompatible(format!("memory {index} is not in this module")))
    }

    /// Copies bytes into memory 0 (for the guest ABI).
    pub fn write_memory(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let m = self.memory_by_index(0)?;
        let data = m.data_mut(&mut self.store);
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= data.len())
            .ok_or_else(|| Error::Other("write outside memory".into()))?;
        data[start..end].copy_from_slice(bytes);
        Ok(())
    }

    /// Copies bytes out of memory 0 (for the guest ABI).
    pub fn read_memory(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let m = self.memory_by_index(0)?;
        let data = m.data(&self.store);
        let start = offset as usize;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| Error::Other("read outside memory".into()))?;
        Ok(data[start..end].to_vec())
    }

    /// The runtime this instance belongs to.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Direct access to a memory's bytes (for dirty-page tracking).
    pub fn memory_data(&mut self, index: usize) -> Option<&[u8]> {
        let name = format!(
            "{RESERVED_PREFIX}memory_{}",
            self.module.info.memories.get(index)?
        );
        let m = self.instance.get_memory(&mut self.store, &name)?;
        Some(m.data(&self.store))
    }
}

fn short_hash(h: &[u8; 32]) -> String {
    format!("{}…", &hex::encode(h)[..12])
}

/// Refuses a snapshot whose memories, globals or tables are not the module's.
fn check_shape(snap: &Snapshot, module: &LoadedModule) -> Result<()> {
    let body = &snap.body;
    let info = &module.info;
    let mems: Vec<u32> = body.memories.iter().map(|m| m.index).collect();
    if mems != info.memories {
        return Err(Error::Incompatible(format!(
            "snapshot has memories {mems:?}, the module {:?}",
            info.memories
        )));
    }
    let globals: Vec<u32> = body.globals.iter().map(|g| g.index).collect();
    let want: Vec<u32> = info.mutable_globals.iter().map(|g| g.0).collect();
    if globals != want {
        return Err(Error::Incompatible(format!(
            "snapshot has mutable globals {globals:?}, the module {want:?}"
        )));
    }
    for (g, (_, kind)) in body.globals.iter().zip(&info.mutable_globals) {
        let ok = matches!(
            (g.value, kind),
            (Value::I32(_), GlobalKind::I32)
                | (Value::I64(_), GlobalKind::I64)
                | (Value::F32(_), GlobalKind::F32)
                | (Value::F64(_), GlobalKind::F64)
                | (Value::V128(_), GlobalKind::V128)
                | (Value::NullRef, GlobalKind::Ref)
        );
        if !ok {
            return Err(Error::Incompatible(format!(
                "global {} has a value of the wrong type",
                g.index
            )));
        }
    }
    let tables: Vec<u32> = body.tables.iter().map(|t| t.index).collect();
    if tables != info.tables {
        return Err(Error::Incompatible(format!(
            "snapshot has tables {tables:?}, the module {:?}",
            info.tables
        )));
    }
    Ok(())
}

fn instantiate_error(e: wasmtime::Error, config: &AppConfig) -> Error {
    let msg = format!("{e:#}");
    if msg.contains("memory") && config.limits.memory_bytes.is_some() && msg.contains("limit") {
        return Error::MemoryLimit(format!(
            "the module needs more memory than its limit: {msg}"
        ));
    }
    Error::Link(msg)
}

/// Turns a failed call into the error a user can act on.
fn classify(export: &str, e: wasmtime::Error, limits: &LimitsState) -> Error {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exit(exit.0);
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        match trap {
            wasmtime::Trap::Interrupt => {
                return Error::Timeout {
                    export: export.into(),
                    limit_ms: limits.timeout_ms_per_call.unwrap_or(0),
                }
            }
            wasmtime::Trap::OutOfFuel => {
                return Error::OutOfFuel {
                    export: export.into(),
                    fuel: limits.fuel_per_call.unwrap_or(0),
                }
            }
            wasmtime::Trap::StackOverflow => {
                return Error::StackOverflow {
                    export: export.into(),
                }
            }
            _ => {}
        }
    }
    let message = format!("{e:#}").lines().next().unwrap_or("").to_string();
    let detail = e
        .chain()
        .map(|c| c.to_string())
        .find(|s| {
            s.starts_with("wasm trap") || s.contains("unreachable") || s.contains("out of bounds")
        })
        .unwrap_or(message);
    Error::Trap {
        export: export.into(),
        message: detail,
    }
}
