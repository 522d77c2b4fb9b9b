//! The network namespaces of a demo run with root: one for the global and one per zone,
//! each joined by a veth pair to a bridge in a "wan" namespace, and this machine joined to
//! that bridge too (`<tag>-host`, address `.253`), so that the frontend and the REST API are
//! reachable from it. Everything is made with `ip` (iproute2) and removed by [`teardown`].
//!
//! Zones are isolated from each other as they would be on separate networks: in the wan
//! namespace, bridged traffic goes through iptables (`bridge-nf-call-iptables`), which drops
//! everything between two zones except between their gateways' addresses. Where bridge
//! netfilter or iptables is missing, the zones stay joined and [`isolate`] says so.
//!
//! In: the plan. Out: the namespaces and links, recorded in the state for `down`.

use std::process::Command;

use anyhow::{bail, Context as _};

use super::plan::{Namespaces, Plan};

/// Whether this process may make network namespaces: root, and `ip netns` works.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    root && Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Makes the namespaces and links; returns what `teardown` must remove (also when it fails
/// halfway, through `made`).
pub fn setup(plan: &Plan, ns: &Namespaces, made: &mut Vec<String>) -> anyhow::Result<()> {
    let wan = ns.wan();
    ip(&["netns", "add", &wan])?;
    made.push(format!("netns:{wan}"));
    ip(&["-n", &wan, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &wan, "link", "set", "br0", "up"])?;
    let mut members: Vec<(Option<&str>, String)> = vec![(None, "g".into())];
    for (i, z) in plan.zones.iter().enumerate() {
        members.push((Some(z.name), format!("z{}", i + 1)));
    }
    for (zone, short) in &members {
        let name = ns.of(*zone);
        ip(&["netns", "add", &name])?;
        made.push(format!("netns:{name}"));
        let link = format!("{}{short}", ns.tag);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &name])?;
        ip(&["link", "set", &link, "netns", &wan])?;
        ip(&["-n", &wan, "link", "set", &link, "master", "br0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        for address in plan.addresses_of(*zone) {
            ip(&["-n", &name, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        }
    }
    // This machine's own leg on the bridge.
    let host = format!("{}-host", ns.tag);
    let peer = format!("{}h", ns.tag);
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &wan])?;
    made.push(format!("link:{host}"));
    ip(&["-n", &wan, "link", "set", &peer, "master", "br0", "up"])?;
    ip(&["addr", "add", &format!("{}.253/24", ns.net), "dev", &host])?;
    ip(&["link", "set", &host, "up"])?;
    Ok(())
}

/// Drops traffic between the zones' namespaces except between their gateways (the zone's
/// first address: its control plane and gateway). Rules live in the wan namespace and go
/// with it.
pub fn isolate(plan: &Plan, ns: &Namespaces) -> anyhow::Result<()> {
    let wan = ns.wan();
    let run = |program: &str, args: &[&str]| -> anyhow::Result<()> {
        let out =
            Command::new("ip").args(["netns", "exec", &wan, program]).args(args).output().with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    run("sysctl", &["-q", "-w", "net.bridge.bridge-nf-call-iptables=1"])?;
    for a in &plan.zones {
        for b in plan.zones.iter().filter(|b| b.name != a.name) {
            for src in plan.addresses_of(Some(a.name)) {
                for dst in plan.addresses_of(Some(b.name)) {
                    if src == a.ip && dst == b.ip {
                        continue;
                    }
                    run("iptables", &["-w", "-A", "FORWARD", "-s", &src, "-d", &dst, "-j", "DROP"])?;
                }
            }
        }
    }
    Ok(())
}

/// Removes what [`setup`] made (links first, then namespaces); returns what could not be.
pub fn teardown(made: &[String]) -> Vec<String> {
    let mut failed = Vec::new();
    for item in made.iter().rev() {
        let result = match item.split_once(':') {
            Some(("link", name)) => ip(&["link", "del", name]),
            Some(("netns", name)) => ip(&["netns", "del", name]),
            _ => Ok(()),
        };
        if let Err(e) = result {
            failed.push(format!("{item}: {e}"));
        }
    }
    failed
}
