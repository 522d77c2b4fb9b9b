//! `straitctl zone register|list|revoke`: zones of the global control plane.
//!
//! In: a zone name and options. Out: what a zone needs to connect (printed, or written to a
//! directory), a status table, or a revocation confirmation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;
use time::OffsetDateTime;

use crate::cli::{OutputFormat, RegisterFormat, ZoneCommand, ZoneListArgs, ZoneProxyTokenArgs, ZoneRegisterArgs};
use crate::commands::Context;
use crate::output::{self, print};

/// Runs a `zone` subcommand.
pub async fn run(cmd: &ZoneCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        ZoneCommand::Register(args) => register(args, ctx).await,
        ZoneCommand::ProxyToken(args) => proxy_token(args, ctx).await,
        ZoneCommand::List(args) => list(args, ctx).await,
        ZoneCommand::Revoke(args) => {
            ctx.client()?.delete(&format!("/zones/{}/token", args.name)).await?;
            Ok(print(&format!("zone/{} revoked: its token no longer works and its sync stream was closed\n", args.name))?)
        }
    }
}

/// The sync address from the REST server URL's host and the global's sync port.
fn default_global_address(server: &str, kds_port: u64) -> String {
    let without_scheme = server.split_once("://").map(|(_, rest)| rest).unwrap_or(server);
    let authority = without_scheme.split('/').next().unwrap_or(without_scheme);
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    format!("https://{host}:{kds_port}")
}

async fn register(args: &ZoneRegisterArgs, ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let mut path = format!("/zones/{}/token", args.name);
    if let Some(v) = &args.valid_for {
        path.push_str(&format!("?validFor={v}"));
    }
    let answer = client.post(&path).await?;
    let field = |name: &str| {
        answer.get(name).and_then(Value::as_str).map(str::to_string).with_context(|| format!("the server's answer has no {name}"))
    };
    let (token, proxy_token, ca) = (field("token")?, field("proxyToken")?, field("caBundle")?);
    let kds_port = answer.get("kdsPort").and_then(Value::as_u64).unwrap_or(7685);
    let global_address = args.global_address.clone().unwrap_or_else(|| default_global_address(client.server(), kds_port));
    match (args.output_format, &args.output) {
        (RegisterFormat::HelmValues, None) => return Ok(print(&helm_values(&args.name, &global_address, &token, &proxy_token, &ca))?),
        (RegisterFormat::HelmValues, Some(_)) => {
            anyhow::bail!("--output-format helm-values prints the values: drop --output (or redirect them to a file)")
        }
        (RegisterFormat::Env, None) => anyhow::bail!("--output-format env writes zone.env and gateway.env: give --output DIR"),
        (RegisterFormat::Env, Some(dir)) => {
            strait_runtime::files::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            let (zone, gateway) = env_files(&args.name, &global_address, &token, &proxy_token, &ca);
            write_private(&dir.join("zone.env"), &zone)?;
            write_private(&dir.join("gateway.env"), &gateway)?;
            return Ok(print(&format!(
                "zone/{name} registered; wrote {dir}/zone.env and {dir}/gateway.env (they hold tokens: keep them private)\n\
                 On the zone's host (deploy/vm/install.sh --role zone):\n  \
                 install -m 0600 {dir}/zone.env /etc/strait/zone.env && systemctl enable --now strait-zone\n\
                 then copy the zone's /var/lib/strait/zone/cp.env to /etc/strait/cp.env on its gateway and workload hosts.\n\
                 On a gateway host (install.sh --role gateway; only gateway.env goes there, never zone.env):\n  \
                 install -m 0600 {dir}/gateway.env /etc/strait/gateway.env && systemctl enable --now strait-gateway\n",
                name = args.name,
                dir = dir.display()
            ))?);
        }
        (RegisterFormat::Text, _) => {}
    }
    match &args.output {
        Some(dir) => {
            write_files(dir, &token, &proxy_token, &ca)?;
            print(&format!(
                "zone/{name} registered; wrote {dir}/zone-token, {dir}/zone-proxy-token and {dir}/global-ca.pem\nStart the zone with:\n  strait-zone --zone {name} --global-address {global_address} --zone-token-file {dir}/zone-token --global-ca-file {dir}/global-ca.pem\nStart its gateways with (copy only zone-proxy-token to a gateway host, never zone-token):\n  strait-gateway --zone-proxy-token-file {dir}/zone-proxy-token --cp-address https://<zone control plane>:7678 --cp-ca-file <a copy of the zone data dir's dps-ca.pem>\n",
                name = args.name,
                dir = dir.display()
            ))?;
        }
        None => print(&format!(
            "# zone/{name} registered. Save the tokens and the CA bundle to files, then start the zone with:\n#   strait-zone --zone {name} --global-address {global_address} --zone-token-file zone-token --global-ca-file global-ca.pem\n# and its gateways with --zone-proxy-token-file zone-proxy-token (the zone token never goes to a gateway host)\nglobalAddress: {global_address}\nzoneToken: {token}\nzoneProxyToken: {proxy_token}\ncaBundle: |\n{ca}",
            name = args.name,
            ca = ca.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ))?,
    }
    Ok(())
}

/// `zone.env` (strait-zone.service) and `gateway.env` (strait-gateway.service): one variable
/// per line, the CA in base64, nothing that needs quoting.
fn env_files(name: &str, global_address: &str, token: &str, proxy_token: &str, ca: &str) -> (String, String) {
    let ca = strait_runtime::flags::encode_env_pem(ca);
    let zone = format!(
        "# strait-zone.service of zone {name}: /etc/strait/zone.env on the zone's host, mode 0600 (it holds the zone token).\n\
         STRAIT_ZONE={name}\nSTRAIT_GLOBAL_ADDRESS={global_address}\nSTRAIT_ZONE_TOKEN={token}\nSTRAIT_GLOBAL_CA={ca}\n\
         # The name or IP the zone's gateways and sidecars reach it at (in its DPS certificate, and in the cp.env it writes;\n\
         # by default the address this host reaches the global from):\n#STRAIT_DPS_TLS_NAMES=zone.example.com\n"
    );
    let gateway = format!(
        "# strait-gateway.service of zone {name}: /etc/strait/gateway.env on a gateway host, mode 0600 (it holds the\n\
         # zone-proxy token), beside /etc/strait/cp.env, a copy of the zone's /var/lib/strait/zone/cp.env.\n\
         STRAIT_ZONE_PROXY_TOKEN={proxy_token}\n\
         # The IP other zones and the zone's sidecars reach this gateway at (by default the address this host reaches\n\
         # the zone from), and its name when a zone has several:\n#STRAIT_ADVERTISE_ADDRESS=10.0.1.20\n#STRAIT_GATEWAY_NAME=gateway-1\n"
    );
    (zone, gateway)
}

/// The values of a zone's `helm install` of the chart (deploy/k8s/strait), with what to run.
fn helm_values(name: &str, global_address: &str, token: &str, proxy_token: &str, ca: &str) -> String {
    let values = serde_json::json!({
        "mode": "zone",
        "zone": { "name": name, "globalAddress": global_address, "token": token, "globalCa": ca },
        "gateway": { "proxyToken": proxy_token },
    });
    let yaml = serde_yaml::to_string(&values).unwrap_or_default();
    format!(
        "# Values of zone {name}'s `helm install` (they hold its tokens: keep this file private). Install with:\n\
         #   helm install strait deploy/k8s/strait -n strait-system --create-namespace -f {name}.yaml \\\n\
         #     --set gateway.advertiseIngressAddress=<IP:port other zones reach the gateway at>\n\
         # (or --set gateway.enabled=false for a zone that neither reaches nor is reached by others)\n{yaml}"
    )
}

async fn proxy_token(args: &ZoneProxyTokenArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut path = format!("/zones/{}/proxy-token", args.name);
    if let Some(v) = &args.valid_for {
        path.push_str(&format!("?validFor={v}"));
    }
    let answer = ctx.client()?.post(&path).await?;
    let token = answer.get("proxyToken").and_then(Value::as_str).context("the server's answer has no proxyToken")?;
    match &args.output {
        Some(dir) => {
            strait_runtime::files::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_private(&dir.join("zone-proxy-token"), token)?;
            print(&format!(
                "wrote a new zone-proxy token of zone/{} to {}/zone-proxy-token; the previous one is revoked: restart the zone's gateways with the new one\n",
                args.name,
                dir.display()
            ))?;
        }
        None => print(&format!("{token}\n"))?,
    }
    Ok(())
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only to a new file: one that existed keeps its mode unless changed.
    strait_runtime::files::private_file(path).with_context(|| format!("making {} private", path.display()))?;
    file.write_all(text.as_bytes()).and_then(|()| file.write_all(b"\n")).with_context(|| format!("writing {}", path.display()))
}

fn write_files(dir: &Path, token: &str, proxy_token: &str, ca: &str) -> anyhow::Result<()> {
    strait_runtime::files::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(&dir.join("zone-token"), token)?;
    write_private(&dir.join("zone-proxy-token"), proxy_token)?;
    write_private(&dir.join("global-ca.pem"), ca.trim_end())?;
    Ok(())
}

async fn list(args: &ZoneListArgs, ctx: &Context) -> anyhow::Result<()> {
    let value = ctx.client()?.get("/zones").await?;
    if args.output != OutputFormat::Table {
        return Ok(print(&output::structured(&value, args.output).map_err(anyhow::Error::msg)?)?);
    }
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = output::items(&value)
        .into_iter()
        .map(|z| {
            let s = z.get("status").cloned().unwrap_or(Value::Null);
            let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            let online = match (s.get("connected").and_then(Value::as_bool), z.pointer("/spec/enabled").and_then(Value::as_bool)) {
                (_, Some(false)) => "Disabled",
                (Some(true), _) => "Online",
                _ => "Offline",
            };
            let seen = s.get("lastSeen").and_then(Value::as_str).map(|t| output::age(t, now) + " ago").unwrap_or_else(|| "never".into());
            let sidecars = s.get("dataplaneNacks").and_then(Value::as_array).cloned().unwrap_or_default();
            let nack = match s.get("nackErrors").and_then(Value::as_array) {
                Some(errors) if !errors.is_empty() => errors.iter().map(text).collect::<Vec<_>>().join("; "),
                _ if !sidecars.is_empty() => sidecar_nacks(&sidecars),
                _ => "-".into(),
            };
            vec![
                text(&z["name"]),
                online.into(),
                seen,
                format!("{}/{}", s.get("ackedRevision").map(text).unwrap_or_default(), s.get("sentRevision").map(text).unwrap_or_default()),
                s.pointer("/inventory/services").map(text).unwrap_or_else(|| "0".into()),
                nack,
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("No zones registered. Register one with: straitctl zone register NAME");
        return Ok(());
    }
    Ok(print(&output::table(&["NAME", "STATUS", "LAST SEEN", "ACKED/SENT", "SERVICES", "NACK"], &rows))?)
}

/// The sidecars of a zone that refused their configuration, for the NACK column: how many,
/// and the first one with its reason (`-o yaml` shows them all).
fn sidecar_nacks(nacks: &[Value]) -> String {
    let first = &nacks[0];
    let field = |k: &str| first.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let more = if nacks.len() > 1 { format!(" (and {} more)", nacks.len() - 1) } else { String::new() };
    format!("sidecar {}/{}: {}{more}", field("mesh"), field("dataplane"), field("error"))
}

#[cfg(test)]
mod tests {
    use super::sidecar_nacks;

    #[test]
    fn private_files_are_owner_only_even_when_they_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zone-token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_private(&path, "new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn sidecar_nacks_name_the_first_and_count_the_rest() {
        let one = serde_json::json!({"mesh": "default", "dataplane": "web-1", "version": 7, "error": "RingHash is not implemented"});
        assert_eq!(sidecar_nacks(std::slice::from_ref(&one)), "sidecar default/web-1: RingHash is not implemented");
        assert_eq!(sidecar_nacks(&[one.clone(), one]), "sidecar default/web-1: RingHash is not implemented (and 1 more)");
    }

    #[test]
    fn env_files_hold_one_plain_assignment_per_line_and_the_zone_token_stays_off_gateways() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let (zone, gateway) = super::env_files("zone-1", "https://10.0.0.1:7685", "zt.a.b", "pt.c.d", ca);
        let vars = |text: &str| -> std::collections::BTreeMap<String, String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap();
                    assert!(!v.contains([' ', '"', '\'', '\\', '$']), "needs no quoting in an EnvironmentFile: {l}");
                    (k.to_string(), v.to_string())
                })
                .collect()
        };
        let zone = vars(&zone);
        assert_eq!(zone["STRAIT_ZONE"], "zone-1");
        assert_eq!(zone["STRAIT_GLOBAL_ADDRESS"], "https://10.0.0.1:7685");
        assert_eq!(zone["STRAIT_ZONE_TOKEN"], "zt.a.b");
        let mut problems = Vec::new();
        let decoded =
            strait_runtime::flags::read_pem(("--global-ca", Some(&zone["STRAIT_GLOBAL_CA"])), ("--global-ca-file", None), &mut problems);
        assert_eq!(decoded.as_deref(), Some(ca));
        let gateway = vars(&gateway);
        assert_eq!(gateway.keys().collect::<Vec<_>>(), ["STRAIT_ZONE_PROXY_TOKEN"]);
        assert_eq!(gateway["STRAIT_ZONE_PROXY_TOKEN"], "pt.c.d");
    }

    #[test]
    fn helm_values_are_what_the_chart_reads() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let text = super::helm_values("zone-1", "https://198.18.0.1:7685", "z.t", "p.t", ca);
        assert!(text.starts_with("# Values of zone zone-1"), "{text}");
        let values: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(values["mode"], "zone");
        assert_eq!(values["zone"]["name"], "zone-1");
        assert_eq!(values["zone"]["globalAddress"], "https://198.18.0.1:7685");
        assert_eq!(values["zone"]["token"], "z.t");
        assert_eq!(values["zone"]["globalCa"], ca);
        assert_eq!(values["gateway"]["proxyToken"], "p.t");
        // Every key is one the chart's values.yaml documents.
        let chart: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/strait/values.yaml")).unwrap(),
        )
        .unwrap();
        for (section, keys) in [("zone", ["name", "globalAddress", "token", "globalCa"].as_slice()), ("gateway", ["proxyToken"].as_slice())]
        {
            for key in keys {
                assert!(chart[section].get(*key).is_some(), "{section}.{key} is not a value of the chart");
            }
        }
    }

    #[test]
    fn sync_address_follows_the_server_host() {
        assert_eq!(super::default_global_address("http://198.18.0.1:7680", 7685), "https://198.18.0.1:7685");
        assert_eq!(super::default_global_address("http://cp.example", 9000), "https://cp.example:9000");
        assert_eq!(super::default_global_address("http://[::1]:7680/", 7685), "https://[::1]:7685");
    }
}
