//! Feeds arbitrary bytes to the page-chunk decoder (what a target node reads
//! from the network in every pre-copy round): it must refuse or accept, never
//! panic, and what it accepts must be in range and encode back to the same bytes.
//!
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run page_chunk_decode corpus/page_chunk_decode`
//! The corpus also runs under `cargo test` (runtime's `page_chunk_fuzz_corpus_never_panics`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_runtime::snapshot::{PageChunk, PageChunkRef};

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = PageChunkRef::decode(data) {
        assert_eq!(chunk.data.len(), chunk.pages.len() * 4096);
        assert!(chunk.pages.iter().all(|&p| p < chunk.byte_size / 4096));
        let owned = PageChunk {
            memory: chunk.memory,
            byte_size: chunk.byte_size,
            pages: chunk.pages.clone(),
            data: chunk.data.to_vec(),
        };
        assert_eq!(owned.encode(), data);
    }
});
