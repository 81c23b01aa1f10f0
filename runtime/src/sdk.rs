//! The host side of the guest ABI (`sdk/ABI.md`): requests into an SDK
//! app's handler, responses out, ticks, and the lifecycle calls.

use wasmtime::Val;

use crate::error::{Error, Result};
use crate::instance::Instance;

/// The guest ABI version this runtime speaks: the SDK's, by definition.
pub use tern_sdk::ABI_VERSION;
pub use tern_sdk::{Request, Response};

/// Whether a module is an SDK app, and which version it speaks.
pub fn abi_version(inst: &mut Instance) -> Result<Option<i32>> {
    if !inst.has_export("tern_abi_version") {
        return Ok(None);
    }
    let v = inst.call_raw("tern_abi_version", &[])?;
    match v.first() {
        Some(Val::I32(n)) => Ok(Some(*n)),
        _ => Err(Error::Other(
            "`tern_abi_version` must return one i32".into(),
        )),
    }
}

/// Checks an SDK app's ABI version and exports. Plain WASI modules pass.
pub fn check_app(inst: &mut Instance) -> Result<bool> {
    let Some(v) = abi_version(inst)? else {
        return Ok(false);
    };
    if v != ABI_VERSION {
        return Err(Error::Other(format!(
            "app speaks tern guest ABI v{v}; this node speaks v{ABI_VERSION}: upgrade the node or rebuild the app with an SDK for v{ABI_VERSION}"
        )));
    }
    use wasmtime::ValType::{I32, I64};
    let want: [(&str, &[wasmtime::ValType], &[wasmtime::ValType]); 3] = [
        ("tern_alloc", &[I32], &[I32]),
        ("tern_handle", &[I32, I32], &[I64]),
        ("tern_free", &[I32, I32], &[]),
    ];
    for (name, params, results) in want {
        let (p, r) = inst.func_type(name).map_err(|_| {
            Error::Other(format!(
                "app exports `tern_abi_version` but not `{name}`: it cannot serve requests"
            ))
        })?;
        let same = |a: &[wasmtime::ValType], b: &[wasmtime::ValType]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.matches(y))
        };
        if !same(&p, params) || !same(&r, results) {
            return Err(Error::Other(format!(
                "export `{name}` has type {p:?} -> {r:?}, expected {params:?} -> {results:?}"
            )));
        }
    }
    Ok(true)
}

/// Runs `tern_init` on a fresh SDK app (after `_initialize`, which
/// [`Instance::start`] ran).
pub fn init(inst: &mut Instance) -> Result<()> {
    if inst.has_export("tern_init") {
        inst.call_raw("tern_init", &[])?;
    }
    Ok(())
}

/// Sends one request through the app's handler. Never fails: a trap, a
/// timeout or a malformed answer becomes a 500 or 502 response, and the app
/// stays usable. An interrupt ([`crate::sandbox`]) is a 500 too, but an
/// app whose handler was cut off takes no more requests.
pub fn handle(inst: &mut Instance, req: &Request) -> Response {
    match try_handle(inst, req) {
        Ok(resp) => resp,
        Err((status, msg)) => Response::text(status, format!("{msg}\n")),
    }
}

fn try_handle(inst: &mut Instance, req: &Request) -> std::result::Result<Response, (u16, String)> {
    let bytes = req
        .try_encode()
        .map_err(|e| (400, format!("request cannot be encoded: {e}")))?;
    let len = i32::try_from(bytes.len()).map_err(|_| (413, "request too large".to_string()))?;
    let fail = |e: Error| (500, format!("app failed: {e}"));
    let ptr = match inst
        .call_raw("tern_alloc", &[Val::I32(len)])
        .map_err(fail)?
        .first()
    {
        Some(Val::I32(p)) => *p as u32,
        _ => return Err((500, "tern_alloc returned no pointer".into())),
    };
    if ptr == 0 {
        return Err((
            500,
            "app could not allocate the request (tern_alloc returned 0)".into(),
        ));
    }
    inst.write_memory(ptr as u64, &bytes).map_err(|_| {
        (
            500,
            "tern_alloc returned a buffer outside memory".to_string(),
        )
    })?;
    let r = match inst
        .call_raw("tern_handle", &[Val::I32(ptr as i32), Val::I32(len)])
        .map_err(fail)?
        .first()
    {
        Some(Val::I64(r)) => *r as u64,
        _ => return Err((502, "tern_handle returned no response".into())),
    };
    if r == 0 {
        return Err((502, "app returned no response".into()));
    }
    let (rptr, rlen) = ((r >> 32) as u32, (r & 0xffff_ffff) as u32);
    let out = inst
        .read_memory(rptr as u64, rlen as u64)
        .map_err(|_| (502, "app response lies outside its memory".to_string()))?;
    inst.call_raw("tern_free", &[Val::I32(rptr as i32), Val::I32(rlen as i32)])
        .map_err(fail)?;
    let mut resp =
        Response::decode(&out).map_err(|e| (502, format!("app response is malformed: {e}")))?;
    if !(100..=999).contains(&resp.status) {
        return Err((502, format!("app answered status {}", resp.status)));
    }
    resp.headers.retain(|(k, _)| {
        let k = k.to_ascii_lowercase();
        k != "content-length" && k != "transfer-encoding" && k != "connection"
    });
    Ok(resp)
}

/// Calls `tern_tick(now_ms)` if the app has it.
pub fn tick(inst: &mut Instance, now_ms: i64) -> Result<()> {
    if inst.has_export("tern_tick") {
        inst.call_raw("tern_tick", &[Val::I64(now_ms)])?;
    }
    Ok(())
}
