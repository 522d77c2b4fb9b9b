//! Scenario: the global control plane's REST API, driven by `straitctl` from a zone host.
//! A policy applied from "zone-1" is stored on "global" with a server-set version, reads back
//! the same, and re-applying it is a no-op. A host off the WAN cannot reach the global.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use strait_multizone::{bin, wait_for, Cmd, Host, Net, Output, Proc};

const API_PORT: u16 = 7680;
const KDS_PORT: u16 = 7685;
const READY: Duration = Duration::from_secs(30);

const POLICY: &str = "\
type: Mesh
name: default
---
type: MeshTrafficPermission
name: allow-web
mesh: default
spec:
  targetRef: {kind: MeshService, name: web}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Allow}
";

/// A running `strait-global` and what clients need to talk to it.
struct Global {
    host: Host,
    _proc: Proc,
    server: String,
    token: String,
}

/// Starts `strait-global` on host "global", waits for `/readyz`, reads the admin token.
fn start_global(net: &Net) -> Global {
    let host = net.host("global");
    let data = net.mkdir("global-data");
    let proc = host.spawn_cmd(
        "strait-global",
        Cmd::new(bin("strait-global"))
            .arg("--api-address")
            .arg(host.socket_addr(API_PORT).to_string())
            .arg("--kds-address")
            .arg(host.socket_addr(KDS_PORT).to_string())
            .arg("--data-dir")
            .arg(&data),
    );
    proc.wait_http_ready(&host, &host.url(API_PORT, "/readyz"), READY);

    let token_path = data.join("admin-token");
    let token = wait_for("the admin token file", READY, || fs::read_to_string(&token_path).map(|t| t.trim().to_owned()));
    assert!(!token.is_empty(), "{} is empty", token_path.display());
    let mode = fs::metadata(&token_path).expect("stat admin-token").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token must be private to its owner");

    Global { server: host.url(API_PORT, ""), host, _proc: proc, token }
}

/// Runs `straitctl --server <global> --token <token> <args>` on `from`, with its config file
/// in the net's directory so it never touches `$HOME`.
fn straitctl(net: &Net, from: &Host, global: &Global, args: &[&str]) -> Output {
    from.run_cmd(
        Cmd::new(bin("straitctl"))
            .args(["--server", global.server.as_str(), "--token", global.token.as_str()])
            .args(args)
            .env("STRAIT_CONFIG", straitctl_config(net)),
    )
}

fn straitctl_config(net: &Net) -> PathBuf {
    net.dir().join("straitctl.yaml")
}

/// `straitctl get meshtrafficpermission allow-web --mesh default -o json`, parsed.
fn get_allow_web(net: &Net, from: &Host, global: &Global) -> serde_json::Value {
    let out = straitctl(net, from, global, &["get", "meshtrafficpermission", "allow-web", "--mesh", "default", "-o", "json"]);
    out.assert_success();
    out.json()
}

#[test]
fn policy_applied_from_a_zone_is_stored_and_reapplying_is_a_no_op() {
    let net = Net::new();
    let global = start_global(&net);
    let zone = net.host("zone-1");
    let file = net.write_file("allow-web.yaml", POLICY);
    let file = file.to_str().expect("utf-8 temp path");

    let applied = straitctl(&net, &zone, &global, &["apply", "-f", file]);
    applied.assert_success().assert_stdout_contains("meshtrafficpermission/allow-web created");

    let got = get_allow_web(&net, &zone, &global);
    assert_eq!(got["name"], "allow-web", "{got:#}");
    assert_eq!(got["mesh"], "default", "{got:#}");
    assert_eq!(got["spec"]["from"][0]["default"]["action"], "Allow", "{got:#}");
    let version = got["version"].as_u64().filter(|v| *v > 0);
    assert!(version.is_some(), "version must be a number > 0: {got:#}");

    let again = straitctl(&net, &zone, &global, &["apply", "-f", file]);
    again.assert_success();
    assert!(
        again.stdout.lines().any(|l| l.contains("allow-web") && l.contains("unchanged")),
        "re-applying must report allow-web unchanged: {again}"
    );
    let after = get_allow_web(&net, &zone, &global);
    assert_eq!(after["version"].as_u64(), version, "a no-op apply must not bump the version");
}

#[test]
fn a_host_off_the_wan_cannot_reach_the_global() {
    let net = Net::new();
    let global = start_global(&net);
    let zone = net.host("zone-1");
    let outsider = net.isolated_host("outsider");
    let readyz = global.host.url(API_PORT, "/readyz");

    // Positive control: a host on the WAN gets through, from its own namespace.
    zone.http_ready(&readyz, READY);
    straitctl(&net, &zone, &global, &["get", "meshes"]).assert_success();

    if !net.is_namespaced() {
        eprintln!("SKIPPED isolation assertion: loopback mode ({}) cannot isolate hosts", net.mode_reason());
        return;
    }
    let err = outsider.http_client().get(&readyz).send().expect_err("a host off the WAN must not reach the global API");
    eprintln!("as expected, from outsider: {}", strait_multizone::wait::error_chain(&err));
    let denied = straitctl(&net, &outsider, &global, &["get", "meshes"]);
    denied.assert_failure();
}
