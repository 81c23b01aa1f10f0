//! Feeds arbitrary bytes to every JSON body a node, the control plane or a
//! client reads from the network: each must refuse or accept, never panic,
//! and what it accepts must survive a round trip.
//!
//! Run: `cd api/fuzz && cargo +nightly fuzz run api_bodies corpus/api_bodies`
//! The corpus also runs under `cargo test` (tern-api's `fuzz_corpus_never_panics`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tern_api::types::decode_every_body(data);
});
