//! The userfaultfd tracker: async write-protection of a memory's pages, read
//! back and re-armed with the `PAGEMAP_SCAN` ioctl, so a round costs
//! O(written pages). [`UffdTracker`] checks its arguments and speaks the
//! [`DirtyTracker`] interface; `kernel::Uffd` registers, protects and scans
//! through the raw bindings of `sys.rs` (Linux on x86_64, aarch64 and
//! riscv64; elsewhere it fails to start and `start_tracking` hashes).

use std::io;

use super::{DirtyTracker, TrackerKind, PAGE};
use kernel::Uffd;

/// userfaultfd write-protect in async mode + the `PAGEMAP_SCAN` ioctl
/// (Linux >= 6.7). Registers the WHOLE reservation `[base, base+reserved)`
/// and write-protects its accessible prefix; a collect that finds the memory
/// grown reports the pages of the new part that hold anything (present and
/// not the shared zero page, or swapped) and arms that part too.
///
/// Kernel needs: `userfaultfd(2)` permitted (root, `CAP_SYS_PTRACE`,
/// `vm.unprivileged_userfaultfd=1`, or access to `/dev/userfaultfd`), the
/// features `UFFD_FEATURE_WP_ASYNC` and `UFFD_FEATURE_WP_UNPOPULATED`, and
/// `PAGEMAP_SCAN`; the system page size must be [`PAGE`].
///
/// Costs (Linux 6.18, measured): write-protecting installs a marker in every
/// never-populated page table entry of the range, so `start` costs in
/// proportion to the accessible size (protecting a whole 4 GiB reservation
/// took 20-40 ms and 8 MiB of page tables, which is why only the accessible
/// prefix is protected); a `collect` costs O(written pages), well
/// under a millisecond for thousands of pages; the guest's first write to a
/// protected page costs about 1 µs more than an unarmed write. Dropping the
/// tracker unregisters the range, clears the protection (~10-20 ms for
/// 4 GiB) and closes the descriptors; the memory stays readable and writable
/// with its content.
///
/// One tracker per memory: a second `start` on a tracked memory fails
/// (`EBUSY`), and [`start_tracking`](super::start_tracking) then falls back
/// to hashing.
#[derive(Debug)]
pub struct UffdTracker {
    inner: Uffd,
}

impl UffdTracker {
    /// Registers `[base, base+reserved)` for async write-protection and
    /// protects it all. `base` must be page-aligned and `reserved` a multiple
    /// of [`PAGE`]; `size <= reserved` is the accessible prefix now.
    pub fn start(base: *mut u8, reserved: usize, size: usize) -> io::Result<UffdTracker> {
        if base.is_null() || !(base as usize).is_multiple_of(PAGE) {
            return Err(invalid(format!(
                "uffd dirty tracker: memory base {base:p} is not page-aligned"
            )));
        }
        if reserved == 0
            || !reserved.is_multiple_of(PAGE)
            || size > reserved
            || (base as usize).checked_add(reserved).is_none()
        {
            return Err(invalid(format!(
                "uffd dirty tracker: bad reservation of {reserved} bytes (size {size}): must be a non-zero multiple of {PAGE} not below size"
            )));
        }
        Ok(UffdTracker {
            inner: Uffd::start(base as usize, reserved, size)?,
        })
    }

    /// The userfaultfd features negotiated with the kernel (`UFFD_FEATURE_*`).
    pub fn features(&self) -> u64 {
        self.inner.features()
    }
}

impl DirtyTracker for UffdTracker {
    fn collect(&mut self, base: *const u8, size: usize) -> io::Result<Vec<u64>> {
        self.inner.collect(base as usize, size)
    }

    fn kind(&self) -> TrackerKind {
        TrackerKind::Uffd
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod kernel {
    //! The tracker's kernel side: one userfaultfd and `/proc/self/pagemap`
    //! per tracked memory.

    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::{invalid, PAGE};
    use crate::dirty::sys::*;

    #[derive(Debug)]
    pub(super) struct Uffd {
        uffd: OwnedFd,
        pagemap: OwnedFd,
        base: u64,
        reserved: u64,
        /// Bytes from `base` write-protected so far: the accessible size at
        /// start, extended when a collect sees the memory grown.
        protected: u64,
        features: u64,
        regions: Vec<PageRegion>,
    }

    impl Uffd {
        pub(super) fn start(base: usize, reserved: usize, size: usize) -> io::Result<Uffd> {
            // SAFETY: sysconf has no memory-safety preconditions.
            let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if page_size != PAGE as libc::c_long {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("uffd dirty tracker: system page size is {page_size}, not {PAGE}"),
                ));
            }
            // SAFETY: NUL-terminated path literal.
            let pm = unsafe {
                libc::open(
                    c"/proc/self/pagemap".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if pm < 0 {
                return Err(os_err("open /proc/self/pagemap"));
            }
            // SAFETY: a new descriptor we own.
            let pagemap = unsafe { OwnedFd::from_raw_fd(pm) };
            let uffd = open_uffd()?;

            let mut api = UffdioApi {
                api: UFFD_API,
                features: WANTED_FEATURES,
                ioctls: 0,
            };
            if ioctl(&uffd, UFFDIO_API, &mut api) < 0 {
                return Err(os_err(
                    "UFFDIO_API with UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED (needs Linux >= 6.7 with CONFIG_PTE_MARKER_UFFD_WP)",
                ));
            }
            if api.features & WANTED_FEATURES != WANTED_FEATURES {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "uffd dirty tracker: UFFDIO_API: kernel offers features {:#x}, missing {:#x}",
                        api.features,
                        WANTED_FEATURES & !api.features
                    ),
                ));
            }

            let range = UffdioRange {
                start: base as u64,
                len: reserved as u64,
            };
            let mut reg = UffdioRegister {
                range,
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            if ioctl(&uffd, UFFDIO_REGISTER, &mut reg) < 0 {
                return Err(os_err(&format!(
                    "UFFDIO_REGISTER(WP) of {reserved} bytes at {base:#x}"
                )));
            }
            // From here on, dropping `me` unregisters.
            let mut me = Uffd {
                uffd,
                pagemap,
                base: base as u64,
                reserved: reserved as u64,
                protected: 0,
                features: WANTED_FEATURES,
                regions: vec![PageRegion::default(); REGIONS_PER_SCAN],
            };
            if reg.ioctls & (1 << _UFFDIO_WRITEPROTECT) == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("uffd dirty tracker: UFFDIO_REGISTER: range does not support UFFDIO_WRITEPROTECT (ioctls {:#x})", reg.ioctls),
                ));
            }
            // Protect the accessible prefix. PAGEMAP_SCAN counts every entry
            // that is not write-protected as written, an empty
            // (never-populated) one included; protecting puts a uffd-wp
            // marker in every empty entry (WP_UNPOPULATED), so untouched
            // pages and pages only read (the zero page inherits the marker)
            // are armed, and a page discarded with MADV_DONTNEED (which drops
            // the marker) is reported. Pages made accessible later by growth
            // are armed by the collect that first sees them (`arm_growth`):
            // protecting the whole 4 GiB reservation up front would cost
            // 20-40 ms and 8 MiB of page tables, inside the app's pause.
            me.protect(size)?;
            // One scan now: checks that PAGEMAP_SCAN exists and that every VMA
            // of the memory accepted async write-protection. Nothing was
            // written since the protection above, so nothing is lost.
            me.scan(size)
                .map_err(|e| io::Error::new(e.kind(), format!("{e} (while arming)")))?;
            Ok(me)
        }

        pub(super) fn features(&self) -> u64 {
            self.features
        }

        pub(super) fn collect(&mut self, base: usize, size: usize) -> io::Result<Vec<u64>> {
            if base as u64 != self.base {
                return Err(invalid(format!(
                    "uffd dirty tracker: collect for base {base:#x}, but the tracked memory starts at {:#x}",
                    self.base
                )));
            }
            if size as u64 > self.reserved {
                return Err(invalid(format!(
                    "uffd dirty tracker: collect for {size} bytes, beyond the tracked reservation of {} bytes",
                    self.reserved
                )));
            }
            self.scan(size)
        }

        /// Write-protects `[base+protected, base+size)` (rounded up to whole
        /// pages) and extends `protected` to it.
        fn protect(&mut self, size: usize) -> io::Result<()> {
            let end = (size.div_ceil(PAGE) * PAGE) as u64;
            if end <= self.protected {
                return Ok(());
            }
            let mut wp = UffdioWriteprotect {
                range: UffdioRange {
                    start: self.base + self.protected,
                    len: end - self.protected,
                },
                mode: UFFDIO_WRITEPROTECT_MODE_WP,
            };
            if ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp) < 0 {
                return Err(os_err(&format!(
                    "UFFDIO_WRITEPROTECT of [{:#x}, {:#x})",
                    wp.range.start,
                    wp.range.start + wp.range.len
                )));
            }
            self.protected = end;
            Ok(())
        }

        /// The memory grew to `size` since the last look: the pages of the
        /// new part that hold anything (present and not the shared zero
        /// page, or swapped out) count as written; then the new part is
        /// armed like the rest. The guest does not run during a collect (the
        /// app's actor calls it between two calls), so no write falls
        /// between the look and the protection.
        fn arm_growth(&mut self, size: usize) -> io::Result<Vec<u64>> {
            let end = self.base + (size.div_ceil(PAGE) * PAGE) as u64;
            let start = self.base + self.protected;
            if end <= start {
                return Ok(Vec::new());
            }
            let written = self.pagemap_scan(
                start,
                end,
                0,
                PAGE_IS_PFNZERO,
                PAGE_IS_PFNZERO,
                PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                "the grown part",
            )?;
            self.protect(size)?;
            Ok(written)
        }

        /// Reports the written pages of `[base, base+size)` and re-protects them.
        fn scan(&mut self, size: usize) -> io::Result<Vec<u64>> {
            let old_end = self.base + self.protected;
            let end = (self.base + (size.div_ceil(PAGE) * PAGE) as u64).min(old_end);
            let mut dirty = self.pagemap_scan(
                self.base,
                end,
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                0,
                PAGE_IS_WRITTEN,
                0,
                "the memory",
            )?;
            dirty.extend(self.arm_growth(size)?);
            Ok(dirty)
        }

        /// Pages of `[start, end)` matching the categories, as page indices
        /// from `base` (see PAGEMAP_SCAN in the kernel's pagemap docs).
        #[allow(clippy::too_many_arguments)]
        fn pagemap_scan(
            &mut self,
            mut start: u64,
            end: u64,
            flags: u64,
            category_inverted: u64,
            category_mask: u64,
            category_anyof_mask: u64,
            what: &str,
        ) -> io::Result<Vec<u64>> {
            let mut dirty = Vec::new();
            while start < end {
                let mut arg = PmScanArg {
                    size: std::mem::size_of::<PmScanArg>() as u64,
                    flags,
                    start,
                    end,
                    walk_end: 0,
                    vec: self.regions.as_mut_ptr() as u64,
                    vec_len: self.regions.len() as u64,
                    max_pages: 0,
                    category_inverted,
                    category_mask,
                    category_anyof_mask,
                    return_mask: category_mask | category_anyof_mask,
                };
                let n = ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg);
                if n < 0 {
                    let e = io::Error::last_os_error();
                    let why = match e.raw_os_error() {
                        Some(libc::ENOTTY) | Some(libc::EINVAL) => " (kernel without PAGEMAP_SCAN, Linux < 6.7?)",
                        Some(libc::EPERM) => {
                            " (part of the memory is not armed for async write-protection: remapped after start?)"
                        }
                        _ => "",
                    };
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "uffd dirty tracker: PAGEMAP_SCAN of {what} [{start:#x}, {end:#x}): {e}{why}"
                        ),
                    ));
                }
                let n = (n as usize).min(self.regions.len());
                for r in &self.regions[..n] {
                    let first = (r.start - self.base) / PAGE as u64;
                    let last = (r.end - self.base) / PAGE as u64;
                    dirty.extend(first..last);
                }
                if arg.walk_end >= end {
                    break;
                }
                if arg.walk_end <= start {
                    return Err(io::Error::other(format!(
                        "uffd dirty tracker: PAGEMAP_SCAN made no progress at {start:#x} (walk_end {:#x})",
                        arg.walk_end
                    )));
                }
                start = arg.walk_end;
            }
            Ok(dirty)
        }
    }

    impl Drop for Uffd {
        fn drop(&mut self) {
            // Unregistering clears the write-protection of the range; closing
            // the descriptor (OwnedFd) afterwards would do it too. Errors are
            // ignored: there is nothing left to undo.
            let mut range = UffdioRange {
                start: self.base,
                len: self.reserved,
            };
            let _ = ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut range);
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
mod kernel {
    //! No userfaultfd here: starting a tracker fails.

    use std::io;

    #[derive(Debug)]
    pub(super) struct Uffd;

    impl Uffd {
        pub(super) fn start(_base: usize, _reserved: usize, _size: usize) -> io::Result<Uffd> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "uffd dirty tracker: needs Linux (x86_64, aarch64 or riscv64)",
            ))
        }
        pub(super) fn features(&self) -> u64 {
            0
        }
        pub(super) fn collect(&mut self, _base: usize, _size: usize) -> io::Result<Vec<u64>> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "uffd dirty tracker: unsupported platform",
            ))
        }
    }
}
