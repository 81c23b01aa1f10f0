use super::*;
use std::collections::BTreeSet;

const GUARD: usize = 16 * PAGE;

/// A tern-like linear memory: a PROT_NONE reservation (+ guard) whose
/// first `size` bytes are readable and writable.
struct Mem {
    base: *mut u8,
    reserved: usize,
    size: usize,
}

impl Mem {
    fn new(reserved_pages: usize, size_pages: usize) -> Mem {
        let reserved = reserved_pages * PAGE;
        // SAFETY: fresh anonymous reservation.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved + GUARD,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        let mut m = Mem {
            base: p.cast(),
            reserved,
            size: 0,
        };
        m.grow(size_pages);
        m
    }

    fn grow(&mut self, pages: usize) {
        let size = pages * PAGE;
        assert!(size >= self.size && size <= self.reserved);
        if size > self.size {
            // SAFETY: inside our reservation.
            let rc = unsafe {
                libc::mprotect(
                    self.base.add(self.size).cast(),
                    size - self.size,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            assert_eq!(rc, 0, "mprotect: {}", io::Error::last_os_error());
        }
        self.size = size;
    }

    fn at(&self, page: u64, off: usize) -> *mut u8 {
        assert!(
            (page as usize) * PAGE + off < self.size,
            "page {page} is not accessible"
        );
        // SAFETY: inside the accessible prefix (checked above).
        unsafe { self.base.add(page as usize * PAGE + off) }
    }

    fn read(&self, page: u64) -> u8 {
        // SAFETY: accessible byte.
        unsafe { std::ptr::read_volatile(self.at(page, 100)) }
    }

    /// Changes a byte of the page.
    fn write(&self, page: u64) {
        let v = self.read(page);
        // SAFETY: accessible byte.
        unsafe { std::ptr::write_volatile(self.at(page, 100), v.wrapping_add(1)) }
    }

    /// Stores the byte the page already holds.
    fn write_same(&self, page: u64) {
        let v = self.read(page);
        // SAFETY: accessible byte.
        unsafe { std::ptr::write_volatile(self.at(page, 100), v) }
    }

    /// The kernel writes into the page: read(2) from a pipe.
    fn sys_write(&self, page: u64) {
        let mut fds = [0; 2];
        // SAFETY: plain pipe creation.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let v = self.read(page).wrapping_add(7);
        let data = [v; 64];
        // SAFETY: valid buffers; the destination is 64 accessible bytes.
        unsafe {
            assert_eq!(libc::write(fds[1], data.as_ptr().cast(), 64), 64);
            let n = libc::read(fds[0], self.at(page, 100).cast(), 64);
            assert_eq!(
                n,
                64,
                "read(2) into tracked memory: {}",
                io::Error::last_os_error()
            );
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_eq!(self.read(page), v);
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.base.cast(), self.reserved + GUARD) };
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Change a byte of a page.
    W(u64),
    /// Store the same byte again.
    Same(u64),
    /// Change a byte and put it back (content unchanged at collect).
    Toggle(u64),
    /// Read a page.
    R(u64),
    /// read(2) into a page (a kernel-mode write).
    Sys(u64),
    /// mprotect the accessible prefix up to this many pages.
    Grow(usize),
    /// madvise(MADV_DONTNEED) a page: it reads as zero afterwards.
    Discard(u64),
    /// Collect: `both` from every tracker, plus `uffd_only` from uffd.
    C(Vec<u64>, Vec<u64>),
    /// Collect: exactly `both` from hash; from uffd at least `both` and at
    /// most `both` plus `uffd_may`.
    CSub(Vec<u64>, Vec<u64>),
}
use Op::*;

fn c(pages: &[u64]) -> Op {
    C(pages.to_vec(), vec![])
}

struct Scenario {
    name: &'static str,
    reserved_pages: usize,
    size_pages: usize,
    /// Pages written (populated) before the tracker starts.
    before: Vec<u64>,
    ops: Vec<Op>,
}

fn sc(
    name: &'static str,
    reserved_pages: usize,
    size_pages: usize,
    before: &[u64],
    ops: Vec<Op>,
) -> Scenario {
    Scenario {
        name,
        reserved_pages,
        size_pages,
        before: before.to_vec(),
        ops,
    }
}

fn scenarios() -> Vec<Scenario> {
    let big = 8192; // 32 MiB
    let scattered = vec![0, 1, 123, 4095, 4096, 5000, big as u64 - 1];
    let many_runs: Vec<u64> = (0..12_000).step_by(2).collect(); // more runs than one scan fetches
    vec![
        sc("nothing written", 64, 16, &[0, 3], vec![c(&[]), c(&[])]),
        sc(
            "written before start only",
            64,
            16,
            &[1, 2, 15],
            vec![c(&[])],
        ),
        sc(
            "populated page written after start",
            64,
            16,
            &[1, 2, 3],
            vec![W(2), c(&[2]), c(&[])],
        ),
        sc(
            "never-touched page written after start",
            64,
            16,
            &[],
            vec![W(5), c(&[5]), W(5), c(&[5]), c(&[])],
        ),
        sc(
            "page written twice reported once",
            64,
            16,
            &[3],
            vec![W(3), W(3), W(4), W(3), c(&[3, 4])],
        ),
        sc(
            "only pages written after a collect",
            64,
            16,
            &[1, 2],
            vec![
                W(1),
                c(&[1]),
                W(2),
                W(2),
                c(&[2]),
                W(1),
                W(7),
                c(&[1, 7]),
                c(&[]),
            ],
        ),
        sc(
            "reads are not writes",
            64,
            16,
            &[2],
            vec![R(2), R(6), c(&[]), W(6), R(2), c(&[6])],
        ),
        sc(
            "first and last page",
            64,
            16,
            &[],
            vec![W(15), W(0), c(&[0, 15])],
        ),
        sc(
            "same value written again: uffd reports it, hash does not",
            64,
            16,
            &[4, 5],
            vec![
                Same(4),
                Toggle(5),
                Same(9),
                W(6),
                C(vec![6], vec![4, 5, 9]),
                c(&[]),
            ],
        ),
        sc(
            "growth by mprotect after start",
            64,
            8,
            &[1],
            vec![
                Grow(16),
                W(10),
                W(3),
                c(&[3, 10]),
                Grow(32),
                c(&[]),
                R(20),
                W(31),
                c(&[31]),
                W(12),
                Grow(40),
                W(39),
                c(&[12, 39]),
                Grow(64),
                W(63),
                c(&[63]),
            ],
        ),
        sc(
            "growth then written before the first collect",
            64,
            4,
            &[],
            vec![Grow(8), W(7), W(2), c(&[2, 7])],
        ),
        sc(
            "growth: pages of the grown part only read are not written",
            64,
            8,
            &[],
            vec![
                Grow(16),
                R(12),
                W(10),
                c(&[10]),
                R(13),
                c(&[]),
                W(12),
                c(&[12]),
            ],
        ),
        sc(
            "discarded pages (MADV_DONTNEED) read as zero: reported",
            64,
            16,
            &[0, 1, 2, 3, 4, 5, 6, 7],
            // Page 10 was never touched: uffd may report its discard.
            vec![
                Discard(2),
                Discard(3),
                Discard(10),
                W(5),
                CSub(vec![2, 3, 5], vec![10]),
                c(&[]),
                W(2),
                c(&[2]),
            ],
        ),
        sc(
            "kernel writes (read(2) into the memory)",
            64,
            16,
            &[3],
            vec![Sys(3), Sys(9), c(&[3, 9]), c(&[])],
        ),
        sc(
            "large region, a few scattered writes",
            big,
            big,
            &(0..big as u64).step_by(3).collect::<Vec<_>>(),
            vec![
                W(5000),
                W(0),
                W(4096),
                W(big as u64 - 1),
                W(123),
                W(1),
                W(4095),
                C(scattered.clone(), vec![]),
                W(77),
                c(&[77]),
                c(&[]),
            ],
        ),
        sc(
            "many separate dirty runs (several scan batches)",
            12_000,
            12_000,
            &[],
            many_runs
                .iter()
                .map(|&p| W(p))
                .chain([C(many_runs.clone(), vec![]), c(&[])])
                .collect(),
        ),
    ]
}

/// The uffd tracker must work on Linux >= 6.7 as root (these machines);
/// elsewhere its tests are skipped with a message.
fn uffd_expected() -> bool {
    let mem = Mem::new(16, 16);
    match UffdTracker::start(mem.base, mem.reserved, mem.size) {
        Ok(_) => true,
        Err(e) => {
            // SAFETY: plain syscalls.
            let root = unsafe { libc::geteuid() } == 0;
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let mut it = release
                .trim()
                .split(['.', '-'])
                .map(|x| x.parse::<u32>().unwrap_or(0));
            let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            let new_kernel = (major, minor) >= (6, 7);
            assert!(
                !(root && new_kernel && sys::page_size_ok()),
                "uffd tracker failed on Linux {release} as root: {e}"
            );
            eprintln!(
                "SKIP uffd tracker tests: {e} (Linux {}, root {root})",
                release.trim()
            );
            false
        }
    }
}

fn run(s: &Scenario, kind: TrackerKind) {
    let mut mem = Mem::new(s.reserved_pages, s.size_pages);
    for &p in &s.before {
        mem.write(p);
    }
    let mut t: Box<dyn DirtyTracker> = match kind {
        TrackerKind::Uffd => Box::new(
            UffdTracker::start(mem.base, mem.reserved, mem.size)
                .unwrap_or_else(|e| panic!("{}: uffd start: {e}", s.name)),
        ),
        TrackerKind::Hash => Box::new(HashTracker::start(mem.base, mem.size)),
    };
    assert_eq!(t.kind(), kind);
    for (i, op) in s.ops.iter().enumerate() {
        match op {
            W(p) => mem.write(*p),
            Same(p) => mem.write_same(*p),
            Toggle(p) => {
                mem.write(*p);
                let v = mem.read(*p).wrapping_sub(1);
                // SAFETY: accessible byte.
                unsafe { std::ptr::write_volatile(mem.at(*p, 100), v) };
            }
            R(p) => {
                std::hint::black_box(mem.read(*p));
            }
            Sys(p) => mem.sys_write(*p),
            Grow(pages) => mem.grow(*pages),
            Discard(p) => {
                // SAFETY: advice on an accessible page of our own mapping.
                let rc = unsafe { libc::madvise(mem.at(*p, 0).cast(), PAGE, libc::MADV_DONTNEED) };
                assert_eq!(rc, 0);
                assert_eq!(mem.read(*p), 0);
            }
            CSub(both, may) => {
                let got = t
                    .collect(mem.base, mem.size)
                    .unwrap_or_else(|e| panic!("{}: collect: {e}", s.name));
                let got_set: BTreeSet<u64> = got.iter().copied().collect();
                let both_set: BTreeSet<u64> = both.iter().copied().collect();
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "{} [{kind:?}] op #{i}: not sorted/unique: {got:?}",
                    s.name
                );
                if kind == TrackerKind::Uffd {
                    let max: BTreeSet<u64> = both.iter().chain(may.iter()).copied().collect();
                    assert!(
                        got_set.is_superset(&both_set) && got_set.is_subset(&max),
                        "{} [{kind:?}] op #{i}: got {got:?}, want {both:?} plus maybe {may:?}",
                        s.name
                    );
                } else {
                    assert_eq!(got_set, both_set, "{} [{kind:?}] op #{i}", s.name);
                }
            }
            C(both, uffd_only) => {
                let got = t
                    .collect(mem.base, mem.size)
                    .unwrap_or_else(|e| panic!("{}: collect: {e}", s.name));
                let mut want: BTreeSet<u64> = both.iter().copied().collect();
                if kind == TrackerKind::Uffd {
                    want.extend(uffd_only.iter().copied());
                }
                let want: Vec<u64> = want.into_iter().collect();
                if got != want {
                    let gs: BTreeSet<_> = got.iter().collect();
                    let ws: BTreeSet<_> = want.iter().collect();
                    panic!(
                        "{} [{kind:?}] op #{i}: got {} pages, want {}; missing {:?}, extra {:?}",
                        s.name,
                        got.len(),
                        want.len(),
                        ws.difference(&gs).take(10).collect::<Vec<_>>(),
                        gs.difference(&ws).take(10).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
    drop(t);
}

#[test]
fn hash_tracker_scenarios() {
    for s in scenarios() {
        run(&s, TrackerKind::Hash);
    }
}

#[test]
fn uffd_tracker_scenarios() {
    if !uffd_expected() {
        return;
    }
    for s in scenarios() {
        run(&s, TrackerKind::Uffd);
    }
}

#[test]
fn hash_tracker_hashes_and_partial_last_page() {
    let mem = Mem::new(8, 4);
    mem.write(1);
    let size = 2 * PAGE + PAGE / 2;
    let mut t = HashTracker::start(mem.base, size);
    assert_eq!(t.hashes().len(), 3);
    assert_eq!(t.hashes()[0], xxhash_rust::xxh3::xxh3_64(&[0u8; PAGE]));
    assert_ne!(t.hashes()[1], t.hashes()[0]);
    assert_eq!(t.collect(mem.base, size).unwrap(), Vec::<u64>::new());
    mem.write(2); // offset 100: inside the partial page
    assert_eq!(t.collect(mem.base, size).unwrap(), vec![2]);
    // The partial page becomes whole: reported (hashed over more bytes).
    assert_eq!(t.collect(mem.base, 3 * PAGE).unwrap(), vec![2]);
    assert_eq!(t.collect(mem.base, 3 * PAGE).unwrap(), Vec::<u64>::new());
    assert!(t.collect(std::ptr::null(), PAGE).is_err());
}

#[test]
fn uffd_rejects_bad_arguments() {
    let mem = Mem::new(16, 8);
    // SAFETY: pointer arithmetic inside the reservation.
    let misaligned = unsafe { mem.base.add(1) };
    assert!(UffdTracker::start(misaligned, mem.reserved - PAGE, 0).is_err());
    assert!(UffdTracker::start(mem.base, mem.reserved, mem.reserved + PAGE).is_err());
    assert!(UffdTracker::start(mem.base, PAGE + 1, 0).is_err());
    assert!(UffdTracker::start(std::ptr::null_mut(), mem.reserved, 0).is_err());
    if !uffd_expected() {
        return;
    }
    let mut t = UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap();
    assert!(t.collect(mem.base.wrapping_add(PAGE), PAGE).is_err());
    assert!(t.collect(mem.base, mem.reserved + PAGE).is_err());
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), Vec::<u64>::new());
}

/// Dropping the tracker leaves the memory readable and writable with its
/// content, and a new tracker can arm it again.
#[test]
fn uffd_drop_restores_memory() {
    if !uffd_expected() {
        return;
    }
    let mut mem = Mem::new(64, 16);
    mem.write(1);
    mem.write(2);
    let mut t = UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap();
    assert_ne!(t.features() & sys::UFFD_FEATURE_WP_ASYNC, 0);
    mem.write(2);
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), vec![2]);
    drop(t);
    // Protected populated page, protected never-touched page, a page
    // made accessible only now: all writable, content kept.
    mem.grow(32);
    for p in [1, 5, 20] {
        mem.write(p);
    }
    assert_eq!(
        (mem.read(1), mem.read(2), mem.read(5), mem.read(20)),
        (2, 2, 1, 1)
    );
    mem.sys_write(6);
    let mut t = UffdTracker::start(mem.base, mem.reserved, mem.size).expect("re-arming after drop");
    mem.write(7);
    mem.write(1);
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), vec![1, 7]);
}

/// Replacing part of the tracked memory after start is not silently
/// missed: the next collect fails.
#[test]
fn uffd_remap_after_start_is_an_error() {
    if !uffd_expected() {
        return;
    }
    let mem = Mem::new(32, 16);
    let mut t = UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap();
    // SAFETY: MAP_FIXED inside our own reservation.
    let p = unsafe {
        libc::mmap(
            mem.base.add(4 * PAGE).cast(),
            2 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    mem.write(4);
    let e = t
        .collect(mem.base, mem.size)
        .expect_err("collect over a remapped range must fail");
    assert!(e.to_string().contains("PAGEMAP_SCAN"), "{e}");
}

/// A memory restored copy-on-write: file-backed MAP_PRIVATE runs inside
/// the reservation (pages 4..12 come from a file).
#[test]
fn file_backed_private_runs() {
    for kind in [TrackerKind::Hash, TrackerKind::Uffd] {
        if kind == TrackerKind::Uffd && !uffd_expected() {
            continue;
        }
        let mut mem = Mem::new(64, 16);
        let path = std::env::temp_dir().join(format!(
            "tern-dirty-test-{}-{:p}",
            std::process::id(),
            mem.base
        ));
        let image: Vec<u8> = (0..8 * PAGE).map(|i| (i / PAGE) as u8 + 10).collect();
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: MAP_FIXED inside our own reservation.
        let p = unsafe {
            libc::mmap(
                mem.base.add(4 * PAGE).cast(),
                8 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        assert_eq!(mem.read(4), 10);
        assert_eq!(mem.read(5), 11); // mapped read-only from the page cache
        mem.write(6); // copied before start
        mem.write(0);
        let mut t: Box<dyn DirtyTracker> = match kind {
            TrackerKind::Uffd => {
                Box::new(UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap())
            }
            TrackerKind::Hash => Box::new(HashTracker::start(mem.base, mem.size)),
        };
        let ops = [
            R(4),
            R(7),
            W(5),
            W(8),
            W(6),
            W(1),
            Sys(9),
            c(&[1, 5, 6, 8, 9]),
            R(10),
            Grow(24),
            W(11),
            W(20),
            c(&[11, 20]),
            c(&[]),
        ];
        for op in ops {
            match op {
                W(p) => mem.write(p),
                R(p) => {
                    std::hint::black_box(mem.read(p));
                }
                Sys(p) => mem.sys_write(p),
                Grow(n) => mem.grow(n),
                C(want, _) => assert_eq!(
                    t.collect(mem.base, mem.size).unwrap(),
                    want,
                    "file-backed [{kind:?}]"
                ),
                _ => unreachable!(),
            }
        }
        drop(t);
        // MAP_PRIVATE: the file never changed.
        let mut back = vec![0u8; 8 * PAGE];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, image);
    }
}

/// Transparent huge pages: a write to one 4 KiB page of a huge page is
/// reported as that page only.
#[test]
fn uffd_transparent_huge_pages() {
    if !uffd_expected() {
        return;
    }
    const HUGE: usize = 2 << 20;
    let mem = Mem::new(3 * HUGE / PAGE, 3 * HUGE / PAGE);
    let aligned = (mem.base as usize).next_multiple_of(HUGE);
    let first = ((aligned - mem.base as usize) / PAGE) as u64;
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(aligned as *mut _, 2 * HUGE, libc::MADV_HUGEPAGE) };
    for p in first..first + (2 * HUGE / PAGE) as u64 {
        mem.write(p);
    }
    let mut t = UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap();
    let writes = [first + 3, first + 511, first + 512, first + 1000];
    for &p in &writes {
        mem.write(p);
    }
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), writes.to_vec());
    mem.write(first + 3);
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), vec![first + 3]);
}

#[test]
fn start_tracking_picks_uffd_or_hash() {
    let mem = Mem::new(32, 8);
    let expected = if uffd_expected() {
        TrackerKind::Uffd
    } else {
        TrackerKind::Hash
    };
    let mut t = start_tracking(mem.base, mem.reserved, mem.size);
    assert_eq!(t.kind(), expected);
    mem.write(3);
    assert_eq!(t.collect(mem.base, mem.size).unwrap(), vec![3]);
    drop(t);
    // An unaligned base cannot be armed with uffd: falls back to hashing.
    let t = start_tracking(
        mem.base.wrapping_add(8),
        mem.reserved - PAGE,
        mem.size - PAGE,
    );
    assert_eq!(t.kind(), TrackerKind::Hash);
    // A memory already tracked by uffd cannot be registered twice.
    if expected == TrackerKind::Uffd {
        let _first = UffdTracker::start(mem.base, mem.reserved, mem.size).unwrap();
        assert!(UffdTracker::start(mem.base, mem.reserved, mem.size).is_err());
        assert_eq!(
            start_tracking(mem.base, mem.reserved, mem.size).kind(),
            TrackerKind::Hash
        );
    }
    // What TERN_DIRTY_TRACKER=hash does (the variable itself is not set
    // here: changing the environment of a multi-threaded test binary is
    // unsafe).
    assert_eq!(
        start_tracking_with(mem.base, mem.reserved, mem.size, true).kind(),
        TrackerKind::Hash
    );
}
