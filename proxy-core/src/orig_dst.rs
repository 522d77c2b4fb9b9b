//! The original destination of a connection redirected by iptables (`REDIRECT` in the nat
//! table), read with the `SO_ORIGINAL_DST` socket option.
//!
//! In: a `TcpStream` accepted on the transparent outbound (15001) or inbound (15006) port.
//! Out: the address the application meant to connect to, before netfilter rewrote it. This is
//! the only module of the crate with `unsafe` code: `SO_ORIGINAL_DST` is a Linux
//! `getsockopt` that neither std, tokio nor any workspace dependency wraps, so it is called
//! through `libc` on the socket's raw file descriptor. Off Linux the call reports
//! `Unsupported`.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The pre-NAT destination of `stream`. Fails (`ENOENT` on Linux) for a socket that netfilter
/// did not redirect.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    imp::original_dst(stream, local.is_ipv6())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::io;
    use std::mem;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use tokio::net::TcpStream;

    pub(super) fn original_dst(stream: &TcpStream, ipv6: bool) -> io::Result<SocketAddr> {
        let fd = stream.as_raw_fd();
        if ipv6 {
            let addr: libc::sockaddr_in6 = getsockopt(fd, libc::SOL_IPV6, libc::IP6T_SO_ORIGINAL_DST)?;
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            // An IPv4 connection accepted on a dual-stack socket is reported as IPv4-mapped.
            if let Some(v4) = ip.to_ipv4_mapped() {
                return Ok(SocketAddr::V4(SocketAddrV4::new(v4, u16::from_be(addr.sin6_port))));
            }
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), addr.sin6_flowinfo, addr.sin6_scope_id)))
        } else {
            let addr: libc::sockaddr_in = getsockopt(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST)?;
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
        }
    }

    /// The two address structs `SO_ORIGINAL_DST` fills in, built zeroed without `unsafe`.
    trait SockAddr: Copy {
        fn zeroed() -> Self;
    }

    impl SockAddr for libc::sockaddr_in {
        fn zeroed() -> Self {
            libc::sockaddr_in { sin_family: 0, sin_port: 0, sin_addr: libc::in_addr { s_addr: 0 }, sin_zero: [0; 8] }
        }
    }

    impl SockAddr for libc::sockaddr_in6 {
        fn zeroed() -> Self {
            libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            }
        }
    }

    fn getsockopt<T: SockAddr>(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
        let mut value = T::zeroed();
        let mut len = mem::size_of::<T>() as libc::socklen_t;
        // SAFETY: `fd` is a live socket borrowed from the stream for the duration of the call;
        // the kernel writes at most `len` bytes into `value`, a plain C struct `len` bytes long.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut T).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if len as usize != mem::size_of::<T>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("SO_ORIGINAL_DST returned {len} bytes")));
        }
        Ok(value)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::io;
    use std::net::SocketAddr;

    use tokio::net::TcpStream;

    pub(super) fn original_dst(_stream: &TcpStream, _ipv6: bool) -> io::Result<SocketAddr> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "SO_ORIGINAL_DST needs Linux netfilter"))
    }
}

#[cfg(test)]
#[path = "orig_dst_tests.rs"]
mod tests;
