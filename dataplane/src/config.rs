//! Configuration of `strait-dp run`: flags and `STRAIT_*` environment variables, validated once,
//! including the Dataplane file (every bad field is reported before anything starts).
//!
//! In: the command line, the environment, the Dataplane file and the token file (or, on
//! Kubernetes, the Pod's service-account token and IP). Out: a [`Validated`] configuration
//! with the Dataplane and the credential.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use strait_api::Resource;
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
        /// The sidecar's Dataplane: remove nothing unless it has `transparentProxying` (so
        /// that a sidecar without interception never removes another's rules)
        #[arg(long, value_name = "FILE")]
        dataplane_file: Option<PathBuf>,
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
    /// The sidecar's Dataplane: install nothing unless it has `transparentProxying`, and
    /// redirect to its ports (what a `strait-dp@` unit runs before the sidecar starts)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["redirect_port_outbound", "redirect_port_inbound"])]
    pub dataplane_file: Option<PathBuf>,
}

/// What `transparent-proxy` does for a Dataplane file: its `transparentProxying`, or `None`
/// (with a line to print) when it has none. Every problem of the file is reported.
pub fn transparent_proxying(path: &std::path::Path) -> Result<Option<strait_api::dataplane::TransparentProxying>, Vec<String>> {
    let mut problems = Vec::new();
    let Some(resource) = read_dataplane(path, &mut problems) else { return Err(problems) };
    let strait_api::Spec::Dataplane(spec) = resource.spec else {
        return Err(vec![format!("--dataplane-file {}: not a Dataplane", path.display())]);
    };
    Ok(spec.networking.transparent_proxying)
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

    /// The Dataplane resource of this workload (YAML or JSON). Not on Kubernetes, where the
    /// zone keeps the Dataplane from the Pod and its Services.
    #[arg(long, env = "STRAIT_DATAPLANE_FILE", required_unless_present = "kubernetes_token_file")]
    pub dataplane_file: Option<PathBuf>,

    /// File holding the dataplane token from `straitctl token dataplane`.
    #[arg(long, env = "STRAIT_DATAPLANE_TOKEN_FILE", required_unless_present_any = ["kubernetes_token_file", "dataplane_token"])]
    pub dataplane_token_file: Option<PathBuf>,

    /// The dataplane token itself, instead of --dataplane-token-file: give it through
    /// STRAIT_DATAPLANE_TOKEN (the env file `straitctl token dataplane --output-format env`
    /// writes), since a command line is visible to every user of the host.
    #[arg(long, env = "STRAIT_DATAPLANE_TOKEN", hide_env_values = true, conflicts_with = "dataplane_token_file")]
    #[serde(skip)]
    pub dataplane_token: Option<String>,

    /// On Kubernetes, instead of a Dataplane file and token: the Pod's projected
    /// service-account token (audience strait-zone), which the zone verifies with the API
    /// server. Read again at each connection to the zone, as the kubelet rotates it.
    #[arg(long, env = "STRAIT_KUBERNETES_TOKEN_FILE", conflicts_with_all = ["dataplane_file", "dataplane_token_file", "dataplane_token"], requires = "pod_ip")]
    pub kubernetes_token_file: Option<PathBuf>,

    /// With --kubernetes-token-file: the Pod's IP (the injected container sets it from the
    /// Pod's status); the sidecar connects to the zone from it.
    #[arg(long, env = "STRAIT_POD_IP", requires = "kubernetes_token_file")]
    pub pod_ip: Option<std::net::IpAddr>,

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
    /// The Dataplane: from its file, or on Kubernetes this Pod's listeners only (the zone
    /// sends its inbounds with the configuration).
    pub dataplane: Resource,
    /// The token, as read at start.
    pub token: String,
    /// Whether the Dataplane comes from the zone (Kubernetes): the Hello carries none.
    pub from_zone: bool,
    /// The zone's DPS CA.
    pub cp_ca_pem: String,
}

impl RunConfig {
    /// Reads and checks the files, reporting every problem at once.
    pub fn validate(self) -> Result<Validated, Vec<String>> {
        let mut problems = Vec::new();
        let ca = self.cp.read_ca(&mut problems);
        let (dataplane, token) = match (&self.kubernetes_token_file, &self.dataplane_file, &self.dataplane_token_file) {
            (Some(token_file), ..) => {
                let token = read_token("--kubernetes-token-file", token_file, &mut problems);
                (token.as_deref().map(|t| pod_dataplane(t, self.pod_ip)), token)
            }
            (None, Some(dataplane_file), _) => {
                let token = strait_runtime::flags::read_token(
                    ("--dataplane-token", self.dataplane_token.as_deref()),
                    ("--dataplane-token-file", self.dataplane_token_file.as_deref()),
                    &mut problems,
                );
                (read_dataplane(dataplane_file, &mut problems), token)
            }
            _ => {
                problems.push(
                    "give --dataplane-file and --dataplane-token-file (or --dataplane-token), or on Kubernetes --kubernetes-token-file"
                        .into(),
                );
                (None, None)
            }
        };
        let from_zone = self.kubernetes_token_file.is_some();
        match (dataplane, token, ca) {
            (Some(dataplane), Some(token), Some(cp_ca_pem)) if problems.is_empty() => {
                Ok(Validated { flags: self, dataplane, token, from_zone, cp_ca_pem })
            }
            _ => Err(problems),
        }
    }
}

impl Validated {
    /// The token to present at a new connection: on Kubernetes the file again (the kubelet
    /// rotates it), else the one read at start.
    pub fn current_token(&self) -> String {
        let Some(path) = &self.flags.kubernetes_token_file else { return self.token.clone() };
        match std::fs::read_to_string(path).map(|t| t.trim().to_string()) {
            Ok(token) if !token.is_empty() => token,
            Ok(_) => self.token.clone(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the service-account token again; presenting the one read before");
                self.token.clone()
            }
        }
    }
}

fn read_text(flag: &str, path: &std::path::Path, problems: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(format!("{flag} {}: {e}", path.display()));
            None
        }
    }
}

fn read_token(flag: &str, path: &std::path::Path, problems: &mut Vec<String>) -> Option<String> {
    let token = read_text(flag, path, problems)?.trim().to_string();
    if token.is_empty() {
        problems.push(format!("{flag} {}: empty", path.display()));
        return None;
    }
    Some(token)
}

fn read_dataplane(path: &std::path::Path, problems: &mut Vec<String>) -> Option<Resource> {
    let text = read_text("--dataplane-file", path, problems)?;
    match Resource::dataplane_from_str(&text) {
        Ok(r) => Some(r),
        Err(errors) => {
            for e in errors.0 {
                problems.push(format!("--dataplane-file {}: {e}", path.display()));
            }
            None
        }
    }
}

/// What a sidecar on Kubernetes knows of its Dataplane before the zone speaks: its name (the
/// Pod's, from its service-account token, for the logs), its address and the transparent
/// proxy's ports, where the injected init container sends the Pod's traffic. Its inbounds
/// come with the configuration.
fn pod_dataplane(token: &str, pod_ip: Option<std::net::IpAddr>) -> Resource {
    use strait_api::dataplane::{DataplaneSpec, Networking, TransparentProxying};
    let claims = token.split('.').nth(1).and_then(|p| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok()
    });
    let claims: serde_json::Value = claims.and_then(|c| serde_json::from_slice(&c).ok()).unwrap_or_default();
    let pod = &claims["kubernetes.io"];
    let name = match (pod["pod"]["name"].as_str(), pod["namespace"].as_str()) {
        (Some(pod), Some(namespace)) => format!("{pod}.{namespace}"),
        _ => "pod".to_string(),
    };
    let spec = DataplaneSpec {
        networking: Networking {
            address: pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            inbound: Vec::new(),
            outbound: Vec::new(),
            transparent_proxying: Some(TransparentProxying {
                redirect_port_outbound: crate::transparent::DEFAULT_REDIRECT_PORT_OUTBOUND,
                redirect_port_inbound: crate::transparent::DEFAULT_REDIRECT_PORT_INBOUND,
                reachable_services: None,
            }),
        },
    };
    Resource::new(&name, None, strait_api::Spec::Dataplane(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, dataplane: &str, token: &str) -> RunConfig {
        std::fs::write(dir.join("dp.yaml"), dataplane).unwrap();
        std::fs::write(dir.join("token"), token).unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
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
    fn on_kubernetes_the_pod_token_replaces_the_dataplane_file_and_is_read_again() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = |n: u32| {
            format!(
                "{}.{}.sig{n}",
                encode(serde_json::json!({"alg": "RS256"})),
                encode(serde_json::json!({"kubernetes.io": {"namespace": "shop", "pod": {"name": "web-7d9f", "uid": "u"}}}))
            )
        };
        let token_file = dir.path().join("sa-token");
        std::fs::write(&token_file, token(1)).unwrap();
        let run = |extra: &[&str]| {
            let mut args: Vec<String> = ["strait-dp", "run", "--cp-address", "https://zone:7678", "--cp-ca-file"].map(String::from).into();
            args.push(dir.path().join("ca.pem").display().to_string());
            args.extend(extra.iter().map(|s| s.to_string()));
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Run(c) => c,
                _ => panic!("run"),
            })
        };
        let path = token_file.display().to_string();
        let ok = run(&["--kubernetes-token-file", &path, "--pod-ip", "10.1.2.3"]).unwrap().validate().unwrap();
        assert!(ok.from_zone);
        assert_eq!(ok.dataplane.name, "web-7d9f.shop");
        let strait_api::Spec::Dataplane(spec) = &ok.dataplane.spec else { panic!() };
        assert_eq!(spec.networking.address, "10.1.2.3");
        assert!(spec.networking.inbound.is_empty(), "the zone brings the inbounds");
        assert_eq!(
            spec.networking.transparent_proxying.as_ref().map(|t| (t.redirect_port_outbound, t.redirect_port_inbound)),
            Some((15001, 15006))
        );
        assert_eq!(ok.current_token(), token(1));
        std::fs::write(&token_file, token(2)).unwrap();
        assert_eq!(ok.current_token(), token(2), "the rotated token is presented at the next connection");

        let both = run(&["--kubernetes-token-file", &path, "--pod-ip", "10.1.2.3", "--dataplane-file", "dp.yaml"]).unwrap_err();
        assert!(both.to_string().contains("--dataplane-file"), "{both}");
        let no_ip = run(&["--kubernetes-token-file", &path]).unwrap_err();
        assert!(no_ip.to_string().contains("--pod-ip"), "{no_ip}");
        let neither = run(&[]).unwrap_err();
        assert!(neither.to_string().contains("--dataplane-file"), "{neither}");
    }

    #[test]
    fn a_good_configuration_validates() {
        let dir = tempfile::tempdir().unwrap();
        let ok = config(dir.path(), "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 10.0.0.1\n    inbound: [{port: 8080, tags: {strait.io/service: web}}]\n", "tok\n").validate().unwrap();
        assert_eq!(ok.token, "tok");
        assert_eq!(ok.dataplane.name, "web-1");
    }
}
