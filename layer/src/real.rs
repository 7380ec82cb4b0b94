//! The real libc functions, found once with `dlsym(RTLD_NEXT, name)` and cached in an
//! atomic (no lock: safe across `fork` and from any thread). If a symbol cannot be
//! found (never on glibc or musl), the call fails with `ENOSYS` instead of crashing.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{addrinfo, hostent, sockaddr, socklen_t};

/// A lazily resolved symbol.
struct Sym {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Sym {
    const fn new(name: &'static CStr) -> Sym {
        Sym {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The address of the next definition of the symbol after this library, 0 if none.
    fn resolve(&self) -> usize {
        let cached = self.addr.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: `name` is a NUL-terminated string; RTLD_NEXT is a valid pseudo-handle.
        let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        self.addr.store(found, Ordering::Relaxed);
        found
    }
}

macro_rules! real_fns {
    ($( $(#[$doc:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty, else $fallback:expr ; )*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// The same contract as the libc function of that name.
            #[allow(clippy::unused_unit)] // the macro spells out every return type, `()` too
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static SYM: Sym = Sym::new(match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("symbol names have no NUL inside"),
                });
                let addr = SYM.resolve();
                if addr == 0 {
                    crate::guard::set_errno(libc::ENOSYS);
                    return $fallback;
                }
                // SAFETY: `addr` is the address of the libc function `$name`, whose C
                // signature this type spells out.
                let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> $ret>(addr) };
                // SAFETY: the caller keeps the function's contract.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

real_fns! {
    /// libc `socket`.
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int, else -1;
    /// libc `listen`.
    fn listen(fd: c_int, backlog: c_int) -> c_int, else -1;
    /// libc `accept`.
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, else -1;
    /// libc `accept4`.
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int, else -1;
    /// libc `connect`.
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, else -1;
    /// libc `getpeername`.
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, else -1;
    /// libc `close`.
    fn close(fd: c_int) -> c_int, else -1;
    /// libc `dup`.
    fn dup(fd: c_int) -> c_int, else -1;
    /// libc `dup2`.
    fn dup2(old: c_int, new: c_int) -> c_int, else -1;
    /// libc `dup3`.
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int, else -1;
    /// libc `getaddrinfo`.
    fn getaddrinfo(node: *const c_char, service: *const c_char, hints: *const addrinfo, res: *mut *mut addrinfo) -> c_int, else libc::EAI_SYSTEM;
    /// libc `freeaddrinfo`.
    fn freeaddrinfo(res: *mut addrinfo) -> (), else ();
    /// libc `gethostbyname`.
    fn gethostbyname(name: *const c_char) -> *mut hostent, else std::ptr::null_mut();
}

/// libc `getsockname`: not hooked, so the plain symbol is the real one.
///
/// # Safety
/// The same contract as libc's `getsockname`.
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    unsafe { libc::getsockname(fd, addr, len) }
}

/// The socket type (`SOCK_STREAM`, …) of `fd`, `None` if it is not a socket.
pub fn socket_type(fd: c_int) -> Option<c_int> {
    let mut ty: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `ty` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut c_int).cast::<c_void>(),
            &mut len,
        )
    };
    (rc == 0).then_some(ty)
}
