//! The demo's topology: which processes run where. Everything listens on its own loopback
//! address (`127.A.B.C`, `A` from `--address-prefix`), so ports repeat without colliding and
//! no root is needed.
//!
//! In: the address prefix. Out: the global's, zones' and workloads' addresses and ports.

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

/// The whole demo.
pub struct Plan {
    /// The global control plane's address.
    pub global_ip: String,
    /// The zones.
    pub zones: Vec<ZonePlan>,
    /// The workloads, in start order (callees first).
    pub workloads: Vec<WorkloadPlan>,
}

impl Plan {
    /// The demo on `127.<a>.*` where `prefix` is `127.<a>`.
    pub fn new(prefix: &str) -> Plan {
        let ip = |b: u8, c: u8| format!("{prefix}.{b}.{c}");
        let workload =
            |name, service, version, zone, ip: String, inbound, calls| WorkloadPlan { name, service, version, zone, ip, inbound, calls };
        Plan {
            global_ip: ip(10, 1),
            zones: vec![ZonePlan { name: "zone-1", ip: ip(11, 1) }, ZonePlan { name: "zone-2", ip: ip(12, 1) }],
            workloads: vec![
                workload("store-v1", "store", "v1", "zone-2", ip(12, 12), 20013, None),
                workload("backend-v2", "backend", "v2", "zone-2", ip(12, 11), 20012, Some(("store", 10012))),
                workload("backend-v1", "backend", "v1", "zone-1", ip(11, 11), 20011, Some(("store", 10011))),
                workload("frontend-v1", "frontend", "v1", "zone-1", ip(11, 10), 20010, Some(("backend", 10010))),
            ],
        }
    }

    /// The frontend's URL.
    pub fn frontend(&self) -> String {
        let f = self.workloads.iter().find(|w| w.service == "frontend").map(|w| w.ip.as_str()).unwrap_or_default();
        format!("http://{f}:{APP_PORT}")
    }

    /// The global's REST API.
    pub fn api(&self) -> String {
        format!("http://{}:7680", self.global_ip)
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
        let plan = Plan::new("127.0");
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
        for bad in ["10.0", "127.300", "127"] {
            assert!(check_prefix(bad).unwrap_err().to_string().contains("--address-prefix"), "{bad}");
        }
    }
}
