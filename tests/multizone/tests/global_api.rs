//! Scenario: the global control plane's REST API, driven by `straitctl` from a zone host over
//! HTTPS, verified with the CA the global writes next to its admin token. A policy applied
//! from "zone-1" is stored on "global" with a server-set version, reads back the same, and
//! re-applying it is a no-op. A host off the WAN cannot reach the global. Plain HTTP and a
//! server certificate from another CA are refused.
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
    /// `api-ca.pem`, as an operator would copy it to the hosts straitctl runs on.
    ca_file: PathBuf,
    ca_pem: String,
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
    let ca_path = data.join("api-ca.pem");
    let ca_pem = wait_for("the global's api-ca.pem", READY, || fs::read_to_string(&ca_path).ok().filter(|p| p.contains("CERTIFICATE")));
    let ca_file = net.write_file("copied-api-ca.pem", &ca_pem);
    host.https_client(&ca_pem);
    strait_multizone::wait::http_ready_with(&host.https_client(&ca_pem), &host.https_url(API_PORT, "/readyz"), READY);

    let token_path = data.join("admin-token");
    let token = wait_for("the admin token file", READY, || fs::read_to_string(&token_path).map(|t| t.trim().to_owned()));
    assert!(!token.is_empty(), "{} is empty", token_path.display());
    let mode = fs::metadata(&token_path).expect("stat admin-token").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token must be private to its owner");

    Global { server: host.https_url(API_PORT, ""), host, _proc: proc, token, ca_file, ca_pem }
}

/// Runs `straitctl --server <global> --token <token> <args>` on `from`, with its config file
/// in the net's directory so it never touches `$HOME`.
fn straitctl(net: &Net, from: &Host, global: &Global, args: &[&str]) -> Output {
    from.run_cmd(
        Cmd::new(bin("straitctl"))
            .args(["--server", global.server.as_str(), "--token", global.token.as_str()])
            .arg("--ca-file")
            .arg(&global.ca_file)
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
    let readyz = global.host.https_url(API_PORT, "/readyz");

    // Positive control: a host on the WAN gets through, from its own namespace.
    strait_multizone::wait::http_ready_with(&zone.https_client(&global.ca_pem), &readyz, READY);
    straitctl(&net, &zone, &global, &["get", "meshes"]).assert_success();

    if !net.is_namespaced() {
        eprintln!("SKIPPED isolation assertion: loopback mode ({}) cannot isolate hosts", net.mode_reason());
        return;
    }
    let err = outsider.https_client(&global.ca_pem).get(&readyz).send().expect_err("a host off the WAN must not reach the global API");
    eprintln!("as expected, from outsider: {}", strait_multizone::wait::error_chain(&err));
    let denied = straitctl(&net, &outsider, &global, &["get", "meshes"]);
    denied.assert_failure();
}

/// The admin token never crosses the network in clear: the API answers plain HTTP with a 400
/// that says to use https://, and straitctl refuses a server whose certificate does not chain
/// to the CA it was given.
#[test]
fn the_api_is_https_and_straitctl_verifies_it() {
    let net = Net::new();
    let global = start_global(&net);
    let zone = net.host("zone-1");

    let plain = zone.http_client().get(global.host.url(API_PORT, "/meshes")).send().expect("an answer");
    assert_eq!(plain.status().as_u16(), 400);
    assert!(plain.text().unwrap_or_default().contains("use an https:// URL"));
    let out = from_with(&net, &zone, &global, &global.server.replace("https://", "http://"), &global.ca_file, &["get", "meshes"]);
    out.assert_failure();
    assert!(out.stderr.contains("https://"), "{out}");

    let other = strait_pki::CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "another CA", Duration::from_secs(3600))
        .expect("a CA of its own");
    let other = net.write_file("other-ca.pem", other.cert_pem());
    let out = from_with(&net, &zone, &global, &global.server, &other, &["get", "meshes"]);
    out.assert_failure();
    assert!(out.stderr.contains("does not verify"), "{out}");
    from_with(&net, &zone, &global, &global.server, &global.ca_file, &["get", "meshes"]).assert_success();
}

/// `straitctl --server <server> --ca-file <ca> <args>` with the admin token, from `from`.
fn from_with(net: &Net, from: &Host, global: &Global, server: &str, ca: &std::path::Path, args: &[&str]) -> Output {
    from.run_cmd(
        Cmd::new(bin("straitctl"))
            .args(["--server", server, "--token", global.token.as_str()])
            .arg("--ca-file")
            .arg(ca)
            .args(args)
            .env("STRAIT_CONFIG", straitctl_config(net)),
    )
}
