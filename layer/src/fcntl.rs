//! `fcntl(F_DUPFD)`/`fcntl(F_DUPFD_CLOEXEC)` duplicate descriptors too (Python's
//! `os.dup`, many runtimes), so the bookkeeping follows them like `dup`.
//!
//! `fcntl` is variadic. Rust cannot define a variadic function on stable, but on the
//! Linux x86_64 and aarch64 calling conventions a variadic integer or pointer argument
//! is passed exactly like a named one, so this definition with a third `usize`
//! parameter receives what the caller passed (whether an int, a pointer or nothing,
//! in which case the value is never used). The real function is called as variadic.
//! glibc ≥ 2.28 redirects `fcntl` to `fcntl64` for `_FILE_OFFSET_BITS=64` builds, so
//! both names are exported.

use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::fds;

type Variadic = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

static FCNTL: AtomicUsize = AtomicUsize::new(0);
static FCNTL64: AtomicUsize = AtomicUsize::new(0);

/// The next definition of `name`, or of `fcntl` where `name` does not exist (musl has
/// no `fcntl64`).
fn real(cache: &AtomicUsize, name: &CStr) -> usize {
    let cached = cache.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: NUL-terminated names; RTLD_NEXT is a valid pseudo-handle.
    let mut found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if found == 0 {
        // SAFETY: as above.
        found = unsafe { libc::dlsym(libc::RTLD_NEXT, c"fcntl".as_ptr()) } as usize;
    }
    cache.store(found, Ordering::Relaxed);
    found
}

/// Calls the real function and records a duplicate.
///
/// # Safety
/// libc's contract for `fcntl`.
unsafe fn call(cache: &AtomicUsize, name: &CStr, fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let addr = real(cache, name);
    if addr == 0 {
        crate::guard::set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: `addr` is libc's variadic `fcntl` (or `fcntl64`).
    let f = unsafe { std::mem::transmute::<usize, Variadic>(addr) };
    // SAFETY: the caller's arguments, passed on as they came.
    let rc = unsafe { f(fd, cmd, arg) };
    if rc >= 0 && (cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) {
        fds::copy(fd, rc);
    }
    rc
}

/// `fcntl(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: libc's contract.
    unsafe { call(&FCNTL, c"fcntl", fd, cmd, arg) }
}

/// `fcntl64(2)` (glibc's name for `fcntl` in 64-bit file offset builds).
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: libc's contract.
    unsafe { call(&FCNTL64, c"fcntl64", fd, cmd, arg) }
}
