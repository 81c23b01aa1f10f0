//! The migratability rewrite.
//!
//! wasmtime reaches only what a module exports, so at load the runtime
//! rewrites the module to export, under reserved names, everything a snapshot
//! must read or write:
//!
//! | reserved export        | what                                          |
//! |------------------------|-----------------------------------------------|
//! | `__tern_global_N`      | every mutable global N                        |
//! | `__tern_memory_N`      | every memory N                                |
//! | `__tern_table_N`       | every table N                                 |
//! | `__tern_func_N`        | every function that can be put in a table     |
//! | `__tern_start`         | the start function, whose section is removed  |
//!
//! The start function is taken out of the start section so that a restore,
//! which instantiates the module again, does not run it a second time: the
//! runtime calls `__tern_start` itself on a fresh start only.
//!
//! The app's own exports are kept unchanged and in order; every other
//! section is copied byte for byte. The rewrite is deterministic.

use serde::{Deserialize, Serialize};
use wasmparser::{ExternalKind, Operator, Payload, TypeRef, ValType};

/// Prefix of every export the runtime adds; a module may not use it itself.
pub const RESERVED_PREFIX: &str = "__tern_";

/// The type of a mutable global, as far as snapshots care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GlobalKind {
    I32,
    I64,
    F32,
    F64,
    V128,
    Ref,
}

/// What the rewrite learned about the module, kept with the compiled artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Mutable globals: (global index, kind).
    pub mutable_globals: Vec<(u32, GlobalKind)>,
    /// Memory indices.
    pub memories: Vec<u32>,
    /// Table indices.
    pub tables: Vec<u32>,
    /// Functions that can appear in a table (exported as `__tern_func_N`).
    pub table_funcs: Vec<u32>,
    /// The start function, if the module had one.
    pub start: Option<u32>,
    /// Byte ranges that active data segments write at instantiation:
    /// (memory index, offset, length). `None` when an offset is not a
    /// constant the rewrite can evaluate.
    pub data_ranges: Option<Vec<(u32, u64, u64)>>,
    /// Whether the module exports `_start` (a command) or `_initialize` (a reactor).
    pub has_start_export: bool,
    pub has_initialize_export: bool,
    /// The shadow-stack pointer of toolchains like rustc and clang
    /// (`__stack_pointer` in the name section): reset after a trap, since a
    /// trapped call never pops its frame.
    pub stack_pointer: Option<u32>,
}

/// Why a module cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("module is not valid WebAssembly: {0}")]
    Invalid(String),
    #[error("module exports `{0}`, but names starting with `__tern_` are reserved for the runtime: rename that export")]
    ReservedName(String),
    #[error("module imports a {0}; tern provides only WASI preview-1 functions, so it cannot run this module")]
    UnsupportedImport(&'static str),
    #[error("this is a WebAssembly component; tern runs core modules (WASI preview 1)")]
    Component,
}

/// The rewritten module and what was learned.
pub struct Rewritten {
    pub bytes: Vec<u8>,
    pub info: ModuleInfo,
}

/// Validates `wasm` and rewrites it for migratability.
pub fn rewrite(wasm: &[u8]) -> Result<Rewritten, RewriteError> {
    let mut validator =
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default());
    validator
        .validate_all(wasm)
        .map_err(|e| RewriteError::Invalid(e.to_string()))?;

    let mut info = ModuleInfo::default();
    let mut imported_funcs = 0u32;
    // Imported globals are refused above, so defined globals start at 0.
    let imported_globals = 0u32;
    let mut defined_globals: Vec<(bool, GlobalKind, Option<i64>)> = Vec::new(); // (mutable, kind, const value)
    let mut n_tables = 0u32;
    let mut n_memories = 0u32;
    let mut table_funcs = std::collections::BTreeSet::new();
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut data_ranges = Some(Vec::new());
    let mut has_name_section = false;

    // First pass: learn the index spaces, exports and segments.
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| RewriteError::Invalid(e.to_string()))?;
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => return Err(RewriteError::Component),
            Payload::ImportSection(s) => {
                for imp in s.into_imports() {
                    let imp = imp.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                    match imp.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_funcs += 1,
                        TypeRef::Global(_) => {
                            return Err(RewriteError::UnsupportedImport("global"))
                        }
                        TypeRef::Memory(_) => {
                            return Err(RewriteError::UnsupportedImport("memory"))
                        }
                        TypeRef::Table(_) => return Err(RewriteError::UnsupportedImport("table")),
                        TypeRef::Tag(_) => return Err(RewriteError::UnsupportedImport("tag")),
                    }
                }
            }
            Payload::TableSection(s) => n_tables += s.count(),
            Payload::MemorySection(s) => n_memories += s.count(),
            Payload::GlobalSection(s) => {
                for g in s {
                    let g = g.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                    let kind = match g.ty.content_type {
                        ValType::I32 => GlobalKind::I32,
                        ValType::I64 => GlobalKind::I64,
                        ValType::F32 => GlobalKind::F32,
                        ValType::F64 => GlobalKind::F64,
                        ValType::V128 => GlobalKind::V128,
                        ValType::Ref(_) => GlobalKind::Ref,
                    };
                    let value = const_value(&g.init_expr, &[]);
                    for op in g.init_expr.get_operators_reader() {
                        if let Ok(Operator::RefFunc { function_index }) = op {
                            table_funcs.insert(function_index);
                        }
                    }
                    defined_globals.push((g.ty.mutable, kind, value));
                }
            }
            Payload::ExportSection(s) => {
                for e in s {
                    let e = e.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                    if e.name.starts_with(RESERVED_PREFIX) {
                        return Err(RewriteError::ReservedName(e.name.to_string()));
                    }
                    if e.kind == ExternalKind::Func || e.kind == ExternalKind::FuncExact {
                        table_funcs.insert(e.index);
                    }
                    match e.name {
                        "_start" => info.has_start_export = true,
                        "_initialize" => info.has_initialize_export = true,
                        _ => {}
                    }
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
            Payload::StartSection { func, .. } => info.start = Some(func),
            Payload::CustomSection(c) => {
                if let wasmparser::KnownCustom::Name(names) = c.as_known() {
                    has_name_section = true;
                    for n in names.into_iter().flatten() {
                        if let wasmparser::Name::Global(map) = n {
                            for naming in map.into_iter().flatten() {
                                if naming.name == "__stack_pointer" {
                                    info.stack_pointer = Some(naming.index);
                                }
                            }
                        }
                    }
                }
            }
            Payload::ElementSection(s) => {
                for el in s {
                    let el = el.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                    match el.items {
                        wasmparser::ElementItems::Functions(fs) => {
                            for f in fs {
                                table_funcs
                                    .insert(f.map_err(|e| RewriteError::Invalid(e.to_string()))?);
                            }
                        }
                        wasmparser::ElementItems::Expressions(_, exprs) => {
                            for expr in exprs {
                                let expr =
                                    expr.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                                for op in expr.get_operators_reader() {
                                    if let Ok(Operator::RefFunc { function_index }) = op {
                                        table_funcs.insert(function_index);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Payload::DataSection(s) => {
                let consts: Vec<Option<i64>> = defined_globals
                    .iter()
                    .map(|(m, _, v)| if *m { None } else { *v })
                    .collect();
                for d in s {
                    let d = d.map_err(|e| RewriteError::Invalid(e.to_string()))?;
                    if let wasmparser::DataKind::Active {
                        memory_index,
                        offset_expr,
                    } = d.kind
                    {
                        match (const_value(&offset_expr, &consts), data_ranges.as_mut()) {
                            (Some(off), Some(ranges)) => {
                                ranges.push((memory_index, off as u64, d.data.len() as u64))
                            }
                            _ => data_ranges = None,
                        }
                    }
                }
            }
            _ => {}
        }
    }
    info.mutable_globals = defined_globals
        .iter()
        .enumerate()
        .filter(|(_, g)| g.0)
        .map(|(i, g)| (imported_globals + i as u32, g.1))
        .collect();
    info.memories = (0..n_memories).collect();
    info.tables = (0..n_tables).collect();
    info.table_funcs = table_funcs.into_iter().collect();
    info.data_ranges = data_ranges;
    // Without a name section, LLVM's layout puts it at global 0 (sdk/ABI.md, section 8).
    if info.stack_pointer.is_none()
        && !has_name_section
        && info.mutable_globals.first() == Some(&(0, GlobalKind::I32))
    {
        info.stack_pointer = Some(0);
    }
    if let Some(sp) = info.stack_pointer {
        if !info
            .mutable_globals
            .iter()
            .any(|(g, k)| *g == sp && *k == GlobalKind::I32)
        {
            info.stack_pointer = None;
        }
    }
    let _ = imported_funcs;

    // The export section to write: the app's own, then the reserved ones.
    let mut section = wasm_encoder::ExportSection::new();
    for (name, kind, index) in &exports {
        let kind = match kind {
            ExternalKind::Func | ExternalKind::FuncExact => wasm_encoder::ExportKind::Func,
            ExternalKind::Table => wasm_encoder::ExportKind::Table,
            ExternalKind::Memory => wasm_encoder::ExportKind::Memory,
            ExternalKind::Global => wasm_encoder::ExportKind::Global,
            ExternalKind::Tag => wasm_encoder::ExportKind::Tag,
        };
        section.export(name, kind, *index);
    }
    for (g, _) in &info.mutable_globals {
        section.export(
            &format!("{RESERVED_PREFIX}global_{g}"),
            wasm_encoder::ExportKind::Global,
            *g,
        );
    }
    for m in &info.memories {
        section.export(
            &format!("{RESERVED_PREFIX}memory_{m}"),
            wasm_encoder::ExportKind::Memory,
            *m,
        );
    }
    for t in &info.tables {
        section.export(
            &format!("{RESERVED_PREFIX}table_{t}"),
            wasm_encoder::ExportKind::Table,
            *t,
        );
    }
    for f in &info.table_funcs {
        section.export(
            &format!("{RESERVED_PREFIX}func_{f}"),
            wasm_encoder::ExportKind::Func,
            *f,
        );
    }
    if let Some(start) = info.start {
        section.export(
            &format!("{RESERVED_PREFIX}start"),
            wasm_encoder::ExportKind::Func,
            start,
        );
    }

    // Second pass: copy every section, replacing exports and dropping start.
    let mut module = wasm_encoder::Module::new();
    let mut exports_written = false;
    // Sections that must come after the export section, by their id.
    const AFTER_EXPORT: [u8; 6] = [8, 9, 12, 10, 11, 0xff];
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| RewriteError::Invalid(e.to_string()))?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        let is_custom = id == 0;
        if !exports_written && !is_custom && (id == 7 || AFTER_EXPORT.contains(&id)) {
            module.section(&section);
            exports_written = true;
            if id == 7 {
                continue;
            }
        }
        if id == 8 {
            continue; // start section: now `__tern_start`
        }
        module.section(&wasm_encoder::RawSection {
            id,
            data: &wasm[range],
        });
    }
    if !exports_written {
        module.section(&section);
    }
    Ok(Rewritten {
        bytes: module.finish(),
        info,
    })
}

/// Evaluates a constant expression to an integer, where it is one.
fn const_value(expr: &wasmparser::ConstExpr<'_>, immutable_globals: &[Option<i64>]) -> Option<i64> {
    let mut ops = expr.get_operators_reader();
    let first = ops.read().ok()?;
    let value = match first {
        Operator::I32Const { value } => value as u32 as i64,
        Operator::I64Const { value } => value,
        Operator::GlobalGet { global_index } => (*immutable_globals.get(global_index as usize)?)?,
        _ => return None,
    };
    match ops.read().ok()? {
        Operator::End => Some(value),
        _ => None,
    }
}
