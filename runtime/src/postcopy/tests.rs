//! The pager against a plain mapping: remote pages come from a "source"
//! buffer on first touch, others are zero, a push never overwrites a page
//! the reader already has, and a lost source interrupts and fails.

use std::sync::mpsc;
use std::sync::Arc;

use super::*;
use crate::snapshot::PageChunk;

const PAGES: usize = 64;

struct Mapping(*mut u8, usize);
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

/// Whether this process can page post-copy (each test is skipped, saying
/// why, where it cannot).
fn paging() -> bool {
    available()
        .map_err(|why| eprintln!("skipped: post-copy unavailable here: {why}"))
        .is_ok()
}

fn mapping() -> Mapping {
    let len = PAGES * PAGE_SIZE;
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    Mapping(p.cast(), len)
}

fn source() -> Vec<u8> {
    (0..PAGES * PAGE_SIZE)
        .map(|i| ((i / PAGE_SIZE) as u8).wrapping_mul(31) ^ (i % 253) as u8 | 1)
        .collect()
}

/// Remote: pages 0..40 except every fifth; the rest is zero.
fn remote() -> RemotePages {
    RemotePages::from_fn(0, (PAGES * PAGE_SIZE) as u64, PAGES as u64, |p| {
        p < 40 && p % 5 != 0
    })
}

fn start(m: &Mapping, interrupt: InterruptHandle) -> (Arc<Pager>, mpsc::Receiver<PageWant>) {
    let (tx, rx) = mpsc::sync_channel::<PageWant>(64);
    let tx = std::sync::Mutex::new(tx);
    let pager = Pager::start(
        vec![PagedMemory {
            index: 0,
            base: m.0 as u64,
            reserved: m.1 as u64,
            size: m.1 as u64,
        }],
        &[remote()],
        interrupt,
        Box::new(move |w| tx.lock().unwrap().send(w).is_ok()),
    )
    .expect("pager starts");
    (pager, rx)
}

#[test]
fn pages_arrive_on_first_touch_and_pushes_never_overwrite() {
    if !paging() {
        return;
    }
    let m = mapping();
    // Instantiation leaves bytes behind in a remote page: discarded.
    // SAFETY: our own mapping.
    unsafe { std::ptr::write_bytes(m.0.add(PAGE_SIZE), 0xEE, PAGE_SIZE) };
    let src = Arc::new(source());
    let (pager, rx) = start(&m, InterruptHandle::new());
    assert_eq!(pager.remaining(), remote().pages());
    // A fetcher, as a node runs one: claims the wanted page and up to 3
    // neighbours, and delivers them.
    let (p2, s2) = (pager.clone(), src.clone());
    let fetcher = std::thread::spawn(move || {
        let mut requests = 0;
        // Ends when the pager is done (the node's fetcher does the same).
        while !p2.is_finished() {
            let Ok(w) = rx.recv_timeout(std::time::Duration::from_millis(20)) else {
                continue;
            };
            let pages = p2.claim(w.memory, w.page, 4);
            assert!(pages.contains(&w.page), "{pages:?} lacks {}", w.page);
            p2.deliver(&PageChunk::encode_from(0, &s2, &pages)).unwrap();
            requests += 1;
        }
        requests
    });
    // The guest's view: write one remote page first (it is fetched, then
    // written), then read everything.
    // SAFETY: the mapping is ours; faults are resolved by the pager.
    let mem = unsafe { std::slice::from_raw_parts_mut(m.0, m.1) };
    mem[7 * PAGE_SIZE] = 0x42;
    for p in 0..PAGES {
        let page = &mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
        let r = remote()
            .runs
            .iter()
            .any(|&(a, n)| p as u64 >= a && (p as u64) < a + n);
        let mut want = if r {
            src[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].to_vec()
        } else {
            vec![0; PAGE_SIZE]
        };
        if p == 7 {
            want[0] = 0x42;
        }
        assert!(page == &want[..], "page {p} differs");
    }
    // A late push of everything changes nothing and completes the pager.
    let all: Vec<u64> = (0..40).filter(|p| p % 5 != 0).collect();
    let left = pager
        .deliver(&PageChunk::encode_from(0, &src, &all))
        .unwrap();
    assert_eq!(left, 0);
    assert!(pager.is_finished());
    assert_eq!(mem[7 * PAGE_SIZE], 0x42, "a push overwrote a written page");
    assert!(pager.failure().is_none());
    drop(pager);
    let requests = fetcher.join().unwrap();
    assert!(
        requests > 0 && requests < 30,
        "{requests} requests for 30 remote pages"
    );
}

#[test]
fn a_lost_source_interrupts_and_fails_the_pager() {
    if !paging() {
        return;
    }
    let m = mapping();
    let interrupt = InterruptHandle::new();
    let (pager, rx) = start(&m, interrupt.clone());
    let p2 = pager.clone();
    // The fetcher cannot reach the source: it fails the pager.
    let fetcher = std::thread::spawn(move || {
        let w = rx.recv().unwrap();
        p2.fail(&format!(
            "source unreachable while fetching page {}",
            w.page
        ));
    });
    // SAFETY: the mapping is ours; the blocked fault resolves on failure.
    let byte = unsafe { std::ptr::read_volatile(m.0.add(3 * PAGE_SIZE)) };
    fetcher.join().unwrap();
    assert_eq!(byte, 0, "a lost page reads as zero, and the app is stopped");
    assert!(interrupt.is_interrupted());
    assert!(pager.failure().unwrap().contains("page 3"));
    assert!(pager.is_finished());
    // Nothing more is placed once failed.
    assert_eq!(
        pager
            .deliver(&PageChunk::encode_from(0, &source(), &[4]))
            .unwrap(),
        pager.remaining()
    );
}

/// A push as the source sends it (a page slice), received in pieces of
/// `piece` bytes; `spoil` changes the bytes first.
fn receive(
    pages: &[u64],
    piece: usize,
    spoil: impl Fn(&mut Vec<u8>),
) -> Result<StagedPush, String> {
    let slice = crate::snapshot::encode_listed(0, &source(), pages);
    let mut bytes = slice.bytes().to_vec();
    spoil(&mut bytes);
    let mut push = PushReceiver::new(1 << 30);
    for part in bytes.chunks(piece) {
        push.feed(part).map_err(|e| e.to_string())?;
    }
    push.finish().map_err(|e| e.to_string())
}

#[test]
fn a_staged_push_fills_only_missing_pages_and_only_once_it_checks_out() {
    if !paging() {
        return;
    }
    let m = mapping();
    let src = source();
    let (pager, _wants) = start(&m, InterruptHandle::new());
    // Page 7 arrives first (a fetch) and the app writes it.
    pager
        .deliver(&PageChunk::encode_from(0, &src, &[6, 7]))
        .unwrap();
    // SAFETY: the mapping is ours; page 7 is present now.
    unsafe { m.0.add(7 * PAGE_SIZE).write_volatile(0x42) };
    let all: Vec<u64> = (0..40).filter(|p| p % 5 != 0).collect();
    let before = pager.remaining();

    // A push whose bytes were damaged, or cut short, places nothing.
    let bad = [
        receive(&all, 1000, |b| {
            let n = b.len();
            b[n / 2] ^= 1;
        }),
        receive(&all, 4096, |b| b.truncate(b.len() - 5)),
    ];
    for (i, r) in bad.into_iter().enumerate() {
        let err = r
            .err()
            .unwrap_or_else(|| panic!("spoilt push {i} was taken"));
        assert!(err.contains("sum") || err.contains("runcated"), "{err}");
    }
    assert_eq!(pager.remaining(), before);

    // The whole push, in pieces that split xxh3 blocks and pages.
    let push = receive(&all, 1000, |_| {}).expect("the push checks out");
    assert_eq!(push.pages(), all.len());
    assert_eq!(pager.place_staged(push).unwrap(), 0);
    assert!(pager.is_finished());
    // SAFETY: the pager is done; every page is present or zero-filled.
    let mem = unsafe { std::slice::from_raw_parts(m.0, m.1) };
    assert_eq!(mem[7 * PAGE_SIZE], 0x42, "a push overwrote a written page");
    for &p in all.iter().filter(|&&p| p != 7) {
        let p = p as usize;
        assert!(
            mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE] == src[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
            "page {p} differs"
        );
    }
    // Where the kernel moves pages, none was copied: all but the two
    // fetched ones moved.
    if pager.inner.uffd.moves() {
        assert_eq!(pager.pages_moved(), all.len() as u64 - 2);
        assert_eq!(pager.pages_copied(), 2, "only the two fetched");
    }
    // Each page placed once: the two fetched, then the push's others.
    let placed = pager.pages_moved() + pager.pages_copied();
    assert_eq!(placed, all.len() as u64);
}

/// A memory can be several mappings (its pages came from the resident
/// stock in runs), and the kernel refuses a move that crosses a mapping's
/// end whole: the run is moved in parts, not copied page by page.
#[test]
fn a_push_over_two_mappings_is_still_moved() {
    if !paging() {
        return;
    }
    let m = mapping();
    // Pages 22.. become a mapping of their own (a flag only they have);
    // the remote run 21-24 crosses into it.
    // SAFETY: our own mapping, page-aligned.
    let rc = unsafe {
        libc::madvise(
            m.0.add(22 * PAGE_SIZE).cast(),
            m.1 - 22 * PAGE_SIZE,
            libc::MADV_DONTFORK,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let (pager, _wants) = start(&m, InterruptHandle::new());
    if !pager.inner.uffd.moves() {
        eprintln!("skipped: this kernel cannot move pages");
        return;
    }
    let (start, end) = (m.0 as u64, m.0 as u64 + m.1 as u64);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let parts = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split(' ').next()?.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .filter(|&(a, b)| a < end && b > start)
        .count();
    assert_eq!(parts, 2, "the memory is two mappings");
    let all: Vec<u64> = (0..40).filter(|p| p % 5 != 0).collect();
    let push = receive(&all, 4096, |_| {}).expect("the push checks out");
    assert_eq!(pager.place_staged(push).unwrap(), 0);
    assert_eq!(pager.pages_moved(), all.len() as u64, "every page moved");
    assert_eq!(pager.pages_copied(), 0);
    let src = source();
    // SAFETY: the pager is done; every page is present or zero-filled.
    let mem = unsafe { std::slice::from_raw_parts(m.0, m.1) };
    for &p in &all {
        let p = p as usize;
        assert!(
            mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE] == src[p * PAGE_SIZE..(p + 1) * PAGE_SIZE],
            "page {p} differs"
        );
    }
}

#[test]
fn a_placement_that_fails_midway_still_counts_what_it_placed() {
    if !paging() {
        return;
    }
    let m = mapping();
    let src = source();
    let (pager, _wants) = start(&m, InterruptHandle::new());
    let before = pager.remaining();
    // Two runs of missing pages: 1-4 and 6-9. The first is placed, the
    // second cannot be.
    let list: Vec<u64> = vec![1, 2, 3, 4, 6, 7, 8, 9];
    let data: Vec<u8> = list
        .iter()
        .flat_map(|&p| src[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE].to_vec())
        .collect();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let packed = super::Packed::of(&data);
    let failed = pager.place_with(0, &list, packed, |dst, offset, len| {
        match calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: a plain slice.
            0 => Ok((
                0,
                pager
                    .inner
                    .uffd
                    .copy(dst, unsafe { packed.get(offset, len) })? as usize,
            )),
            _ => Err(std::io::Error::other("no room")),
        }
    });
    assert!(failed.unwrap_err().contains("no room"));
    assert_eq!(pager.remaining(), before - 4, "the first run counts");
    // SAFETY: pages 1-4 are present now; reading them faults nothing.
    let placed = unsafe { std::slice::from_raw_parts(m.0.add(PAGE_SIZE), 4 * PAGE_SIZE) };
    assert!(placed == &src[PAGE_SIZE..5 * PAGE_SIZE]);
    // The second run is still missing, and a later push places it.
    let left = pager
        .deliver_run(0, 6, &src[6 * PAGE_SIZE..10 * PAGE_SIZE])
        .unwrap();
    assert_eq!(left, before - 8);
}
