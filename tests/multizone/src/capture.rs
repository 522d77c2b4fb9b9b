//! Packet captures on a host of the test network, to show what really crosses between hosts
//! (mTLS, not the application's plaintext). A [`Capture`] runs `tcpdump` on one interface of a
//! host, writing a pcap file; [`Capture::stop`] ends it and returns the TCP segments it saw,
//! parsed from the file ([`parse_pcap`]: Ethernet, Linux cooked or raw IP, IPv4, TCP).
//!
//! In: a host, an interface and a BPF filter. Out: [`Segment`]s (addresses, ports, payload),
//! and [`Flows`] for assertions on each connection's bytes in order.

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::{wait_for, Cmd, Host, Net, Proc};

/// Whether `tcpdump` is installed (`scripts/test.sh` installs it).
pub fn tcpdump_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("tcpdump").is_file()))
}

/// A running `tcpdump` on a host.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` on `host` as process `name`, writing every packet
    /// as it arrives (`--immediate-mode -U`) to `<net dir>/<name>.pcap`, and waits until it listens.
    pub fn start(net: &Net, host: &Host, name: &str, iface: &str, filter: &str) -> Capture {
        let file = net.dir().join(format!("{name}.pcap"));
        let proc = host.spawn_cmd(
            name,
            Cmd::new("tcpdump")
                .args(["-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w"])
                .arg(&file)
                .args(filter.split_whitespace()),
        );
        wait_for(&format!("tcpdump on host {} to listen on {iface}", host.name()), Duration::from_secs(10), || {
            proc.assert_running("tcpdump to start");
            proc.log().contains("listening on").then_some(())
        });
        Capture { proc, file }
    }

    /// Stops the capture (SIGTERM, which flushes the file) and returns the TCP segments.
    pub fn stop(self) -> Vec<Segment> {
        self.proc.terminate();
        let bytes = fs::read(&self.file).unwrap_or_else(|e| panic!("read {}: {e}", self.file.display()));
        parse_pcap(&bytes).unwrap_or_else(|e| panic!("{}: {e}", self.file.display()))
    }
}

/// The transport of a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP (QUIC between gateways).
    Udp,
}

/// One captured TCP segment or UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// TCP or UDP.
    pub transport: Transport,
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// The TCP or UDP payload (may be empty: SYN, ACK, FIN).
    pub payload: Vec<u8>,
}

/// The payload bytes of each direction of each connection, in capture order (retransmissions
/// are kept; the checks made on them do not mind).
pub type Flows = BTreeMap<(SocketAddrV4, SocketAddrV4), Vec<u8>>;

/// Groups segments by (source, destination) and concatenates their payloads.
pub fn flows(segments: &[Segment]) -> Flows {
    let mut out = Flows::new();
    for s in segments {
        out.entry((s.src, s.dst)).or_default().extend_from_slice(&s.payload);
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;

/// The TCP and UDP packets over IPv4 of a pcap file (other packets are skipped).
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Segment>, String> {
    if bytes.len() < 24 {
        return Err(format!("not a pcap file: {} bytes", bytes.len()));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?}; pcapng is not supported)")),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let linktype = u32_at(bytes, 20);
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = u32_at(bytes, at + 8) as usize;
        let start = at + 16;
        let end = start + captured;
        let Some(frame) = bytes.get(start..end) else {
            break; // a record cut short by the end of the capture
        };
        let ip = match linktype {
            LINKTYPE_ETHERNET => (frame.len() >= 14 && frame[12..14] == [0x08, 0x00]).then(|| &frame[14..]),
            LINKTYPE_LINUX_SLL => (frame.len() >= 16 && frame[14..16] == [0x08, 0x00]).then(|| &frame[16..]),
            LINKTYPE_RAW => Some(frame),
            other => return Err(format!("link type {other} is not supported")),
        };
        if let Some(segment) = ip.and_then(parse_ipv4) {
            segments.push(segment);
        }
        at = end;
    }
    Ok(segments)
}

/// An IPv4 packet carrying TCP or UDP, as a [`Segment`].
fn parse_ipv4(ip: &[u8]) -> Option<Segment> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let body = ip.get(header..total)?;
    let (transport, data) = match ip[9] {
        6 if body.len() >= 20 => (Transport::Tcp, usize::from(body[12] >> 4) * 4),
        17 if body.len() >= 8 => (Transport::Udp, 8),
        _ => return None,
    };
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Some(Segment {
        transport,
        src: SocketAddrV4::new(addr(&ip[12..16]), port(&body[0..2])),
        dst: SocketAddrV4::new(addr(&ip[16..20]), port(&body[2..4])),
        payload: body.get(data..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap file (little endian, Ethernet) holding one TCP segment with `payload`.
    fn pcap_with(payload: &[u8]) -> Vec<u8> {
        let mut tcp = vec![0x1f, 0x90, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
        tcp.extend_from_slice(payload);
        let total = u16::try_from(20 + tcp.len()).expect("small");
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&tcp);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0, 0, 0]); // Ethernet padding, not payload
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&[2, 0, 4, 0]);
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&65535u32.to_le_bytes());
        file.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        let len = u32::try_from(frame.len()).expect("small");
        file.extend_from_slice(&[0; 8]);
        file.extend_from_slice(&len.to_le_bytes());
        file.extend_from_slice(&len.to_le_bytes());
        file.extend_from_slice(&frame);
        file
    }

    #[test]
    fn tcp_segments_are_read_from_an_ethernet_pcap() {
        let segments = parse_pcap(&pcap_with(b"hello")).expect("parses");
        assert_eq!(
            segments,
            vec![Segment {
                transport: Transport::Tcp,
                src: "10.0.0.1:8080".parse().expect("addr"),
                dst: "10.0.0.2:80".parse().expect("addr"),
                payload: b"hello".to_vec()
            }]
        );
        let flows = flows(&segments);
        assert!(contains(&flows[&(segments[0].src, segments[0].dst)], b"ell"));
    }

    #[test]
    fn udp_datagrams_are_read_too() {
        let mut file = pcap_with(b"");
        // Turn the one packet into UDP: protocol 17, an 8-byte header, then the payload.
        let ip = 24 + 16 + 14;
        file[ip + 9] = 17;
        let udp_payload = b"quic";
        file.truncate(ip + 20);
        file.extend_from_slice(&[0x27, 0x11, 0x27, 0x11, 0, 12, 0, 0]);
        file.extend_from_slice(udp_payload);
        let total = u16::try_from(20 + 8 + udp_payload.len()).expect("small");
        file[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        let len = u32::try_from(file.len() - 24 - 16).expect("small");
        file[24 + 8..24 + 12].copy_from_slice(&len.to_le_bytes());
        file[24 + 12..24 + 16].copy_from_slice(&len.to_le_bytes());
        let segments = parse_pcap(&file).expect("parses");
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].transport, Transport::Udp);
        assert_eq!(segments[0].src.port(), 10001);
        assert_eq!(segments[0].payload, b"quic");
    }

    #[test]
    fn other_files_are_refused() {
        assert!(parse_pcap(b"short").is_err());
        assert!(parse_pcap(&[0x0a, 0x0d, 0x0d, 0x0a].repeat(8)).is_err());
    }
}
