//! Format tests: round trips, determinism, and every kind of damage.

use super::*;
use proptest::prelude::*;

/// A memory of `pages` 4 KiB pages with the given (page, byte) writes.
fn memory_with(pages: usize, writes: &[(usize, u8)]) -> Vec<u8> {
    let mut m = vec![0u8; pages * PAGE_SIZE];
    for &(p, b) in writes {
        let p = p % pages;
        m[p * PAGE_SIZE + (b as usize * 7) % PAGE_SIZE] = b.max(1);
    }
    m
}

fn parts(mem: &[u8], compress: bool, globals: Vec<GlobalState>) -> SnapshotParts {
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
    assert_eq!(cap.state.page_hashes.len(), 2);
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
                found: 2,
                supported: 1
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
        let _ = Snapshot::from_bytes(bytes);
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
