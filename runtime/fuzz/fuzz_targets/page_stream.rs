//! Feeds arbitrary bytes to the page-slice stream (what a migration's
//! target writes into an arriving app's memory as the bytes come off the
//! network), in pieces whose size the first byte picks: it must refuse or
//! accept, never panic or write outside the memory, and what it accepts
//! must have written exactly the pages its head named.
//!
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run page_stream corpus/page_stream`
//! The corpus also runs under `cargo test` (runtime's `page_stream_fuzz_corpus_never_panics`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_runtime::snapshot::{PageSink, PageStream};

/// One memory of at most 64 pages, as an instance's would be.
struct Memory(Vec<u8>);

impl PageSink for Memory {
    fn prepare(&mut self, memory: u32, byte_size: u64) -> Result<(), String> {
        if memory != 0 || byte_size > 64 * 4096 {
            return Err("no such memory".into());
        }
        if byte_size as usize > self.0.len() {
            self.0.resize(byte_size as usize, 0);
        }
        Ok(())
    }
    fn memory(&mut self, _memory: u32) -> &mut [u8] {
        &mut self.0
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let piece = split as usize + 1;
    let mut memory = Memory(Vec::new());
    let mut stream = PageStream::new(1 << 20);
    for chunk in bytes.chunks(piece) {
        if stream.feed(chunk, &mut memory).is_err() {
            return;
        }
    }
    if let Ok(pages) = stream.finish() {
        assert!(pages <= 64);
        assert!(memory.0.len() <= 64 * 4096);
    }
});
