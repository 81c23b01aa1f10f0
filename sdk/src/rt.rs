//! The machinery behind [`export_app!`](crate::export_app): the one app
//! instance and the bodies of the ABI exports. Not a public API.

use crate::{log, App, Request, Response};
use std::any::Any;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A global that exports can reach. wasm32-wasip1 has one thread and the host
/// never nests calls into a guest, so plain interior mutability is enough;
/// [`BORROW_FRAME`] catches the only way to nest (an `App` method calling
/// [`crate::with_app`]).
struct Global<T>(UnsafeCell<T>);

// SAFETY: only touched from export bodies, which the host calls one at a time
// on the guest's single thread.
unsafe impl<T> Sync for Global<T> {}

/// The app instance, type-erased so that [`crate::with_app`] can reach it
/// without knowing which type `export_app!` was given.
static APP: Global<Option<Box<dyn Any>>> = Global(UnsafeCell::new(None));

/// While a `&mut` to the app is live: the stack address of the frame that
/// holds it; 0 otherwise. A call that traps leaves it set, so it is not a
/// plain flag: a nested borrow runs deeper on the (downward-growing) stack
/// than the holder, while a new call from the host after a trap starts at the
/// top again (the host restores the stack pointer, ABI.md) and may proceed.
/// SDK exports, which the host never nests, also clear it on entry, and so
/// does the panic hook.
static BORROW_FRAME: AtomicUsize = AtomicUsize::new(0);

/// Constructors have run (see [`initialize`]).
static CTORS_DONE: AtomicBool = AtomicBool::new(false);

/// The panic hook is installed.
static HOOK_SET: AtomicBool = AtomicBool::new(false);

#[cfg(all(target_family = "wasm", target_os = "wasi"))]
unsafe extern "C" {
    /// Synthesized by wasm-ld: runs the module's static constructors. Naming
    /// it here is what stops wasm-ld from wrapping every export in
    /// constructor/destructor calls ("command mode"); see ABI.md.
    fn __wasm_call_ctors();
}

/// Body of `_initialize`: runs static constructors exactly once per instance
/// (a restored instance has the flag set in its memory and skips them).
pub fn initialize() {
    if !CTORS_DONE.swap(true, Ordering::Relaxed) {
        #[cfg(all(target_family = "wasm", target_os = "wasi"))]
        // SAFETY: called once, before any other guest code relies on
        // constructed statics.
        unsafe {
            __wasm_call_ctors()
        };
    }
}

/// Start of every SDK export: a fresh host call.
fn enter() {
    BORROW_FRAME.store(0, Ordering::Relaxed);
    prepare();
}

/// Constructors run and panic hook installed (once per instance).
fn prepare() {
    initialize();
    if !HOOK_SET.swap(true, Ordering::Relaxed) {
        std::panic::set_hook(Box::new(|info| {
            // The call is about to trap: the app is no longer borrowed.
            BORROW_FRAME.store(0, Ordering::Relaxed);
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string payload)");
            match info.location() {
                Some(at) => log::write(
                    log::Level::Error,
                    &format!("panic at {}:{}: {msg}", at.file(), at.line()),
                ),
                None => log::write(log::Level::Error, &format!("panic: {msg}")),
            }
        }));
    }
}

/// End of every SDK export: nothing of the call may stay in a buffer.
fn leave() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Runs `f` on the app, constructing it first if needed.
#[track_caller]
fn with_app<A: App, R>(f: impl FnOnce(&mut A) -> R) -> R {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let holder = BORROW_FRAME.load(Ordering::Relaxed);
    if holder != 0 && here < holder {
        panic!("tern_sdk::with_app called while the app is already borrowed (from inside an App method?)");
    }
    BORROW_FRAME.store(here, Ordering::Relaxed);
    // SAFETY: BORROW_FRAME guarantees no other reference into APP is live.
    let slot = unsafe { &mut *APP.0.get() };
    if slot.is_none() {
        *slot = Some(Box::new(A::init()));
    }
    let Some(app) = slot.as_mut().and_then(|b| b.downcast_mut::<A>()) else {
        panic!(
            "tern_sdk::with_app::<{}>: the exported app has another type",
            std::any::type_name::<A>()
        );
    };
    let r = f(app);
    BORROW_FRAME.store(0, Ordering::Relaxed);
    r
}

/// Body of `tern_init`.
pub fn init<A: App>() {
    enter();
    with_app::<A, ()>(|_| ());
    leave();
}

/// Body of `tern_alloc`: `len` bytes, alignment 1; 0 if they cannot be had.
pub fn alloc(len: i32) -> i32 {
    let len = len as u32 as usize;
    if len == 0 {
        // Dangling but non-zero; `handle` and `free` never dereference it.
        return 1;
    }
    match std::alloc::Layout::from_size_align(len, 1) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) => unsafe { std::alloc::alloc(layout) as usize as i32 },
        Err(_) => 0,
    }
}

/// Body of `tern_free`: frees a buffer from `tern_alloc` or `tern_handle`.
///
/// # Safety
/// `(ptr, len)` must be a live buffer handed out by `alloc` or `handle`.
pub unsafe fn free(ptr: i32, len: i32) {
    let len = len as u32 as usize;
    if ptr == 0 || len == 0 {
        return;
    }
    // SAFETY: by the caller's contract the buffer was allocated with this
    // layout (size len, align 1: `Box<[u8]>` uses the same one).
    unsafe {
        std::alloc::dealloc(
            ptr as u32 as usize as *mut u8,
            std::alloc::Layout::from_size_align_unchecked(len, 1),
        )
    };
}

/// Body of `tern_handle`: decode, free the request, handle, encode, pack.
///
/// # Safety
/// `(ptr, len)` must be a buffer from `tern_alloc(len)` that the host filled.
pub unsafe fn handle<A: App>(ptr: i32, len: i32) -> i64 {
    enter();
    let len_usize = len as u32 as usize;
    let decoded = if len_usize == 0 {
        Request::decode(&[])
    } else {
        // SAFETY: by the caller's contract the buffer is live and filled.
        let bytes =
            unsafe { std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len_usize) };
        let decoded = Request::decode(bytes);
        // SAFETY: the guest owns the request buffer from here on; `decoded`
        // holds copies, not borrows.
        unsafe { free(ptr, len) };
        decoded
    };
    let resp = match decoded {
        Ok(req) => with_app::<A, _>(|app| app.handle(req)),
        Err(e) => {
            log::write(
                log::Level::Warn,
                &format!("tern-sdk: malformed request from the host: {e}"),
            );
            Response::text(400, format!("malformed request: {e}\n"))
        }
    };
    let packed = match resp.try_encode() {
        Ok(bytes) => {
            let bytes = bytes.into_boxed_slice();
            let len = bytes.len() as u64;
            let ptr = Box::into_raw(bytes) as *mut u8 as usize as u64;
            ((ptr << 32) | len) as i64
        }
        Err(e) => {
            log::write(
                log::Level::Error,
                &format!("tern-sdk: cannot encode the response: {e}"),
            );
            0
        }
    };
    leave();
    packed
}

/// Body of `tern_tick`.
pub fn tick<A: App>(now_ms: i64) {
    enter();
    with_app::<A, _>(|app| app.tick(now_ms));
    leave();
}

/// Body of `tern_on_snapshot`.
pub fn on_snapshot<A: App>() {
    enter();
    with_app::<A, _>(|app| app.on_snapshot());
    leave();
}

/// Body of `tern_on_restore`.
pub fn on_restore<A: App>() {
    enter();
    with_app::<A, _>(|app| app.on_restore());
    leave();
}

/// Body of a user's own export, via [`crate::with_app`].
#[track_caller]
pub(crate) fn user_export<A: App, R>(f: impl FnOnce(&mut A) -> R) -> R {
    prepare();
    let r = with_app::<A, R>(f);
    leave();
    r
}
