//! Raw kernel interface. The `libc` crate lacks most of it, so the
//! constants and structs are defined here from the kernel's UAPI headers
//! (Linux 6.7+): `include/uapi/linux/userfaultfd.h` and
//! `include/uapi/linux/fs.h`. The ioctl numbers use the asm-generic
//! encoding (`include/uapi/asm-generic/ioctl.h`), which is why this module
//! is limited to x86_64, aarch64 and riscv64.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// include/uapi/asm-generic/ioctl.h
pub(crate) const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
pub(crate) const IOC_WRITE: u64 = 1;
pub(crate) const IOC_READ: u64 = 2;

// include/uapi/linux/userfaultfd.h
pub(crate) const UFFD_API: u64 = 0xAA;
pub(crate) const UFFDIO: u64 = 0xAA;
const _UFFDIO_REGISTER: u64 = 0x00;
const _UFFDIO_UNREGISTER: u64 = 0x01;
pub(crate) const _UFFDIO_WRITEPROTECT: u64 = 0x06;
const _UFFDIO_API: u64 = 0x3F;
/// `_IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)`
pub(crate) const UFFDIO_API: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_API,
    std::mem::size_of::<UffdioApi>(),
);
/// `_IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)`
pub(crate) const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_REGISTER,
    std::mem::size_of::<UffdioRegister>(),
);
/// `_IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)`
pub(crate) const UFFDIO_UNREGISTER: u64 = ioc(
    IOC_READ,
    UFFDIO,
    _UFFDIO_UNREGISTER,
    std::mem::size_of::<UffdioRange>(),
);
/// `_IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)`
pub(crate) const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_WRITEPROTECT,
    std::mem::size_of::<UffdioWriteprotect>(),
);
/// `USERFAULTFD_IOC_NEW`: `_IO(USERFAULTFD_IOC, 0x00)` on `/dev/userfaultfd` (Linux 6.1+).
const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0xAA, 0x00, 0);
/// Flag of `userfaultfd(2)` itself: handle faults from user mode only (Linux 5.11+).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
pub(crate) const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub(crate) const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub(crate) const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub(crate) const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub(crate) const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
pub(crate) struct UffdioApi {
    pub(crate) api: u64,
    pub(crate) features: u64,
    pub(crate) ioctls: u64,
}
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UffdioRange {
    pub(crate) start: u64,
    pub(crate) len: u64,
}
#[repr(C)]
pub(crate) struct UffdioRegister {
    pub(crate) range: UffdioRange,
    pub(crate) mode: u64,
    pub(crate) ioctls: u64,
}
#[repr(C)]
pub(crate) struct UffdioWriteprotect {
    pub(crate) range: UffdioRange,
    pub(crate) mode: u64,
}

// include/uapi/linux/fs.h
/// `_IOWR('f', 16, struct pm_scan_arg)`
pub(crate) const PAGEMAP_SCAN: u64 = ioc(
    IOC_READ | IOC_WRITE,
    b'f' as u64,
    16,
    std::mem::size_of::<PmScanArg>(),
);
pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub(crate) const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg`
#[repr(C)]
pub(crate) struct PmScanArg {
    pub(crate) size: u64,
    pub(crate) flags: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) walk_end: u64,
    pub(crate) vec: u64,
    pub(crate) vec_len: u64,
    pub(crate) max_pages: u64,
    pub(crate) category_inverted: u64,
    pub(crate) category_mask: u64,
    pub(crate) category_anyof_mask: u64,
    pub(crate) return_mask: u64,
}
/// `struct page_region`
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct PageRegion {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) categories: u64,
}

const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xaa00);

/// Page runs fetched per `PAGEMAP_SCAN` call (the call is repeated when
/// more runs are dirty).
pub(crate) const REGIONS_PER_SCAN: usize = 4096;

pub(crate) const WANTED_FEATURES: u64 =
    UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;

pub(crate) fn os_err(step: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("uffd dirty tracker: {step}: {e}"))
}

/// `ioctl(fd, req, arg)`, retried on EINTR.
pub(crate) fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> libc::c_int {
    loop {
        // SAFETY: `arg` is the `#[repr(C)]` struct the request expects,
        // valid for reads and writes for the duration of the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return rc;
    }
}

/// A fresh userfaultfd: the syscall (user-mode-only first, which needs
/// fewer privileges; the async write faults we use never reach a handler,
/// so kernel-mode writes such as `read(2)` into the memory are still
/// resolved and tracked), else `/dev/userfaultfd`.
pub(crate) fn open_uffd() -> io::Result<OwnedFd> {
    open_uffd_modes(true)
}

/// A fresh userfaultfd that also sees faults the kernel takes on the
/// process's behalf (a `read(2)` into a missing page): post-copy needs
/// those resolved, not failed with `EFAULT`, so no user-mode-only flag.
pub(crate) fn open_uffd_all_faults() -> io::Result<OwnedFd> {
    open_uffd_modes(false)
}

fn open_uffd_modes(user_mode_only_first: bool) -> io::Result<OwnedFd> {
    let base_flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let mut errors = Vec::new();
    let mut kind = io::ErrorKind::Unsupported;
    let modes = if user_mode_only_first {
        vec![base_flags | UFFD_USER_MODE_ONLY, base_flags]
    } else {
        vec![base_flags]
    };
    for flags in modes {
        // SAFETY: plain syscall with integer flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        kind = e.kind();
        errors.push(format!("userfaultfd(flags={flags:#x}): {e}"));
    }
    // SAFETY: NUL-terminated path literal.
    let dev = unsafe { libc::open(c"/dev/userfaultfd".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev >= 0 {
        // SAFETY: a new descriptor we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as an integer argument.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, base_flags) };
        if fd >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        errors.push(format!(
            "/dev/userfaultfd USERFAULTFD_IOC_NEW: {}",
            io::Error::last_os_error()
        ));
    } else {
        errors.push(format!(
            "open /dev/userfaultfd: {}",
            io::Error::last_os_error()
        ));
    }
    Err(io::Error::new(
        kind,
        format!("userfaultfd: cannot create one ({})", errors.join("; ")),
    ))
}

#[cfg(test)]
pub(crate) fn page_size_ok() -> bool {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) == super::PAGE as libc::c_long }
}
