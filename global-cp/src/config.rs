//! Configuration of `strait-global`: flags and `STRAIT_*` environment variables, validated once.
//!
//! In: the command line and environment. Out: an immutable [`Config`], logged at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use strait_runtime::flags::{humanized, parse_duration, LogFormat};

/// The global control plane: holds every mesh's policies, serves the REST API, and (with zone
/// sync) federates the zones.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "strait-global", version, about, long_about = None)]
pub struct Config {
    /// Address of the REST API (also /metrics, /healthz, /readyz, /openapi.json).
    #[arg(long, env = "STRAIT_API_ADDRESS", default_value = "0.0.0.0:7680")]
    pub api_address: SocketAddr,

    /// Serve the REST API as plain HTTP instead of HTTPS. Tokens then cross the network in the
    /// clear, so this is refused on any address but loopback unless
    /// --api-plaintext-allow-remote is given too.
    #[arg(long, env = "STRAIT_API_PLAINTEXT")]
    pub api_plaintext: bool,

    /// With --api-plaintext, allow a non-loopback API address (behind a TLS proxy you run, say).
    #[arg(long, env = "STRAIT_API_PLAINTEXT_ALLOW_REMOTE", requires = "api_plaintext")]
    pub api_plaintext_allow_remote: bool,

    /// Extra DNS names or IP addresses for the REST API's certificate. It always carries
    /// "strait-global", "localhost", 127.0.0.1, ::1 and the --api-address IP when it is not
    /// 0.0.0.0; add the names and addresses clients use to reach the API.
    #[arg(long = "api-tls-name", env = "STRAIT_API_TLS_NAMES", value_delimiter = ',')]
    pub api_tls_names: Vec<String>,

    /// Serve the REST API with this certificate chain (PEM) instead of one from the system CA;
    /// needs --api-tls-key-file.
    #[arg(long, env = "STRAIT_API_TLS_CERT_FILE", requires = "api_tls_key_file")]
    pub api_tls_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --api-tls-cert-file.
    #[arg(long, env = "STRAIT_API_TLS_KEY_FILE", requires = "api_tls_cert_file")]
    pub api_tls_key_file: Option<PathBuf>,

    /// The URL the other replicas of the global reach this one's REST API at, such as
    /// https://10.0.0.5:7680 (a replica that does not hold a zone's stream forwards
    /// inspections of the zone's sidecars to the one that does). Default: the --api-address
    /// when it is a specific IP; none when it is 0.0.0.0 or ::, and then such inspections
    /// answer 404 naming the replica that holds the zone.
    #[arg(long, env = "STRAIT_ADVERTISE_API_URL")]
    pub advertise_api_url: Option<String>,

    /// Address of zone sync (KDS, gRPC over TLS).
    #[arg(long, env = "STRAIT_KDS_ADDRESS", default_value = "0.0.0.0:7685")]
    pub kds_address: SocketAddr,

    /// Extra DNS names for the sync endpoint's certificate (it always carries "strait-global").
    #[arg(long = "kds-tls-name", env = "STRAIT_KDS_TLS_NAMES", value_delimiter = ',')]
    pub kds_tls_names: Vec<String>,

    /// How often each side of a zone stream sends a heartbeat.
    #[arg(long, env = "STRAIT_KDS_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_heartbeat_interval: Duration,

    /// A zone silent for this long is disconnected and shown offline.
    #[arg(long, env = "STRAIT_KDS_IDLE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_idle_timeout: Duration,

    /// How long an offline zone's services stay in the other zones' views.
    #[arg(long, env = "STRAIT_ZONE_GRACE_PERIOD", default_value = "5m", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub zone_grace_period: Duration,

    /// Validity of zone tokens issued by `straitctl zone register`.
    #[arg(long, env = "STRAIT_ZONE_TOKEN_VALIDITY", default_value = "8760h", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub zone_token_validity: Duration,

    /// Lifetime of the zone sync endpoint's server certificate; it renews itself at ~70% of it.
    #[arg(long, env = "STRAIT_KDS_CERTIFICATE_LIFETIME", default_value = "8760h", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub kds_certificate_lifetime: Duration,

    /// Lifetime of the intermediate CA each zone holds per mesh; zones renew theirs at ~70% of
    /// it, and workload certificates never outlive the intermediate that signed them.
    #[arg(long, env = "STRAIT_ZONE_CA_LIFETIME", default_value = "8760h", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub zone_ca_lifetime: Duration,

    /// Directory of the store and the admin token [default: /var/lib/strait/global as root,
    /// else ~/.local/share/strait/global].
    #[arg(long, env = "STRAIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Where the global keeps meshes, policies, zones and its secrets: `sled` (the embedded
    /// store in <data-dir>/store) or a PostgreSQL URL (`postgres://user:password@host/db`,
    /// with libpq's TLS parameters: `?sslmode=verify-full&sslrootcert=/etc/strait/db-ca.pem`,
    /// and `sslcert`/`sslkey` for a client certificate), which several replicas may share. Give the URL through STRAIT_STORE rather than the command line: it may hold a
    /// password.
    #[arg(long, env = "STRAIT_STORE", default_value = "sled", hide_env_values = true)]
    #[serde(serialize_with = "redacted")]
    pub store: String,

    /// File holding the admin token for writes; created with a new random token (mode 0600)
    /// when missing [default: <data-dir>/admin-token].
    #[arg(long, env = "STRAIT_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "STRAIT_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a REST client has to send a request head before its connection is closed
    /// (protects against clients that trickle bytes to hold connections open).
    #[arg(long, env = "STRAIT_API_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub api_header_read_timeout: Duration,

    /// How long in-flight requests may run after SIGTERM/SIGINT before they are cut.
    #[arg(long, env = "STRAIT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub shutdown_timeout: Duration,

    /// Log format.
    #[arg(long, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, such as `info` or `info,strait_global_cp=debug`.
    #[arg(long, env = "STRAIT_LOG", default_value = "info")]
    pub log_level: String,

    /// Home directory, used only to derive the default data directory.
    #[arg(skip = std::env::var_os("HOME").map(PathBuf::from))]
    #[serde(skip)]
    home: Option<PathBuf>,
}

impl Config {
    /// A configuration for tests and embedding: API on `addr`, data under `data_dir`.
    pub fn for_dir(data_dir: PathBuf, addr: SocketAddr) -> Self {
        Config {
            api_address: addr,
            // Tests and embedders reach the API on loopback.
            api_plaintext: true,
            api_plaintext_allow_remote: false,
            api_tls_names: Vec::new(),
            api_tls_cert_file: None,
            api_tls_key_file: None,
            advertise_api_url: None,
            kds_address: SocketAddr::new(addr.ip(), 0),
            kds_tls_names: Vec::new(),
            kds_heartbeat_interval: Duration::from_secs(5),
            kds_idle_timeout: Duration::from_secs(15),
            zone_grace_period: Duration::from_secs(300),
            zone_token_validity: Duration::from_secs(365 * 24 * 3600),
            kds_certificate_lifetime: Duration::from_secs(365 * 24 * 3600),
            zone_ca_lifetime: Duration::from_secs(365 * 24 * 3600),
            data_dir: Some(data_dir),
            store: "sled".into(),
            admin_token_file: None,
            max_body_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            api_header_read_timeout: strait_cp_core::rest::serve::DEFAULT_HEADER_READ_TIMEOUT,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            home: None,
        }
    }

    /// Checks every value and returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.store != "sled" && !self.store.starts_with("postgres://") && !self.store.starts_with("postgresql://") {
            problems.push(format!(
                "--store {}: expected `sled` or a PostgreSQL URL (postgres://user:password@host:5432/database)",
                strait_store::redact_url(&self.store)
            ));
        }
        if self.max_body_bytes < 1024 {
            problems.push(format!("--max-body-bytes {}: must be at least 1024", self.max_body_bytes));
        }
        if self.kds_idle_timeout <= self.kds_heartbeat_interval {
            problems.push(format!(
                "--kds-idle-timeout {}: must be longer than --kds-heartbeat-interval {}",
                strait_api::Duration(self.kds_idle_timeout),
                strait_api::Duration(self.kds_heartbeat_interval)
            ));
        }
        for (flag, value) in [("--kds-certificate-lifetime", self.kds_certificate_lifetime), ("--zone-ca-lifetime", self.zone_ca_lifetime)]
        {
            if value < Duration::from_secs(2) {
                problems.push(format!("{flag} {}: must be at least 2s", strait_api::Duration(value)));
            }
        }
        if self.api_plaintext && !self.api_plaintext_allow_remote && !self.api_address.ip().is_loopback() {
            problems.push(format!(
                "--api-plaintext: the API would serve tokens in the clear on {}; serve it on a loopback address, drop --api-plaintext (HTTPS is the default), or add --api-plaintext-allow-remote",
                self.api_address
            ));
        }
        if self.api_plaintext && self.api_tls_cert_file.is_some() {
            problems.push("--api-tls-cert-file: has no use with --api-plaintext".into());
        }
        if let Some(url) = &self.advertise_api_url {
            let scheme = if self.api_plaintext { "http://" } else { "https://" };
            let rest = url.strip_prefix(scheme).unwrap_or_default();
            if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
                problems.push(format!(
                    "--advertise-api-url {url:?}: expected {scheme}<host>:<port> (the REST API serves {})",
                    if self.api_plaintext { "plain HTTP with --api-plaintext" } else { "HTTPS" }
                ));
            }
        }
        if self.resolved_data_dir().is_none() {
            problems.push("--data-dir: not set and no HOME to derive a default from".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.push(format!("--log-level {:?}: {e}", self.log_level));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The data directory, explicit or derived.
    pub fn resolved_data_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Some(d.clone());
        }
        if is_root() {
            return Some(PathBuf::from("/var/lib/strait/global"));
        }
        self.home.as_ref().map(|h| h.join(".local/share/strait/global"))
    }

    /// Names (and addresses) the REST API's own certificate carries.
    pub fn api_tls_names(&self) -> Vec<String> {
        let mut names: Vec<String> = ["strait-global", "localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
        if !self.api_address.ip().is_unspecified() {
            names.push(self.api_address.ip().to_string());
        }
        for name in &self.api_tls_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// Where the other replicas reach this one's REST API: --advertise-api-url, else the API
    /// address when it is a specific IP.
    pub fn api_url_for_peers(&self, bound: SocketAddr) -> Option<String> {
        if let Some(url) = &self.advertise_api_url {
            return Some(url.clone());
        }
        let scheme = if self.api_plaintext { "http" } else { "https" };
        (!bound.ip().is_unspecified()).then(|| format!("{scheme}://{bound}"))
    }

    /// The admin token file, explicit or `<data-dir>/admin-token`.
    pub fn resolved_token_file(&self) -> Option<PathBuf> {
        self.admin_token_file.clone().or_else(|| self.resolved_data_dir().map(|d| d.join("admin-token")))
    }
}

/// Whether we run as root, read from the owner of our own /proc entry (no unsafe call needed).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The store URL as logged: without its password.
fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&strait_store::redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let mut c = Config::for_dir("/tmp/x".into(), "127.0.0.1:0".parse().unwrap());
        c.max_body_bytes = 10;
        c.log_level = "info,[".into();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("--max-body-bytes 10"));
        assert!(problems[1].starts_with("--log-level"));
    }

    #[test]
    fn plain_http_is_loopback_only_unless_allowed() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["strait-global", "--data-dir", "/tmp/x"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap()
        };
        assert!(!parse(&[]).api_plaintext, "HTTPS is the default");
        let remote = parse(&["--api-plaintext"]).validate().unwrap_err();
        assert!(remote[0].starts_with("--api-plaintext") && remote[0].contains("0.0.0.0:7680"), "{remote:?}");
        assert!(parse(&["--api-plaintext", "--api-address", "127.0.0.1:7680"]).validate().is_ok());
        assert!(parse(&["--api-plaintext", "--api-plaintext-allow-remote"]).validate().is_ok());
        assert!(Config::try_parse_from(["strait-global", "--api-plaintext-allow-remote"]).is_err(), "needs --api-plaintext");
        let bound = "192.0.2.1:7680".parse().unwrap();
        assert_eq!(parse(&["--api-address", "192.0.2.1:7680"]).api_url_for_peers(bound).as_deref(), Some("https://192.0.2.1:7680"));
        assert_eq!(parse(&[]).api_url_for_peers("0.0.0.0:7680".parse().unwrap()), None, "no address to tell");
        let told = parse(&["--advertise-api-url", "https://global-1.internal:7680"]);
        assert_eq!(told.api_url_for_peers(bound).as_deref(), Some("https://global-1.internal:7680"));
        let wrong = parse(&["--advertise-api-url", "http://global-1.internal:7680/"]).validate().unwrap_err();
        assert!(wrong[0].starts_with("--advertise-api-url") && wrong[0].contains("https://<host>:<port>"), "{wrong:?}");
        let names = parse(&["--api-address", "192.0.2.1:7680", "--api-tls-name", "cp.example,10.0.0.1"]).api_tls_names();
        assert_eq!(names, ["strait-global", "localhost", "127.0.0.1", "::1", "192.0.2.1", "cp.example", "10.0.0.1"]);
    }

    #[test]
    fn token_file_defaults_into_the_data_dir() {
        let c = Config::for_dir("/data".into(), "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.resolved_token_file().unwrap(), PathBuf::from("/data/admin-token"));
    }

    #[test]
    fn flags_parse() {
        let c =
            Config::try_parse_from(["strait-global", "--api-address", "127.0.0.1:1", "--shutdown-timeout", "2s", "--log-format", "json"])
                .unwrap();
        assert_eq!(c.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(Config::try_parse_from(["strait-global", "--shutdown-timeout", "soon"]).is_err());
    }
}
