//! Calls into an app: an export found by name (the runtime's own `__tern_`
//! exports hidden from callers), its arguments checked against its
//! signature, the app's per-call limits (fuel, epoch deadline) set around
//! the call, and a failed call classified into an error a user can act on
//! (trap, timeout, fuel, stack overflow, exit).

use std::time::{Duration, Instant};

use wasmtime::{Func, Val, ValType};

use super::Instance;
use crate::error::{Error, Result};
use crate::rewrite::RESERVED_PREFIX;
use crate::sandbox::Stopped;
use crate::snapshot::LimitsState;

impl Instance {
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
        if self.torn {
            return Err(Error::Torn);
        }
        self.check_postcopy()?;
        if self.store.data().interrupt.is_interrupted() {
            return Err(Error::Interrupted {
                export: export.into(),
            });
        }
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
        // The epoch callback runs at every tick of the call: it ends the
        // call once it is interrupted or past this deadline.
        self.store.data_mut().deadline = limits
            .timeout_ms_per_call
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        self.store.set_epoch_deadline(1);
        self.calls += 1;
        let sp = self.module.info.stack_pointer.and_then(|g| {
            let global = self
                .instance
                .get_global(&mut self.store, &format!("{RESERVED_PREFIX}global_{g}"))?;
            Some((global, global.get(&mut self.store)))
        });
        let outcome = f.call(&mut self.store, args, &mut results);
        self.store.data_mut().deadline = None;
        // Whatever the call computed on an incomplete memory stays here.
        self.check_postcopy()?;
        match outcome {
            Ok(()) => Ok(results),
            Err(e) => {
                let err = classify(export, e, &limits);
                if let Error::Exit(code) = err {
                    self.exited = Some(code);
                } else if let Error::Interrupted { .. } = err {
                    // Cut off mid-way: nothing of this guest can be trusted
                    // to be consistent any more (see crate::sandbox).
                    self.torn = true;
                } else if let Some((global, value)) = sp {
                    // A trapped call never popped its shadow-stack frame.
                    let _ = global.set(&mut self.store, value);
                }
                Err(err)
            }
        }
    }
}

/// Turns a failed call into the error a user can act on.
fn classify(export: &str, e: wasmtime::Error, limits: &LimitsState) -> Error {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Error::Exit(exit.0);
    }
    if let Some(stopped) = e.downcast_ref::<Stopped>() {
        return match stopped {
            Stopped::Interrupted => Error::Interrupted {
                export: export.into(),
            },
            Stopped::TimedOut => Error::Timeout {
                export: export.into(),
                limit_ms: limits.timeout_ms_per_call.unwrap_or(0),
            },
        };
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
    if e.downcast_ref::<wasmtime::Trap>().is_some() {
        let message = format!("{e:#}").lines().next().unwrap_or("").to_string();
        let detail = e
            .chain()
            .map(|c| c.to_string())
            .find(|s| {
                s.starts_with("wasm trap")
                    || s.contains("unreachable")
                    || s.contains("out of bounds")
            })
            .unwrap_or(message);
        return Error::Trap {
            export: export.into(),
            message: detail,
        };
    }
    // Not a trap: a host function the guest called failed (`proc_exit`
    // with a status WASI does not allow, say). The reason is the error's
    // root; what wraps it is a backtrace.
    Error::CallFailed {
        export: export.into(),
        message: e.root_cause().to_string(),
    }
}
