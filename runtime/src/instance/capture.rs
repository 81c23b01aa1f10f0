//! Capture: an app's whole state into a [`Snapshot`] (after the SDK's
//! `tern_on_snapshot` hook), or everything but its memory pages for the
//! stop-and-copy of a live migration. Memory pages go straight into the
//! snapshot's buffer, skipping pages an anonymous memory never touched.

use std::collections::HashMap;

use wasmtime::{Ref, Val};

use super::{wasi_state, Instance};
use crate::error::{Error, Result};
use crate::memory;
use crate::rewrite::RESERVED_PREFIX;
use crate::snapshot::{GlobalState, Meta, Snapshot, SnapshotParts, TableState, Value};

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

impl Instance {
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
        // Pages read while a post-copy failed may be zeros, not the app's.
        self.check_postcopy()?;
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
        if self.torn {
            // Not a safe point: a call was cut off in the middle.
            return Err(Error::Torn);
        }
        self.check_postcopy()?;
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
}
