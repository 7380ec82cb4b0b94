//! Name resolution with the pod's resolver: `getaddrinfo`, `freeaddrinfo`,
//! `gethostbyname`.
//!
//! Numeric addresses, `localhost` and `AI_NUMERICHOST` lookups never ask the CLI. A name
//! the pod cannot resolve (or a CLI that cannot be reached) is resolved locally, by
//! libc. Lists this module builds are registered in [`OURS`] (lock-free) so that
//! [`freeaddrinfo`] frees them itself and hands every other list to libc's.

use std::ffi::{c_char, c_int, CStr, CString};
use std::net::{IpAddr, SocketAddr};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use libc::{addrinfo, hostent, sockaddr_storage};

use crate::client::{self, Question};
use crate::guard::quietly;
use crate::{addr, real};

/// How long a resolution through the pod may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lists of ours alive at once; beyond that, names resolve locally.
const MAX_LISTS: usize = 1024;

static OURS: [AtomicUsize; MAX_LISTS] = [const { AtomicUsize::new(0) }; MAX_LISTS];
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// One entry of a list of ours: the `addrinfo` first, so a pointer to it is a pointer
/// to the node.
#[repr(C)]
struct Node {
    info: addrinfo,
    storage: sockaddr_storage,
    canonical: Option<CString>,
}

fn register(head: *mut addrinfo) -> bool {
    for slot in &OURS {
        if slot.compare_exchange(0, head as usize, SeqCst, SeqCst).is_ok() {
            LIVE.fetch_add(1, SeqCst);
            return true;
        }
    }
    false
}

fn unregister(head: *mut addrinfo) -> bool {
    if LIVE.load(SeqCst) == 0 {
        return false; // the common case: no list of ours is alive
    }
    for slot in &OURS {
        if slot.compare_exchange(head as usize, 0, SeqCst, SeqCst).is_ok() {
            LIVE.fetch_sub(1, SeqCst);
            return true;
        }
    }
    false
}

/// Frees a list built by [`build`].
///
/// # Safety
/// `head` came from [`build`] and is freed once.
unsafe fn free_ours(mut head: *mut addrinfo) {
    while !head.is_null() {
        // SAFETY: every node of our lists is a leaked `Box<Node>` whose first field
        // is the addrinfo.
        let node = unsafe { Box::from_raw(head.cast::<Node>()) };
        head = node.info.ai_next;
    }
}

/// Names that never go to the pod.
fn stays_local(name: &str) -> bool {
    name.is_empty()
        || name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
}

/// The pod's addresses for `name`; `None`: resolve locally.
fn resolve_remote(name: &str) -> Option<Vec<IpAddr>> {
    if stays_local(name) {
        return None;
    }
    let answer = client::ask(&Question::Resolve { name: name.to_owned() }, RESOLVE_TIMEOUT)?;
    if answer.local {
        return None;
    }
    let addresses = answer.addresses?;
    Some(addresses.iter().filter_map(|a| a.parse().ok()).collect())
}

/// `getaddrinfo(3)`.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    if !node.is_null() && !res.is_null() && client::active() {
        // SAFETY: the caller's arguments, valid per libc's contract.
        if let Some(Some(rc)) = quietly(|| unsafe { remote_getaddrinfo(node, service, hints, res) }) {
            return rc;
        }
    }
    // SAFETY: forwarded with the caller's arguments.
    unsafe { real::getaddrinfo(node, service, hints, res) }
}

/// `Some(rc)` when the pod answered; `None` to let libc resolve.
///
/// # Safety
/// libc's contract for `getaddrinfo`; `node` and `res` are not null.
unsafe fn remote_getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> Option<c_int> {
    // SAFETY: `hints` is null or a valid addrinfo (caller's contract).
    let hints_copy: Option<addrinfo> = unsafe { hints.as_ref() }.copied();
    if hints_copy.is_some_and(|h| h.ai_flags & libc::AI_NUMERICHOST != 0) {
        return None;
    }
    // SAFETY: `node` is a NUL-terminated string (caller's contract).
    let name = unsafe { CStr::from_ptr(node) }.to_str().ok()?;
    let addresses = resolve_remote(name)?;
    let family = hints_copy.map_or(libc::AF_UNSPEC, |h| h.ai_family);
    let addresses: Vec<IpAddr> = addresses
        .into_iter()
        .filter(|ip| match family {
            libc::AF_INET => ip.is_ipv4(),
            libc::AF_INET6 => ip.is_ipv6(),
            _ => true,
        })
        .collect();
    if addresses.is_empty() {
        return Some(libc::EAI_NONAME);
    }
    // The port, socket types and protocols the caller's `service` and `hints` mean,
    // as libc works them out for a numeric address.
    // SAFETY: all-zero bytes are a valid addrinfo.
    let mut template_hints: addrinfo = hints_copy.unwrap_or_else(|| unsafe { std::mem::zeroed() });
    template_hints.ai_family = libc::AF_INET;
    template_hints.ai_flags = libc::AI_NUMERICHOST | (template_hints.ai_flags & libc::AI_NUMERICSERV);
    let mut template: *mut addrinfo = ptr::null_mut();
    // SAFETY: valid NUL-terminated strings and a valid hints struct; `service` is the
    // caller's (null or NUL-terminated).
    let rc = unsafe { real::getaddrinfo(c"127.0.0.1".as_ptr(), service, &template_hints, &mut template) };
    if rc != 0 {
        return Some(rc);
    }
    let mut kinds = Vec::new();
    let mut cursor = template;
    // SAFETY: walks libc's list, then frees it with libc's freeaddrinfo.
    unsafe {
        while let Some(entry) = cursor.as_ref() {
            let port = addr::read(entry.ai_addr, entry.ai_addrlen).map_or(0, |a| a.port());
            kinds.push((entry.ai_socktype, entry.ai_protocol, port));
            cursor = entry.ai_next;
        }
        real::freeaddrinfo(template);
    }
    let canonical = hints_copy
        .is_some_and(|h| h.ai_flags & libc::AI_CANONNAME != 0)
        .then(|| CString::new(name).ok())
        .flatten();
    let head = build(&addresses, &kinds, canonical);
    if head.is_null() || !register(head) {
        // SAFETY: `head` is ours and unregistered.
        unsafe { free_ours(head) };
        return None;
    }
    // SAFETY: `res` is valid for writes (caller's contract; checked for null).
    unsafe { *res = head };
    Some(0)
}

/// A linked list of one entry per address and kind; null if empty.
fn build(addresses: &[IpAddr], kinds: &[(c_int, c_int, u16)], mut canonical: Option<CString>) -> *mut addrinfo {
    let mut head: *mut addrinfo = ptr::null_mut();
    // Built back to front so each node points at the one built before it.
    for ip in addresses.iter().rev() {
        for &(socktype, protocol, port) in kinds.iter().rev() {
            let family = if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            let (storage, len) = addr::encode(SocketAddr::new(*ip, port), family);
            // SAFETY: all-zero bytes are a valid addrinfo.
            let mut info: addrinfo = unsafe { std::mem::zeroed() };
            info.ai_family = family;
            info.ai_socktype = socktype;
            info.ai_protocol = protocol;
            info.ai_addrlen = len;
            info.ai_next = head;
            let node = Box::into_raw(Box::new(Node {
                info,
                storage,
                canonical: None,
            }));
            // SAFETY: `node` was just allocated; its fields live as long as the node.
            unsafe { (*node).info.ai_addr = ptr::addr_of_mut!((*node).storage).cast() };
            head = node.cast::<addrinfo>();
        }
    }
    if let (Some(name), false) = (canonical.take(), head.is_null()) {
        // SAFETY: `head` is the first node, a `Node` of ours; the CString moves into it.
        unsafe {
            let node = head.cast::<Node>();
            (*node).info.ai_canonname = name.as_ptr().cast_mut();
            (*node).canonical = Some(name);
        }
    }
    head
}

/// `freeaddrinfo(3)`: our lists here, libc's to libc.
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    if !res.is_null() && unregister(res) {
        // SAFETY: `res` is the head of a list of ours, unregistered once just now.
        unsafe { free_ours(res) };
        return;
    }
    // SAFETY: forwarded with the caller's arguments.
    unsafe { real::freeaddrinfo(res) }
}

/// The per-thread answer of [`gethostbyname`] (the function returns static storage).
struct HostBuf {
    entry: hostent,
    name: [c_char; 256],
    addresses: [[u8; 4]; 16],
    list: [*mut c_char; 17],
    aliases: [*mut c_char; 1],
}

thread_local! {
    static HOST: std::cell::UnsafeCell<HostBuf> = const {
        std::cell::UnsafeCell::new(HostBuf {
            entry: hostent {
                h_name: ptr::null_mut(),
                h_aliases: ptr::null_mut(),
                h_addrtype: 0,
                h_length: 0,
                h_addr_list: ptr::null_mut(),
            },
            name: [0; 256],
            addresses: [[0; 4]; 16],
            list: [ptr::null_mut(); 17],
            aliases: [ptr::null_mut(); 1],
        })
    };
}

/// `gethostbyname(3)` (IPv4 only, as the function is).
///
/// # Safety
/// libc's contract.
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    if !name.is_null() && client::active() {
        // SAFETY: `name` is a NUL-terminated string (libc's contract).
        let found = quietly(|| unsafe { remote_hostent(name) }).flatten();
        if let Some(entry) = found {
            return entry;
        }
    }
    // SAFETY: forwarded with the caller's arguments.
    unsafe { real::gethostbyname(name) }
}

/// # Safety
/// `name` is a NUL-terminated string.
unsafe fn remote_hostent(name: *const c_char) -> Option<*mut hostent> {
    // SAFETY: this function's contract.
    let text = unsafe { CStr::from_ptr(name) };
    let v4: Vec<[u8; 4]> = resolve_remote(text.to_str().ok()?)?
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        })
        .take(16)
        .collect();
    if v4.is_empty() {
        return None; // the pod knows no IPv4 address: libc decides (and sets h_errno)
    }
    HOST.try_with(|cell| {
        let buf = cell.get();
        // SAFETY: the buffer is this thread's; pointers into it stay valid until the
        // next call on this thread, which is gethostbyname's documented lifetime.
        unsafe {
            let bytes = text.to_bytes();
            let n = bytes.len().min(255);
            for (i, b) in bytes[..n].iter().enumerate() {
                (*buf).name[i] = *b as c_char;
            }
            (*buf).name[n] = 0;
            (*buf).list = [ptr::null_mut(); 17];
            for (i, a) in v4.iter().enumerate() {
                (*buf).addresses[i] = *a;
                (*buf).list[i] = ptr::addr_of_mut!((*buf).addresses[i]).cast();
            }
            (*buf).aliases[0] = ptr::null_mut();
            (*buf).entry = hostent {
                h_name: ptr::addr_of_mut!((*buf).name).cast(),
                h_aliases: ptr::addr_of_mut!((*buf).aliases).cast(),
                h_addrtype: libc::AF_INET,
                h_length: 4,
                h_addr_list: ptr::addr_of_mut!((*buf).list).cast(),
            };
            ptr::addr_of_mut!((*buf).entry)
        }
    })
    .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_ours_are_built_registered_and_freed() {
        let ips: Vec<IpAddr> = vec!["10.96.0.12".parse().unwrap(), "fd00::12".parse().unwrap()];
        let kinds = [
            (libc::SOCK_STREAM, libc::IPPROTO_TCP, 8080),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP, 8080),
        ];
        let head = build(&ips, &kinds, CString::new("reviews").ok());
        let mut seen = Vec::new();
        let mut cursor = head;
        // SAFETY: walks the list just built.
        unsafe {
            assert_eq!(CStr::from_ptr((*head).ai_canonname).to_str().unwrap(), "reviews");
            while let Some(e) = cursor.as_ref() {
                seen.push((addr::read(e.ai_addr, e.ai_addrlen).unwrap().to_string(), e.ai_socktype));
                cursor = e.ai_next;
            }
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0], ("10.96.0.12:8080".into(), libc::SOCK_STREAM));
        assert_eq!(seen[3], ("[fd00::12]:8080".into(), libc::SOCK_DGRAM));
        assert!(register(head));
        assert!(unregister(head));
        assert!(!unregister(head), "a list is ours once");
        // SAFETY: ours, unregistered, freed once.
        unsafe { free_ours(head) };
        assert!(stays_local("127.0.0.1") && stays_local("LOCALHOST") && stays_local("a.localhost"));
        assert!(!stays_local("reviews.shop.svc.cluster.local"));
    }
}
