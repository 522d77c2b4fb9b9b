//! Socket buffer sizes the kernel's defaults get wrong for a fast tunnel, and ports for
//! listeners that another process binds later (tests and benchmarks).
//!
//! A UDP socket's receive buffer is where datagrams wait for the process to read them; the
//! default (about 200 KB) holds 4 ms at 50 MB/s, so a QUIC tunnel that carries one fast
//! connection over a long path loses datagrams whenever its reader is late by more than that,
//! and each loss halves its congestion window (measured between two gateways 50 ms apart: 51
//! datagrams lost per 64 MB, the throughput from 0.9 to 0.7 of a direct TCP connection).
//!
//! In: a socket and the size wanted. Out: the sizes the kernel took. `SO_RCVBUFFORCE` (with
//! `CAP_NET_ADMIN`) goes past `net.core.rmem_max`; without it the size is capped there.
//!
//! `unsafe`: `setsockopt` and `getsockopt` with an `int` option value, on a descriptor the
//! socket keeps open for the call.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The receive and send buffer sizes a socket has (as the kernel counts them: twice what was
/// asked, for its bookkeeping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// `SO_RCVBUF`, bytes.
    pub receive: usize,
    /// `SO_SNDBUF`, bytes.
    pub send: usize,
}

/// Grows `socket`'s receive and send buffers to `wanted` bytes each (never shrinks them): past
/// `net.core.rmem_max`/`wmem_max` where the process may (`CAP_NET_ADMIN`), else up to them.
/// Returns the sizes it has afterwards.
pub fn grow_buffers(socket: &impl AsRawFd, wanted: usize) -> io::Result<BufferSizes> {
    let fd = socket.as_raw_fd();
    grow(fd, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, wanted)?;
    grow(fd, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, wanted)?;
    Ok(BufferSizes { receive: get(fd, libc::SO_RCVBUF)?, send: get(fd, libc::SO_SNDBUF)? })
}

/// Caps `socket`'s send buffer at about `bytes` (the kernel doubles what it is given, for its
/// bookkeeping, and then does not grow it on its own). For a long-lived stream to a peer that
/// may stop reading: what the kernel holds for it stays bounded, and the writer waits instead.
pub fn cap_send_buffer(socket: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    set(socket.as_raw_fd(), libc::SO_SNDBUF, libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX))
}

fn grow(fd: RawFd, option: libc::c_int, forced: libc::c_int, wanted: usize) -> io::Result<()> {
    // The kernel reports twice the size it was given.
    if get(fd, option)? >= wanted * 2 {
        return Ok(());
    }
    let value = libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX);
    if set(fd, forced, value).is_ok() {
        return Ok(());
    }
    set(fd, option, value)
}

/// How the kernel of a long-lived control-plane connection finds a peer that vanished (its
/// host gone, a cable pulled) while the connection is idle: a probe after `idle` (plus a part
/// of `spread` that depends on the connection) without traffic, then every `interval`, and the
/// connection fails after `count` unanswered ones, so the stream over it ends within
/// `idle + spread + interval × count` rather than the system's two hours, with no message of
/// the application's.
///
/// Probes are not retransmitted: one lost on the way counts as unanswered. Thousands of
/// connections that went idle together (after a registration storm or a policy pushed to every
/// sidecar) would probe together, in bursts that overflow a host's packet queues (measured: the
/// loopback's backlog of 1,000 packets dropped the probes of 10,000 simulated sidecars, which
/// had idle = interval = 5 s and 2 probes, and cut off a quarter of them, all alive). So the
/// first probe is spread over `spread` by the connection's ports, and the retries come
/// `interval` after it, out of step with the other connections' first probes.
#[derive(Clone, Copy, Debug)]
pub struct KeepAlive {
    /// Silence before the first probe, at least.
    pub idle: std::time::Duration,
    /// Up to this much more silence, different for each connection (whole seconds).
    pub spread: std::time::Duration,
    /// Between unanswered probes.
    pub interval: std::time::Duration,
    /// Unanswered probes before the connection fails.
    pub count: u32,
}

impl KeepAlive {
    /// The longest a vanished peer goes unnoticed on an idle connection.
    pub fn gives_up_within(&self) -> std::time::Duration {
        self.idle + self.spread + self.interval * self.count
    }
}

/// Sets `policy`'s probes on `socket` (see [`KeepAlive`]). A peer that is only slow to read (its
/// receive window closed) answers the probes from its kernel and is kept: `TCP_USER_TIMEOUT` is
/// left alone, since it would also cut off a live peer starved of CPU (measured: a storm of
/// 10,000 sidecars on two cores lost a fifth of its streams with 15 or 30 s). A peer that
/// vanishes while data to it is unacknowledged is found by TCP's retransmission timeout.
pub fn keep_alive<S: AsRawFd>(socket: &S, policy: &KeepAlive) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let secs = |d: std::time::Duration| libc::c_int::try_from(d.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    let count = libc::c_int::try_from(policy.count.max(1)).unwrap_or(libc::c_int::MAX);
    let idle = secs(policy.idle).saturating_add(spread_of(fd, policy.spread.as_secs()));
    set_at(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_at(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    set_at(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(policy.interval))?;
    set_at(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)
}

/// A connection's share of `spread` seconds (0 to `spread`), from its two ports, so the
/// connections of one host differ while each keeps its own.
fn spread_of(fd: RawFd, spread: u64) -> libc::c_int {
    if spread == 0 {
        return 0;
    }
    // SAFETY: the descriptor is open for the call (its owner lends it), only its addresses are
    // read, and the `TcpStream` is never dropped, so the socket is not closed and stays its
    // owner's.
    let stream = std::mem::ManuallyDrop::new(unsafe { <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let ports = |a: io::Result<std::net::SocketAddr>| a.map(|a| a.port()).unwrap_or(0);
    let mixed = (u64::from(ports(stream.local_addr())) << 16 | u64::from(ports(stream.peer_addr()))).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    libc::c_int::try_from((mixed >> 32) % (spread + 1)).unwrap_or(0)
}

fn set(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    set_at(fd, libc::SOL_SOCKET, option, value)
}

fn set_at(fd: RawFd, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is an int that lives for the call, and its size is the length passed.
    let rc =
        unsafe { libc::setsockopt(fd, level, option, (&raw const value).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get(fd: RawFd, option: libc::c_int) -> io::Result<usize> {
    get_at(fd, libc::SOL_SOCKET, option)
}

fn get_at(fd: RawFd, level: libc::c_int, option: libc::c_int) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are owned ints that live for the call; `len` is `value`'s size.
    let rc = unsafe { libc::getsockopt(fd, level, option, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 {
        Ok(usize::try_from(value).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A free TCP port for a listener that a test or a benchmark binds later, in another process.
/// A port the kernel hands out for `bind(0)` comes from its ephemeral range (32768 and up),
/// where any outgoing connection of a process running alongside may take it before the
/// listener binds it ("Address already in use"); this one is taken below that range, checked
/// on every address (sidecars bind 0.0.0.0), and leased for [`PORT_LEASE`] to the calling
/// process (a file per port under the temporary directory, created exclusively): tests run in
/// parallel processes, and one that picked a port and binds it only seconds later, after
/// starting what comes first, must not find it taken by another that picked it meanwhile.
pub fn port_for_a_later_listener() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id().wrapping_mul(7919) ^ nanos;
    let leases = std::env::temp_dir().join("strait-port-leases");
    let _ = std::fs::create_dir_all(&leases);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(104_729)) % 12_000) as u16;
        if lease(&leases.join(port.to_string())) && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// How long a port handed out by [`port_for_a_later_listener`] is kept from other processes.
pub const PORT_LEASE: std::time::Duration = std::time::Duration::from_secs(120);

/// Takes the lease of `file`: a new file, or one whose lease ran out (rewritten). When the
/// directory cannot be written, every port counts as leased to the caller.
fn lease(file: &std::path::Path) -> bool {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let expired =
                std::fs::metadata(file).and_then(|m| m.modified()).map_or(true, |at| at.elapsed().is_ok_and(|age| age > PORT_LEASE));
            // Renewed by rewriting it, which moves its time; two processes that both saw it
            // expired may both take it, as rare as two picks of one port in the same moment.
            expired && std::fs::write(file, b"").is_ok()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_sets_the_probes_and_leaves_slow_readers_alone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let tcp = |option| get_at(stream.as_raw_fd(), libc::IPPROTO_TCP, option).unwrap();
        assert_eq!(get(stream.as_raw_fd(), libc::SO_KEEPALIVE).unwrap(), 0, "off by default");
        let secs = std::time::Duration::from_secs;
        keep_alive(&stream, &KeepAlive { idle: secs(7), spread: secs(0), interval: secs(3), count: 2 }).unwrap();
        assert_eq!(get(stream.as_raw_fd(), libc::SO_KEEPALIVE).unwrap(), 1);
        assert_eq!((tcp(libc::TCP_KEEPIDLE), tcp(libc::TCP_KEEPINTVL), tcp(libc::TCP_KEEPCNT)), (7, 3, 2));
        assert_eq!(tcp(libc::TCP_USER_TIMEOUT), 0, "a peer slow to read is not cut off");
        cap_send_buffer(&stream, 32 * 1024).unwrap();
        assert_eq!(get(stream.as_raw_fd(), libc::SO_SNDBUF).unwrap(), 64 * 1024, "capped, as the kernel counts it");
    }

    #[test]
    fn connections_of_one_host_spread_their_first_probes_and_each_keeps_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let secs = std::time::Duration::from_secs;
        let policy = KeepAlive { idle: secs(10), spread: secs(9), interval: secs(4), count: 3 };
        assert_eq!(policy.gives_up_within(), secs(31));
        let idles: Vec<usize> = (0..40)
            .map(|_| {
                let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                keep_alive(&stream, &policy).unwrap();
                let idle = get_at(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).unwrap();
                assert_eq!(spread_of(stream.as_raw_fd(), 9) as usize + 10, idle, "the same connection, the same share");
                assert_eq!(get_at(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_KEEPINTVL).unwrap(), 4);
                // The socket is still usable: the share was read without taking it.
                stream.set_nodelay(true).unwrap();
                idle
            })
            .collect();
        assert!(idles.iter().all(|i| (10..=19).contains(i)), "{idles:?}");
        let distinct: std::collections::BTreeSet<_> = idles.iter().collect();
        assert!(distinct.len() >= 5, "40 connections share only {distinct:?}");
    }

    #[test]
    fn ports_for_later_listeners_are_free_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| port_for_a_later_listener()).collect();
        for port in &ports {
            assert!((20_000..32_000).contains(port), "{port}");
            std::net::TcpListener::bind(("127.0.0.1", *port)).expect("free");
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "one process does not hand out a port twice in a row: {ports:?}");
    }

    #[test]
    fn a_leased_port_is_not_handed_out_again_until_its_lease_runs_out() {
        let dir = std::env::temp_dir().join(format!("strait-lease-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("25000");
        assert!(lease(&file), "a port nobody leased");
        assert!(!lease(&file), "a port another process leased a moment ago");
        let old = std::time::SystemTime::now() - PORT_LEASE - std::time::Duration::from_secs(1);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(old).unwrap();
        assert!(lease(&file), "a port whose lease ran out");
        assert!(!lease(&file), "and is leased again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_udp_socket_grows_its_buffers_as_far_as_it_may_and_never_shrinks_them() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let before = BufferSizes {
            receive: get(socket.as_raw_fd(), libc::SO_RCVBUF).unwrap(),
            send: get(socket.as_raw_fd(), libc::SO_SNDBUF).unwrap(),
        };
        let wanted = 4 * 1024 * 1024;
        let after = grow_buffers(&socket, wanted).expect("sizes");
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        // At least what the unprivileged option allows (rmem_max), all of it with CAP_NET_ADMIN.
        assert!(after.receive >= before.receive, "{before:?} -> {after:?}");
        assert!(after.receive >= (2 * wanted).min(2 * rmem_max), "{after:?} with rmem_max {rmem_max}");
        assert!(after.send >= before.send, "{before:?} -> {after:?}");
        // Asking for less keeps what it has.
        assert_eq!(grow_buffers(&socket, 64 * 1024).expect("sizes"), after);
    }
}
