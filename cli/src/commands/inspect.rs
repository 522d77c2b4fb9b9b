//! `straitctl inspect dataplane|service|zone`: a sidecar of any zone, a service across zones,
//! a zone, from the global.
//!
//! In: a name and what to show. Out: text for humans (the policies behind each field as
//! `field = value  ← policy`), or the server's JSON/YAML with `-o`.

use std::fmt::Write as _;

use serde_json::Value;

use crate::cli::{InspectCommand, InspectDataplaneArgs, InspectServiceArgs, InspectZoneArgs, OutputFormat};
use crate::commands::Context;
use crate::output::{print, structured};

/// Runs an `inspect` subcommand.
pub async fn run(cmd: &InspectCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        InspectCommand::Dataplane(args) => dataplane(args, ctx).await,
        InspectCommand::Service(args) => service(args, ctx).await,
        InspectCommand::Zone(args) => zone(args, ctx).await,
    }
}

fn checked(what: &str, value: &str, check: fn(&str) -> Result<(), String>) -> anyhow::Result<()> {
    check(value).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

async fn dataplane(args: &InspectDataplaneArgs, ctx: &Context) -> anyhow::Result<()> {
    checked("--mesh", &args.mesh, strait_api::names::check_dns_label)?;
    checked("NAME", &args.name, strait_api::names::check_dns_subdomain)?;
    let what = if args.policies {
        "policies"
    } else if args.stats {
        "stats"
    } else {
        "config"
    };
    let mut path = format!("/meshes/{}/dataplanes/{}/inspect?what={what}", args.mesh, args.name);
    if let Some(zone) = &args.zone {
        checked("--zone", zone, strait_api::names::check_dns_label)?;
        path.push_str(&format!("&zone={zone}"));
    }
    let answer = ctx.client()?.get(&path).await?;
    if args.output != OutputFormat::Table {
        return Ok(print(&structured(&answer, args.output).map_err(anyhow::Error::msg)?)?);
    }
    let zone = answer.get("zone").and_then(Value::as_str).unwrap_or("?");
    let result = answer.get("result").cloned().unwrap_or(Value::Null);
    let mut out = format!("# dataplane {} of mesh {}, in zone {zone}\n", args.name, args.mesh);
    match what {
        "policies" => out.push_str(&policies_text(&result)),
        "stats" => {
            let text = result.get("metrics").and_then(Value::as_str).unwrap_or_default();
            for line in text.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")) {
                out.push_str(line);
                out.push('\n');
            }
        }
        _ => out.push_str(&structured(&result, OutputFormat::Yaml).map_err(anyhow::Error::msg)?),
    }
    Ok(print(&out)?)
}

/// The effective configuration's policies as text: per inbound (rules by caller), outbound
/// (confs and routes) and the proxy-wide ones, each field with the policy that set it.
pub fn policies_text(effective: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    for inbound in effective.get("inbounds").and_then(Value::as_array).unwrap_or(&empty) {
        let _ = writeln!(out, "\ninbound {} ({})", inbound["port"], inbound["service"].as_str().unwrap_or("?"));
        let from = inbound.get("from").and_then(Value::as_object);
        if from.is_none_or(|f| f.is_empty()) {
            out.push_str("  no policy\n");
        }
        for (kind, rules) in from.into_iter().flatten() {
            let _ = writeln!(out, "  {kind}");
            for rule in rules.as_array().unwrap_or(&empty) {
                let callers = match rule.get("matches").and_then(Value::as_object) {
                    Some(m) if !m.is_empty() => {
                        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?"))).collect::<Vec<_>>().join(", ")
                    }
                    _ => "every caller".to_string(),
                };
                let _ = writeln!(out, "    from {callers}: {}", origin(rule));
                fields(&mut out, rule, "      ");
            }
        }
    }
    for outbound in effective.get("outbounds").and_then(Value::as_array).unwrap_or(&empty) {
        let _ = writeln!(out, "\noutbound {}", outbound["service"].as_str().unwrap_or("?"));
        let to = outbound.get("to").and_then(Value::as_object);
        let routes = outbound.get("httpRoutes").or_else(|| outbound.get("http_routes")).and_then(Value::as_array);
        if to.is_none_or(|t| t.is_empty()) && routes.is_none_or(|r| r.is_empty()) {
            out.push_str("  no policy\n");
        }
        for (kind, conf) in to.into_iter().flatten() {
            let _ = writeln!(out, "  {kind}: {}", origin(conf));
            fields(&mut out, conf, "    ");
        }
        for (i, route) in routes.into_iter().flatten().enumerate() {
            let matches = route.get("matches").map(Value::to_string).unwrap_or_default();
            let _ = writeln!(out, "  route {} (matches {matches}): {}", i + 1, origin(route));
            fields(&mut out, route, "    ");
            if let Some(timeout) = route.get("timeout").filter(|t| !t.is_null()) {
                let _ = writeln!(out, "    MeshTimeout of the route: {}", origin(timeout));
                fields(&mut out, timeout, "      ");
            }
        }
        if let Some(tcp) = outbound.get("tcpRoute").or_else(|| outbound.get("tcp_route")).filter(|t| !t.is_null()) {
            let _ = writeln!(out, "  tcp route: {}", origin(tcp));
            fields(&mut out, tcp, "    ");
        }
    }
    if let Some(proxy) = effective.get("proxy").and_then(Value::as_object).filter(|p| !p.is_empty()) {
        out.push_str("\nwhole proxy\n");
        for (kind, conf) in proxy {
            let _ = writeln!(out, "  {kind}: {}", origin(conf));
            fields(&mut out, conf, "    ");
        }
    }
    out
}

fn origin(conf: &Value) -> String {
    let names: Vec<&str> = conf.get("origin").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    format!("policies {}", names.join(", "))
}

/// Each field of `conf.conf` with its value and the policy that set it.
fn fields(out: &mut String, conf: &Value, indent: &str) {
    let merged = conf.get("conf").cloned().unwrap_or(Value::Null);
    for (pointer, policy) in conf.get("fields").and_then(Value::as_object).into_iter().flatten() {
        let value = merged.pointer(if pointer == "/" { "" } else { pointer }).map(Value::to_string).unwrap_or_default();
        let _ = writeln!(out, "{indent}{pointer} = {value}  ← {}", policy.as_str().unwrap_or("?"));
    }
}

async fn service(args: &InspectServiceArgs, ctx: &Context) -> anyhow::Result<()> {
    checked("--mesh", &args.mesh, strait_api::names::check_dns_label)?;
    checked("NAME", &args.name, strait_api::names::check_dns_subdomain)?;
    let answer = ctx.client()?.get(&format!("/meshes/{}/services/{}", args.mesh, args.name)).await?;
    if args.output != OutputFormat::Table {
        return Ok(print(&structured(&answer, args.output).map_err(anyhow::Error::msg)?)?);
    }
    let mut out = format!(
        "service {} of mesh {} ({}): {} endpoints, {} healthy\n\n",
        args.name,
        args.mesh,
        answer["protocol"].as_str().filter(|p| !p.is_empty()).unwrap_or("tcp"),
        answer["endpoints"],
        answer["healthy"]
    );
    let empty = Vec::new();
    let zones = answer.get("zones").and_then(Value::as_array).unwrap_or(&empty);
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|z| {
            let connected = if z["connected"].as_bool() == Some(true) { "yes" } else { "no" };
            vec![z["zone"].as_str().unwrap_or("?").to_string(), connected.to_string(), z["endpoints"].to_string(), z["healthy"].to_string()]
        })
        .collect();
    out.push_str(&crate::output::table(&["ZONE", "CONNECTED", "ENDPOINTS", "HEALTHY"], &rows));
    let instances: Vec<Vec<String>> = zones
        .iter()
        .flat_map(|z| {
            z.get("instances").and_then(Value::as_array).unwrap_or(&empty).iter().map(move |i| {
                let tags: Vec<String> =
                    i["tags"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?"))).collect();
                vec![z["zone"].as_str().unwrap_or("?").to_string(), i["id"].as_str().unwrap_or("?").to_string(), tags.join(",")]
            })
        })
        .collect();
    if !instances.is_empty() {
        out.push('\n');
        out.push_str(&crate::output::table(&["ZONE", "ENDPOINT", "TAGS"], &instances));
    }
    Ok(print(&out)?)
}

async fn zone(args: &InspectZoneArgs, ctx: &Context) -> anyhow::Result<()> {
    checked("NAME", &args.name, strait_api::names::check_dns_label)?;
    let answer = ctx.client()?.get(&format!("/zones/{}", args.name)).await?;
    if args.output != OutputFormat::Table {
        return Ok(print(&structured(&answer, args.output).map_err(anyhow::Error::msg)?)?);
    }
    let status = answer.get("status").cloned().unwrap_or(Value::Null);
    let text =
        |key: &str| status.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_else(|| "-".to_string());
    let connected = if status["connected"].as_bool() == Some(true) { "connected" } else { "not connected" };
    let mut out = format!("zone {}: {connected}\n", args.name);
    let _ = writeln!(out, "  version        {}", text("softwareVersion"));
    let _ = writeln!(out, "  from           {}", text("peer"));
    let _ = writeln!(out, "  last seen      {}", text("lastSeen"));
    let _ = writeln!(out, "  API            {}", text("apiUrl"));
    let _ = writeln!(out, "  revisions      sent {}, acknowledged {}", text("sentRevision"), text("ackedRevision"));
    for error in status.get("nackErrors").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(out, "  NACK           {}", error.as_str().unwrap_or("?"));
    }
    for nack in status.get("dataplaneNacks").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(out, "  sidecar NACK   {}: {}", nack["dataplane"].as_str().unwrap_or("?"), nack["error"].as_str().unwrap_or("?"));
    }
    if let Some(inventory) = status.get("inventory") {
        let ingress: Vec<&str> = inventory["ingressAddresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "  gateways       {}", if ingress.is_empty() { "none".to_string() } else { ingress.join(", ") });
        let _ = writeln!(out, "  services       {}", inventory["services"]);
        for s in inventory["endpoints"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {}/{}: {} endpoints, {} healthy",
                s["mesh"].as_str().unwrap_or("?"),
                s["service"].as_str().unwrap_or("?"),
                s["endpoints"],
                s["healthy"]
            );
        }
    }
    Ok(print(&out)?)
}
