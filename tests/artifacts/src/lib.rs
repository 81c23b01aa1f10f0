//! Where tern's guest programs are: the example apps (`examples/`) and the
//! test guests (`tests/guests/`), compiled for wasm32-wasip1 by this crate's
//! build script, plus the hand-written WAT guests (`tests/guests/wat/`),
//! which the runtime compiles itself, and the C guests (a thin harness in
//! `tests/guests/c/` around a real C library vendored in `vendor/`),
//! compiled with clang for wasm32-wasi.
//!
//! Each `.wasm` has a constant named after its crate (`COUNTER`, `HEAPSTATE`,
//! ...), each `.wat` one named after its file (`RAW_ABI_WAT`, ...), each C
//! guest one named after its harness (`ZLIB_GUEST`), all absolute paths;
//! `EXAMPLES`, `GUESTS`, `C_GUESTS` and `WATS` list them as `(name, path)`.
//!
//! [`tools`] holds the outside programs tests run (Chromium, etcd).

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

mod apt;
pub mod tools;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_built_wasm() {
        assert!(!EXAMPLES.is_empty() && !GUESTS.is_empty() && !C_GUESTS.is_empty());
        for (name, path) in EXAMPLES.iter().chain(GUESTS).chain(C_GUESTS) {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert_eq!(
                &bytes[..8],
                b"\0asm\x01\0\0\0",
                "{name}: {path} is not a wasm module"
            );
        }
    }

    #[test]
    fn every_wat_guest_is_listed() {
        let names: Vec<&str> = WATS.iter().map(|(n, _)| *n).collect();
        for expected in ["globals", "grow", "raw_abi", "table"] {
            assert!(
                names.contains(&expected),
                "{expected}.wat missing from {names:?}"
            );
        }
        for (name, path) in WATS {
            assert!(path.starts_with(WAT_DIR), "{name}");
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.contains("(module"), "{name}");
        }
    }

    #[test]
    fn the_named_constants_are_there() {
        let examples = [COUNTER, KV, TODO, LIFE, SENSOR, LEDGER];
        let guests = [HEAPSTATE, COMMAND];
        assert_eq!(EXAMPLES.len(), examples.len());
        assert_eq!(GUESTS.len(), guests.len());
        assert_eq!(C_GUESTS, &[("zlib_guest", ZLIB_GUEST)]);
        let _ = [GLOBALS_WAT, TABLE_WAT, GROW_WAT, RAW_ABI_WAT];
    }
}
