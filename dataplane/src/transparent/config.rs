//! The settings of the transparent proxy rules: redirect ports, the proxy's uid, exclusions.
//!
//! In: values the CLI (`strait-dp transparent-proxy install`) parsed from flags. Out: a
//! [`TransparentConfig`] that [`validate`](TransparentConfig::validate) checks once, reporting
//! every bad value together, before any rule is written.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use super::Error;

/// Port the sidecar's transparent outbound listener accepts redirected connections on.
pub const DEFAULT_REDIRECT_PORT_OUTBOUND: u16 = 15001;
/// Port the sidecar's transparent inbound listener accepts redirected connections on.
pub const DEFAULT_REDIRECT_PORT_INBOUND: u16 = 15006;
/// Inbound ports never redirected by default: SSH, so an operator is not locked out of a VM,
/// and the sidecar's MeshMetric port, so Prometheus reaches it in plain HTTP.
pub const DEFAULT_EXCLUDE_INBOUND_PORTS: &[u16] = &[22, crate::exposition::DEFAULT_PORT];

/// What `install` programs into the nat table of the current network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransparentConfig {
    /// Outbound TCP connections of the application are redirected to this local port.
    pub redirect_port_outbound: u16,
    /// Inbound TCP connections from other hosts are redirected to this local port.
    pub redirect_port_inbound: u16,
    /// Whether inbound connections are redirected at all (`STRAIT_INBOUND` chain).
    pub redirect_inbound: bool,
    /// The uid the sidecar runs as: its own connections are never redirected (no loop).
    pub proxy_uid: u32,
    /// Destination ports of outbound connections that go straight out, not to the sidecar.
    pub exclude_outbound_ports: Vec<u16>,
    /// Destination networks of outbound connections that go straight out (IPv4 and IPv6).
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Local ports whose inbound connections reach the application directly.
    pub exclude_inbound_ports: Vec<u16>,
    /// Also program ip6tables, when it exists and the kernel has an IPv6 nat table.
    pub ipv6: bool,
}

impl TransparentConfig {
    /// The defaults (ports 15001 and 15006, inbound and IPv6 on, SSH excluded) for `proxy_uid`.
    pub fn new(proxy_uid: u32) -> Self {
        Self {
            redirect_port_outbound: DEFAULT_REDIRECT_PORT_OUTBOUND,
            redirect_port_inbound: DEFAULT_REDIRECT_PORT_INBOUND,
            redirect_inbound: true,
            proxy_uid,
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_ports: DEFAULT_EXCLUDE_INBOUND_PORTS.to_vec(),
            ipv6: true,
        }
    }

    /// Checks every value and reports all problems at once ([`Error::Config`]).
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if self.redirect_port_outbound == 0 {
            problems.push("redirect_port_outbound: must be a port between 1 and 65535".to_string());
        }
        if self.redirect_inbound && self.redirect_port_inbound == 0 {
            problems.push("redirect_port_inbound: must be a port between 1 and 65535".to_string());
        }
        if self.redirect_inbound && self.redirect_port_inbound == self.redirect_port_outbound {
            problems.push(format!(
                "redirect_port_inbound: must differ from redirect_port_outbound ({}): the sidecar tells \
                 inbound from outbound connections by the port they were redirected to",
                self.redirect_port_outbound
            ));
        }
        for (field, ports) in
            [("exclude_outbound_ports", &self.exclude_outbound_ports), ("exclude_inbound_ports", &self.exclude_inbound_ports)]
        {
            for (i, port) in ports.iter().enumerate() {
                if *port == 0 {
                    problems.push(format!("{field}[{i}]: must be a port between 1 and 65535"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits (host bits are cleared, as iptables does).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(Error::Cidr { value: format!("{addr}/{prefix}"), reason: format!("the prefix length must be at most {max}") });
        }
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::from((u32::from(v4) & mask_u32(prefix)).to_be_bytes()),
            IpAddr::V6(v6) => IpAddr::from((u128::from(v6) & mask_u128(prefix)).to_be_bytes()),
        };
        Ok(Self { network, prefix })
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network (programmed with iptables; IPv6 with ip6tables).
    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::Cidr { value: value.to_string(), reason: reason.to_string() };
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| invalid("expected an IPv4 or IPv6 address before the `/`"))?;
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| invalid("expected a prefix length after the `/`"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix).map_err(|_| {
            invalid(if addr.is_ipv4() { "the prefix length must be at most 32" } else { "the prefix length must be at most 128" })
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
