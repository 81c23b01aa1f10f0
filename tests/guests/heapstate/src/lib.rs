//! Test guest with its state on the heap, for snapshot and dirty-page tests.
//!
//! Every export takes and returns numbers, so tests call them directly:
//!
//! | export | does |
//! |---|---|
//! | `push(v) -> len` | appends `v` to a `Vec<i64>` and counts it in a `HashMap<i64, i64>` |
//! | `sum() -> i64` | wrapping sum of the `Vec` |
//! | `len() -> i64` | length of the `Vec` |
//! | `count(v) -> i64` | how many times `v` was pushed (from the `HashMap`) |
//! | `digest() -> i64` | a hash of all heap state: the `Vec`, the map (sorted) and the buffer |
//! | `grow(pages) -> i64` | grows the big buffer by `pages` x 64 KiB, every new byte written; returns the memory size in 64 KiB pages |
//! | `touch(n, seed) -> i64` | writes 8 bytes into each of `n` pseudo-random 4 KiB pages of the buffer; returns how many distinct pages were written (-1 without a buffer) |
//! | `buffer_ptr() -> i64`, `buffer_pages() -> i64` | where the buffer is (4 KiB-aligned) and how many 4 KiB pages it spans |
//! | `memory_pages() -> i64` | `memory.size` in 64 KiB pages |
//! | `panic_after_push(v) -> i64` | pushes `v`, then panics (traps): state changed by a call that failed |
//! | `spin_forever() -> i64` | never returns (for timeouts) |
//! | `file_write(n) -> i64` | writes `/data/notes/n.txt` (n as text, n times); returns its length, -1 on error |
//! | `file_remove(n) -> i64` | removes `/data/notes/n.txt`; 0, or -1 on error |
//! | `file_sum() -> i64` | a hash of every file in `/data/notes` (names and contents); -1 if it cannot read them |
//!
//! The state lives in a plain global, not a `RefCell`, so a trap cannot leave
//! it locked.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};

tern_sdk::export_reactor!();

const HOST_PAGE: usize = 4096;
const WASM_PAGE: usize = 65536;

/// A 4 KiB-aligned buffer, so its 4 KiB pages are the host's pages.
struct Buffer {
    ptr: *mut u8,
    len: usize,
}

impl Buffer {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, HOST_PAGE).expect("buffer layout")
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live allocation owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `grow` with this layout.
        unsafe { dealloc(self.ptr, Buffer::layout(self.len)) }
    }
}

#[derive(Default)]
struct State {
    list: Vec<i64>,
    counts: HashMap<i64, i64>,
    buffer: Option<Buffer>,
}

struct Global(UnsafeCell<Option<State>>);
// SAFETY: one thread; the host never nests calls into the guest.
unsafe impl Sync for Global {}
static STATE: Global = Global(UnsafeCell::new(None));

fn state() -> &'static mut State {
    // SAFETY: exports run one at a time and none of them holds the reference
    // across another export call.
    unsafe { (*STATE.0.get()).get_or_insert_with(State::default) }
}

/// 64-bit FNV-1a over 8-byte words.
struct Hasher(u64);

impl Hasher {
    fn new() -> Self {
        Hasher(0xcbf2_9ce4_8422_2325)
    }
    fn word(&mut self, w: u64) {
        self.0 ^= w;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &x in chunks.remainder() {
            self.word(u64::from(x));
        }
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[unsafe(no_mangle)]
pub extern "C" fn push(v: i64) -> i64 {
    let s = state();
    s.list.push(v);
    *s.counts.entry(v).or_insert(0) += 1;
    s.list.len() as i64
}

#[unsafe(no_mangle)]
pub extern "C" fn sum() -> i64 {
    state().list.iter().fold(0i64, |a, &v| a.wrapping_add(v))
}

#[unsafe(no_mangle)]
pub extern "C" fn len() -> i64 {
    state().list.len() as i64
}

#[unsafe(no_mangle)]
pub extern "C" fn count(v: i64) -> i64 {
    state().counts.get(&v).copied().unwrap_or(0)
}

#[unsafe(no_mangle)]
pub extern "C" fn digest() -> i64 {
    let s = state();
    let mut h = Hasher::new();
    h.word(s.list.len() as u64);
    for &v in &s.list {
        h.word(v as u64);
    }
    let mut counts: Vec<(i64, i64)> = s.counts.iter().map(|(&k, &v)| (k, v)).collect();
    counts.sort_unstable();
    h.word(counts.len() as u64);
    for (k, v) in counts {
        h.word(k as u64);
        h.word(v as u64);
    }
    match &s.buffer {
        Some(b) => {
            h.word(b.len as u64);
            h.bytes(b.bytes());
        }
        None => h.word(u64::MAX),
    }
    h.0 as i64
}

#[unsafe(no_mangle)]
pub extern "C" fn grow(pages: i64) -> i64 {
    let s = state();
    let old_len = s.buffer.as_ref().map_or(0, |b| b.len);
    let add = usize::try_from(pages.max(0))
        .unwrap_or(0)
        .saturating_mul(WASM_PAGE);
    let new_len = old_len.saturating_add(add);
    if add > 0 {
        // SAFETY: new_len > 0.
        let ptr = unsafe { alloc_zeroed(Buffer::layout(new_len)) };
        if ptr.is_null() {
            return -1;
        }
        let mut fresh = Buffer { ptr, len: new_len };
        let bytes = fresh.bytes_mut();
        if let Some(old) = &s.buffer {
            bytes[..old_len].copy_from_slice(old.bytes());
        }
        // Write every new byte so the pages are really in use.
        for (i, b) in bytes[old_len..].iter_mut().enumerate() {
            *b = ((old_len + i) % 251) as u8 | 1;
        }
        s.buffer = Some(fresh);
    }
    memory_pages()
}

#[unsafe(no_mangle)]
pub extern "C" fn touch(n: i64, seed: i64) -> i64 {
    let Some(buf) = state().buffer.as_mut() else {
        return -1;
    };
    let pages = buf.len / HOST_PAGE;
    let mut x = (seed as u64) | 1;
    let mut seen = HashSet::new();
    let bytes = buf.bytes_mut();
    for i in 0..n.max(0) as u64 {
        let page = (xorshift(&mut x) % pages as u64) as usize;
        let at = page * HOST_PAGE + (i as usize % (HOST_PAGE / 8)) * 8;
        bytes[at..at + 8].copy_from_slice(&xorshift(&mut x).to_le_bytes());
        seen.insert(page);
    }
    seen.len() as i64
}

#[unsafe(no_mangle)]
pub extern "C" fn buffer_ptr() -> i64 {
    state().buffer.as_ref().map_or(0, |b| b.ptr as usize as i64)
}

#[unsafe(no_mangle)]
pub extern "C" fn buffer_pages() -> i64 {
    state()
        .buffer
        .as_ref()
        .map_or(0, |b| (b.len / HOST_PAGE) as i64)
}

#[unsafe(no_mangle)]
pub extern "C" fn file_write(n: i64) -> i64 {
    let text = n.to_string().repeat(n.clamp(0, 1000) as usize);
    let dir = std::path::Path::new("/data/notes");
    match std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(format!("{n}.txt")), &text)) {
        Ok(()) => text.len() as i64,
        Err(_) => -1,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn file_remove(n: i64) -> i64 {
    match std::fs::remove_file(format!("/data/notes/{n}.txt")) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn file_sum() -> i64 {
    let Ok(entries) = std::fs::read_dir("/data/notes") else {
        return -1;
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for e in entries {
        let Ok(e) = e else { return -1 };
        let Ok(bytes) = std::fs::read(e.path()) else { return -1 };
        files.push((e.file_name().to_string_lossy().into_owned(), bytes));
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in &files {
        for b in name.bytes().chain(bytes.iter().copied()) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    (h >> 1) as i64
}

#[unsafe(no_mangle)]
pub extern "C" fn memory_pages() -> i64 {
    #[cfg(target_family = "wasm")]
    return core::arch::wasm32::memory_size(0) as i64;
    #[cfg(not(target_family = "wasm"))]
    return 0;
}

#[unsafe(no_mangle)]
pub extern "C" fn panic_after_push(v: i64) -> i64 {
    push(v);
    panic!("panic_after_push({v}) panics on purpose");
}

#[unsafe(no_mangle)]
pub extern "C" fn spin_forever() -> i64 {
    let mut x = 1u64;
    loop {
        x = std::hint::black_box(xorshift(&mut x));
    }
}
