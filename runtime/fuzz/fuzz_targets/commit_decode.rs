//! Feeds arbitrary bytes to the stop-and-copy frame decoder (what a target
//! node reads from the network at a migration's commit): it must refuse or
//! accept, never panic, and what it accepts must survive a round trip.
//!
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run commit_decode corpus/commit_decode`
//! The corpus also runs under `cargo test` (runtime's `commit_fuzz_corpus_never_panics`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_runtime::snapshot::CommitFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = CommitFrame::decode(data) {
        let again = CommitFrame::encode(&frame.chunks, &frame.state);
        let back = CommitFrame::decode(&again).expect("a re-encoded frame decodes");
        assert_eq!(back.chunks, frame.chunks);
        assert_eq!(back.state.body, frame.state.body);
    }
});
