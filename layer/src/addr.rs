//! `sockaddr` ⇄ [`SocketAddr`] for the two families the layer handles, and which
//! addresses always stay local.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libc::{sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

/// Reads an `AF_INET`/`AF_INET6` address; `None` for other families or short buffers.
///
/// # Safety
/// `addr` is null or valid for reads of `len` bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family field is readable (checked above); unaligned reads
    // because callers may pass any buffer.
    let family = unsafe { std::ptr::addr_of!((*addr).sa_family).read_unaligned() };
    match i32::from(family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<sockaddr_in>() => {
            // SAFETY: the buffer holds a whole sockaddr_in (checked above).
            let sin = unsafe { addr.cast::<sockaddr_in>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<sockaddr_in6>() => {
            // SAFETY: the buffer holds a whole sockaddr_in6 (checked above).
            let sin6 = unsafe { addr.cast::<sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `addr` as a `sockaddr_storage` and its length. An IPv4 address for an `AF_INET6`
/// socket (`family`) becomes its v4-mapped form.
pub fn encode(addr: SocketAddr, family: i32) -> (sockaddr_storage, socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let v6 = match (addr, family) {
        (SocketAddr::V4(v4), libc::AF_INET6) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        (SocketAddr::V6(v6), _) => v6,
        (SocketAddr::V4(v4), _) => {
            let sin = sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::addr_of_mut!(storage).cast::<sockaddr_in>().write(sin) };
            return (storage, std::mem::size_of::<sockaddr_in>() as socklen_t);
        }
    };
    let sin6 = sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: v6.port().to_be(),
        sin6_flowinfo: v6.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: v6.ip().octets(),
        },
        sin6_scope_id: v6.scope_id(),
    };
    // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
    unsafe { std::ptr::addr_of_mut!(storage).cast::<sockaddr_in6>().write(sin6) };
    (storage, std::mem::size_of::<sockaddr_in6>() as socklen_t)
}

/// Writes `value` to a caller's `(addr, len)` pair the way the kernel does: at most
/// `*len` bytes, and `*len` set to the full size.
///
/// # Safety
/// `addr` is valid for writes of `*len` bytes; `len` is valid for reads and writes.
pub unsafe fn write_out(value: SocketAddr, family: i32, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let (storage, size) = encode(value, family);
    // SAFETY: `len` is valid (caller's contract, checked for null).
    let room = unsafe { *len } as usize;
    let n = room.min(size as usize);
    // SAFETY: `storage` holds `size` ≥ `n` bytes; `addr` has room for `n` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::addr_of!(storage).cast::<u8>(), addr.cast::<u8>(), n);
        *len = size;
    }
}

/// Addresses a program always reaches on this machine: loopback and "any".
pub fn always_local(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_v4_maps_into_v6_sockets() {
        for (text, family) in [("10.1.2.3:8080", libc::AF_INET), ("[fd00::1]:443", libc::AF_INET6)] {
            let a: SocketAddr = text.parse().unwrap();
            let (s, len) = encode(a, family);
            // SAFETY: `s` holds `len` bytes.
            let back = unsafe { read(std::ptr::addr_of!(s).cast(), len) };
            assert_eq!(back, Some(a));
        }
        let (s, len) = encode("127.0.0.1:9".parse().unwrap(), libc::AF_INET6);
        // SAFETY: `s` holds `len` bytes.
        let back = unsafe { read(std::ptr::addr_of!(s).cast(), len) }.unwrap();
        assert_eq!(back.to_string(), "[::ffff:127.0.0.1]:9");
        assert!(always_local(back.ip()));
        assert!(always_local("0.0.0.0".parse().unwrap()));
        assert!(!always_local("10.96.0.1".parse().unwrap()));
        // SAFETY: a null pointer is allowed.
        assert_eq!(unsafe { read(std::ptr::null(), 16) }, None);
    }
}
