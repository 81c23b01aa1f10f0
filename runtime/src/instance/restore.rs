//! Restore: an app rebuilt from a snapshot in any runtime (its pages copied,
//! or mapped copy-on-write from a snapshot file), and a state-only snapshot
//! put in place on a running instance at the end of a live migration. A
//! snapshot whose memories, globals or tables are not the module's is
//! refused before anything changes.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::{Func, Ref, Val, ValType};

use super::{instantiate, new_store, AppConfig, Instance, WASM_PAGE};
use crate::engine::{LoadedModule, Runtime};
use crate::error::{Error, Result};
use crate::memory::{self, ImageMapping};
use crate::rewrite::{GlobalKind, RESERVED_PREFIX};
use crate::sandbox::InterruptHandle;
use crate::snapshot::{LimitsState, Snapshot, Value, WasiState, PAGE_SIZE};
use crate::wasi::{GuestClock, Stdio};

/// Options for a restore.
///
/// A snapshot records what its app was given (arguments, environment,
/// directories) and the limits it ran under. That record is authority only
/// where the platform wrote the snapshot itself and trusts it (a node's own
/// checkpoint, a migration from a peer node of the same cluster): there
/// `None` in the overrides below keeps it. A snapshot from anywhere else is
/// data: give both overrides, built from what the caller grants
/// ([`crate::wasi::regrant`]) and the caller's limits (or
/// [`LimitsState::LOCAL_DEFAULTS`]), as `tern resume` does.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Map raw page runs of a file-backed snapshot copy-on-write instead of
    /// copying them (restore cost then does not grow with memory size).
    pub copy_on_write: bool,
    /// Call the SDK's `tern_on_restore` hook after, if the app has one.
    pub hooks: bool,
    /// What the app is given instead of what the snapshot records.
    pub wasi_override: Option<WasiState>,
    /// Limits to run under instead of the ones the snapshot records.
    pub limits_override: Option<LimitsState>,
    pub stdio: Stdio,
    /// Write the snapshot's carried files here, replacing what the
    /// directory holds, and carry it in later snapshots.
    pub carry_dir: Option<std::path::PathBuf>,
    /// The handle that stops the restored app's calls (its restore hook
    /// included); `None` gives it one of its own.
    pub interrupt: Option<InterruptHandle>,
    /// Give each memory, up to the size the snapshot records, resident
    /// zeroed pages from the process's stock ([`crate::resident`]) instead
    /// of pages faulted in one by one on first write: for a migration's
    /// target, which writes every page it receives. Ignored for memories
    /// mapped copy-on-write.
    pub resident_memory: bool,
}

impl Instance {
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
            interrupt: opts.interrupt.clone(),
        };
        if let Some(limit) = config.limits.memory_bytes {
            // The same total the limiter bounds: all memories together.
            let total: u64 = body.memories.iter().map(|m| m.byte_size).sum();
            if total > limit {
                return Err(Error::MemoryLimit(format!(
                    "the snapshot holds {total} bytes of memory in all, more than the limit of {limit} bytes: raise --memory"
                )));
            }
        }
        let clock = GuestClock::starting_at(body.wasi.monotonic_ns);
        let (mut store, account) = new_store(runtime, &config, &wasi, &clock)?;

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
        let resident = if opts.resident_memory && !cow {
            body.memories
                .iter()
                .map(|m| usize::try_from(m.byte_size).unwrap_or(usize::MAX))
                .collect()
        } else {
            Vec::new()
        };
        let instance = instantiate(
            &module,
            &mut store,
            account,
            images.unwrap_or_default(),
            resident,
            &config,
        )?;

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
            torn: false,
            pager: None,
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
