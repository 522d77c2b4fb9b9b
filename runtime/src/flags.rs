//! Flag types and helpers shared by every binary's `Config`: log format, durations written as
//! `5s` or `1h30m`, and the exit code for bad configuration.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a flag such as `5s` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<strait_api::Duration>().map(|d| d.get()).map_err(|e| e.to_string())
}

/// Serialises durations in the form flags take (`5s`), for the logged config.
pub mod humanized {
    use serde::Serializer;

    /// Writes `d` as `5s`, `1m30s`, ...
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&strait_api::Duration(*d))
    }
}

/// How a proxy (`strait-dp run`, `strait-gateway`) reaches its zone control plane's DPS.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct CpFlags {
    /// DPS address of the zone control plane, such as https://zone.example:7678.
    #[arg(long, env = "STRAIT_CP_ADDRESS")]
    pub cp_address: String,

    /// PEM file of the CA of the zone's DPS endpoint (a copy of `<zone data-dir>/dps-ca.pem`).
    #[arg(long, env = "STRAIT_CP_CA_FILE", required_unless_present = "cp_ca", conflicts_with = "cp_ca")]
    pub cp_ca_file: Option<std::path::PathBuf>,

    /// The CA of the zone's DPS endpoint itself (PEM), instead of --cp-ca-file: what the
    /// Kubernetes sidecar injector sets, since a Pod cannot mount a Secret of the control
    /// plane's namespace.
    #[arg(long, env = "STRAIT_CP_CA")]
    #[serde(skip)]
    pub cp_ca: Option<String>,

    /// Name the zone's DPS certificate is checked against.
    #[arg(long, env = "STRAIT_CP_SERVER_NAME", default_value = "strait-zone")]
    pub cp_server_name: String,

    /// Longest wait between reconnection attempts to the zone.
    #[arg(long, env = "STRAIT_CP_MAX_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "humanized")]
    pub cp_max_backoff: Duration,
}

impl CpFlags {
    /// Checks the address and reads the CA file, adding what is wrong to `problems`.
    pub fn read_ca(&self, problems: &mut Vec<String>) -> Option<String> {
        if !self.cp_address.starts_with("https://") {
            problems.push(format!("--cp-address {:?}: must be an https:// URL (DPS always uses TLS)", self.cp_address));
        }
        if let Some(pem) = &self.cp_ca {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                problems.push("--cp-ca: not a PEM certificate".into());
                return None;
            }
            return Some(pem.clone());
        }
        let Some(path) = &self.cp_ca_file else {
            problems.push("give --cp-ca-file (or --cp-ca)".into());
            return None;
        };
        match std::fs::read_to_string(path) {
            Ok(pem) if pem.trim().is_empty() => {
                problems.push(format!("--cp-ca-file {}: empty", path.display()));
                None
            }
            Ok(pem) => Some(pem),
            Err(e) => {
                problems.push(format!("--cp-ca-file {}: {e}", path.display()));
                None
            }
        }
    }
}

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_like_resources() {
        assert_eq!(super::parse_duration("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(super::parse_duration("soon").unwrap_err().contains("invalid duration"));
    }
}
