//! East-west gateways on a test network: `strait-gateway` started on a zone's host with the
//! zone's token and DPS CA (ingress on [`INGRESS_PORT`], egress on [`EGRESS_PORT`], admin on
//! [`ADMIN_PORT`]), and typed access to its `/ready` and `/metrics`.
//!
//! In: a [`Zone`] from [`crate::control_plane`]. Out: a running [`Gateway`]; accessors return
//! `Err(reason)` instead of panicking, so that they can be polled.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;

use crate::control_plane::{get_json, metric_value, start_zone_to, Global, Zone, SYNC, ZONE_DPS_PORT};
use crate::{bin, wait_for, Cmd, Host, Net, Proc};

/// Ingress port (QUIC over UDP, and the TCP+TLS fallback).
pub const INGRESS_PORT: u16 = 10001;
/// Egress port (this zone's sidecars).
pub const EGRESS_PORT: u16 = 10002;
/// Admin port.
pub const ADMIN_PORT: u16 = 9902;
/// `--drain-timeout` of test gateways: below the harness's teardown grace.
pub const GATEWAY_DRAIN: Duration = Duration::from_secs(2);
/// Deadline for a gateway to become ready (registration, configuration, zone identity).
pub const GATEWAY_READY: Duration = Duration::from_secs(30);

/// A running gateway.
pub struct Gateway {
    /// Its zone.
    pub zone: String,
    /// Its host (the zone control plane's).
    pub host: Host,
    /// The process.
    pub proc: Proc,
    /// Its data directory.
    pub data: PathBuf,
}

impl Gateway {
    /// Starts `strait-gateway` for `zone` on the zone's host (plus `extra` flags) and waits
    /// until `/ready` answers 200.
    pub fn start(net: &Net, zone: &Zone, extra: &[&str]) -> Gateway {
        let gateway = Gateway::spawn(net, zone, extra);
        gateway.wait_ready();
        gateway
    }

    /// Starts it without waiting.
    pub fn spawn(net: &Net, zone: &Zone, extra: &[&str]) -> Gateway {
        let host = zone.host.clone();
        let data = net.mkdir(&format!("{}-gateway-data", zone.name));
        // On loopback every workload has a loopback address: the whole mesh is on one host.
        let single_host: &[&str] = if net.is_namespaced() { &[] } else { &["--allow-loopback"] };
        let proc = host.spawn_cmd(
            "strait-gateway",
            Cmd::new(bin("strait-gateway"))
                .args(single_host)
                .args(["--name", "gateway-1", "--cp-address", &format!("https://{}", host.socket_addr(ZONE_DPS_PORT))])
                .arg("--cp-ca-file")
                .arg(zone.dps_ca_file())
                .arg("--zone-proxy-token-file")
                .arg(zone.creds.join("zone-proxy-token"))
                .args(["--ingress-address", &host.socket_addr(INGRESS_PORT).to_string()])
                .args(["--egress-address", &host.socket_addr(EGRESS_PORT).to_string()])
                .args(["--admin-address", &host.socket_addr(ADMIN_PORT).to_string()])
                .arg("--data-dir")
                .arg(&data)
                .args(["--cp-max-backoff", "2s", "--drain-timeout", &format!("{}s", GATEWAY_DRAIN.as_secs())])
                .args(extra),
        );
        Gateway { zone: zone.name.clone(), host, proc, data }
    }

    /// Waits for `/ready` (fails at once if the process exits).
    pub fn wait_ready(&self) {
        self.proc.wait_http_ready(&self.host, &self.host.url(ADMIN_PORT, "/ready"), GATEWAY_READY);
    }

    /// The status of `/ready`.
    pub fn ready(&self) -> Result<StatusCode, String> {
        get_json(&self.host, &self.host.url(ADMIN_PORT, "/ready"), None).map(|(s, _)| s)
    }

    /// The text of `/metrics` (as a JSON string).
    pub fn metrics_text(&self) -> Result<serde_json::Value, String> {
        get_json(&self.host, &self.host.url(ADMIN_PORT, "/metrics"), None).map(|(_, body)| body)
    }

    /// The value of sample `name` (exact, with its labels) on `/metrics`; 0 when the series
    /// does not exist yet.
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = get_json(&self.host, &self.host.url(ADMIN_PORT, "/metrics"), None)?;
        Ok(metric_value(body.as_str().unwrap_or_default(), name).unwrap_or(0.0))
    }
}

/// Starts the global with mesh `default`, then each zone of `names` with a gateway (QUIC idle
/// timeout 1.5 s, so a dead path is noticed quickly), and waits until every zone serves the
/// mesh and every gateway has its QUIC tunnel up to every other zone.
pub fn start_zones(net: &Net, names: &[&str]) -> (Global, Vec<(Zone, Gateway)>) {
    let global = Global::start(net, &[]);
    let zones = start_zones_to(net, &global, &[], names);
    (global, zones)
}

/// [`start_zones`] against a global already started, with further replicas of it (zones try
/// `global` first, then `replicas` in order).
pub fn start_zones_to(net: &Net, global: &Global, replicas: &[&Global], names: &[&str]) -> Vec<(Zone, Gateway)> {
    global.apply(net, "mesh.yaml", "type: Mesh\nname: default\n");
    let zones: Vec<(Zone, Gateway)> = names
        .iter()
        .map(|name| {
            let zone = start_zone_to(net, global, replicas, name, &[]);
            wait_for(&format!("{name} to serve mesh default"), SYNC, || {
                zone.resource("/meshes/default/meshtrafficpermissions/allow-all")?.map(drop).ok_or_else(|| "not yet".to_owned())
            });
            let gateway = Gateway::start(net, &zone, &["--quic-idle-timeout", "1500ms"]);
            (zone, gateway)
        })
        .collect();
    for (zone, gateway) in &zones {
        for (other, _) in zones.iter().filter(|(z, _)| z.name != zone.name) {
            let series = format!("strait_gateway_quic_up{{zone=\"{}\"}}", other.name);
            wait_for(&format!("{}'s QUIC tunnel to {}", zone.name, other.name), SYNC, || {
                let up = gateway.metric(&series)?;
                if up == 1.0 {
                    Ok(())
                } else {
                    Err(format!("{series} = {up}"))
                }
            });
        }
    }
    zones
}
