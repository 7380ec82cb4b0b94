//! Plain TCP: byte pass-through, and the original destination of a redirected socket.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// Copies bytes both ways between `client` and `dest` until both sides are done.
pub async fn pass_through(mut client: TcpStream, dest: &str) {
    match TcpStream::connect(dest).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%error, %dest, "pass-through ended");
            }
        }
        // The client sees the connection close, as it would if the app were down.
        Err(error) => tracing::warn!(%error, %dest, "pass-through: destination unreachable"),
    }
}

/// The destination a client dialled before the nftables redirect rewrote it.
pub fn original_dst(stream: &TcpStream) -> nix::Result<SocketAddr> {
    match stream.local_addr().map(|a| a.is_ipv4()) {
        Ok(false) => {
            let raw = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
            let ip = Ipv6Addr::from(raw.sin6_addr.s6_addr);
            Ok(SocketAddrV6::new(ip, u16::from_be(raw.sin6_port), 0, 0).into())
        }
        _ => {
            let raw = getsockopt(stream, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
            Ok(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)).into())
        }
    }
}
