//! What the layer knows about a file descriptor: a listener it reported to the CLI, or
//! a socket whose peer address it shows differently (a diverted `connect`, or a
//! connection the CLI made on behalf of a pod's client).
//!
//! A fixed table of atomics indexed by fd (no lock, so nothing can be held across a
//! `fork`, and no allocation). Each entry is a tag word plus 128 bits of IP, written
//! seqlock-style: the tag is cleared first and set last, and a reader that sees the tag
//! change while reading ignores the entry. Descriptors at or above [`MAX_FDS`] are not
//! tracked: they behave as without the layer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Descriptors below this number are tracked.
pub const MAX_FDS: usize = 1 << 16;

const KIND_MASK: u64 = 0b11;
const LISTENER: u64 = 1;
const PEER: u64 = 2;
const V6: u64 = 1 << 2;
const PORT_SHIFT: u32 = 16;

/// One descriptor's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Nothing known: every call on it is the real one.
    Plain,
    /// A TCP listener reported to the CLI (its accepted sockets may get a peer).
    Listener,
    /// `getpeername` answers this address.
    Peer(SocketAddr),
}

struct Slot {
    tag: AtomicU64,
    ip: [AtomicU64; 2],
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the table
const EMPTY: Slot = Slot {
    tag: AtomicU64::new(0),
    ip: [AtomicU64::new(0), AtomicU64::new(0)],
};

/// All zero, so the table lives in `.bss` and costs nothing until touched.
static TABLE: [Slot; MAX_FDS] = [EMPTY; MAX_FDS];

fn slot(fd: i32) -> Option<&'static Slot> {
    usize::try_from(fd).ok().and_then(|i| TABLE.get(i))
}

/// The entry of `fd`.
pub fn get(fd: i32) -> Entry {
    let Some(s) = slot(fd) else { return Entry::Plain };
    let tag = s.tag.load(SeqCst);
    match tag & KIND_MASK {
        LISTENER => Entry::Listener,
        PEER => {
            let (hi, lo) = (s.ip[0].load(SeqCst), s.ip[1].load(SeqCst));
            if s.tag.load(SeqCst) != tag {
                return Entry::Plain; // rewritten meanwhile: the fd was closed and reused
            }
            let port = ((tag >> PORT_SHIFT) & 0xffff) as u16;
            let bits = (u128::from(hi) << 64) | u128::from(lo);
            let ip = if tag & V6 != 0 {
                IpAddr::V6(Ipv6Addr::from(bits))
            } else {
                IpAddr::V4(Ipv4Addr::from(lo as u32))
            };
            Entry::Peer(SocketAddr::new(ip, port))
        }
        _ => Entry::Plain,
    }
}

/// Sets the entry of `fd`.
pub fn set(fd: i32, entry: Entry) {
    let Some(s) = slot(fd) else { return };
    s.tag.store(0, SeqCst);
    let tag = match entry {
        Entry::Plain => return,
        Entry::Listener => LISTENER,
        Entry::Peer(addr) => {
            let (bits, v6) = match addr.ip() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 0),
                IpAddr::V6(v6) => (u128::from(v6), V6),
            };
            s.ip[0].store((bits >> 64) as u64, SeqCst);
            s.ip[1].store(bits as u64, SeqCst);
            PEER | v6 | (u64::from(addr.port()) << PORT_SHIFT)
        }
    };
    s.tag.store(tag, SeqCst);
}

/// Forgets `fd` (closed, or a new descriptor with that number).
pub fn clear(fd: i32) {
    if let Some(s) = slot(fd) {
        // Skips the store on the common path: most descriptors never had an entry.
        if s.tag.load(SeqCst) != 0 {
            s.tag.store(0, SeqCst);
        }
    }
}

/// `to` becomes a duplicate of `from` (`dup`, `dup2`, `dup3`).
pub fn copy(from: i32, to: i32) {
    if from != to {
        set(to, get(from));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_kept_copied_and_cleared() {
        let a: SocketAddr = "10.244.1.7:43512".parse().unwrap();
        let b: SocketAddr = "[fd00::7]:80".parse().unwrap();
        set(100, Entry::Peer(a));
        set(101, Entry::Peer(b));
        set(102, Entry::Listener);
        assert_eq!(
            (get(100), get(101), get(102)),
            (Entry::Peer(a), Entry::Peer(b), Entry::Listener)
        );
        copy(100, 103);
        assert_eq!(get(103), Entry::Peer(a));
        clear(100);
        assert_eq!((get(100), get(103)), (Entry::Plain, Entry::Peer(a)));
        copy(100, 103);
        assert_eq!(get(103), Entry::Plain);
        set(-1, Entry::Listener);
        set(MAX_FDS as i32, Entry::Listener);
        assert_eq!((get(-1), get(MAX_FDS as i32)), (Entry::Plain, Entry::Plain));
    }
}
