//! East-west gateways on a test network: `strait-gateway` started on a zone's host with the
//! zone's token and DPS CA (ingress on [`INGRESS_PORT`], egress on [`EGRESS_PORT`], admin on
//! [`ADMIN_PORT`]), and typed access to its `/ready` and `/metrics`.
//!
//! In: a [`Zone`] from [`crate::control_plane`]. Out: a running [`Gateway`]; accessors return
//! `Err(reason)` instead of panicking, so that they can be polled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;

use crate::control_plane::{get_json, metric_value, Zone, ZONE_DPS_PORT};
use crate::{bin, Cmd, Host, Net, Proc};

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
        let proc = host.spawn_cmd(
            "strait-gateway",
            Cmd::new(bin("strait-gateway"))
                .args(["--name", "gateway-1", "--cp-address", &format!("https://{}", host.socket_addr(ZONE_DPS_PORT))])
                .arg("--cp-ca-file")
                .arg(zone.data.join("dps-ca.pem"))
                .arg("--zone-token-file")
                .arg(zone.creds.join("zone-token"))
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

    /// Where other zones reach the ingress.
    pub fn ingress(&self) -> SocketAddr {
        self.host.socket_addr(INGRESS_PORT)
    }

    /// The value of sample `name` (exact, with its labels) on `/metrics`; 0 when the series
    /// does not exist yet.
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = get_json(&self.host, &self.host.url(ADMIN_PORT, "/metrics"), None)?;
        Ok(metric_value(body.as_str().unwrap_or_default(), name).unwrap_or(0.0))
    }

    /// `/metrics`, whole.
    pub fn metrics_text(&self) -> Result<String, String> {
        let (_, body) = get_json(&self.host, &self.host.url(ADMIN_PORT, "/metrics"), None)?;
        Ok(body.as_str().unwrap_or_default().to_string())
    }
}
