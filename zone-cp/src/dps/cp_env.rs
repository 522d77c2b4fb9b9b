//! `<data-dir>/cp.env`: how the zone's gateways and sidecars on VMs reach its DPS endpoint, as
//! an environment file their systemd units read (`deploy/vm/strait-gateway.service`,
//! `strait-dp@.service`): `STRAIT_CP_ADDRESS` and `STRAIT_CP_CA` (the DPS CA, PEM in base64 on
//! one line). Nothing secret: operators copy it to `/etc/strait/cp.env` on those hosts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The host sidecars reach the zone at: the first `--dps-tls-name`, else the address DPS is
/// bound to, else the address this host reaches the global from.
pub fn advertised_host(tls_names: &[String], dps_address: SocketAddr, global_address: &str) -> Option<String> {
    if let Some(name) = tls_names.first() {
        return Some(name.clone());
    }
    if !dps_address.ip().is_unspecified() {
        return Some(dps_address.ip().to_string());
    }
    strait_runtime::flags::route_source(global_address).map(|ip| ip.to_string())
}

/// The file's text.
pub fn render(host: Option<&str>, dps_port: u16, ca_pem: &str) -> String {
    let mut out = String::from(
        "# How this zone's gateways and sidecars reach it (written by strait-zone at each start).\n\
         # Copy it to /etc/strait/cp.env on their hosts: strait-gateway.service and strait-dp@.service read it.\n",
    );
    match host {
        Some(host) => {
            let host = match host.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                _ => host.to_string(),
            };
            out.push_str(&format!("STRAIT_CP_ADDRESS=https://{host}:{dps_port}\n"));
        }
        None => out.push_str(&format!(
            "# Unknown: give strait-zone --dps-tls-name <the name or IP sidecars reach it at>.\n#STRAIT_CP_ADDRESS=https://<zone>:{dps_port}\n"
        )),
    }
    out.push_str(&format!("STRAIT_CP_CA={}\n", strait_runtime::flags::encode_env_pem(ca_pem)));
    out
}

/// Writes `text` to `<data_dir>/cp.env`, replacing it whole.
pub fn write(data_dir: &Path, text: &str) -> std::io::Result<()> {
    let path = data_dir.join("cp.env");
    let partial = data_dir.join(".cp.env.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_the_first_tls_name_then_the_bound_address_then_the_route_to_the_global() {
        let any: SocketAddr = "0.0.0.0:7678".parse().unwrap();
        assert_eq!(
            advertised_host(&["zone-1.example".into(), "10.0.0.2".into()], any, "https://g:7685").as_deref(),
            Some("zone-1.example")
        );
        assert_eq!(advertised_host(&[], "10.0.0.3:7678".parse().unwrap(), "https://g:7685").as_deref(), Some("10.0.0.3"));
        assert_eq!(advertised_host(&[], any, "https://127.0.0.1:7685").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn the_file_carries_the_address_and_the_ca_on_one_line_each() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let text = render(Some("fd00::2"), 7678, pem);
        assert!(text.contains("\nSTRAIT_CP_ADDRESS=https://[fd00::2]:7678\n"), "{text}");
        let ca = text.lines().find_map(|l| l.strip_prefix("STRAIT_CP_CA=")).unwrap();
        let mut problems = Vec::new();
        assert_eq!(strait_runtime::flags::read_pem(("--cp-ca", Some(ca)), ("--cp-ca-file", None), &mut problems).as_deref(), Some(pem));
        let unknown = render(None, 7678, pem);
        assert!(!unknown.lines().any(|l| l.starts_with("STRAIT_CP_ADDRESS=")), "{unknown}");
    }
}
