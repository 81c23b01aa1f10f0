//! Format tests: round trips, determinism, and every kind of damage.

use super::*;
use proptest::prelude::*;

/// A memory of `pages` 4 KiB pages with the given (page, byte) writes.
pub(super) fn memory_with(pages: usize, writes: &[(usize, u8)]) -> Vec<u8> {
    let mut m = vec![0u8; pages * PAGE_SIZE];
    for &(p, b) in writes {
        let p = p % pages;
        m[p * PAGE_SIZE + (b as usize * 7) % PAGE_SIZE] = b.max(1);
    }
    m
}

pub(super) fn parts(mem: &[u8], compress: bool, globals: Vec<GlobalState>) -> SnapshotParts {
    SnapshotParts {
        meta: Meta {
            module_sha256: sha256(b"module"),
            tern_version: "test".into(),
            ..Default::default()
        },
        limits: LimitsState::default(),
        wasi: WasiState {
            args: vec!["app".into()],
            env: vec![("K".into(), "V".into())],
            preopens: vec![],
            monotonic_ns: 42,
            random_seed: None,
        },
        globals,
        tables: vec![TableState {
            index: 0,
            size: 4,
            runs: vec![(1, vec![Some(3), Some(5)])],
        }],
        memories: vec![capture_memory(0, mem, None, compress)],
        module: Some(b"module".to_vec()),
        files: vec![],
    }
}

/// Rebuilds the memory from a snapshot.
fn memory_of(s: &Snapshot) -> Vec<u8> {
    let m = &s.body.memories[0];
    let mut out = vec![0u8; m.byte_size as usize];
    for r in &m.runs {
        let d = s.run_data(r).unwrap();
        out[r.first_page as usize * PAGE_SIZE..][..d.len()].copy_from_slice(&d);
    }
    out
}

fn value_strategy() -> impl Strategy<Value = super::Value> {
    prop_oneof![
        any::<i32>().prop_map(super::Value::I32),
        any::<i64>().prop_map(super::Value::I64),
        any::<u32>().prop_map(super::Value::F32),
        any::<u64>().prop_map(super::Value::F64),
        any::<u128>().prop_map(super::Value::V128),
        Just(super::Value::NullRef),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn round_trip(wasm_pages in 1usize..5, writes in proptest::collection::vec((0usize..80, any::<u8>()), 0..40),
                  compress in any::<bool>(), values in proptest::collection::vec(value_strategy(), 0..6)) {
        let mem = memory_with(wasm_pages * 16, &writes);
        let globals: Vec<GlobalState> = values.into_iter().enumerate().map(|(i, v)| GlobalState { index: i as u32, value: v }).collect();
        let snap = Snapshot::encode(parts(&mem, compress, globals.clone()));
        let back = Snapshot::from_bytes(snap.as_bytes().to_vec()).unwrap();
        prop_assert_eq!(&back.body, &snap.body);
        prop_assert_eq!(&back.body.globals, &globals);
        prop_assert_eq!(memory_of(&back), mem.clone());
        back.verify_image().unwrap();
        // Deterministic: the same state gives the same bytes.
        let again = Snapshot::encode(parts(&mem, compress, globals));
        prop_assert_eq!(again.as_bytes(), snap.as_bytes());
    }

    #[test]
    fn any_flipped_byte_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mem = memory_with(32, &[(1, 9), (5, 200), (6, 3), (30, 77)]);
        let snap = Snapshot::encode(parts(&mem, false, vec![GlobalState { index: 0, value: super::Value::I64(-5) }]));
        let mut bytes = snap.as_bytes().to_vec();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // Either refused outright, or (a flip in padding the checksums do not
        // cover) decodes to exactly the same state.
        match Snapshot::from_bytes(bytes) {
            Err(_) => {}
            Ok(back) => {
                prop_assert_eq!(&back.body, &snap.body);
                prop_assert_eq!(memory_of(&back), mem);
            }
        }
    }

    #[test]
    fn truncation_is_detected(cut in 1usize..10_000) {
        let mem = memory_with(32, &[(2, 1), (9, 2)]);
        let snap = Snapshot::encode(parts(&mem, false, vec![]));
        let bytes = snap.as_bytes();
        let keep = bytes.len().saturating_sub(cut);
        let err = Snapshot::from_bytes(bytes[..keep].to_vec()).unwrap_err();
        let truncated = matches!(err, SnapshotError::Truncated { .. });
        prop_assert!(truncated, "{}", err);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000), with_magic in any::<bool>()) {
        let mut bytes = bytes;
        if with_magic && bytes.len() >= 12 {
            bytes[..8].copy_from_slice(MAGIC);
            bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        }
        let _ = Snapshot::from_bytes(bytes);
    }
}

#[test]
fn zero_pages_are_not_stored() {
    let mut mem = vec![0u8; 1024 * PAGE_SIZE];
    mem[100 * PAGE_SIZE] = 1;
    mem[900 * PAGE_SIZE + 5] = 2;
    let cap = capture_memory(0, &mem, None, false);
    assert_eq!(cap.state.runs.iter().map(|r| r.pages).sum::<u64>(), 2);
    assert_eq!(cap.image.len(), 2 * PAGE_SIZE);
}

#[test]
fn small_gaps_are_coalesced_into_one_run() {
    let mut mem = vec![0u8; 64 * PAGE_SIZE];
    for p in [10, 12, 15] {
        mem[p * PAGE_SIZE] = 1;
    }
    let cap = capture_memory(0, &mem, None, false);
    assert_eq!(cap.state.runs.len(), 1);
    assert_eq!(
        (cap.state.runs[0].first_page, cap.state.runs[0].pages),
        (10, 6)
    );
}

#[test]
fn versions_and_magic_are_checked_first() {
    let snap = Snapshot::encode(parts(&memory_with(16, &[(1, 1)]), false, vec![]));
    let mut newer = snap.as_bytes().to_vec();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let e = Snapshot::from_bytes(newer).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::NewerVersion {
                found: 3,
                supported: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("upgrade tern"), "{e}");

    let mut older = snap.as_bytes().to_vec();
    older[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        Snapshot::from_bytes(older).unwrap_err(),
        SnapshotError::OlderVersion { .. }
    ));

    let e = Snapshot::from_bytes(b"\0asm\x01\0\0\0 not a snapshot at all, a module".to_vec())
        .unwrap_err();
    assert!(matches!(e, SnapshotError::BadMagic), "{e}");
    assert!(matches!(
        Snapshot::from_bytes(vec![]).unwrap_err(),
        SnapshotError::BadMagic
    ));
}

#[test]
fn image_damage_is_caught_by_the_image_checksum() {
    let snap = Snapshot::encode(parts(&memory_with(16, &[(3, 50)]), false, vec![]));
    let mut bytes = snap.as_bytes().to_vec();
    bytes[IMAGE_OFFSET as usize + PAGE_SIZE / 2] ^= 0xff;
    let e = Snapshot::from_bytes(bytes).unwrap_err();
    assert!(
        matches!(
            e,
            SnapshotError::Checksum {
                what: "memory image"
            }
        ),
        "{e}"
    );
}

#[test]
fn fuzz_corpus_never_panics() {
    // The cargo-fuzz corpus of the decoder runs here too.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/snapshot_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus dir") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        // What the fuzz target does with what it decodes.
        if let Ok(snap) = Snapshot::from_bytes(bytes) {
            let _ = snap.verify_image();
            for m in &snap.body.memories {
                for r in &m.runs {
                    let _ = snap.run_data(r);
                }
            }
        }
        n += 1;
    }
    assert!(n > 0, "empty fuzz corpus at {}", dir.display());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    /// Capturing straight into the snapshot's buffer (what an instance
    /// does) gives the same bytes as capturing apart and encoding, for one
    /// memory or two, raw or compressed.
    #[test]
    fn capture_into_the_buffer_equals_encode(
        wasm_pages in 1usize..4,
        writes in proptest::collection::vec((0usize..64, 1u8..=255), 0..30),
        second in proptest::option::of(1usize..3),
        compress in any::<bool>(),
    ) {
        // Memories are whole Wasm pages (16 × 4 KiB).
        let mems: Vec<Vec<u8>> = std::iter::once(memory_with(wasm_pages * 16, &writes))
            .chain(second.map(|p| memory_with(p * 16, &writes[..writes.len() / 2])))
            .collect();
        let mut apart = parts(&mems[0], compress, vec![]);
        apart.memories = mems
            .iter()
            .enumerate()
            .map(|(i, m)| capture_memory(i as u32, m, None, compress))
            .collect();
        let expected = Snapshot::encode(apart);

        let mut images = Snapshot::image_writer(0);
        let states: Vec<MemoryState> = mems
            .iter()
            .enumerate()
            .map(|(i, m)| images.capture(i as u32, m, None, compress))
            .collect();
        let mut rest = parts(&mems[0], compress, vec![]);
        rest.memories.clear();
        let got = Snapshot::encode_captured(rest, states, images);
        prop_assert!(got.as_bytes() == expected.as_bytes());
        let decoded = Snapshot::from_bytes(got.as_bytes().to_vec());
        prop_assert!(decoded.is_ok(), "{:?}", decoded.err());
    }
}

/// A commit frame: a chunk per memory and a state snapshot without pages.
fn commit_frame(pages: &[u64], globals: usize) -> (Vec<PageChunk>, Snapshot) {
    let mem = memory_with(32, &[(1, 9), (7, 200)]);
    let chunks = vec![
        PageChunk::decode(&PageChunk::encode_from(0, &mem, pages)).unwrap(),
        PageChunk::decode(&PageChunk::encode_from(1, &mem[..16 * PAGE_SIZE], &[])).unwrap(),
    ];
    let mut state = parts(&[], false, vec![]);
    state.memories.clear();
    state.module = None;
    state.globals = (0..globals)
        .map(|i| GlobalState {
            index: i as u32,
            value: super::Value::I64(i as i64 * 3),
        })
        .collect();
    (chunks, Snapshot::encode(state))
}

#[test]
fn commit_fuzz_corpus_never_panics() {
    // The cargo-fuzz corpus of the commit-frame decoder runs here too.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/commit_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus dir") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let decoded = CommitFrame::decode(&bytes);
        // The seeds written as whole frames must be valid, or the fuzzer
        // never gets past the header.
        if path.ends_with("seed-two-chunks") || path.ends_with("seed-no-chunks") {
            let frame = decoded.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(frame.chunks.len() <= 2);
        }
        n += 1;
    }
    assert!(n > 0, "empty fuzz corpus at {}", dir.display());
}

#[test]
fn page_chunk_fuzz_corpus_never_panics() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/page_chunk_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus dir") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let decoded = PageChunkRef::decode(&bytes);
        if path.ends_with("seed-three-pages") {
            assert_eq!(decoded.expect("a valid seed").pages, vec![1, 5, 9]);
        }
        n += 1;
    }
    assert!(n > 0, "empty fuzz corpus at {}", dir.display());
}

#[test]
fn commit_frames_say_what_is_wrong() {
    let (chunks, state) = commit_frame(&[1, 7], 2);
    let bytes = CommitFrame::encode(&chunks, &state);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        (
            "not a frame",
            b"TERNSNAP\x01\0\0\0\0\0\0\0".to_vec(),
            "not a stop-and-copy frame",
        ),
        (
            "newer version",
            [&bytes[..8], &9u32.to_le_bytes(), &bytes[12..]].concat(),
            "version 9",
        ),
        (
            "too many chunks",
            [&bytes[..12], &u32::MAX.to_le_bytes(), &bytes[16..]].concat(),
            "page chunks",
        ),
        (
            "chunk longer than the frame",
            [&bytes[..16], &u64::MAX.to_le_bytes(), &bytes[24..]].concat(),
            "",
        ),
        ("cut in the state", bytes[..bytes.len() - 3].to_vec(), ""),
    ];
    for (what, input, says) in cases {
        let e = CommitFrame::decode(&input).expect_err(what).to_string();
        assert!(e.contains(says), "{what}: {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() })]

    /// A frame decodes to the parts it was made of, and encodes again to the
    /// same bytes.
    #[test]
    fn commit_round_trip(pages in proptest::collection::btree_set(0u64..32, 0..12), globals in 0usize..6) {
        let pages: Vec<u64> = pages.into_iter().collect();
        let (chunks, state) = commit_frame(&pages, globals);
        let bytes = CommitFrame::encode(&chunks, &state);
        let back = CommitFrame::decode(&bytes).unwrap();
        prop_assert_eq!(&back.chunks, &chunks);
        prop_assert_eq!(&back.state.body, &state.body);
        prop_assert!(CommitFrame::encode(&back.chunks, &back.state) == bytes);
    }

    /// Any flipped bit is refused or (in the state's padding, which no
    /// checksum covers) decodes to exactly the same parts; any cut is
    /// refused; garbage never panics.
    #[test]
    fn commit_damage_is_refused(pos in any::<proptest::sample::Index>(), bit in 0u8..8, cut in any::<proptest::sample::Index>(),
                                garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (chunks, state) = commit_frame(&[0, 3, 31], 3);
        let bytes = CommitFrame::encode(&chunks, &state);
        let mut flipped = bytes.clone();
        flipped[pos.index(bytes.len())] ^= 1 << bit;
        if let Ok(back) = CommitFrame::decode(&flipped) {
            prop_assert_eq!(&back.chunks, &chunks);
            prop_assert_eq!(&back.state.body, &state.body);
        }
        let cut = cut.index(bytes.len());
        prop_assert!(CommitFrame::decode(&bytes[..cut]).is_err());
        let _ = CommitFrame::decode(&garbage);
    }
}

/// The probe of issue 11 (item 12): a compressed run that declares 8 Mi
/// pages (32 GiB) for a memory of that size, with a page hash for each,
/// and one real page of LZ4 behind it. Every check a decoder made before
/// sizes were bounded passes (checksums, run inside memory, hash count);
/// decompressing it asked for 32 GiB at once and aborted `tern inspect`.
/// It is a format 1 file (the format of the time, which still loads).
fn lz4_bomb() -> Vec<u8> {
    const PAGES: u64 = 8 << 20;
    let packed = lz4_flex::block::compress(&[0x5a; PAGE_SIZE]);
    let mut p = parts(&[], false, vec![]);
    p.tables.clear();
    p.memories = vec![MemoryCapture {
        state: MemoryState {
            index: 0,
            byte_size: PAGES * PAGE_SIZE as u64,
            runs: vec![Run {
                first_page: 0,
                pages: PAGES,
                encoding: Encoding::Lz4,
                image_offset: 0,
                stored_len: packed.len() as u64,
            }],
            page_hashes: vec![0; PAGES as usize],
        },
        image: packed,
    }];
    as_version(Snapshot::encode(p).as_bytes().to_vec(), 1)
}

const BOMB_SEED: &str = "fuzz/corpus/snapshot_decode/seed-lz4-run-declaring-8-mi-pages";

#[test]
fn a_compressed_run_declaring_8_mi_pages_is_refused_before_any_allocation() {
    let bytes = lz4_bomb();
    let e = Snapshot::from_bytes(bytes.clone()).unwrap_err();
    assert!(
        e.to_string()
            .contains("more than the 4294967296 a memory can hold"),
        "{e}"
    );
    // The same probe is a seed of the decoder's fuzz corpus. Regenerate it
    // with TERN_WRITE_SEEDS=1 if the format changes.
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(BOMB_SEED);
    if std::env::var_os("TERN_WRITE_SEEDS").is_some() {
        std::fs::write(&seed, &bytes).unwrap();
    }
    let committed = std::fs::read(&seed).expect("the crafted seed is in the corpus");
    assert!(
        committed == bytes,
        "{} is not the probe any more",
        seed.display()
    );
}

/// Encodes `body` over `snap`'s image with a valid header and checksum, so
/// that only the decoder's own checks stand between it and the bytes.
pub(super) fn with_body(snap: &Snapshot, body: &Body) -> Vec<u8> {
    let image = snap.image();
    let body_bytes = postcard::to_stdvec(body).unwrap();
    let mut out = vec![0u8; IMAGE_OFFSET as usize];
    out.extend_from_slice(image);
    let body_offset = out.len() as u64;
    out.extend_from_slice(&body_bytes);
    write_header(
        &mut out[..HEADER_LEN],
        image.len() as u64,
        body_offset,
        body_bytes.len() as u64,
        &body_bytes,
    );
    out
}

/// Each size a snapshot body declares, set to a lie, with checksums made
/// valid again: refused with a message, or (where the lie is harmless)
/// accepted and then decoded without asking for more memory than the run
/// can really hold.
#[test]
fn sizes_that_lie_are_refused_with_a_message() {
    let mut mem = memory_with(64, &[(1, 9), (2, 8)]);
    mem[10 * PAGE_SIZE..20 * PAGE_SIZE].fill(0x33); // compresses well
    let snap = Snapshot::encode(parts(&mem, true, vec![]));
    assert!(snap.body.memories[0]
        .runs
        .iter()
        .any(|r| r.encoding == Encoding::Lz4));
    type Lie = fn(&mut Body);
    let cases: Vec<(&str, Lie, &str)> = vec![
        (
            "memory of 2^40 bytes",
            |b| b.memories[0].byte_size = 1 << 40,
            "a memory can hold",
        ),
        (
            "memory of u64::MAX bytes",
            |b| b.memories[0].byte_size = u64::MAX,
            "a memory can hold",
        ),
        (
            "compressed run of 1 Mi pages in a few bytes",
            |b| {
                b.memories[0].byte_size = 1 << 32;
                let r = b.memories[0].runs.last_mut().unwrap();
                assert_eq!(r.encoding, Encoding::Lz4);
                r.pages = (1 << 20) - r.first_page;
            },
            "more than its",
        ),
        (
            "run of u64::MAX pages",
            |b| b.memories[0].runs[0].pages = u64::MAX,
            "overflows",
        ),
        (
            "run past the image",
            |b| b.memories[0].runs[0].stored_len = u64::MAX / 2,
            "outside the image",
        ),
        (
            "table of u32::MAX elements",
            |b| b.tables[0].size = u32::MAX,
            "elements in all",
        ),
        (
            "many tables adding up",
            |b| {
                let t = b.tables[0].clone();
                b.tables = (0..5)
                    .map(|i| TableState {
                        index: i,
                        size: 1 << 19,
                        ..t.clone()
                    })
                    .collect();
            },
            "elements in all",
        ),
    ];
    for (what, lie, says) in cases {
        let mut body = snap.body.clone();
        lie(&mut body);
        let e = Snapshot::from_bytes(with_body(&snap, &body)).expect_err(what);
        assert!(e.to_string().contains(says), "{what}: {e}");
    }
}

#[test]
fn a_long_run_of_one_repeated_page_still_decodes() {
    // LZ4's best case (~255:1) stays within the decoder's bound.
    let mut mem = vec![0u8; 1024 * PAGE_SIZE];
    mem.fill(0x77);
    let snap = Snapshot::encode(parts(&mem, true, vec![]));
    let run = &snap.body.memories[0].runs[0];
    assert_eq!(run.encoding, Encoding::Lz4);
    assert!(
        run.pages * PAGE_SIZE as u64 > run.stored_len * 200,
        "{run:?}"
    );
    let back = Snapshot::from_bytes(snap.as_bytes().to_vec()).unwrap();
    back.verify_image().unwrap();
    assert_eq!(memory_of(&back), mem);
}

/// A number a mutation sets a size to: the edges and powers that break
/// arithmetic and allocators, or anything.
fn lying_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            255,
            4096,
            65536,
            1 << 20,
            8 << 20,
            1 << 32,
            (1 << 32) + 65536,
            u32::MAX as u64,
            u64::MAX / 4096,
            u64::MAX / 65536 * 65536,
            u64::MAX,
        ]),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(12), ..ProptestConfig::default() })]

    /// What the snapshot fuzz target does, on bodies whose sizes and counts
    /// are mutated (the checksums made valid again, so the decoder's own
    /// bounds are all that is tested): refuse, or accept and then verify
    /// and decode every run without panicking, never allocating for a run
    /// more than LZ4 can expand its bytes to.
    #[test]
    fn mutated_sizes_never_panic_or_over_allocate(
        field in 0usize..9,
        which in any::<prop::sample::Index>(),
        size in lying_size(),
        compress in any::<bool>(),
    ) {
        let mut mem = memory_with(32, &[(1, 9), (3, 7), (30, 1)]);
        mem[8 * PAGE_SIZE..16 * PAGE_SIZE].fill(0x21);
        let snap = Snapshot::encode(parts(&mem, compress, vec![]));
        let mut body = snap.body.clone();
        let m = &mut body.memories[0];
        let k = which.index(m.runs.len());
        match field {
            0 => m.byte_size = size,
            1 => m.runs[k].pages = size,
            2 => m.runs[k].first_page = size,
            3 => m.runs[k].stored_len = size,
            4 => m.runs[k].image_offset = size,
            5 => m.page_hashes.resize((size % 100_000) as usize, 0),
            6 => body.tables[0].size = size as u32,
            7 => body.tables[0].runs[0].0 = size as u32,
            _ => {
                m.byte_size = size.min(MAX_MEMORY_BYTES) / 65536 * 65536;
                m.runs[k].pages = size;
            }
        }
        if let Ok(back) = Snapshot::from_bytes(with_body(&snap, &body)) {
            let _ = back.verify_image();
            for mem in &back.body.memories {
                prop_assert!(mem.byte_size <= MAX_MEMORY_BYTES);
                for r in &mem.runs {
                    if r.encoding == Encoding::Lz4 {
                        prop_assert!(r.pages * PAGE_SIZE as u64 <= r.stored_len * LZ4_MAX_RATIO);
                    }
                    let _ = back.run_data(r);
                }
            }
        }
    }
}

/// A post-copy state: memory 0 of 32 pages (as `parts` makes it), no pages
/// stored.
fn postcopy_state() -> Snapshot {
    let mem = vec![0u8; 32 * PAGE_SIZE];
    Snapshot::encode(parts(&mem, false, vec![]))
}

fn remote_strategy() -> impl Strategy<Value = RemotePages> {
    proptest::collection::btree_set(0u64..32, 0..20)
        .prop_map(|set| RemotePages::from_fn(0, 32 * PAGE_SIZE as u64, 32, |p| set.contains(&p)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(13), ..ProptestConfig::default() })]

    /// A switch-over frame and a page request decode to what they were
    /// made of; any flipped bit is refused or changes nothing; any cut is
    /// refused; garbage never panics.
    #[test]
    fn postcopy_frames_round_trip_and_damage_is_refused(remote in remote_strategy(),
            pos in any::<proptest::sample::Index>(), bit in 0u8..8, cut in any::<proptest::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
        let state = postcopy_state();
        let bytes = PostcopyFrame::encode(std::slice::from_ref(&remote), &state);
        let back = PostcopyFrame::decode(&bytes).unwrap();
        prop_assert_eq!(&back.remote, &vec![remote.clone()]);
        prop_assert_eq!(&back.state.body, &state.body);
        let mut flipped = bytes.clone();
        flipped[pos.index(bytes.len())] ^= 1 << bit;
        if let Ok(b) = PostcopyFrame::decode(&flipped) {
            prop_assert_eq!(&b.remote, &vec![remote.clone()]);
            prop_assert_eq!(&b.state.body, &state.body);
        }
        prop_assert!(PostcopyFrame::decode(&bytes[..cut.index(bytes.len())]).is_err());
        let _ = PostcopyFrame::decode(&garbage);
    }

    #[test]
    fn page_requests_round_trip_and_damage_is_refused(pages in proptest::collection::btree_set(0u64..64, 0..40),
            pos in any::<proptest::sample::Index>(), bit in 0u8..8, cut in any::<proptest::sample::Index>(),
            garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
        let req = PageRequest { memory: 2, pages: pages.into_iter().collect() };
        let bytes = req.encode();
        prop_assert_eq!(PageRequest::decode(&bytes, 64).unwrap(), req.clone());
        // Pages beyond the memory as the reader knows it are refused.
        if let Some(&last) = req.pages.last() {
            prop_assert!(PageRequest::decode(&bytes, last).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[pos.index(bytes.len())] ^= 1 << bit;
        prop_assert!(PageRequest::decode(&flipped, 64).is_err());
        prop_assert!(PageRequest::decode(&bytes[..cut.index(bytes.len())], 64).is_err());
        let _ = PageRequest::decode(&garbage, u64::MAX);
    }
}

#[test]
fn postcopy_decoders_refuse_what_lies() {
    let state = postcopy_state();
    // Runs outside the memory, overlapping, empty; a size the state does
    // not have; a memory the state does not have.
    for remote in [
        RemotePages {
            memory: 0,
            byte_size: 32 * 4096,
            runs: vec![(30, 3)],
        },
        RemotePages {
            memory: 0,
            byte_size: 32 * 4096,
            runs: vec![(2, 4), (5, 1)],
        },
        RemotePages {
            memory: 0,
            byte_size: 32 * 4096,
            runs: vec![(2, 0)],
        },
        RemotePages {
            memory: 0,
            byte_size: 64 * 4096,
            runs: vec![],
        },
        RemotePages {
            memory: 5,
            byte_size: 32 * 4096,
            runs: vec![],
        },
    ] {
        let bytes = PostcopyFrame::encode(std::slice::from_ref(&remote), &state);
        assert!(
            PostcopyFrame::decode(&bytes).is_err(),
            "{remote:?} accepted"
        );
    }
    // A request for more pages than allowed is refused before reading them.
    let req = PageRequest {
        memory: 0,
        pages: (0..MAX_REQUEST_PAGES as u64 + 1).collect(),
    };
    let err = PageRequest::decode(&req.encode(), u64::MAX).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

/// `bytes` relabelled as format `version`, the checksum made valid again.
fn as_version(mut bytes: Vec<u8>, version: u32) -> Vec<u8> {
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let body_offset = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let body_len = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let sum = header_checksum(&bytes[..48], &bytes[body_offset..body_offset + body_len]);
    bytes[48..64].copy_from_slice(&sum.to_le_bytes());
    bytes
}

#[test]
fn format_1_files_still_load_and_format_2_keeps_no_page_hashes() {
    let mem = memory_with(32, &[(1, 9), (2, 4), (30, 1)]);
    for compress in [false, true] {
        let snap = Snapshot::encode(parts(&mem, compress, vec![]));
        assert!(snap.body.memories.iter().all(|m| m.page_hashes.is_empty()));
        assert_eq!(&snap.as_bytes()[8..12], &FORMAT_VERSION.to_le_bytes());
        // The same state as format 1 wrote it: a hash per stored page.
        let mut body = snap.body.clone();
        for m in &mut body.memories {
            let mut hashes = Vec::new();
            for r in &m.runs {
                let data = snap.run_data(r).unwrap();
                hashes.extend(data.chunks_exact(PAGE_SIZE).map(xxh3_64));
            }
            m.page_hashes = hashes;
        }
        let v1 = as_version(with_body(&snap, &body), 1);
        // Only format 2 is restored lazily (a node reads format 1 whole).
        let head = |b: &[u8]| b[..super::lazy::HEAD_LEN as usize].to_vec();
        let len = |b: &[u8]| b.len() as u64;
        assert!(!super::lazy::pageable(&head(&v1), len(&v1)).unwrap());
        let v2 = snap.as_bytes();
        assert!(super::lazy::pageable(&head(v2), len(v2)).unwrap());
        assert!(super::lazy::pageable(&head(v2), len(v2) - 1).is_err());
        let back = Snapshot::from_bytes(v1.clone()).expect("a format 1 file loads");
        back.verify_image()
            .expect("its page hashes match its pages");
        assert_eq!(back.body.memories[0].runs, snap.body.memories[0].runs);
        // A format 1 page hash that does not match its page is caught.
        let mut wrong = body.clone();
        wrong.memories[0].page_hashes[0] ^= 1;
        let v1_bad = Snapshot::from_bytes(as_version(with_body(&snap, &wrong), 1)).unwrap();
        assert!(matches!(
            v1_bad.verify_image(),
            Err(SnapshotError::Checksum {
                what: "memory page"
            })
        ));
        // Format 1 with a page hash missing, format 2 with page hashes: refused.
        let mut short = body.clone();
        short.memories[0].page_hashes.pop();
        let e = Snapshot::from_bytes(as_version(with_body(&snap, &short), 1)).unwrap_err();
        assert!(e.to_string().contains("page hashes"), "{e}");
        let e = Snapshot::from_bytes(with_body(&snap, &body)).unwrap_err();
        assert!(e.to_string().contains("does not store"), "{e}");
        // Format 0 never existed: refused as too old, with the way out.
        let e = Snapshot::from_bytes(as_version(v1, 0)).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::OlderVersion {
                    found: 0,
                    supported: 1
                }
            ),
            "{e}"
        );
    }
}
