//! Flag types and helpers shared by every binary's `Config`: log format, durations written as
//! `5s` or `1h30m`, and the exit code for bad configuration.

use std::path::Path;
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
    /// The systemd journal's native protocol, every field a journal field (what the units
    /// of deploy/vm use; text on stderr when the journal is not reachable).
    Journald,
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
    /// Checks the address and reads the CA (inline or from its file), adding what is wrong to
    /// `problems`.
    pub fn read_ca(&self, problems: &mut Vec<String>) -> Option<String> {
        if !self.cp_address.starts_with("https://") {
            problems.push(format!("--cp-address {:?}: must be an https:// URL (DPS always uses TLS)", self.cp_address));
        }
        read_pem(("--cp-ca", self.cp_ca.as_deref()), ("--cp-ca-file", self.cp_ca_file.as_deref()), problems)
    }
}

/// A token given inline (`(flag, value)`, from its environment variable in the env files
/// `straitctl` writes) or in a file (`(flag, path)`): trimmed and not empty, or a problem
/// naming the flag.
pub fn read_token(inline: (&str, Option<&str>), file: (&str, Option<&Path>), problems: &mut Vec<String>) -> Option<String> {
    let (text, flag) = match read_inline_or_file(inline, file, problems)? {
        (text, Source::Inline(flag)) => (text, flag.to_string()),
        (text, Source::File(flag, path)) => (text, format!("{flag} {}", path.display())),
    };
    let token = text.trim();
    if token.is_empty() {
        problems.push(format!("{flag}: empty"));
        return None;
    }
    if token.chars().any(char::is_whitespace) {
        problems.push(format!("{flag}: not a token (it holds white space)"));
        return None;
    }
    Some(token.to_string())
}

/// A CA certificate given inline (`(flag, value)`: PEM, or PEM encoded in base64 as the env
/// files of `straitctl` and the zone's `cp.env` carry it, on one line) or in a PEM file.
pub fn read_pem(inline: (&str, Option<&str>), file: (&str, Option<&Path>), problems: &mut Vec<String>) -> Option<String> {
    let (text, flag, inline) = match read_inline_or_file(inline, file, problems)? {
        (text, Source::Inline(flag)) => (decode_env_pem(&text).unwrap_or(text), flag.to_string(), true),
        (text, Source::File(flag, path)) => (text, format!("{flag} {}", path.display()), false),
    };
    if text.trim().is_empty() {
        problems.push(format!("{flag}: empty"));
        return None;
    }
    // A file is parsed where it is used, which names what is wrong with it.
    if inline && !text.contains("-----BEGIN CERTIFICATE-----") {
        problems.push(format!("{flag}: not a PEM certificate (nor one in base64)"));
        return None;
    }
    Some(text)
}

enum Source<'a> {
    Inline(&'a str),
    File(&'a str, &'a Path),
}

fn read_inline_or_file<'a>(
    (inline_flag, inline): (&'a str, Option<&str>),
    (file_flag, file): (&'a str, Option<&'a Path>),
    problems: &mut Vec<String>,
) -> Option<(String, Source<'a>)> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            problems.push(format!("{inline_flag} and {file_flag}: give one of the two"));
            None
        }
        (Some(text), None) => Some((text.to_string(), Source::Inline(inline_flag))),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => Some((text, Source::File(file_flag, path))),
            Err(e) => {
                problems.push(format!("{file_flag} {}: {e}", path.display()));
                None
            }
        },
        (None, None) => {
            problems.push(format!("give {file_flag} (or {inline_flag})"));
            None
        }
    }
}

/// The address this host sends from to reach the host of `url` (`https://host:port/...`), as
/// the routing table picks it: the default an advertised address takes on a VM. A UDP socket
/// "connected" to the peer sends nothing.
pub fn route_source(url: &str) -> Option<std::net::IpAddr> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest).split('/').next()?;
    let target = match authority.parse::<SocketAddr>() {
        Ok(address) => address,
        Err(_) => authority.to_socket_addrs().ok()?.next()?,
    };
    let any: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// A PEM document as one line for an environment file: its base64 (standard alphabet, no
/// line breaks), which needs no quoting in systemd's `EnvironmentFile=`.
pub fn encode_env_pem(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}

fn decode_env_pem(text: &str) -> Option<String> {
    use base64::Engine;
    let text = text.trim();
    if text.contains("-----BEGIN") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
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

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_is_read_inline_in_pem_or_base64_or_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, PEM).unwrap();
        let mut problems = Vec::new();
        let encoded = super::encode_env_pem(PEM);
        assert!(!encoded.contains('\n') && !encoded.contains(' '), "one line for an env file: {encoded}");
        for inline in [Some(PEM), Some(encoded.as_str())] {
            assert_eq!(super::read_pem(("--ca", inline), ("--ca-file", None), &mut problems).as_deref(), Some(PEM));
        }
        assert_eq!(super::read_pem(("--ca", None), ("--ca-file", Some(&file)), &mut problems).as_deref(), Some(PEM));
        assert!(problems.is_empty(), "{problems:?}");
        for (inline, path, expected) in [
            (Some("bm90IGEgY2VydA=="), None, "--ca: not a PEM certificate"),
            (Some(PEM), Some(file.as_path()), "--ca and --ca-file: give one of the two"),
            (None, None, "give --ca-file (or --ca)"),
            (None, Some(dir.path().join("missing").as_path()), "--ca-file"),
        ] {
            let mut problems = Vec::new();
            assert_eq!(super::read_pem(("--ca", inline), ("--ca-file", path), &mut problems), None);
            assert!(problems.len() == 1 && problems[0].starts_with(expected), "{problems:?}");
        }
    }

    #[test]
    fn a_token_is_read_inline_or_from_its_file_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc.def\n").unwrap();
        let mut problems = Vec::new();
        assert_eq!(super::read_token(("--token", Some(" abc.def ")), ("--token-file", None), &mut problems).as_deref(), Some("abc.def"));
        assert_eq!(super::read_token(("--token", None), ("--token-file", Some(&file)), &mut problems).as_deref(), Some("abc.def"));
        assert!(problems.is_empty(), "{problems:?}");
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(super::read_token(("--token", None), ("--token-file", Some(&file)), &mut problems), None);
        assert_eq!(super::read_token(("--token", Some("two words")), ("--token-file", None), &mut problems), None);
        assert_eq!(
            problems,
            [format!("--token-file {}: empty", file.display()), "--token: not a token (it holds white space)".to_string()]
        );
    }
}
