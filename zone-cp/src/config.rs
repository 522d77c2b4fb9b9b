//! Configuration of `strait-zone`: flags and `STRAIT_*` environment variables, validated once.
//!
//! In: the command line and environment. Out: an immutable [`Config`], logged at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
pub use strait_runtime::flags::LogFormat;
use strait_runtime::flags::{humanized, parse_duration};

/// The zone control plane: receives the meshes and policies of the global control plane over
/// zone sync (KDS), keeps them on disk, and serves them to this zone (read-only REST for now).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "strait-zone", version, about, long_about = None)]
pub struct Config {
    /// This zone's name, as registered with `straitctl zone register`.
    #[arg(long, env = "STRAIT_ZONE")]
    pub zone: String,

    /// Zone sync address of the global control plane, such as https://global.example:7685.
    /// Several, comma-separated, for the replicas of a global on PostgreSQL: the zone uses the
    /// first that answers, moves to the next when its stream breaks, and resumes there from
    /// the revision it applied.
    #[arg(long, env = "STRAIT_GLOBAL_ADDRESS")]
    pub global_address: String,

    /// File holding the zone token printed by `straitctl zone register`.
    #[arg(long, env = "STRAIT_ZONE_TOKEN_FILE", required_unless_present = "zone_token")]
    pub zone_token_file: Option<PathBuf>,

    /// The zone token itself, instead of --zone-token-file: give it through STRAIT_ZONE_TOKEN
    /// (the `zone.env` that `straitctl zone register --output-format env` writes), since a
    /// command line is visible to every user of the host.
    #[arg(long, env = "STRAIT_ZONE_TOKEN", hide_env_values = true, conflicts_with = "zone_token_file")]
    #[serde(skip)]
    pub zone_token: Option<String>,

    /// PEM file of the CA that signed the global's sync endpoint (from `straitctl zone register`).
    #[arg(long, env = "STRAIT_GLOBAL_CA_FILE", required_unless_present = "global_ca")]
    pub global_ca_file: Option<PathBuf>,

    /// That CA itself, instead of --global-ca-file: PEM, or PEM in base64 on one line (as in
    /// the `zone.env` of `straitctl zone register --output-format env`).
    #[arg(long, env = "STRAIT_GLOBAL_CA", hide_env_values = true, conflicts_with = "global_ca_file")]
    #[serde(skip)]
    pub global_ca: Option<String>,

    /// Name the global's certificate is checked against.
    #[arg(long, env = "STRAIT_GLOBAL_SERVER_NAME", default_value = "strait-global")]
    pub global_server_name: String,

    /// Directory of the zone's store.
    #[arg(long, env = "STRAIT_DATA_DIR", default_value = "/var/lib/strait/zone")]
    pub data_dir: PathBuf,

    /// Address of the read-only REST API (also /metrics, /healthz, /readyz).
    #[arg(long, env = "STRAIT_API_ADDRESS", default_value = "0.0.0.0:7681")]
    pub api_address: SocketAddr,

    /// Serve the REST API as plain HTTP instead of HTTPS (with the certificate of the DPS
    /// endpoint, which `dps-ca.pem` verifies). Refused on any address but loopback unless
    /// --api-plaintext-allow-remote is given too.
    #[arg(long, env = "STRAIT_API_PLAINTEXT")]
    pub api_plaintext: bool,

    /// With --api-plaintext, allow a non-loopback API address.
    #[arg(long, env = "STRAIT_API_PLAINTEXT_ALLOW_REMOTE", requires = "api_plaintext")]
    pub api_plaintext_allow_remote: bool,

    /// How long a REST client has to send a request head before its connection is closed
    /// (protects against clients that trickle bytes to hold connections open).
    #[arg(long, env = "STRAIT_API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub api_header_read_timeout: Duration,

    /// Address of the dataplane config server (DPS, gRPC over TLS) that sidecars connect to.
    #[arg(long, env = "STRAIT_DPS_ADDRESS", default_value = "0.0.0.0:7678")]
    pub dps_address: SocketAddr,

    /// Extra DNS names for the DPS certificate (it always carries "strait-zone").
    #[arg(long = "dps-tls-name", env = "STRAIT_DPS_TLS_NAMES", value_delimiter = ',')]
    pub dps_tls_names: Vec<String>,

    /// CA certificate (PEM) that signs the DPS endpoint's certificate, instead of the CA the
    /// zone creates and keeps in its store: for a CA made at install time (the Helm chart's
    /// Secret) or shared by replicas. Sidecars and gateways verify the DPS endpoint with it.
    #[arg(long, env = "STRAIT_DPS_CA_CERT_FILE", requires = "dps_ca_key_file")]
    pub dps_ca_cert_file: Option<PathBuf>,

    /// Private key of --dps-ca-cert-file (PKCS#8 PEM, "BEGIN PRIVATE KEY": Ed25519 or ECDSA
    /// P-256/P-384).
    #[arg(long, env = "STRAIT_DPS_CA_KEY_FILE", requires = "dps_ca_cert_file")]
    pub dps_ca_key_file: Option<PathBuf>,

    /// Lifetime of the DPS endpoint's server certificate; it renews itself at ~70% of it.
    #[arg(long, env = "STRAIT_DPS_CERTIFICATE_LIFETIME", default_value = "8760h", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub dps_certificate_lifetime: Duration,

    /// How often the zone sends a heartbeat to the global.
    #[arg(long, env = "STRAIT_KDS_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_heartbeat_interval: Duration,

    /// A global silent for this long is treated as gone, and the zone reconnects.
    #[arg(long, env = "STRAIT_KDS_IDLE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_idle_timeout: Duration,

    /// How often the zone sends the global what its sidecars served (the traffic map's data);
    /// nothing is sent while nothing changes.
    #[arg(long, env = "STRAIT_TRAFFIC_REPORT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub traffic_report_interval: Duration,

    /// Longest wait between reconnection attempts (exponential back-off with jitter up to this).
    #[arg(long, env = "STRAIT_KDS_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_max_backoff: Duration,

    /// Dataplane addresses accepted whatever address the sidecar connects from, as addresses or
    /// CIDR ranges (sidecars behind NAT or a proxy). Any other Dataplane must declare the
    /// address its connection comes from, so that no workload can point other zones' traffic
    /// elsewhere.
    #[arg(long = "allow-dataplane-address", env = "STRAIT_ALLOW_DATAPLANE_ADDRESSES", value_delimiter = ',', value_parser = AddressRange::parse)]
    #[serde(skip)]
    pub allow_dataplane_addresses: Vec<AddressRange>,

    /// Where the zone runs. `universal`: Dataplanes are registered by their sidecars (with a
    /// dataplane token) or over the REST API. `kubernetes`: the zone watches the cluster's Pods,
    /// Services and Namespaces and keeps a Dataplane for each Pod with a sidecar, sidecars
    /// authenticate with their Pod's service-account token (checked with TokenReview), and one
    /// replica at a time (a Lease) leads: it syncs with the global and runs the controller,
    /// while the others stand by.
    #[arg(long, env = "STRAIT_ENVIRONMENT", value_enum, default_value_t = Environment::Universal)]
    pub environment: Environment,

    /// With --environment kubernetes: a kubeconfig file for the Kubernetes API. Without it, the
    /// zone uses its Pod's service account (in a cluster), else $KUBECONFIG or ~/.kube/config.
    #[arg(long, env = "STRAIT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// With --environment kubernetes: the namespace of the zone's leader Lease (the control
    /// plane's own). Default: the namespace of the zone's service account, else strait-system.
    #[arg(long, env = "STRAIT_NAMESPACE")]
    pub namespace: Option<String>,

    /// With --environment kubernetes: this replica's name in the leader election (the Helm chart
    /// passes the Pod's name). Default: the host name.
    #[arg(long, env = "STRAIT_REPLICA_NAME")]
    pub replica_name: Option<String>,

    /// With --environment kubernetes: the name of the Lease that elects the leading replica.
    #[arg(long, env = "STRAIT_LEADER_LEASE", default_value = "strait-zone-leader")]
    pub leader_lease: String,

    /// With --environment kubernetes: how long a leader that stopped renewing the Lease keeps
    /// it (it stops leading at two thirds of this; a replica that shuts down releases it at
    /// once).
    #[arg(long, env = "STRAIT_LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub leader_lease_duration: Duration,

    /// With --environment kubernetes: the image of the sidecar that the zone's admission
    /// webhook injects into the Pods of namespaces labelled strait.io/sidecar-injection=enabled.
    /// Without it, the zone serves no webhook.
    #[arg(long, env = "STRAIT_SIDECAR_IMAGE")]
    pub sidecar_image: Option<String>,

    /// With --sidecar-image: where the injected sidecars reach this zone's DPS. Default:
    /// https://strait-zone.<namespace>.svc:7678.
    #[arg(long, env = "STRAIT_SIDECAR_CP_ADDRESS")]
    pub sidecar_cp_address: Option<String>,

    /// With --sidecar-image: the address of the injection webhook (HTTPS, with the DPS
    /// endpoint's certificate, which the webhook configuration's caBundle verifies).
    #[arg(long, env = "STRAIT_INJECTION_ADDRESS", default_value = "0.0.0.0:7443")]
    pub injection_address: SocketAddr,

    /// Policy types this zone refuses (NACKs), such as MeshFaultInjection in a production zone.
    #[arg(long, env = "STRAIT_DISABLED_POLICY_TYPES", value_delimiter = ',')]
    pub disabled_policy_types: Vec<String>,

    /// Log format.
    #[arg(long, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, such as `info` or `info,strait_zone_cp=debug`.
    #[arg(long, env = "STRAIT_LOG", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// The zone token and the global's CA (PEM), inline or from their files.
    pub fn credentials(&self, problems: &mut Vec<String>) -> Option<(String, String)> {
        use strait_runtime::flags::{read_pem, read_token};
        let token =
            read_token(("--zone-token", self.zone_token.as_deref()), ("--zone-token-file", self.zone_token_file.as_deref()), problems);
        let ca = read_pem(("--global-ca", self.global_ca.as_deref()), ("--global-ca-file", self.global_ca_file.as_deref()), problems);
        Some((token?, ca?))
    }

    /// The global's addresses, in the order they are tried.
    pub fn global_addresses(&self) -> Vec<&str> {
        self.global_address.split(',').map(str::trim).filter(|a| !a.is_empty()).collect()
    }

    /// Checks every value and returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = strait_api::names::check_dns_label(&self.zone) {
            problems.push(format!("--zone: {e}"));
        }
        if self.global_addresses().is_empty() {
            problems.push("--global-address: give the global's zone sync address".into());
        }
        for address in self.global_addresses().into_iter().filter(|a| !a.starts_with("https://")) {
            problems.push(format!("--global-address {address:?}: must be an https:// URL (zone sync always uses TLS)"));
        }
        if self.dps_certificate_lifetime < Duration::from_secs(2) {
            problems
                .push(format!("--dps-certificate-lifetime {}: must be at least 2s", strait_api::Duration(self.dps_certificate_lifetime)));
        }
        self.credentials(&mut problems);
        for t in &self.disabled_policy_types {
            if !strait_api::ResourceType::ALL.iter().any(|k| k.is_policy() && k.name() == t) {
                problems.push(format!("--disabled-policy-types: {t:?} is not a policy type"));
            }
        }
        if self.api_plaintext && !self.api_plaintext_allow_remote && !self.api_address.ip().is_loopback() {
            problems.push(format!(
                "--api-plaintext: the API would serve its admin token's writes in the clear on {}; serve it on a loopback address, drop --api-plaintext (HTTPS is the default), or add --api-plaintext-allow-remote",
                self.api_address
            ));
        }
        if self.environment == Environment::Universal {
            let kubernetes_only = [
                ("--kubeconfig", self.kubeconfig.is_some()),
                ("--namespace", self.namespace.is_some()),
                ("--replica-name", self.replica_name.is_some()),
                ("--leader-lease", self.leader_lease != "strait-zone-leader"),
                ("--leader-lease-duration", self.leader_lease_duration != Duration::from_secs(15)),
                ("--sidecar-image", self.sidecar_image.is_some()),
            ];
            for (flag, _) in kubernetes_only.iter().filter(|(_, given)| *given) {
                problems.push(format!("{flag}: only used with --environment kubernetes (this zone runs with --environment universal)"));
            }
        }
        if self.sidecar_image.is_none() {
            if self.sidecar_cp_address.is_some() {
                problems.push("--sidecar-cp-address: only used with --sidecar-image (the injection webhook)".into());
            }
            if self.injection_address != SocketAddr::from(([0, 0, 0, 0], 7443)) {
                problems.push("--injection-address: only used with --sidecar-image (the injection webhook)".into());
            }
        }
        if let Some(address) = self.sidecar_cp_address.as_ref().filter(|a| !a.starts_with("https://")) {
            problems.push(format!("--sidecar-cp-address {address:?}: must be an https:// URL (DPS always uses TLS)"));
        }
        if self.leader_lease_duration < Duration::from_secs(3) {
            problems.push(format!("--leader-lease-duration {}: must be at least 3s", strait_api::Duration(self.leader_lease_duration)));
        }
        if let Err(e) = strait_api::names::check_dns_label(&self.leader_lease) {
            problems.push(format!("--leader-lease: {e}"));
        }
        if self.kds_idle_timeout <= self.kds_heartbeat_interval {
            problems.push("--kds-idle-timeout: must be longer than --kds-heartbeat-interval".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Where a zone runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Hosts and VMs: sidecars register their own Dataplanes.
    Universal,
    /// A Kubernetes cluster: Dataplanes follow its Pods.
    Kubernetes,
}

/// An address or a CIDR range, such as `10.1.0.0/16` or `192.0.2.7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Parses `a.b.c.d`, `a.b.c.d/n` or their IPv6 forms.
    pub fn parse(text: &str) -> Result<AddressRange, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = ip.parse().map_err(|e| format!("{text:?} is not an address or CIDR range: {e}"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?
            }
        };
        Ok(AddressRange { network, prefix })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let bits = |ip: std::net::IpAddr| -> (u128, u32) {
            match ip.to_canonical() {
                std::net::IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                std::net::IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, net_len), (addr, addr_len)) = (bits(self.network), bits(ip));
        if net_len != addr_len {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        net & mask == addr & mask
    }
}

#[cfg(test)]
mod address_range_tests {
    use super::AddressRange;

    #[test]
    fn plain_http_is_loopback_only_unless_allowed() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let (token, ca) = (dir.path().join("t"), dir.path().join("c"));
        std::fs::write(&token, "t").unwrap();
        std::fs::write(&ca, "c").unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec!["strait-zone", "--zone", "z", "--global-address", "https://g:7685", "--zone-token-file"];
            args.push(token.to_str().unwrap());
            args.extend(["--global-ca-file", ca.to_str().unwrap()]);
            args.extend_from_slice(extra);
            super::Config::try_parse_from(args).unwrap()
        };
        assert!(!parse(&[]).api_plaintext, "HTTPS is the default");
        let problems = parse(&["--api-plaintext"]).validate().unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("--api-plaintext")), "{problems:?}");
        assert!(parse(&["--api-plaintext", "--api-address", "127.0.0.1:7681"]).validate().is_ok());
        assert!(parse(&["--api-plaintext", "--api-plaintext-allow-remote"]).validate().is_ok());
    }

    #[test]
    fn several_global_addresses_are_tried_in_order_and_each_must_be_https() {
        use clap::Parser;
        let args = ["strait-zone", "--zone", "z", "--zone-token", "t", "--global-ca", "c", "--global-address"];
        let config = |address: &str| super::Config::try_parse_from(args.iter().copied().chain([address])).unwrap();
        let two = config("https://a:7685, https://b:7685");
        assert_eq!(two.global_addresses(), ["https://a:7685", "https://b:7685"]);
        let problems = config("https://a:7685,http://b:7685").validate().unwrap_err();
        assert!(problems.iter().any(|p| p.starts_with("--global-address \"http://b:7685\": must be an https:// URL")), "{problems:?}");
        assert!(config(" , ").validate().unwrap_err().iter().any(|p| p.starts_with("--global-address: give")));
    }

    #[test]
    fn ranges_contain_their_addresses_only() {
        let range = AddressRange::parse("10.1.0.0/16").unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(!range.contains("::1".parse().unwrap()));
        let one = AddressRange::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()) && !one.contains("192.0.2.8".parse().unwrap()));
        assert!(AddressRange::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(AddressRange::parse("0.0.0.0/0").unwrap().contains("203.0.113.1".parse().unwrap()));
        assert!(AddressRange::parse("10.0.0.0/33").unwrap_err().contains("prefix"));
        assert!(AddressRange::parse("nope").is_err());
    }
}
