//! `strait-gateway` flags (each also an environment variable), and their validation.
//!
//! In: the command line. Out: a [`Validated`] configuration with the files read (zone-proxy token,
//! control plane CA) and the addresses resolved, or every problem at once, each naming its flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use strait_runtime::flags::{parse_duration, CpFlags, LogFormat};

/// East-west gateway: zone ingress for other zones' traffic and zone egress for this zone's
/// cross-zone traffic.
///
/// It registers with its zone control plane (with the zone's token),
/// receives which services live in this zone and where the other zones' ingresses are, and
/// carries sidecars' end-to-end mTLS connections between zones over one QUIC connection per
/// pair of zones (TCP+TLS where UDP is blocked), routed by SNI, never decrypted.
#[derive(Debug, Clone, Parser)]
#[command(name = "strait-gateway", version)]
pub struct Flags {
    /// This gateway's name, unique in its zone.
    #[arg(long, env = "STRAIT_GATEWAY_NAME", default_value = "gateway")]
    pub name: String,

    /// The zone control plane.
    #[command(flatten)]
    pub cp: CpFlags,

    /// The zone's zone-proxy token: the file `zone-proxy-token` that `straitctl zone register`
    /// writes. It only registers gateways of this zone; the zone token stays with the zone
    /// control plane.
    #[arg(long, env = "STRAIT_ZONE_PROXY_TOKEN_FILE", required_unless_present = "zone_proxy_token")]
    pub zone_proxy_token_file: Option<PathBuf>,

    /// The zone-proxy token itself, instead of --zone-proxy-token-file: give it through
    /// STRAIT_ZONE_PROXY_TOKEN (the `gateway.env` that `straitctl zone register --output-format
    /// env` writes), since a command line is visible to every user of the host.
    #[arg(long, env = "STRAIT_ZONE_PROXY_TOKEN", hide_env_values = true, conflicts_with = "zone_proxy_token_file")]
    pub zone_proxy_token: Option<String>,

    /// Ingress: UDP (QUIC) and TCP (TLS fallback) address other zones' gateways connect to.
    #[arg(long, env = "STRAIT_INGRESS_ADDRESS", default_value = "0.0.0.0:10001")]
    pub ingress_address: SocketAddr,

    /// Egress: TCP address this zone's sidecars send cross-zone connections to.
    #[arg(long, env = "STRAIT_EGRESS_ADDRESS", default_value = "0.0.0.0:10002")]
    pub egress_address: SocketAddr,

    /// The IP other zones and this zone's sidecars reach this gateway at; needed when the
    /// ingress or egress address is 0.0.0.0.
    #[arg(long, env = "STRAIT_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,

    /// The address (IP and port) other zones reach the ingress at, when it is not the
    /// ingress's own port on --advertise-address: a load balancer's, or a node's IP and node
    /// port on Kubernetes.
    #[arg(long, env = "STRAIT_ADVERTISE_INGRESS_ADDRESS")]
    pub advertise_ingress_address: Option<SocketAddr>,

    /// Admin endpoint: /ready, /metrics, /config_dump.
    #[arg(long, env = "STRAIT_ADMIN_ADDRESS", default_value = "127.0.0.1:9902")]
    pub admin_address: SocketAddr,

    /// Where the last configuration is kept, to serve with when the zone control plane is down
    /// at start.
    #[arg(long, env = "STRAIT_DATA_DIR", default_value = "/var/lib/strait/gateway")]
    pub data_dir: PathBuf,

    /// On SIGTERM: how long open tunnelled connections may take to finish.
    #[arg(long, env = "STRAIT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// A QUIC connection to another zone with no packet for this long is dead (keep-alives
    /// are sent at a third of it); new connections then fall back to TCP until QUIC works.
    #[arg(long, env = "STRAIT_QUIC_IDLE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub quic_idle_timeout: Duration,

    /// Allow a whole mesh on one host (the demo, tests on loopback): the ingress may forward to
    /// loopback endpoints and the egress serves loopback clients. Off by default: a Dataplane
    /// on loopback is not reachable from other zones, and only the zone's sidecars, by their
    /// registered addresses (and processes of the gateway's own host), may use the egress.
    #[arg(long, env = "STRAIT_ALLOW_LOOPBACK")]
    pub allow_loopback: bool,

    /// A tunnelled connection (egress or ingress) in which no byte moved either way for this
    /// long is closed; 0 never closes one.
    #[arg(long, env = "STRAIT_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Log format.
    #[arg(long, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, such as `info` or `strait_gateway=debug`.
    #[arg(long, env = "STRAIT_LOG", default_value = "info")]
    pub log_level: String,
}

/// Flags with their files read and addresses resolved.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The flags.
    pub flags: Flags,
    /// The zone's token.
    pub token: String,
    /// The zone control plane's CA.
    pub cp_ca_pem: String,
    /// Where other zones reach the ingress.
    pub advertised_ingress: SocketAddr,
    /// Where sidecars reach the egress.
    pub advertised_egress: SocketAddr,
}

/// `bind` as others reach it: its own IP, or the advertised one when it is unspecified.
fn advertised(flag: &str, bind: SocketAddr, advertise: Option<IpAddr>, problems: &mut Vec<String>) -> SocketAddr {
    match (bind.ip().is_unspecified(), advertise) {
        (false, _) => bind,
        (true, Some(ip)) => SocketAddr::new(ip, bind.port()),
        (true, None) => {
            problems.push(format!(
                "{flag} {bind}: binds every address and this host has no route to the zone control plane to pick one by; give --advertise-address"
            ));
            bind
        }
    }
}

impl Flags {
    /// Reads the files and checks the flags, reporting every problem at once.
    pub fn validate(self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        let cp_ca_pem = self.cp.read_ca(&mut problems);
        if let Err(e) = strait_api::names::check_dns_label(&self.name) {
            problems.push(format!("--name {:?}: {e}", self.name));
        }
        let token = strait_runtime::flags::read_token(
            ("--zone-proxy-token", self.zone_proxy_token.as_deref()),
            ("--zone-proxy-token-file", self.zone_proxy_token_file.as_deref()),
            &mut problems,
        );
        if self.ingress_address.port() == 0 {
            problems.push("--ingress-address: needs a fixed port: other zones are told it".into());
        }
        if self.egress_address.port() == 0 {
            problems.push("--egress-address: needs a fixed port: sidecars are told it".into());
        }
        if self.quic_idle_timeout < Duration::from_millis(300) {
            problems.push(format!("--quic-idle-timeout {:?}: at least 300ms", self.quic_idle_timeout));
        }
        // Unless told, the gateway is reached at the address it reaches its zone from.
        let advertise_address = self.advertise_address.or_else(|| {
            let ip = strait_runtime::flags::route_source(&self.cp.cp_address)?;
            tracing::info!(%ip, "advertising the address this host reaches its zone control plane from (set --advertise-address to choose)");
            Some(ip)
        });
        let advertised_ingress = match self.advertise_ingress_address {
            Some(address) if address.ip().is_unspecified() || address.port() == 0 => {
                problems.push(format!("--advertise-ingress-address {address}: needs the IP and port other zones connect to"));
                address
            }
            Some(address) => address,
            None => advertised("--ingress-address", self.ingress_address, advertise_address, &mut problems),
        };
        let advertised_egress = advertised("--egress-address", self.egress_address, advertise_address, &mut problems);
        match (token, cp_ca_pem) {
            (Some(token), Some(cp_ca_pem)) if problems.is_empty() => {
                Ok(Validated { flags: self, token, cp_ca_pem, advertised_ingress, advertised_egress })
            }
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &std::path::Path, extra: &[&str]) -> Flags {
        std::fs::write(dir.join("token"), "tok\n").unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut args: Vec<String> =
            ["strait-gateway", "--cp-address", "https://zone:7678", "--zone-proxy-token-file"].iter().map(|s| s.to_string()).collect();
        args.push(dir.join("token").display().to_string());
        args.push("--cp-ca-file".into());
        args.push(dir.join("ca.pem").display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Flags::try_parse_from(args).unwrap()
    }

    #[test]
    fn unspecified_addresses_need_an_advertised_one() {
        let dir = tempfile::tempdir().unwrap();
        let problems = flags(dir.path(), &["--name", "Bad_Name"]).validate().unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with("--ingress-address 0.0.0.0:10001") && p.contains("--advertise-address")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.starts_with("--egress-address 0.0.0.0:10002")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("--name \"Bad_Name\"")), "{problems:?}");

        let ok = flags(dir.path(), &["--advertise-address", "192.0.2.7", "--egress-address", "127.0.0.1:10002"]).validate().unwrap();
        assert_eq!(ok.advertised_ingress, "192.0.2.7:10001".parse().unwrap());
        assert_eq!(ok.advertised_egress, "127.0.0.1:10002".parse().unwrap());
        let behind = ["--advertise-address", "10.1.2.3", "--advertise-ingress-address", "203.0.113.9:31001"];
        let ok = flags(dir.path(), &behind).validate().unwrap();
        assert_eq!(ok.advertised_ingress, "203.0.113.9:31001".parse().unwrap(), "a node port or load balancer");
        assert_eq!(ok.advertised_egress, "10.1.2.3:10002".parse().unwrap(), "the egress stays on the pod's IP");
        let problems = flags(dir.path(), &["--advertise-address", "10.1.2.3", "--advertise-ingress-address", "0.0.0.0:31001"])
            .validate()
            .err()
            .unwrap();
        assert!(problems.iter().any(|p| p.starts_with("--advertise-ingress-address")), "{problems:?}");
        assert_eq!(ok.token, "tok");

        let mut args = ["strait-gateway", "--cp-address", "https://127.0.0.1:7678", "--zone-proxy-token", "tok2", "--cp-ca-file"]
            .map(String::from)
            .to_vec();
        args.push(dir.path().join("ca.pem").display().to_string());
        let routed = Flags::try_parse_from(args).unwrap().validate().unwrap();
        assert_eq!(routed.advertised_ingress, "127.0.0.1:10001".parse().unwrap(), "the address the zone is reached from");
        assert_eq!(routed.token, "tok2");
    }
}
