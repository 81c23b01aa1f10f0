//! Post-copy paging: the target of a post-copy move runs the app before
//! its memory has arrived, and each missing page is brought in on first
//! touch.
//!
//! A [`Pager`] registers every memory's whole reservation with a
//! userfaultfd in `MISSING` mode and discards the pages the source holds,
//! so that each faults once; the others keep what they hold (zeros after a
//! fresh restore). One thread per pager reads the faults:
//! - a page the source holds (it was in use there: see
//!   [`RemotePages`](crate::snapshot::RemotePages)) is asked for through the
//!   `want` callback the caller gave (the node fetches it, with neighbours,
//!   and hands the answer to [`Pager::deliver`]); the faulting thread
//!   sleeps in the kernel until then;
//! - any other page (never used on the source, or added by `memory.grow`
//!   since) is zero: it is filled with `UFFDIO_ZEROPAGE` at once.
//!
//! [`Pager::deliver`] places pages with `UFFDIO_COPY`, which only fills
//! pages still missing: a page the guest already has (fetched before, and
//! perhaps written since) is never overwritten by a later push. When every
//! remote page is in, the pager unregisters and its thread ends; the
//! memory is then plain anonymous memory.
//!
//! If the source is lost ([`Pager::fail`]), the memory is incomplete and
//! must never be trusted again: the pager interrupts the app's call,
//! unregisters (a blocked fault then resolves to a zero page and the guest
//! runs on to the interrupt, at most an epoch tick), and the instance
//! refuses every later call and capture ([`Pager::failure`]). Nothing the
//! guest computed on that memory leaves the instance.
//!
//! Threads and queues are bounded: one thread per pager, one outstanding
//! want per page (a page asked for is not asked for again).

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod kernel;
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
mod kernel {
    //! Elsewhere there is no userfaultfd: post-copy is unavailable.
    pub(super) fn probe() -> Result<(), String> {
        Err("userfaultfd is Linux-only".into())
    }
    pub(super) struct Uffd;
    impl Uffd {
        pub(super) fn start(_: &[(u64, u64)]) -> std::io::Result<Uffd> {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "userfaultfd is Linux-only",
            ))
        }
        pub(super) fn wait(&self) -> std::io::Result<Vec<u64>> {
            Ok(vec![])
        }
        pub(super) fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        pub(super) fn zero(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        pub(super) fn wake(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        pub(super) fn copy(&self, _: u64, _: &[u8]) -> std::io::Result<bool> {
            Ok(false)
        }
        pub(super) fn moves(&self) -> bool {
            false
        }
        pub(super) unsafe fn move_pages(&self, _: u64, _: u64, _: u64) -> std::io::Result<u64> {
            Ok(0)
        }
        pub(super) fn unregister(&self) {}
        pub(super) fn stop(&self) {}
    }
}

mod staging;

use staging::Packed;
pub use staging::{PushReceiver, StagedPush};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::sandbox::InterruptHandle;
use crate::snapshot::{PageChunkRef, RemotePages, PAGE_SIZE};

/// A page the fault handler needs from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageWant {
    pub memory: u32,
    pub page: u64,
}

/// Where the wants go; `false`: nobody fetches any more (the pager fails).
pub type WantFn = Box<dyn Fn(PageWant) -> bool + Send + Sync>;

/// Whether this process can page post-copy (userfaultfd in `MISSING` mode,
/// faults taken in the kernel included); why not otherwise. Probed once.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(kernel::probe).clone()
}

const LOCAL: u8 = 0;
const REMOTE: u8 = 1;
const ASKED: u8 = 2;
const PRESENT: u8 = 3;

/// One memory a pager covers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PagedMemory {
    pub index: u32,
    pub base: u64,
    /// The whole reservation (registered).
    pub reserved: u64,
    /// The accessible size now (discarded at the start).
    pub size: u64,
}

struct Inner {
    uffd: kernel::Uffd,
    mems: Vec<PagedMemory>,
    /// Per memory, per page: LOCAL, REMOTE, ASKED or PRESENT.
    pages: Mutex<Vec<Vec<u8>>>,
    remaining: AtomicU64,
    /// Pages placed by moving them (`UFFDIO_MOVE`) rather than copying.
    moved: AtomicU64,
    /// Pages placed by copying them (`UFFDIO_COPY`).
    copied: AtomicU64,
    done: AtomicBool,
    failed: Mutex<Option<String>>,
    interrupt: InterruptHandle,
    want: WantFn,
}

/// The post-copy pager of one instance (see the module documentation).
pub struct Pager {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("remaining", &self.remaining())
            .field("failed", &self.failure())
            .finish()
    }
}

impl Pager {
    /// Registers the memories and starts the fault thread. Called between
    /// two calls (nothing touches the memories meanwhile); what the
    /// accessible parts hold is discarded.
    pub(crate) fn start(
        mems: Vec<PagedMemory>,
        remote: &[RemotePages],
        interrupt: InterruptHandle,
        want: WantFn,
    ) -> std::io::Result<Arc<Pager>> {
        let mut pages = Vec::with_capacity(mems.len());
        let mut remaining = 0u64;
        for m in &mems {
            let n = (m.reserved / PAGE_SIZE as u64) as usize;
            let mut st = vec![LOCAL; n];
            if let Some(r) = remote.iter().find(|r| r.memory == m.index) {
                for &(first, count) in &r.runs {
                    let end = first.saturating_add(count);
                    if end > m.size / PAGE_SIZE as u64 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!(
                                "post-copy: pages {first}..{end} of memory {} lie beyond its {} bytes",
                                m.index, m.size
                            ),
                        ));
                    }
                    st[first as usize..end as usize].fill(REMOTE);
                    remaining += count;
                }
            }
            pages.push(st);
        }
        let ranges: Vec<(u64, u64)> = mems.iter().map(|m| (m.base, m.reserved)).collect();
        let uffd = kernel::Uffd::start(&ranges)?;
        // What the remote pages hold here now (instantiation's data
        // segments, zeros a restore wrote, an older copy) is not theirs:
        // discarded, they fault on first touch. Other pages keep what they
        // hold (zero after a fresh restore, or what pre-copy sent).
        for (m, r) in mems.iter().zip(&pages) {
            let mut p = 0usize;
            while p < r.len() {
                if r[p] != REMOTE {
                    p += 1;
                    continue;
                }
                let q = p + r[p..].iter().take_while(|&&s| s == REMOTE).count();
                uffd.discard(
                    m.base + (p * PAGE_SIZE) as u64,
                    ((q - p) * PAGE_SIZE) as u64,
                )?;
                p = q;
            }
        }
        let inner = Arc::new(Inner {
            uffd,
            mems,
            pages: Mutex::new(pages),
            remaining: AtomicU64::new(remaining),
            moved: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            done: AtomicBool::new(false),
            failed: Mutex::new(None),
            interrupt,
            want,
        });
        let pager = Arc::new(Pager {
            inner: inner.clone(),
            thread: Mutex::new(None),
        });
        if remaining == 0 {
            pager.finish();
            return Ok(pager);
        }
        let handle = std::thread::Builder::new()
            .name("postcopy-faults".into())
            .spawn(move || fault_loop(&inner))?;
        *pager.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(pager)
    }

    /// Remote pages not in yet.
    pub fn remaining(&self) -> u64 {
        self.inner.remaining.load(Ordering::Acquire)
    }

    /// Pages placed so far by moving them out of a staged push rather
    /// than copying them (see `staging`).
    pub fn pages_moved(&self) -> u64 {
        self.inner.moved.load(Ordering::Relaxed)
    }

    /// Pages placed so far by copying them: fetched ones, and pushed ones
    /// the kernel could not move (see `staging`).
    pub fn pages_copied(&self) -> u64 {
        self.inner.copied.load(Ordering::Relaxed)
    }

    /// Why the pager failed, if it did (the memory is then incomplete).
    pub fn failure(&self) -> Option<String> {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether every remote page is in (or the pager failed): the pager
    /// has nothing left to do.
    pub fn is_finished(&self) -> bool {
        self.inner.done.load(Ordering::Acquire)
    }

    /// Up to `max` pages of memory `memory` from `page` on that are still
    /// on the source and not asked for yet (the faulting page first if it
    /// is), marked asked: what to request together.
    pub fn claim(&self, memory: u32, page: u64, max: usize) -> Vec<u64> {
        let Some(k) = self.inner.mems.iter().position(|m| m.index == memory) else {
            return vec![];
        };
        let mut pages = self.inner.pages.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut pages[k];
        let mut out = Vec::new();
        let mut p = page as usize;
        while p < st.len() && out.len() < max {
            match st[p] {
                REMOTE => {
                    st[p] = ASKED;
                    out.push(p as u64);
                }
                // The faulting page itself was marked by the handler.
                ASKED if p as u64 == page => out.push(p as u64),
                _ if p as u64 == page => {}
                _ => break,
            }
            p += 1;
        }
        out
    }

    /// Places the pages of a page chunk (a push from the source or the
    /// answer to a request) that are still missing, waking whoever waits
    /// for them; pages already here are left alone. Returns how many
    /// remote pages are still missing after it.
    pub fn deliver(&self, chunk: &[u8]) -> Result<u64, String> {
        let chunk = PageChunkRef::decode(chunk).map_err(|e| format!("page chunk rejected: {e}"))?;
        self.place(chunk.memory, &chunk.pages, chunk.data)
    }

    /// Places `data`, the pages of memory `memory` from `first` on, as
    /// [`Pager::deliver`] places a chunk's (a lazy restore reads them from
    /// a snapshot file, checked there).
    pub fn deliver_run(&self, memory: u32, first: u64, data: &[u8]) -> Result<u64, String> {
        if !data.len().is_multiple_of(PAGE_SIZE) {
            return Err("a run of pages must be whole pages".into());
        }
        let pages: Vec<u64> = (first..first + (data.len() / PAGE_SIZE) as u64).collect();
        self.place(memory, &pages, data)
    }

    /// Places a checked push ([`PushReceiver::finish`]) as
    /// [`Pager::deliver`] places a chunk, moving its pages out of the
    /// staging mapping instead of copying them where the kernel can (see
    /// `staging`). Returns how many remote pages are still missing.
    pub fn place_staged(&self, push: StagedPush) -> Result<u64, String> {
        let uffd = &self.inner.uffd;
        let data = push.staging.packed();
        self.place_with(push.memory, &push.pages, data, |dst, offset, len| {
            let mut moved = 0;
            if uffd.moves() {
                // SAFETY: these staged pages are placed once and never read
                // through the staging mapping again: what follows reads
                // only the pages of the run that did not move.
                moved = unsafe { uffd.move_pages(dst, data.addr() + offset as u64, len as u64)? };
            }
            let moved = moved as usize;
            if moved == len {
                return Ok((moved, moved));
            }
            // SAFETY: `[offset + moved, offset + len)` stayed in staging.
            let rest = unsafe { data.get(offset + moved, len - moved) };
            // A copy that fails here is tried again page by page, which
            // reports the failure; what moved is counted either way.
            let copied = uffd.copy(dst + moved as u64, rest).unwrap_or(0);
            Ok((moved, moved + copied as usize))
        })
    }

    fn place(&self, memory: u32, page_list: &[u64], data: &[u8]) -> Result<u64, String> {
        let uffd = &self.inner.uffd;
        let data = Packed::of(data);
        self.place_with(memory, page_list, data, |dst, offset, len| {
            // SAFETY: a plain slice; nothing moves out of it.
            Ok((
                0,
                uffd.copy(dst, unsafe { data.get(offset, len) })? as usize,
            ))
        })
    }

    /// Places the pages `page_list` names, whose bytes are `data` (packed),
    /// where they are still missing: `put(dst, offset in data, len)` fills
    /// a run of missing pages, saying how many of its first bytes it moved
    /// into place and how many it placed in all, moved or copied (the
    /// run's pages after those are then copied one by one, and a page
    /// present already is left alone).
    fn place_with(
        &self,
        memory: u32,
        page_list: &[u64],
        data: Packed<'_>,
        put: impl Fn(u64, usize, usize) -> std::io::Result<(usize, usize)>,
    ) -> Result<u64, String> {
        let inner = &self.inner;
        let k = inner
            .mems
            .iter()
            .position(|m| m.index == memory)
            .ok_or_else(|| format!("pages of memory {memory}, which is not paged"))?;
        let m = inner.mems[k];
        if data.len() != page_list.len() * PAGE_SIZE {
            return Err(format!(
                "{} bytes for {} pages",
                data.len(),
                page_list.len()
            ));
        }
        if inner.done.load(Ordering::Acquire) {
            return Ok(self.remaining());
        }
        let mut placed = 0u64;
        // A run that cannot be placed ends the placement; what was placed
        // before it still counts (its pages are present).
        let mut failed = None;
        {
            let mut pages = inner.pages.lock().unwrap_or_else(|e| e.into_inner());
            let st = &mut pages[k];
            let mut i = 0;
            'runs: while i < page_list.len() {
                let p = page_list[i] as usize;
                if p >= st.len() || !(st[p] == REMOTE || st[p] == ASKED) {
                    i += 1;
                    continue;
                }
                // A run of consecutive pages still missing: one placement.
                let mut j = i + 1;
                while j < page_list.len()
                    && page_list[j] == page_list[j - 1] + 1
                    && (page_list[j] as usize) < st.len()
                    && matches!(st[page_list[j] as usize], REMOTE | ASKED)
                {
                    j += 1;
                }
                let dst = m.base + p as u64 * PAGE_SIZE as u64;
                let (moved, put_in) = match put(dst, i * PAGE_SIZE, (j - i) * PAGE_SIZE) {
                    Ok((moved, put_in)) => (moved / PAGE_SIZE, put_in / PAGE_SIZE),
                    Err(e) => {
                        failed = Some(format!("placing pages of memory {}: {e}", m.index));
                        break 'runs;
                    }
                };
                inner.moved.fetch_add(moved as u64, Ordering::Relaxed);
                let copied = (put_in - moved) as u64;
                inner.copied.fetch_add(copied, Ordering::Relaxed);
                // Some page of the run was there already, or the run spans
                // two mappings: the rest page by page.
                for (q, &page) in page_list.iter().enumerate().take(j).skip(i + put_in) {
                    let dst = m.base + page * PAGE_SIZE as u64;
                    // SAFETY: a page after the moved ones: still there.
                    let page = unsafe { data.get(q * PAGE_SIZE, PAGE_SIZE) };
                    match inner.uffd.copy(dst, page) {
                        Ok(n) => {
                            let copied = n / PAGE_SIZE as u64;
                            inner.copied.fetch_add(copied, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed = Some(format!("placing a page of memory {}: {e}", m.index));
                            break 'runs;
                        }
                    }
                }
                for q in i..j {
                    st[page_list[q] as usize] = PRESENT;
                }
                placed += (j - i) as u64;
                i = j;
            }
        }
        let left = inner.remaining.fetch_sub(placed, Ordering::AcqRel) - placed;
        if let Some(why) = failed {
            return Err(why);
        }
        if left == 0 {
            self.finish();
        }
        Ok(left)
    }

    /// The source is lost: the memory will never be whole. The app's call
    /// is interrupted and every later call and capture refused; the
    /// registration ends (see the module documentation).
    pub fn fail(&self, why: &str) {
        {
            let mut f = self.inner.failed.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_some() || self.inner.done.load(Ordering::Acquire) {
                return;
            }
            *f = Some(why.to_string());
        }
        self.inner.interrupt.interrupt();
        self.finish();
    }

    /// Ends the registration and the fault thread (idempotent).
    fn finish(&self) {
        if self.inner.done.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.uffd.unregister();
        self.inner.uffd.stop();
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.finish();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The fault thread: resolves each fault by its page's state until the
/// pager is finished.
fn fault_loop(inner: &Inner) {
    while !inner.done.load(Ordering::Acquire) {
        let faults = match inner.uffd.wait() {
            Ok(f) => f,
            Err(e) => {
                fail_inner(inner, &format!("the fault handler cannot read faults: {e}"));
                return;
            }
        };
        for addr in faults {
            let Some((k, m)) = inner
                .mems
                .iter()
                .enumerate()
                .find(|(_, m)| addr >= m.base && addr < m.base + m.reserved)
            else {
                continue;
            };
            let page = (addr - m.base) / PAGE_SIZE as u64;
            let at = m.base + page * PAGE_SIZE as u64;
            let ask = {
                let mut pages = inner.pages.lock().unwrap_or_else(|e| e.into_inner());
                let st = &mut pages[k][page as usize];
                match *st {
                    LOCAL => {
                        // Never used on the source, or grown since: zero.
                        let _ = inner.uffd.zero(at, PAGE_SIZE as u64);
                        *st = PRESENT;
                        false
                    }
                    PRESENT => {
                        let _ = inner.uffd.wake(at, PAGE_SIZE as u64);
                        false
                    }
                    REMOTE => {
                        *st = ASKED;
                        true
                    }
                    _ => false,
                }
            };
            if ask
                && !(inner.want)(PageWant {
                    memory: m.index,
                    page,
                })
            {
                fail_inner(inner, "the page fetcher is gone");
                return;
            }
        }
    }
}

fn fail_inner(inner: &Inner, why: &str) {
    {
        let mut f = inner.failed.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_some() || inner.done.load(Ordering::Acquire) {
            return;
        }
        *f = Some(why.to_string());
    }
    inner.interrupt.interrupt();
    if !inner.done.swap(true, Ordering::AcqRel) {
        inner.uffd.unregister();
    }
}

#[cfg(test)]
mod tests;
