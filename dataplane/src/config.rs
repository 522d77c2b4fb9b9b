//! Configuration of `strait-dp run`: flags and `STRAIT_*` environment variables, validated once,
//! including the Dataplane file (every bad field is reported before anything starts).
//!
//! In: the command line, the environment, the Dataplane file and the token file. Out: a
//! [`RunConfig`] with the parsed Dataplane and the token.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use strait_api::{Resource, ResourceType};
use strait_runtime::flags::{CpFlags, LogFormat};

/// The sidecar proxy of a Strait workload.
#[derive(Debug, Parser)]
#[command(name = "strait-dp", version, about = crate::ROLE)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register with the zone control plane and proxy this workload's traffic
    Run(RunConfig),
    /// Install or remove the iptables rules that send this network namespace's traffic through the sidecar
    #[command(subcommand)]
    TransparentProxy(TransparentCommand),
}

/// `strait-dp transparent-proxy` actions.
#[derive(Debug, Subcommand)]
pub enum TransparentCommand {
    /// Install the rules (idempotent: running it again leaves one set of rules)
    Install(InstallArgs),
    /// Remove the rules (idempotent)
    Uninstall {
        /// Print the iptables commands instead of running them
        #[arg(long)]
        dry_run: bool,
    },
}

/// Flags of `transparent-proxy install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// The uid the sidecar runs as; its own connections are never redirected
    #[arg(long, env = "STRAIT_PROXY_UID")]
    pub proxy_uid: u32,
    /// Port of the sidecar's transparent outbound listener
    #[arg(long, default_value_t = crate::transparent::DEFAULT_REDIRECT_PORT_OUTBOUND)]
    pub redirect_port_outbound: u16,
    /// Port of the sidecar's transparent inbound listener
    #[arg(long, default_value_t = crate::transparent::DEFAULT_REDIRECT_PORT_INBOUND)]
    pub redirect_port_inbound: u16,
    /// Do not redirect inbound traffic
    #[arg(long)]
    pub no_redirect_inbound: bool,
    /// Outbound destination ports left alone (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone, such as 10.0.0.0/8 (comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<crate::transparent::Cidr>,
    /// Inbound ports left alone (comma-separated) [default: 22]
    #[arg(long, value_delimiter = ',')]
    pub exclude_inbound_ports: Option<Vec<u16>>,
    /// Do not install IPv6 rules
    #[arg(long)]
    pub no_ipv6: bool,
    /// Print the iptables commands instead of running them
    #[arg(long)]
    pub dry_run: bool,
}

impl InstallArgs {
    /// The library's configuration for these flags.
    pub fn to_config(&self) -> crate::transparent::TransparentConfig {
        let mut c = crate::transparent::TransparentConfig::new(self.proxy_uid);
        c.redirect_port_outbound = self.redirect_port_outbound;
        c.redirect_port_inbound = self.redirect_port_inbound;
        c.redirect_inbound = !self.no_redirect_inbound;
        c.exclude_outbound_ports = self.exclude_outbound_ports.clone();
        c.exclude_outbound_cidrs = self.exclude_outbound_cidrs.clone();
        if let Some(ports) = &self.exclude_inbound_ports {
            c.exclude_inbound_ports = ports.clone();
        }
        c.ipv6 = !self.no_ipv6;
        c
    }
}

/// Flags of `strait-dp run`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct RunConfig {
    /// The zone control plane.
    #[command(flatten)]
    #[serde(flatten)]
    pub cp: CpFlags,

    /// The Dataplane resource of this workload (YAML or JSON).
    #[arg(long, env = "STRAIT_DATAPLANE_FILE")]
    pub dataplane_file: PathBuf,

    /// The dataplane token from `straitctl token dataplane`.
    #[arg(long, env = "STRAIT_DATAPLANE_TOKEN_FILE")]
    pub dataplane_token_file: PathBuf,

    /// Admin endpoint (`/ready`, `/metrics`, `/config_dump`); keep it on localhost.
    #[arg(long, env = "STRAIT_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
    pub admin_address: SocketAddr,

    /// Threads that proxy traffic. 1 (the default) runs the data path on one thread of its
    /// own, the least CPU and memory per request; raise it for workloads that need more than
    /// one core of proxying. The zone connection and the admin endpoint have a thread apart.
    #[arg(long, env = "STRAIT_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// How often the sidecar tells its zone what its inbounds served (for the global's
    /// traffic map); nothing is sent while nothing changes.
    #[arg(long, env = "STRAIT_TRAFFIC_REPORT_INTERVAL", default_value = "5s", value_parser = strait_runtime::flags::parse_duration)]
    #[serde(with = "strait_runtime::flags::humanized")]
    pub traffic_report_interval: std::time::Duration,

    /// Log format.
    #[arg(long, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter.
    #[arg(long, env = "STRAIT_LOG", default_value = "info")]
    pub log_level: String,
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The flags.
    pub flags: RunConfig,
    /// The Dataplane.
    pub dataplane: Resource,
    /// The token.
    pub token: String,
    /// The zone's DPS CA.
    pub cp_ca_pem: String,
}

impl RunConfig {
    /// Reads and checks the files, reporting every problem at once.
    pub fn validate(self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        let ca = self.cp.read_ca(&mut problems);
        let read = |flag: &str, path: &PathBuf, problems: &mut Vec<String>| match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                problems.push(format!("{flag} {}: {e}", path.display()));
                None
            }
        };
        let dataplane =
            read("--dataplane-file", &self.dataplane_file, &mut problems).and_then(|text| match Resource::from_str_any(&text) {
                Ok(r) if r.kind == ResourceType::Dataplane => Some(r),
                Ok(r) => {
                    problems.push(format!("--dataplane-file {}: expected type Dataplane, got {}", self.dataplane_file.display(), r.kind));
                    None
                }
                Err(errors) => {
                    for e in errors.0 {
                        problems.push(format!("--dataplane-file {}: {e}", self.dataplane_file.display()));
                    }
                    None
                }
            });
        let token = read("--dataplane-token-file", &self.dataplane_token_file, &mut problems).map(|t| t.trim().to_string());
        if token.as_deref() == Some("") {
            problems.push(format!("--dataplane-token-file {}: empty", self.dataplane_token_file.display()));
        }
        match (dataplane, token, ca) {
            (Some(dataplane), Some(token), Some(cp_ca_pem)) if problems.is_empty() => {
                Ok(Validated { flags: self, dataplane, token, cp_ca_pem })
            }
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, dataplane: &str, token: &str) -> RunConfig {
        std::fs::write(dir.join("dp.yaml"), dataplane).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("ca.pem"), "pem").unwrap();
        let args = ["strait-dp", "run", "--cp-address", "https://zone:7678", "--cp-ca-file"];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(
            [dir.join("ca.pem"), "--dataplane-file".into(), dir.join("dp.yaml"), "--dataplane-token-file".into(), dir.join("token")]
                .map(|p| p.display().to_string()),
        );
        let Command::Run(c) = Cli::try_parse_from(args).unwrap().command else { panic!("run") };
        c
    }

    #[test]
    fn a_bad_dataplane_file_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let problems = config(dir.path(), "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound:\n      - port: 8080\n        tags: {version: v1}\n", "")
            .validate()
            .unwrap_err();
        assert!(problems.iter().any(|p| p.contains("spec.networking.inbound[0].tags: needs the strait.io/service tag")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("--dataplane-token-file") && p.ends_with("empty")), "{problems:?}");
    }

    #[test]
    fn a_good_configuration_validates() {
        let dir = tempfile::tempdir().unwrap();
        let ok = config(dir.path(), "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound: [{port: 8080, tags: {strait.io/service: web}}]\n", "tok\n").validate().unwrap();
        assert_eq!(ok.token, "tok");
        assert_eq!(ok.dataplane.name, "web-1");
    }
}
