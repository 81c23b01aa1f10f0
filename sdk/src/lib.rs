//! # tern-sdk: write migratable apps for tern
//!
//! A tern app is a WebAssembly module (wasm32-wasip1) that the platform can
//! stop between two calls, serialize (memory, globals, tables, WASI context)
//! and resume on another node. This crate gives such an app its shape: an
//! [`App`] value that lives in the module's memory, a handler for HTTP
//! [`Request`]s, hooks around snapshots, and one macro, [`export_app!`], that
//! generates every export of the guest ABI (documented in `ABI.md` next to
//! this crate, so apps in other languages can follow it too).
//!
//! The module stays a plain WASI preview-1 module: no custom host imports,
//! logs go to stderr ([`log`]), time comes from WASI clocks ([`now_ms`]).
//!
//! ## A migratable HTTP app
//!
//! ```
//! use tern_sdk::{export_app, log, App, Request, Response};
//!
//! /// Counts visits; the count moves with the app.
//! struct Visits {
//!     count: u64,
//! }
//!
//! impl App for Visits {
//!     fn init() -> Self {
//!         log::info("visits ready");
//!         Visits { count: 0 }
//!     }
//!
//!     fn handle(&mut self, req: Request) -> Response {
//!         match (req.method.as_str(), req.path.as_str()) {
//!             ("GET", "/") => {
//!                 self.count += 1;
//!                 Response::text(200, format!("visit #{}\n", self.count))
//!             }
//!             _ => Response::not_found(),
//!         }
//!     }
//!
//!     fn on_restore(&mut self) {
//!         log::info!("resumed with {} visits", self.count);
//!     }
//! }
//!
//! export_app!(Visits);
//! # let mut app = Visits::init();
//! # assert_eq!(app.handle(Request::new("GET", "/")).text_body(), Ok("visit #1\n"));
//! ```
//!
//! Build it as a `cdylib` (`[lib] crate-type = ["cdylib"]`) with
//! `cargo build --release --target wasm32-wasip1`; the `.wasm` in
//! `target/wasm32-wasip1/release/` is the app. `ABI.md` explains why no extra
//! linker flags are needed.
//!
//! ## Own numeric exports
//!
//! Functions taking and returning numbers can be exported next to the app and
//! invoked directly by the host (`tern invoke`); [`with_app`] reaches the same
//! instance the handler uses:
//!
//! ```
//! # use tern_sdk::{App, Request, Response};
//! # #[derive(Default)] struct Visits { count: u64 }
//! # impl App for Visits {
//! #     fn init() -> Self { Visits::default() }
//! #     fn handle(&mut self, _: Request) -> Response { Response::not_found() }
//! # }
//! # tern_sdk::export_app!(Visits);
//! #[unsafe(no_mangle)]
//! pub extern "C" fn visits() -> i64 {
//!     tern_sdk::with_app(|app: &mut Visits| app.count as i64)
//! }
//! ```

#![warn(missing_docs)]

pub mod codec;
pub mod log;
mod message;
#[doc(hidden)]
pub mod rt;

pub use codec::{DecodeError, EncodeError};
pub use message::{json_string, percent_decode, Request, Response};

#[doc(hidden)]
pub use rt as __rt;

/// The guest ABI version this SDK implements; `tern_abi_version` returns it.
pub const ABI_VERSION: i32 = 1;

/// A migratable app: one value of this type lives in the module's linear
/// memory and is moved with it.
///
/// Everything the app keeps in `self` (or anywhere in memory) survives a
/// snapshot and restore unchanged. What must not cross a move (open files
/// that the new node will not have, cached wall-clock deadlines, ...) belongs
/// in [`App::on_snapshot`] and [`App::on_restore`].
pub trait App: Sized + 'static {
    /// Builds the app. Called once per instance, from `tern_init` right after
    /// instantiation (or lazily by the first call that needs the app), never
    /// after a restore. For a `Default` type: `fn init() -> Self { Self::default() }`.
    fn init() -> Self;

    /// Answers one request. A panic here traps: the host answers `500` and
    /// the app keeps serving later requests with the state it had when the
    /// panic happened.
    fn handle(&mut self, req: Request) -> Response;

    /// Called periodically by the host with the wall-clock time in
    /// milliseconds since the Unix epoch. The period is the host's choice and
    /// not guaranteed: use `now_ms`, not a count of ticks, to measure time.
    fn tick(&mut self, now_ms: i64) {
        let _ = now_ms;
    }

    /// Called right before a snapshot is taken: flush and close what must not
    /// be captured half-done.
    fn on_snapshot(&mut self) {}

    /// Called right after a restore, before any request; also in the same
    /// instance when it keeps running after a snapshot. Re-open and refresh
    /// what `on_snapshot` closed or what must not cross a move.
    fn on_restore(&mut self) {}
}

/// Runs `f` on the app instance exported by [`export_app!`], constructing it
/// with [`App::init`] first if no call has done so yet. Meant for the app's
/// own `extern "C"` exports.
///
/// # Panics
/// If `A` is not the type given to `export_app!`, or if called while the app
/// is already borrowed (from inside one of its own `App` methods).
#[track_caller]
pub fn with_app<A: App, R>(f: impl FnOnce(&mut A) -> R) -> R {
    rt::user_export(f)
}

/// Wall-clock time in milliseconds since the Unix epoch (WASI
/// `clock_time_get(realtime)`); 0 if the clock is before the epoch.
///
/// For durations use `std::time::Instant` (WASI's monotonic clock): tern keeps
/// it from running backwards across a move, so an `Instant` stored in the app
/// stays meaningful after a restore.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Generates every export of the guest ABI (v1) for an [`App`] type:
/// `tern_abi_version`, `tern_init`, `tern_alloc`, `tern_free`,
/// `tern_handle`, `tern_tick`, `tern_on_snapshot`, `tern_on_restore`, and
/// `_initialize` (see [`export_reactor!`]). Use it once per module.
#[macro_export]
macro_rules! export_app {
    ($app:ty) => {
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn tern_abi_version() -> i32 {
                $crate::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tern_init() {
                $crate::__rt::init::<$app>()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tern_alloc(len: i32) -> i32 {
                $crate::__rt::alloc(len)
            }

            /// # Safety
            /// Host-only: `(ptr, len)` comes from `tern_alloc` or `tern_handle`.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn tern_free(ptr: i32, len: i32) {
                unsafe { $crate::__rt::free(ptr, len) }
            }

            /// # Safety
            /// Host-only: `(ptr, len)` comes from `tern_alloc(len)`.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn tern_handle(ptr: i32, len: i32) -> i64 {
                unsafe { $crate::__rt::handle::<$app>(ptr, len) }
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tern_tick(now_ms: i64) {
                $crate::__rt::tick::<$app>(now_ms)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tern_on_snapshot() {
                $crate::__rt::on_snapshot::<$app>()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tern_on_restore() {
                $crate::__rt::on_restore::<$app>()
            }
        };
        $crate::export_reactor!();
    };
}

/// Exports `_initialize`, which runs the module's static constructors once.
///
/// [`export_app!`] already does this; use it alone in a module that exports
/// only its own functions. Without it, a Rust `cdylib` for wasm32-wasip1 is
/// linked as a WASI *command* and wasm-ld wraps every export so that it runs
/// the constructors before and the destructors after each call (ABI.md,
/// "Building a Rust app").
#[macro_export]
macro_rules! export_reactor {
    () => {
        #[cfg(all(target_family = "wasm", target_os = "wasi"))]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn _initialize() {
                $crate::__rt::initialize()
            }
        };
    };
}
