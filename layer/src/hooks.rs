//! The exported socket and descriptor functions that replace libc's (see the crate
//! doc). Each one calls the real function for everything it does not divert, and runs
//! its own logic inside [`quietly`] (no panic escapes, no re-entry, `errno` kept).

use std::ffi::c_int;
use std::net::SocketAddr;
use std::time::Duration;

use libc::{sockaddr, socklen_t};

use crate::client::{self, Answer, Question};
use crate::fds::{self, Entry};
use crate::guard::{quietly, set_errno};
use crate::{addr, real};

/// How long a `listen` report may take.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the CLI may take to open a connection from the pod (it bounds its own
/// dial below this).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `peer` question may take (it is a map lookup in the CLI).
const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// `socket(2)`: a new descriptor starts with no entry, even if its number was closed
/// behind the layer's back (`fclose`, `close_range`, a raw system call).
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    fds::clear(fd);
    fd
}

/// `listen(2)`: a TCP listener is reported to the CLI, which then delivers the
/// session's requests for that port to it.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let rc = unsafe { real::listen(fd, backlog) };
    if rc == 0 && client::active() {
        let _ = quietly(|| report_listener(fd));
    }
    rc
}

fn report_listener(fd: c_int) {
    if real::socket_type(fd) != Some(libc::SOCK_STREAM) {
        return;
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: `storage` has room for `len` bytes.
    let rc = unsafe { real::getsockname(fd, std::ptr::addr_of_mut!(storage).cast(), &mut len) };
    // SAFETY: the kernel wrote `len` bytes.
    let Some(local) = (rc == 0)
        .then(|| unsafe { addr::read(std::ptr::addr_of!(storage).cast(), len) })
        .flatten()
    else {
        return;
    };
    let question = Question::Listen {
        port: local.port(),
        addr: local.ip().to_string(),
    };
    // Only the session's ports get connections from the CLI: accepts on any other
    // listener stay on the fast path.
    if client::ask(&question, LISTEN_TIMEOUT).is_some_and(|a| a.session) {
        fds::set(fd, Entry::Listener);
    }
}

/// `accept(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let new = unsafe { real::accept(fd, addr, len) };
    // SAFETY: the caller's buffers, as the kernel just wrote them.
    unsafe { accepted(fd, new, addr, len) };
    new
}

/// `accept4(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let new = unsafe { real::accept4(fd, addr, len, flags) };
    // SAFETY: the caller's buffers, as the kernel just wrote them.
    unsafe { accepted(fd, new, addr, len) };
    new
}

/// After an accept: a connection the CLI made on a pod client's behalf gets that
/// client's address (in the caller's buffer now, and from `getpeername` later).
///
/// # Safety
/// `addr`/`len` are null or the caller's buffers of an accept that returned `new`.
unsafe fn accepted(listener: c_int, new: c_int, addr: *mut sockaddr, len: *mut socklen_t) {
    if new < 0 {
        return;
    }
    fds::clear(new);
    if fds::get(listener) != Entry::Listener {
        return; // the fast path: a listener the CLI does not know
    }
    let _ = quietly(|| {
        let peer = peer_of(new)?;
        if !addr::always_local(peer.ip()) {
            return None;
        }
        let answer = client::ask(&Question::Peer { port: peer.port() }, PEER_TIMEOUT)?;
        let original: SocketAddr = answer.addr?.parse().ok()?;
        fds::set(new, Entry::Peer(original));
        let family = if peer.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        // SAFETY: the caller's buffers (this function's contract).
        unsafe { addr::write_out(original, family, addr, len) };
        Some(())
    });
}

/// The real peer address of `fd`.
fn peer_of(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: `storage` has room for `len` bytes.
    let rc = unsafe { real::getpeername(fd, std::ptr::addr_of_mut!(storage).cast(), &mut len) };
    // SAFETY: the kernel wrote `len` bytes.
    (rc == 0)
        .then(|| unsafe { addr::read(std::ptr::addr_of!(storage).cast(), len) })
        .flatten()
}

/// What to do with a `connect`.
enum Route {
    /// The real call, unchanged.
    Local,
    /// Connect to this loopback port; `getpeername` shows the original address.
    Divert(SocketAddr, u16),
    /// Fail with this errno.
    Fail(c_int),
}

/// `connect(2)`: TCP to an address that is not loopback may leave from the pod.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, to: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: `to` is valid for `len` bytes (the caller's contract).
    let Some(target) = (unsafe { addr::read(to, len) }) else {
        // SAFETY: forwarded with the caller's arguments.
        return unsafe { real::connect(fd, to, len) };
    };
    if addr::always_local(target.ip()) || !client::active() {
        // SAFETY: forwarded with the caller's arguments.
        return unsafe { real::connect(fd, to, len) };
    }
    match quietly(|| route(fd, target)).unwrap_or(Route::Local) {
        Route::Local => {
            // SAFETY: forwarded with the caller's arguments.
            unsafe { real::connect(fd, to, len) }
        }
        Route::Fail(errno) => {
            set_errno(errno);
            -1
        }
        Route::Divert(original, port) => {
            let family = if target.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            let (storage, size) = addr::encode(SocketAddr::from(([127, 0, 0, 1], port)), family);
            fds::set(fd, Entry::Peer(original));
            // SAFETY: `storage` holds a valid address of `size` bytes.
            let rc = unsafe { real::connect(fd, std::ptr::addr_of!(storage).cast(), size) };
            if rc != 0 && crate::guard::errno() != libc::EINPROGRESS {
                fds::clear(fd);
            }
            rc
        }
    }
}

fn route(fd: c_int, target: SocketAddr) -> Route {
    if real::socket_type(fd) != Some(libc::SOCK_STREAM) {
        return Route::Local; // UDP and the rest pass through
    }
    let question = Question::Connect {
        addr: target.to_string(),
    };
    match client::ask(&question, CONNECT_TIMEOUT) {
        Some(Answer { port: Some(port), .. }) => Route::Divert(target, port),
        Some(Answer { errno: Some(errno), .. }) => Route::Fail(errno),
        _ => Route::Local,
    }
}

/// `getpeername(2)`: the address the program asked for (diverted connect) or the pod
/// client's (a connection the CLI made for it).
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let rc = unsafe { real::getpeername(fd, addr, len) };
    if rc != 0 {
        return rc;
    }
    if let Entry::Peer(original) = fds::get(fd) {
        let _ = quietly(|| {
            // SAFETY: the kernel just filled `addr`, so its family is readable.
            let family = i32::from(unsafe { std::ptr::addr_of!((*addr).sa_family).read_unaligned() });
            // SAFETY: the caller's buffers (libc's contract).
            unsafe { addr::write_out(original, family, addr, len) };
        });
    }
    rc
}

/// `close(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    fds::clear(fd);
    // SAFETY: forwarded with the caller's arguments.
    unsafe { real::close(fd) }
}

/// `dup(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let new = unsafe { real::dup(fd) };
    if new >= 0 {
        fds::copy(fd, new);
    }
    new
}

/// `dup2(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let rc = unsafe { real::dup2(old, new) };
    if rc >= 0 {
        fds::copy(old, rc);
    }
    rc
}

/// `dup3(2)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let rc = unsafe { real::dup3(old, new, flags) };
    if rc >= 0 {
        fds::copy(old, rc);
    }
    rc
}
