//! Feeds arbitrary bytes to post-copy's decoders (what nodes read from each
//! other during a post-copy move): the switch-over frame and the page
//! request. They must refuse or accept, never panic, and what they accept
//! must be in range and encode back to the same bytes.
//!
//! Run: `cd runtime/fuzz && cargo +nightly fuzz run postcopy_decode`
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_runtime::snapshot::{PageRequest, PostcopyFrame, MAX_REQUEST_PAGES};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = PostcopyFrame::decode(data) {
        for r in &frame.remote {
            let max = r.byte_size / 4096;
            assert!(r.runs.iter().all(|&(first, n)| n > 0 && first + n <= max));
            assert!(r.runs.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
        }
        assert_eq!(PostcopyFrame::encode(&frame.remote, &frame.state), data);
    }
    if let Ok(req) = PageRequest::decode(data, 1 << 20) {
        assert!(req.pages.len() <= MAX_REQUEST_PAGES);
        assert!(req.pages.windows(2).all(|w| w[0] < w[1]));
        assert!(req.pages.iter().all(|&p| p < 1 << 20));
        assert_eq!(req.encode(), data);
    }
});
