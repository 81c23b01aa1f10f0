//! The pager's kernel side: one userfaultfd in `MISSING` mode over every
//! paged memory, and an eventfd that stops the fault thread's wait. Raw
//! ioctls from `include/uapi/linux/userfaultfd.h` (the shared bindings are
//! `dirty/sys.rs`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::dirty::sys::{
    ioc, ioctl, open_uffd_all_faults, UffdioApi, UffdioRange, UffdioRegister, IOC_READ, IOC_WRITE,
    UFFDIO, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFD_API,
};

const _UFFDIO_WAKE: u64 = 0x02;
const _UFFDIO_COPY: u64 = 0x03;
const _UFFDIO_ZEROPAGE: u64 = 0x04;
const _UFFDIO_MOVE: u64 = 0x05;
/// `UFFDIO_MOVE` (Linux 6.8): pages are moved, not copied.
const UFFD_FEATURE_MOVE: u64 = 1 << 10;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `sizeof(struct uffd_msg)`.
const MSG_SIZE: usize = 32;
/// Faults read per wake-up (the rest wait for the next read).
const MSGS_PER_READ: usize = 64;

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `_IOWR(UFFDIO, _UFFDIO_COPY, struct uffdio_copy)`
const UFFDIO_COPY: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_COPY,
    std::mem::size_of::<UffdioCopy>(),
);
/// `_IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)`
const UFFDIO_MOVE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_MOVE,
    std::mem::size_of::<UffdioMove>(),
);
/// `_IOWR(UFFDIO, _UFFDIO_ZEROPAGE, struct uffdio_zeropage)`
const UFFDIO_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_ZEROPAGE,
    std::mem::size_of::<UffdioZeropage>(),
);
/// `_IOR(UFFDIO, _UFFDIO_WAKE, struct uffdio_range)`
const UFFDIO_WAKE: u64 = ioc(
    IOC_READ,
    UFFDIO,
    _UFFDIO_WAKE,
    std::mem::size_of::<UffdioRange>(),
);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
const _: () = assert!(UFFDIO_MOVE == 0xc028_aa05);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);

fn os_err(step: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("post-copy pager: {step}: {e}"))
}

fn errno() -> Option<i32> {
    io::Error::last_os_error().raw_os_error()
}

pub(super) struct Uffd {
    fd: OwnedFd,
    stop: OwnedFd,
    /// Registered ranges: (start, length).
    ranges: Vec<(u64, u64)>,
    /// Whether every range takes `UFFDIO_MOVE`.
    moves: bool,
}

/// Whether a userfaultfd that takes kernel faults too opens, speaks the
/// API and registers an anonymous range in `MISSING` mode.
pub(super) fn probe() -> Result<(), String> {
    const LEN: usize = 1 << 16;
    // SAFETY: a fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("probe mapping: {}", io::Error::last_os_error()));
    }
    let r = Uffd::start(&[(p as u64, LEN as u64)]).map(|u| u.unregister());
    // SAFETY: our own mapping, of that length; the uffd is closed.
    unsafe { libc::munmap(p, LEN) };
    r.map_err(|e| e.to_string())
}

impl Uffd {
    /// Registers every `(base, reserved)` in `MISSING` mode.
    pub(super) fn start(ranges: &[(u64, u64)]) -> io::Result<Uffd> {
        // SAFETY: sysconf has no memory-safety preconditions.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != crate::snapshot::PAGE_SIZE as i64 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "post-copy pager: the system page size is not 4 KiB",
            ));
        }
        // With `UFFDIO_MOVE` where the kernel has it; a descriptor whose
        // API call failed is not asked again, so another is opened.
        let (fd, moves) = {
            let fd = open_uffd_all_faults()?;
            let mut api = UffdioApi {
                api: UFFD_API,
                features: UFFD_FEATURE_MOVE,
                ioctls: 0,
            };
            if ioctl(&fd, UFFDIO_API, &mut api) >= 0 {
                (fd, true)
            } else {
                let fd = open_uffd_all_faults()?;
                let mut api = UffdioApi {
                    api: UFFD_API,
                    features: 0,
                    ioctls: 0,
                };
                if ioctl(&fd, UFFDIO_API, &mut api) < 0 {
                    return Err(os_err("UFFDIO_API"));
                }
                (fd, false)
            }
        };
        // SAFETY: eventfd with integer flags; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(os_err("eventfd"));
        }
        // SAFETY: a new descriptor we own.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let mut me = Uffd {
            fd,
            stop,
            ranges: Vec::new(),
            moves,
        };
        for &(base, reserved) in ranges {
            let mut reg = UffdioRegister {
                range: UffdioRange {
                    start: base,
                    len: reserved,
                },
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            if ioctl(&me.fd, UFFDIO_REGISTER, &mut reg) < 0 {
                return Err(os_err(&format!(
                    "UFFDIO_REGISTER(MISSING) of {reserved} bytes at {base:#x}"
                )));
            }
            me.ranges.push((base, reserved));
            me.moves &= reg.ioctls & (1 << _UFFDIO_MOVE) != 0;
            let need = (1 << _UFFDIO_COPY) | (1 << _UFFDIO_ZEROPAGE) | (1 << _UFFDIO_WAKE);
            if reg.ioctls & need != need {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "post-copy pager: the range does not support UFFDIO_COPY/ZEROPAGE/WAKE (ioctls {:#x})",
                        reg.ioctls
                    ),
                ));
            }
        }
        Ok(me)
    }

    /// Discards `[start, start+len)` of a registered range: its pages fault
    /// again on their next touch.
    pub(super) fn discard(&self, start: u64, len: u64) -> io::Result<()> {
        // SAFETY: the range lies in the accessible part of a memory the
        // caller owns and does not use meanwhile (no call runs); discarding
        // only makes its pages fault again, it unmaps nothing.
        let rc = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(os_err("madvise(MADV_DONTNEED)"));
        }
        Ok(())
    }

    /// Waits for faults (or the stop signal: then no address) and returns
    /// the addresses of the faults read.
    pub(super) fn wait(&self) -> io::Result<Vec<u64>> {
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            return if errno() == Some(libc::EINTR) {
                Ok(vec![])
            } else {
                Err(os_err("poll"))
            };
        }
        if fds[1].revents != 0 {
            return Ok(vec![]);
        }
        let mut buf = [0u8; MSG_SIZE * MSGS_PER_READ];
        // SAFETY: reading into a buffer we own, of that length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return match errno() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(vec![]),
                _ => Err(os_err("read")),
            };
        }
        Ok(buf[..n as usize]
            .chunks_exact(MSG_SIZE)
            .filter(|m| m[0] == UFFD_EVENT_PAGEFAULT)
            .map(|m| u64::from_ne_bytes(m[16..24].try_into().expect("8 bytes")))
            .collect())
    }

    /// Fills a missing range with zeros (and wakes its waiters); stops at
    /// a page present already.
    pub(super) fn zero(&self, start: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let mut z = UffdioZeropage {
                range: UffdioRange {
                    start: start + done,
                    len: len - done,
                },
                mode: 0,
                zeropage: 0,
            };
            let rc = ioctl(&self.fd, UFFDIO_ZEROPAGE, &mut z);
            if rc >= 0 || errno() == Some(libc::EEXIST) {
                return Ok(());
            }
            if errno() != Some(libc::EAGAIN) {
                return Err(os_err("UFFDIO_ZEROPAGE"));
            }
            // Interrupted partway: the pages filled so far are in; go on
            // after them.
            if z.zeropage > 0 {
                done += z.zeropage as u64;
            }
        }
        Ok(())
    }

    /// Wakes the threads waiting on a range that is filled already.
    pub(super) fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = UffdioRange { start, len };
        if ioctl(&self.fd, UFFDIO_WAKE, &mut r) < 0 {
            return Err(os_err("UFFDIO_WAKE"));
        }
        Ok(())
    }

    /// Copies `src` into the missing range at `dst` (waking its waiters).
    /// Returns how many bytes it copied from the start: fewer than all when
    /// a page was present already, or the range spans two mappings
    /// (nothing after that point was copied; the caller goes page by page).
    pub(super) fn copy(&self, dst: u64, src: &[u8]) -> io::Result<u64> {
        let mut done = 0u64;
        let len = src.len() as u64;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY (of the copy itself): the kernel reads `len - done`
            // bytes from `src`, a live slice of that length, and fills only
            // pages still missing in a range registered to this uffd; it
            // never overwrites a present page (EEXIST) nor writes outside
            // a registered range (ENOENT/EINVAL), so no memory Rust knows
            // about is changed under it.
            let rc = ioctl(&self.fd, UFFDIO_COPY, &mut c);
            if c.copy > 0 {
                done += c.copy as u64;
            }
            if rc >= 0 {
                continue;
            }
            match errno() {
                Some(libc::EEXIST) => return Ok(done),
                Some(libc::EAGAIN) => continue,
                // One copy must lie in one mapping (VMA), and a memory
                // whose pages came from the resident stock is several
                // (`crate::resident`): a range over a boundary is refused
                // whole. Page by page, each lies in one; a page that is
                // truly outside the registration still fails there.
                Some(libc::ENOENT) if len - done > crate::snapshot::PAGE_SIZE as u64 => {
                    return Ok(done)
                }
                _ => return Err(os_err("UFFDIO_COPY")),
            }
        }
        Ok(done)
    }

    /// Whether [`Uffd::move_pages`] can work here.
    pub(super) fn moves(&self) -> bool {
        self.moves
    }

    /// Moves the pages of `[src, src + len)` (resident pages of a private
    /// anonymous mapping this process owns alone) to the missing range at
    /// `dst` (waking its waiters): page-table entries change hands, no
    /// byte is copied and no page allocated. One move must lie in one
    /// mapping at each end, and the memory and the staging pages can each
    /// be several (`crate::resident`): a range the kernel refuses whole is
    /// tried again in halves, down to a page, so each part moves. Fewer
    /// than `len`: not all moved (a page of `dst` was present, or a page of
    /// `src` is shared): what did not move stays in `src`, and the caller
    /// goes on otherwise. Returns how many bytes moved (from the start).
    ///
    /// # Safety
    /// `[src, src + len)` must be memory no one uses any more: its pages
    /// leave it (reading it afterwards faults in zeros).
    pub(super) unsafe fn move_pages(&self, dst: u64, src: u64, len: u64) -> io::Result<u64> {
        let page = crate::snapshot::PAGE_SIZE as u64;
        let mut done = 0u64;
        // How much to try at once: all that is left, or less after a
        // refusal (doubled again after each move that worked).
        let mut step = len;
        while done < len {
            let ask = step.min(len - done);
            let mut m = UffdioMove {
                dst: dst + done,
                src: src + done,
                len: ask,
                mode: 0,
                moved: 0,
            };
            let rc = ioctl(&self.fd, UFFDIO_MOVE, &mut m);
            let moved = m.moved.max(0) as u64;
            done += moved;
            if rc >= 0 {
                // Back up to larger moves once past a mapping's end.
                step = ask.saturating_mul(2);
                continue;
            }
            match errno() {
                Some(libc::EAGAIN) => continue,
                // Refused whole: the range crosses a mapping's end (at
                // either side). Halves, down to one page.
                Some(libc::EINVAL | libc::ENOENT) if moved == 0 && ask > page => {
                    step = (ask / 2).div_ceil(page) * page;
                }
                Some(libc::EEXIST | libc::EINVAL | libc::EBUSY | libc::ENOENT) => return Ok(done),
                _ => return Err(os_err("UFFDIO_MOVE")),
            }
        }
        Ok(done)
    }

    /// Ends every registration: waiting faults are retried as plain ones.
    pub(super) fn unregister(&self) {
        for &(start, len) in &self.ranges {
            let mut r = UffdioRange { start, len };
            let _ = ioctl(&self.fd, UFFDIO_UNREGISTER, &mut r);
        }
    }

    /// Makes the fault thread's wait return.
    pub(super) fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes we own to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}
