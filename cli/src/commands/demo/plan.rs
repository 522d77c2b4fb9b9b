//! The demo's topology: which processes run where. Without root, everything listens on its own
//! loopback address (`127.A.B.C`, `A` from `--address-prefix`), so ports repeat without
//! colliding. With root, the global and each zone get a network namespace of their own (the
//! zone's control plane, gateway and workloads share it, each workload with an address of its
//! own), joined by a bridge in a "wan" namespace, to which this machine is joined too so that
//! the frontend and the REST API are reachable from it; addresses are `198.19.A.x`.
//!
//! In: the address prefix and whether to use namespaces. Out: the global's, zones' and
//! workloads' addresses, ports and namespaces.

/// A zone of the demo.
pub struct ZonePlan {
    /// Its name.
    pub name: &'static str,
    /// The address of its control plane and gateway.
    pub ip: String,
}

/// A workload: the sample application and its sidecar.
pub struct WorkloadPlan {
    /// Its process names' stem (`backend-v1`).
    pub name: &'static str,
    /// Its service.
    pub service: &'static str,
    /// Its version.
    pub version: &'static str,
    /// Its zone.
    pub zone: &'static str,
    /// Its address.
    pub ip: String,
    /// Its sidecar's inbound port (the sidecar binds it on every address, so each differs).
    pub inbound: u16,
    /// The service it calls, and the port of its sidecar's outbound to it.
    pub calls: Option<(&'static str, u16)>,
}

/// Port of the sample applications.
pub const APP_PORT: u16 = 8080;
/// Admin port of the sidecars.
pub const SIDECAR_ADMIN_PORT: u16 = 9901;
/// Admin port of the gateways.
pub const GATEWAY_ADMIN_PORT: u16 = 9902;

/// The network namespaces of a namespaced demo.
pub struct Namespaces {
    /// Prefix of every name (namespaces and links), such as `sd0`.
    pub tag: String,
    /// The subnet's first three octets (`198.19.A`).
    pub net: String,
}

impl Namespaces {
    /// The namespace of the global (`None`) or of a zone.
    pub fn of(&self, zone: Option<&str>) -> String {
        format!("{}-{}", self.tag, zone.unwrap_or("global"))
    }

    /// The namespace holding the bridge.
    pub fn wan(&self) -> String {
        format!("{}-wan", self.tag)
    }
}

/// The whole demo.
pub struct Plan {
    /// Namespaces, when the demo uses them.
    pub namespaces: Option<Namespaces>,
    /// The global control plane's address.
    pub global_ip: String,
    /// The zones.
    pub zones: Vec<ZonePlan>,
    /// The workloads, in start order (callees first).
    pub workloads: Vec<WorkloadPlan>,
}

impl Plan {
    /// The demo on `127.<a>.*` where `prefix` is `127.<a>`, or, with `namespaced`, in
    /// namespaces on `198.19.<a>.*`.
    pub fn new(prefix: &str, namespaced: bool) -> Plan {
        let octet = prefix.strip_prefix("127.").unwrap_or("0").to_string();
        let namespaces = namespaced.then(|| Namespaces { tag: format!("sd{octet}"), net: format!("198.19.{octet}") });
        let ip = |b: u8, c: u8| match &namespaces {
            None => format!("{prefix}.{b}.{c}"),
            Some(ns) => {
                let host = match (b, c) {
                    (10, _) => 1,
                    (_, 1) => u16::from(b),
                    (11, c) => 10 + u16::from(c),
                    (_, c) => 20 + u16::from(c),
                };
                format!("{}.{host}", ns.net)
            }
        };
        let workload =
            |name, service, version, zone, ip: String, inbound, calls| WorkloadPlan { name, service, version, zone, ip, inbound, calls };
        let plan = Plan {
            namespaces: None,
            global_ip: ip(10, 1),
            zones: vec![ZonePlan { name: "zone-1", ip: ip(11, 1) }, ZonePlan { name: "zone-2", ip: ip(12, 1) }],
            workloads: vec![
                workload("store-v1", "store", "v1", "zone-2", ip(12, 12), 20013, None),
                workload("backend-v2", "backend", "v2", "zone-2", ip(12, 11), 20012, Some(("store", 10012))),
                workload("backend-v1", "backend", "v1", "zone-1", ip(11, 11), 20011, Some(("store", 10011))),
                workload("frontend-v1", "frontend", "v1", "zone-1", ip(11, 10), 20010, Some(("backend", 10010))),
            ],
        };
        Plan { namespaces, ..plan }
    }

    /// The addresses of the global or a zone's namespace (its control plane's first).
    pub fn addresses_of(&self, zone: Option<&str>) -> Vec<String> {
        match zone {
            None => vec![self.global_ip.clone()],
            Some(z) => {
                let cp = self.zones.iter().filter(|p| p.name == z).map(|p| p.ip.clone());
                cp.chain(self.workloads.iter().filter(|w| w.zone == z).map(|w| w.ip.clone())).collect()
            }
        }
    }

    /// The frontend's URL.
    pub fn frontend(&self) -> String {
        let f = self.workloads.iter().find(|w| w.service == "frontend").map(|w| w.ip.as_str()).unwrap_or_default();
        format!("http://{f}:{APP_PORT}")
    }

    /// The global's REST API (HTTPS; straitctl finds its CA next to the admin token).
    pub fn api(&self) -> String {
        format!("https://{}:7680", self.global_ip)
    }
}

/// Checks `--address-prefix`: `127.<0-255>`.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    match prefix.strip_prefix("127.").map(str::parse::<u8>) {
        Some(Ok(_)) => Ok(()),
        _ => anyhow::bail!("--address-prefix {prefix:?}: must be 127.<0-255> (the demo listens on loopback addresses)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_do_not_collide() {
        let plan = Plan::new("127.0", false);
        let mut ips: Vec<&str> = plan.workloads.iter().map(|w| w.ip.as_str()).chain(plan.zones.iter().map(|z| z.ip.as_str())).collect();
        ips.push(&plan.global_ip);
        let n = ips.len();
        ips.sort_unstable();
        ips.dedup();
        assert_eq!(ips.len(), n, "one address each");
        let mut inbound: Vec<u16> = plan.workloads.iter().map(|w| w.inbound).collect();
        inbound.dedup();
        assert_eq!(inbound.len(), plan.workloads.len(), "sidecars bind inbounds on every address: distinct ports");
        assert_eq!(plan.frontend(), "http://127.0.11.10:8080");
        assert!(check_prefix("127.5").is_ok());
        let ns = Plan::new("127.5", true);
        assert_eq!(ns.frontend(), "http://198.19.5.20:8080");
        assert_eq!(ns.addresses_of(Some("zone-2")), ["198.19.5.12", "198.19.5.32", "198.19.5.31"]);
        assert_eq!(ns.namespaces.as_ref().map(|n| n.of(Some("zone-1"))).as_deref(), Some("sd5-zone-1"));
        for bad in ["10.0", "127.300", "127"] {
            assert!(check_prefix(bad).unwrap_err().to_string().contains("--address-prefix"), "{bad}");
        }
    }
}
