use super::*;
use crate::snapshot::MAX_MEMORY_BYTES;

/// A memory to receive into, growable as an instance's is.
struct Mem {
    index: u32,
    bytes: Vec<u8>,
    prepared: u32,
}

impl PageSink for Mem {
    fn prepare(&mut self, memory: u32, byte_size: u64, _pages: usize) -> Result<(), String> {
        if memory != self.index {
            return Err(format!("no memory {memory}"));
        }
        if byte_size as usize > self.bytes.len() {
            self.bytes.resize(byte_size as usize, 0);
        }
        self.prepared += 1;
        Ok(())
    }
    fn memory(&mut self, _memory: u32) -> &mut [u8] {
        &mut self.bytes
    }
}

fn sink() -> Mem {
    Mem {
        index: 1,
        bytes: Vec::new(),
        prepared: 0,
    }
}

/// A memory of `pages` pages, one in three all zero, the rest patterned
/// from `seed`.
fn memory(pages: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut mem = vec![0u8; pages * PAGE_SIZE];
    for (p, page) in mem.chunks_exact_mut(PAGE_SIZE).enumerate() {
        if p % 3 == 1 {
            continue;
        }
        for b in page.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    mem
}

/// Feeds `bytes` in pieces of the given sizes (cycled).
fn feed_in(
    stream: &mut PageStream,
    bytes: &[u8],
    sizes: &[usize],
    to: &mut Mem,
) -> Result<(), SnapshotError> {
    let mut at = 0;
    for &n in sizes.iter().cycle() {
        if at == bytes.len() {
            return Ok(());
        }
        let end = (at + n).min(bytes.len());
        stream.feed(&bytes[at..end], to)?;
        at = end;
    }
    Ok(())
}

const LIMIT: u64 = 64 << 20;

#[test]
fn a_slice_lands_in_the_memory_whatever_pieces_it_arrives_in() {
    let src = memory(40, 7);
    let slice = encode_nonzero(1, &src, 0, 40);
    assert_eq!(slice.pages, 40 - 13, "every third page is zero and skipped");
    let cases: &[&[usize]] = &[
        &[usize::MAX],
        &[1],
        &[7, 1000, 3, 4096],
        &[1023],
        &[1025, 17],
        &[16 << 10],
        &[29, 1],
    ];
    for sizes in cases {
        let mut to = sink();
        let mut stream = PageStream::new(LIMIT);
        feed_in(&mut stream, slice.bytes(), sizes, &mut to).unwrap();
        assert_eq!(stream.finish().unwrap(), 27, "pieces {sizes:?}");
        assert_eq!(to.bytes, src, "pieces {sizes:?}");
        assert_eq!(to.prepared, 1);
    }
}

#[test]
fn a_range_is_cut_to_the_memory_and_its_size_travels() {
    let src = memory(10, 3);
    let slice = encode_nonzero(1, &src, 8, 1000);
    let mut to = sink();
    let mut stream = PageStream::new(LIMIT);
    stream.feed(slice.bytes(), &mut to).unwrap();
    assert_eq!(stream.finish().unwrap(), 2);
    assert_eq!(
        to.bytes.len(),
        src.len(),
        "the receiver grows to the sender's size"
    );
    assert_eq!(&to.bytes[8 * PAGE_SIZE..], &src[8 * PAGE_SIZE..]);
    assert!(to.bytes[..8 * PAGE_SIZE].iter().all(|&b| b == 0));
    // An empty slice still carries the size.
    let empty = encode_nonzero(1, &vec![0u8; 3 * PAGE_SIZE], 0, 3);
    let mut to = sink();
    let mut stream = PageStream::new(LIMIT);
    stream.feed(empty.bytes(), &mut to).unwrap();
    assert_eq!(stream.finish().unwrap(), 0);
    assert_eq!(to.bytes.len(), 3 * PAGE_SIZE);
}

#[test]
fn the_sums_are_xxh3_whichever_way_they_were_computed() {
    let src = memory(9, 11);
    let slice = encode_nonzero(1, &src, 0, 9);
    let b = slice.bytes();
    let head_len = FIXED + slice.pages as usize * 8 + HEAD_SUM;
    let data = &b[head_len..b.len() - DATA_SUM];
    let sum = u128::from_le_bytes(b[b.len() - DATA_SUM..].try_into().unwrap());
    assert_eq!(sum, xxhash_rust::xxh3::xxh3_128(data));
    let head_sum = u64::from_le_bytes(b[head_len - HEAD_SUM..head_len].try_into().unwrap());
    assert_eq!(head_sum, xxh3_64(&b[..head_len - HEAD_SUM]));
}

#[test]
fn a_chunk_of_dirty_pages_encodes_to_the_same_slice() {
    let src = memory(12, 5);
    let pages: Vec<u64> = vec![0, 2, 3, 11];
    let chunk =
        super::super::PageChunk::decode(&super::super::PageChunk::encode_from(1, &src, &pages))
            .unwrap();
    let slice = encode_chunk(&chunk);
    let mut to = sink();
    let mut stream = PageStream::new(LIMIT);
    stream.feed(slice.bytes(), &mut to).unwrap();
    assert_eq!(stream.finish().unwrap(), 4);
    for p in 0..12usize {
        let got = &to.bytes[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        if pages.contains(&(p as u64)) {
            assert_eq!(got, &src[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
        } else {
            assert!(got.iter().all(|&b| b == 0), "page {p} was not sent");
        }
    }
}

#[test]
fn listed_pages_travel_zero_or_not_and_nothing_else() {
    let src = memory(12, 9);
    // Page 1 is all zero (it still goes: a round must zero it on the
    // target); 12 and 40 lie past the end, 3 is out of order and 5 twice.
    let listed = [0u64, 1, 5, 5, 3, 7, 12, 40];
    let slice = encode_listed(1, &src, &listed);
    assert_eq!(slice.pages, 4);
    let mut to = Mem {
        index: 1,
        bytes: vec![0xee; 12 * PAGE_SIZE],
        prepared: 0,
    };
    let mut stream = PageStream::new(LIMIT);
    feed_in(&mut stream, slice.bytes(), &[5000, 3], &mut to).unwrap();
    assert_eq!(stream.finish().unwrap(), 4);
    for p in 0..12usize {
        let got = &to.bytes[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        if [0, 1, 5, 7].contains(&p) {
            assert_eq!(got, &src[p * PAGE_SIZE..(p + 1) * PAGE_SIZE], "page {p}");
        } else {
            assert!(got.iter().all(|&b| b == 0xee), "page {p} was written");
        }
    }
    // Nothing listed: an empty slice that still carries the size.
    let empty = encode_listed(1, &src, &[]);
    assert_eq!(empty.pages, 0);
    let mut to = sink();
    let mut stream = PageStream::new(LIMIT);
    stream.feed(empty.bytes(), &mut to).unwrap();
    assert_eq!(stream.finish().unwrap(), 0);
    assert_eq!(to.bytes.len(), src.len());
}

#[test]
fn every_flipped_byte_is_caught() {
    let src = memory(3, 13);
    let slice = encode_nonzero(1, &src, 0, 3);
    let bytes = slice.bytes().to_vec();
    for pos in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x20;
        let mut to = sink();
        let mut stream = PageStream::new(LIMIT);
        let outcome = stream
            .feed(&bad, &mut to)
            .and_then(|()| stream.finish().map(|_| ()));
        assert!(outcome.is_err(), "flip at {pos} not caught");
    }
}

#[test]
fn a_short_or_long_slice_is_refused() {
    let src = memory(4, 17);
    let slice = encode_nonzero(1, &src, 0, 4);
    let bytes = slice.bytes();
    for cut in [0, 5, FIXED, FIXED + 9, bytes.len() - 17, bytes.len() - 1] {
        let mut stream = PageStream::new(LIMIT);
        stream.feed(&bytes[..cut], &mut sink()).unwrap();
        assert!(
            matches!(stream.finish(), Err(SnapshotError::Truncated { .. })),
            "cut at {cut}"
        );
    }
    let mut long = bytes.to_vec();
    long.push(0);
    let mut stream = PageStream::new(LIMIT);
    assert!(stream.feed(&long, &mut sink()).is_err());
}

/// A head with its sum made right again after an edit.
fn resum(head: &mut [u8]) {
    let end = head.len() - HEAD_SUM;
    let sum = xxh3_64(&head[..end]);
    head[end..].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn a_hostile_head_is_refused_before_any_page_is_written() {
    let src = memory(6, 19);
    let slice = encode_nonzero(1, &src, 0, 6);
    let head_len = FIXED + slice.pages as usize * 8 + HEAD_SUM;
    type Edit = fn(&mut Vec<u8>);
    let edits: &[(&str, Edit)] = &[
        ("unsorted", |b| {
            let (a, c) = (FIXED, FIXED + 8);
            let x = b[a..a + 8].to_vec();
            let y = b[c..c + 8].to_vec();
            b[a..a + 8].copy_from_slice(&y);
            b[c..c + 8].copy_from_slice(&x);
        }),
        ("outside the memory", |b| {
            b[16..24].copy_from_slice(&(2 * PAGE_SIZE as u64).to_le_bytes())
        }),
        ("too large a memory", |b| {
            b[16..24].copy_from_slice(&(MAX_MEMORY_BYTES + PAGE_SIZE as u64).to_le_bytes())
        }),
        ("more pages than the memory holds", |b| {
            b[24..28].copy_from_slice(&4000u32.to_le_bytes())
        }),
        ("another memory", |b| {
            b[12..16].copy_from_slice(&9u32.to_le_bytes())
        }),
        ("another version", |b| {
            b[8..12].copy_from_slice(&1u32.to_le_bytes())
        }),
    ];
    for (what, edit) in edits {
        let mut bytes = slice.bytes().to_vec();
        edit(&mut bytes);
        resum(&mut bytes[..head_len]);
        let mut to = sink();
        let mut stream = PageStream::new(LIMIT);
        assert!(stream.feed(&bytes, &mut to).is_err(), "{what} accepted");
        assert!(to.bytes.iter().all(|&b| b == 0), "{what}: pages written");
    }
    // More than the receiver's limit.
    let mut stream = PageStream::new(3 * PAGE_SIZE as u64);
    assert!(stream.feed(slice.bytes(), &mut sink()).is_err());
}

/// What the fuzz target does with one input: the first byte picks the
/// size of the pieces, the rest is fed to a stream writing into a memory of
/// at most 64 pages. Whether the slice was accepted, and its page count.
fn fuzz_one(data: &[u8]) -> Option<u64> {
    let (&split, bytes) = data.split_first()?;
    let mut to = Mem {
        index: 0,
        bytes: Vec::new(),
        prepared: 0,
    };
    let mut stream = PageStream::new(1 << 20);
    for chunk in bytes.chunks(split as usize + 1) {
        stream.feed(chunk, &mut to).ok()?;
    }
    let pages = stream.finish().ok()?;
    assert!(to.bytes.len() <= MAX_MEMORY_BYTES as usize);
    Some(pages)
}

#[test]
fn page_stream_fuzz_corpus_never_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/page_stream");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus dir") {
        let path = entry.unwrap().path();
        let got = fuzz_one(&std::fs::read(&path).unwrap());
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected = match name.as_str() {
            "seed-four-pages" | "seed-four-pages-small-pieces" => Some(4),
            "seed-empty" => Some(0),
            "seed-version-1" => None,
            _ => got,
        };
        assert_eq!(got, expected, "{name}");
        n += 1;
    }
    assert!(n >= 4, "fuzz corpus missing at {}", dir.display());
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        rng_seed: proptest::test_runner::RngSeed::Fixed(5),
        cases: 256,
        ..Default::default()
    })]

    /// Any bytes changed anywhere in a valid slice, in any pieces: refused
    /// or accepted, never a panic, and never accepted with a page changed.
    #[test]
    fn a_damaged_slice_is_never_accepted(
        edits in proptest::collection::vec((0usize..20_000, 1u8..=255), 1..4),
        split in 0u8..=255,
    ) {
        let src = memory(6, 29);
        let slice = encode_nonzero(0, &src, 0, 6);
        let mut data = vec![split];
        data.extend_from_slice(slice.bytes());
        for (at, x) in &edits {
            let at = 1 + at % (data.len() - 1);
            data[at] ^= x;
        }
        proptest::prop_assert_eq!(fuzz_one(&data), None);
    }
}
