//! Scenarios: the sidecar (`strait-dp`) end to end, with the real `strait-global`,
//! `strait-zone`, `straitctl` and `strait-dp`. The global runs on host "global", the zone on
//! host "zone-1", and each workload ("web", "backend") on its own host with its application (a
//! TCP echo server on 127.0.0.1) and its sidecar; web's application reaches backend through
//! web's explicit outbound on 127.0.0.1:10001, over mTLS between the sidecars.
//!
//! - two services talk through their sidecars, and what crosses between their hosts is TLS
//!   (captured with tcpdump: the payload never appears, TLS records do);
//! - a MeshTrafficPermission applied on the global closes web's calls to backend, and its
//!   deletion lets them through again, through KDS and DPS;
//! - traffic goes on while the zone control plane is down, and the sidecars resync when it
//!   comes back;
//! - a bad Dataplane file, a token for another service and an unreachable zone each give a
//!   clear message (exit 64, or a logged retry);
//! - HTTP: web's requests reach backend's HTTP application through an explicit outbound and,
//!   with `transparent-proxy install`, when addressed to backend directly; what crosses is TLS,
//!   and a permission change turns the answer into a 403 that names the caller and back;
//! - an instance whose application, then whose sidecar, is stopped (SIGSTOP) under constant
//!   load is passed over within a second, and no request fails;
//! - a workload whose host vanishes is unregistered (the zone's keepalive finds the dead
//!   stream) and can register again from a new host.
//!
//! Assertions are on real calls (echo round trips) and the sidecars' admin endpoints; log
//! lines are only extra evidence. Measured latencies are printed as `FIGURE <name> ms=<n>`.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`), python3, and tcpdump for
//! the capture (installed by `scripts/test.sh`; without it that check says it is skipped).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use strait_multizone::capture::{self, contains, Capture};
use strait_multizone::control_plane::{start_zone, Global, Zone, SYNC, ZONE_DPS_PORT};
use strait_multizone::sidecar::{
    dataplane_token, echo, http_get, local_ip, wildcard_port, DataplaneSpec, Sidecar, Traffic, Workload, SIDECAR_READY,
};
use strait_multizone::{holds_for, wait_for, Net};

const MESH: &str = "type: Mesh\nname: default\n";
/// The allow-all MeshTrafficPermission a new mesh gets.
const ALLOW_ALL: &str = "/meshes/default/meshtrafficpermissions/allow-all";

/// Backend's inbound (mTLS from other sidecars) and its application's port.
const BACKEND_INBOUND: u16 = 8002;
const BACKEND_APP: u16 = 9002;
/// Web's inbound and application (nobody calls web; its sidecar needs an inbound all the same).
const WEB_INBOUND: u16 = 8001;
const WEB_APP: u16 = 9001;
/// Web's explicit outbound to backend.
const TO_BACKEND: u16 = 10001;

/// Counters of the sidecars' tunnels.
const INBOUND_CONNECTIONS: &str = "strait_dp_inbound_tunnel_connections_total";
const OUTBOUND_CONNECTIONS: &str = "strait_dp_outbound_tunnel_connections_total";
const INBOUND_DENIED: &str = "strait_dp_inbound_tunnel_denied_connections_total";

/// A MeshTrafficPermission that denies web's calls to backend.
const DENY_WEB: &str =
    "type: MeshTrafficPermission\nname: deny-web\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  \
     from:\n    - targetRef: {kind: MeshService, name: web}\n      default: {action: Deny}\n";

/// Milliseconds with one decimal, for `FIGURE` lines.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A global, zone-1 connected to it, and mesh `default` (with its allow-all permission) served
/// by the zone.
fn mesh(net: &Net) -> (Global, Zone) {
    let global = Global::start(net, &[]);
    let zone = start_zone(net, &global, "zone-1", &[]);
    global.apply(net, "mesh.yaml", MESH);
    wait_for("zone-1 to serve mesh default's allow-all MeshTrafficPermission", SYNC, || {
        zone.resource(ALLOW_ALL)?.map(drop).ok_or_else(|| "not yet".to_owned())
    });
    (global, zone)
}

/// Backend (echo app behind its sidecar), then web with an outbound to it; waits until a call
/// from web's application reaches backend's (and prints how long that took once both were ready).
fn web_and_backend(net: &Net, global: &Global, zone: &Zone) -> (Workload, Workload) {
    let backend = Workload::start(net, global, zone, "backend", BACKEND_INBOUND, BACKEND_APP, &[]);
    let web = Workload::start(net, global, zone, "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")]);
    let ready = Instant::now();
    wait_for("a call from web to backend through both sidecars", SYNC, || web.call("backend", b"hello backend\n"));
    println!("FIGURE sidecars-ready->first-call-through ms={}", ms(ready.elapsed()));
    (web, backend)
}

/// Checks the SPIFFE identity and certificate chain a ready sidecar shows on `/config_dump`, without its key.
fn assert_identity(sidecar: &Sidecar, service: &str) {
    let dump = sidecar.config_dump().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dump.pointer("/config/identity"), Some(&Value::from(format!("spiffe://default/{service}"))), "{dump:#}");
    let chain = dump.pointer("/certificate/chain").and_then(Value::as_str).unwrap_or_default();
    assert!(chain.matches("BEGIN CERTIFICATE").count() >= 2, "leaf and intermediate expected in: {dump:#}");
    assert!(!dump.to_string().contains("PRIVATE KEY"), "the private key must never be dumped");
}

/// The value of counter `name` on `sidecar`, panicking with the reason if it has none.
fn counter(sidecar: &Sidecar, name: &str) -> f64 {
    sidecar.metric(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The IPv4 socket address `addr` (the test network is IPv4).
fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv4 expected, got {a}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn two_services_talk_through_their_sidecars() {
    let net = Net::new();
    let (global, zone) = mesh(&net);
    let (web, backend) = web_and_backend(&net, &global, &zone);
    assert_identity(&web.sidecar, "web");
    assert_identity(&backend.sidecar, "backend");
    let (in_before, out_before) = (counter(&backend.sidecar, INBOUND_CONNECTIONS), counter(&web.sidecar, OUTBOUND_CONNECTIONS));

    // Capture what leaves web's host towards backend's inbound while calls are made.
    let iface = if net.is_namespaced() { "eth0" } else { "lo" };
    let filter = format!("tcp and host {} and port {}", backend.inbound.ip(), backend.inbound.port());
    let capture = if capture::tcpdump_available() {
        Some(Capture::start(&net, &web.host, "tcpdump", iface, &filter))
    } else {
        println!("SKIPPED the packet capture: tcpdump is not installed (scripts/test.sh installs it)");
        None
    };
    const SECRET: &str = "strait-e2e-this-text-must-never-cross-in-clear";
    const CALLS: usize = 5;
    for i in 0..CALLS {
        web.call("backend", format!("{SECRET} #{i}\n").as_bytes()).unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    // A plaintext client on web's host, straight to backend's inbound, gets no echo: the
    // inbound speaks only mTLS.
    const PROBE: &str = "plaintext-probe-straight-to-the-inbound\n";
    let direct = echo(&web.host, backend.inbound, PROBE.as_bytes());
    assert!(direct.is_err(), "a plaintext client reached backend's application through its mTLS inbound");
    println!("plaintext client to backend's inbound: {}", direct.unwrap_err());

    // Every proxied call went through both sidecars' tunnels.
    assert!(counter(&web.sidecar, OUTBOUND_CONNECTIONS) >= out_before + CALLS as f64, "web's outbound tunnel counter");
    assert!(counter(&backend.sidecar, INBOUND_CONNECTIONS) >= in_before + CALLS as f64, "backend's inbound tunnel counter");

    let Some(capture) = capture else { return };
    let flows = capture::flows(&capture.stop());
    let backend_in = v4(backend.inbound);
    // The probe shows the capture sees plaintext where there is some.
    let probes: Vec<_> = flows.iter().filter(|(_, bytes)| contains(bytes, PROBE.as_bytes())).collect();
    assert_eq!(probes.len(), 1, "the capture must show the plaintext probe in clear (flows: {:?})", flows.keys());
    let probe_src = probes[0].0 .0;
    let probe_answer = flows.get(&(backend_in, probe_src)).map(Vec::as_slice).unwrap_or_default();
    assert!(
        probe_answer.is_empty() || probe_answer.starts_with(&[0x15, 0x03]),
        "backend's inbound may answer plaintext only with a TLS alert, got {probe_answer:02x?}"
    );
    // Connections to backend's inbound other than the probe are web's sidecar's tunnels (the
    // capture runs on web's interface; in loopback mode their source is 127.0.0.1).
    let tunnels: Vec<_> = flows.iter().filter(|((src, dst), _)| *dst == backend_in && *src != probe_src).collect();
    assert!(tunnels.len() >= CALLS, "one captured connection per call expected, got {}: {:?}", tunnels.len(), flows.keys());
    for ((src, dst), bytes) in &tunnels {
        assert!(
            bytes.starts_with(&[0x16, 0x03]),
            "{src} -> {dst} must open with a TLS handshake record, got {:02x?}",
            &bytes[..bytes.len().min(8)]
        );
        assert!(contains(bytes, &[0x17, 0x03, 0x03]), "{src} -> {dst} must carry TLS application data records");
        let answer = flows.get(&(*dst, *src)).unwrap_or_else(|| panic!("no answer captured for {src} -> {dst}"));
        assert!(answer.starts_with(&[0x16, 0x03]), "{dst} -> {src} must answer with a TLS handshake record");
    }
    for ((src, dst), bytes) in &flows {
        assert!(!contains(bytes, SECRET.as_bytes()), "the payload crossed in clear from {src} to {dst}");
    }
    let bytes: usize = tunnels.iter().map(|(_, b)| b.len()).sum();
    println!("captured {} mTLS connections web -> backend ({bytes} bytes), no plaintext payload in them", tunnels.len());
}

#[test]
fn a_permission_change_on_the_global_flips_the_call() {
    let net = Net::new();
    let (global, zone) = mesh(&net);
    let (web, backend) = web_and_backend(&net, &global, &zone);
    let denied_before = counter(&backend.sidecar, INBOUND_DENIED);

    global.apply(&net, "deny-web.yaml", DENY_WEB).assert_stdout_contains("meshtrafficpermission/deny-web created");
    let applied = Instant::now();
    let refused = wait_for("web's calls to backend to be refused", SYNC, || match web.call("backend", b"denied?\n") {
        Ok(()) => Err("the call still got its echo".to_owned()),
        Err(e) => Ok(e),
    });
    println!("FIGURE deny-applied->call-refused ms={}", ms(applied.elapsed()));
    println!("a denied call: {refused}");
    assert!(refused.contains("closed") || refused.contains("reset"), "a denied TCP call must be closed, not left hanging: {refused}");
    // The permission is in backend's configuration, and backend counts the refusals.
    let dump = backend.sidecar.config_dump().unwrap_or_else(|e| panic!("{e}"));
    assert!(dump["config"].to_string().contains("deny-web"), "backend's configuration must come from deny-web: {dump:#}");
    holds_for("web's calls to backend staying refused", Duration::from_secs(3), || match web.call("backend", b"still denied?\n") {
        Ok(()) => Err("a call got through while deny-web is in force".to_owned()),
        Err(_) => Ok(()),
    });
    let denied = counter(&backend.sidecar, INBOUND_DENIED);
    assert!(denied > denied_before, "backend must count the denied connections ({denied_before} -> {denied})");

    global.straitctl(&net, &["delete", "meshtrafficpermission", "deny-web", "--mesh", "default"]).assert_success();
    let deleted = Instant::now();
    wait_for("web's calls to backend to be allowed again", SYNC, || web.call("backend", b"allowed again\n"));
    println!("FIGURE deny-deleted->call-allowed ms={}", ms(deleted.elapsed()));
    // Calls made until the deletion arrived were denied too; from now on none may be.
    let denied = counter(&backend.sidecar, INBOUND_DENIED);
    holds_for("web's calls to backend staying allowed", Duration::from_secs(2), || web.call("backend", b"and again\n"));
    assert_eq!(counter(&backend.sidecar, INBOUND_DENIED), denied, "no denial once deny-web is gone");
}

#[test]
fn traffic_continues_while_the_zone_is_down() {
    let net = Net::new();
    let (global, zone) = mesh(&net);
    let (web, backend) = web_and_backend(&net, &global, &zone);
    let traffic = Traffic::start(&web.host, web.outbound("backend"), Duration::from_millis(100));
    wait_for("calls flowing", SYNC, || {
        let r = traffic.report();
        (r.ok >= 5 && r.kept_ok >= 5).then_some(()).ok_or_else(|| format!("{r:?}"))
    });
    let no_failure = |when: &str| {
        let r = traffic.report();
        if r.failures.is_empty() {
            Ok(r)
        } else {
            Err(format!("{when}: {} failed calls, first {:?}", r.failures.len(), r.failures[0]))
        }
    };

    // The zone crashes: both sidecars lose their DPS stream, stay ready and keep proxying.
    let dumps = |what: &str| -> Vec<Value> {
        [&web.sidecar, &backend.sidecar].iter().map(|s| s.config_dump().unwrap_or_else(|e| panic!("{what}: {e}"))).collect()
    };
    let kept = dumps("before the zone was killed");
    zone.proc.kill9();
    let killed = Instant::now();
    let before = no_failure("before the zone was killed").unwrap_or_else(|e| panic!("{e}"));
    for s in [&web.sidecar, &backend.sidecar] {
        wait_for(&format!("{} to notice the zone is gone", s.host.name()), SYNC, || {
            (s.log_lines_with(&["cannot connect to the zone control plane"]) > 0).then_some(())
        });
    }
    holds_for("calls working, and both sidecars ready, with the zone down", Duration::from_secs(8), || {
        for (s, before) in [&web.sidecar, &backend.sidecar].into_iter().zip(&kept) {
            if s.ready()? != StatusCode::OK {
                return Err(format!("{} is no longer ready", s.host.name()));
            }
            // Same configuration (version included) and same certificate as before the crash.
            if s.config_dump()? != *before {
                return Err(format!("{} changed its configuration or certificate without a zone", s.host.name()));
            }
        }
        no_failure("with the zone down").map(drop)
    });
    let during = traffic.report();
    let outage_calls = during.ok - before.ok;
    assert!(outage_calls >= 20, "calls must have been made during the outage: {during:?}");
    assert!(zone.proc.exit_status().is_some(), "the zone must still be down");
    println!("{outage_calls} calls went through while the zone was down ({:.1?})", killed.elapsed());

    // It comes back (same data dir, same ports): both sidecars register again and get the
    // changes made from now on; calls go on.
    zone.proc.start_again();
    zone.wait_ready();
    let back = Instant::now();
    for s in [&web.sidecar, &backend.sidecar] {
        wait_for(&format!("{} to register again", s.host.name()), SYNC, || {
            (s.log_lines_with(&["registered with the zone control plane"]) >= 2).then_some(())
        });
    }
    println!("FIGURE zone-restart->both-sidecars-registered ms={}", ms(back.elapsed()));
    let listed = |zone: &Zone| -> Result<Vec<String>, String> {
        let (_, body) = zone.get("/meshes/default/dataplanes")?;
        Ok(body["items"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str().map(str::to_owned)).collect())
    };
    let mut names = listed(&zone).unwrap_or_else(|e| panic!("{e}"));
    names.sort();
    assert_eq!(names, ["backend-1", "web-1"], "the zone lists both dataplanes again");
    global.apply(
        &net,
        "allow-web-everywhere.yaml",
        "type: MeshTrafficPermission\nname: allow-web-everywhere\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  from:\n    \
         - targetRef: {kind: MeshService, name: web}\n      default: {action: Allow}\n",
    );
    let applied = Instant::now();
    for s in [&web.sidecar, &backend.sidecar] {
        wait_for(&format!("{} to get a change made after the zone came back", s.host.name()), SYNC, || {
            let dump = s.config_dump()?;
            dump["config"].to_string().contains("allow-web-everywhere").then_some(()).ok_or_else(|| format!("version {}", dump["version"]))
        });
    }
    println!("FIGURE policy-after-zone-restart->both-sidecars ms={}", ms(applied.elapsed()));
    let versions = |dumps: &[Value]| dumps.iter().map(|d| d["version"].clone()).collect::<Vec<_>>();
    println!("config versions (web, backend): {:?} before the crash, {:?} now", versions(&kept), versions(&dumps("after the restart")));
    let after = traffic.report();
    wait_for("calls after the zone came back", SYNC, || {
        let r = traffic.report();
        (r.ok >= after.ok + 10).then_some(()).ok_or_else(|| format!("{r:?}"))
    });
    let report = traffic.stop();
    assert!(
        report.failures.is_empty(),
        "no call may fail while the zone is down or coming back; {} failed: {:?}",
        report.failures.len(),
        report.failures
    );
    println!("calls: {} on new connections, {} on one long-lived connection, none failed", report.ok, report.kept_ok);
}

#[test]
fn bad_inputs_give_clear_messages() {
    let net = Net::new();
    let (global, zone) = mesh(&net);
    a_bad_dataplane_file_is_refused_at_start(&net, &zone);
    a_token_for_another_service_is_refused(&net, &global, &zone);
    an_unreachable_zone_is_retried_until_it_comes(&net, &global, &zone);
}

/// Part (a): a Dataplane without the service tag, with an empty token file and a plain-http
/// zone address: exit 64, each problem on stderr, naming the flag, the file and the field.
fn a_bad_dataplane_file_is_refused_at_start(net: &Net, zone: &Zone) {
    let host = net.host("bad-config");
    let dataplane = net.write_file(
        "bad.dataplane.yaml",
        format!(
            "type: Dataplane\nname: web-2\nmesh: default\nspec:\n  networking:\n    address: {}\n    inbound:\n      - port: 8001\n        \
             tags: {{version: v1}}\n",
            host.addr()
        ),
    );
    let token = net.write_file("empty.token", "");
    let cmd = Sidecar::command(zone, ZONE_DPS_PORT, &dataplane, &token);
    let out = host.run_cmd(cmd);
    assert_eq!(out.code(), Some(64), "a bad configuration must exit with 64: {out}");
    let file = dataplane.display().to_string();
    for expected in [
        format!("--dataplane-file {file}: spec.networking.inbound[0].tags: needs the strait.io/service tag"),
        format!("--dataplane-token-file {}: empty", token.display()),
    ] {
        assert!(out.stderr.contains(&expected), "stderr must say {expected:?}: {out}");
    }
    println!("bad configuration, as the user sees it:\n{}", out.stderr.trim_end());

    // A zone address that is not https is named too, with the rest.
    let wrong_scheme = host.run(
        strait_multizone::bin("strait-dp"),
        [
            "run",
            "--cp-address",
            &format!("http://{}", zone.host.socket_addr(ZONE_DPS_PORT)),
            "--cp-ca-file",
            &zone.data.join("dps-ca.pem").display().to_string(),
            "--dataplane-file",
            &file,
            "--dataplane-token-file",
            &net.dir().join("no-such.token").display().to_string(),
        ],
    );
    assert_eq!(wrong_scheme.code(), Some(64), "{wrong_scheme}");
    for expected in ["--cp-address", "must be an https:// URL", "spec.networking.inbound[0].tags", "no-such.token"] {
        assert!(wrong_scheme.stderr.contains(expected), "stderr must mention {expected:?}: {wrong_scheme}");
    }
}

/// Part (b): a token for service web with a Dataplane of service backend: the zone refuses it,
/// the sidecar says so, stays unready and keeps retrying; the zone does not list it.
fn a_token_for_another_service_is_refused(net: &Net, global: &Global, zone: &Zone) {
    let host = net.host("impostor");
    let local = local_ip(&host);
    let dataplane = DataplaneSpec {
        name: "impostor-1".into(),
        service: "backend".into(),
        address: host.addr(),
        inbound_port: wildcard_port(net, BACKEND_INBOUND),
        app: SocketAddr::new(local, BACKEND_APP),
        outbounds: Vec::new(),
        outbound_address: local,
        protocol: None,
    };
    let token = dataplane_token(net, global, "web", "impostor.token");
    let file = net.write_file("impostor.dataplane.yaml", dataplane.yaml());
    let sidecar = Sidecar::spawn(&host, "strait-dp", zone, ZONE_DPS_PORT, &file, &token, &[]);
    let refusal = ["the zone control plane refused this sidecar", "cannot register service"];
    wait_for("the impostor sidecar to log its refusal twice (it retries)", SYNC, || {
        sidecar.proc.assert_running("the refusal");
        let n = sidecar.log_lines_with(&refusal);
        (n >= 2).then_some(()).ok_or_else(|| format!("{n} refusals logged"))
    });
    holds_for("the impostor sidecar staying unready and unlisted", Duration::from_secs(3), || {
        sidecar.proc.assert_running("the impostor to stay up and retry");
        match sidecar.ready()? {
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => return Err(format!("/ready answered {other}")),
        }
        match zone.resource("/meshes/default/dataplanes/impostor-1")? {
            None => Ok(()),
            Some(dp) => Err(format!("the zone registered it: {dp}")),
        }
    });
    let line = sidecar.proc.log().lines().find(|l| refusal.iter().all(|n| l.contains(n))).map(str::to_owned).unwrap_or_default();
    assert!(
        ["PermissionDenied", "service", "web", "backend"].iter().all(|w| line.contains(w)),
        "the refusal must name the code and both services: {line}"
    );
    println!("refused sidecar logs: {line}");
    sidecar.proc.terminate();
}

/// Part (c): a sidecar started while its zone is down logs that it cannot connect, retries,
/// and becomes ready (with its certificate) once the zone is up.
fn an_unreachable_zone_is_retried_until_it_comes(net: &Net, global: &Global, zone: &Zone) {
    let host = net.host("early");
    let local = local_ip(&host);
    let dataplane = DataplaneSpec {
        name: "early-1".into(),
        service: "early".into(),
        address: host.addr(),
        inbound_port: wildcard_port(net, 8003),
        app: SocketAddr::new(local, 9003),
        outbounds: Vec::new(),
        outbound_address: local,
        protocol: None,
    };
    let token = dataplane_token(net, global, "early", "early.token");
    let file = net.write_file("early.dataplane.yaml", dataplane.yaml());
    zone.proc.kill9();
    let sidecar = Sidecar::spawn(&host, "strait-dp", zone, ZONE_DPS_PORT, &file, &token, &[]);
    let address = format!("cannot connect to the zone control plane at https://{}", zone.host.socket_addr(ZONE_DPS_PORT));
    wait_for("the sidecar to log that it cannot reach the zone, twice (it retries)", SYNC, || {
        sidecar.proc.assert_running("the retries");
        let n = sidecar.log_lines_with(&[&address]);
        (n >= 2).then_some(()).ok_or_else(|| format!("{n} lines with {address:?}"))
    });
    assert_eq!(sidecar.ready(), Ok(StatusCode::SERVICE_UNAVAILABLE), "not ready without a zone");
    zone.proc.start_again();
    zone.wait_ready();
    let back = Instant::now();
    sidecar.wait_ready(SIDECAR_READY);
    println!("FIGURE zone-up->waiting-sidecar-ready ms={}", ms(back.elapsed()));
    assert_identity(&sidecar, "early");
}

/// A workload's host vanishes without a word (power loss: its link goes down, no FIN, no
/// RST): the zone must notice its dead DPS stream, unregister it (so callers stop getting its
/// endpoint), and let the workload register again from a new host under the same name.
#[test]
fn a_vanished_workload_is_unregistered_and_can_register_again() {
    let net = Net::new();
    if !net.is_namespaced() {
        println!("SKIPPED: a host cannot vanish in loopback mode ({})", net.mode_reason());
        return;
    }
    let (global, zone) = mesh(&net);
    let (web, backend) = web_and_backend(&net, &global, &zone);
    backend.host.run("ip", ["link", "set", "eth0", "down"]).assert_success();
    let gone = Instant::now();
    wait_for("the zone to unregister backend-1 after its host vanished", Duration::from_secs(60), || {
        match zone.resource("/meshes/default/dataplanes/backend-1")? {
            None => Ok(()),
            Some(dp) => Err(format!("still registered {:.1?} later: {}", gone.elapsed(), dp["spec"]["networking"]["address"])),
        }
    });
    println!("FIGURE host-vanished->unregistered ms={}", ms(gone.elapsed()));

    // Rescheduled on a new host under the same name, it registers and serves web again.
    let host = net.host("backend-again");
    let local = local_ip(&host);
    let dataplane = DataplaneSpec {
        name: "backend-1".into(),
        service: "backend".into(),
        address: host.addr(),
        inbound_port: BACKEND_INBOUND,
        app: SocketAddr::new(local, BACKEND_APP),
        outbounds: Vec::new(),
        outbound_address: local,
        protocol: None,
    };
    let token = dataplane_token(&net, &global, "backend", "backend-again.token");
    let file = net.write_file("backend-again.dataplane.yaml", dataplane.yaml());
    let _app = strait_multizone::sidecar::echo_server(&host, "app", dataplane.app);
    let sidecar = Sidecar::spawn(&host, "strait-dp", &zone, ZONE_DPS_PORT, &file, &token, &[]);
    sidecar.wait_ready(SIDECAR_READY);
    wait_for("web to reach the rescheduled backend", SYNC, || web.call("backend", b"hello again\n"));
}

/// The uid web's sidecar runs as in the transparent scenario; its own connections are not redirected.
const PROXY_UID: &str = "1337";

/// With `strait-dp transparent-proxy install`, web's application connects to backend's address
/// as if there were no mesh, and iptables sends the connection through web's sidecar, which
/// carries it over mTLS; without the rules the same plaintext connection gets nowhere.
#[test]
fn transparent_interception_sends_plain_connections_through_the_sidecar() {
    let net = Net::new();
    if !net.is_namespaced() {
        println!("SKIPPED transparent interception: iptables rules need a network namespace of their own (loopback mode)");
        return;
    }
    let (global, zone) = mesh(&net);
    let backend = Workload::start(&net, &global, &zone, "backend", BACKEND_INBOUND, BACKEND_APP, &[]);
    let sidecar = web_as_proxy_uid(&net, &global, &zone);
    let host = sidecar.host.clone();

    let probe = b"plain call to backend's address\n";
    assert!(echo(&host, backend.inbound, probe).is_err(), "without interception a plaintext client cannot use backend's mTLS inbound");
    transparent_proxy(&host, "install");
    wait_for("a plain connection to backend intercepted by web's sidecar", SYNC, || echo(&host, backend.inbound, probe));
    assert!(counter(&sidecar, OUTBOUND_CONNECTIONS) >= 1.0, "the call went through web's sidecar");

    // A connection made straight to the transparent outbound port, not redirected, has the
    // sidecar itself as its original destination: it is closed at once, not passed through to
    // the sidecar again and again until it runs out of descriptors.
    let direct = host.within(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 15001)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let _ = s.write_all(b"loop?\n");
        match s.read(&mut [0u8; 64]) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("{n} bytes came back")),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(format!("still open after 5 s: {e}")),
        }
    });
    assert_eq!(direct, Ok(()), "a direct connection to 15001 is refused at once");
    sidecar.proc.assert_running("after a direct connection to its transparent port");
    wait_for("the refusal in web's sidecar log", SYNC, || {
        sidecar.proc.log().contains("refused a connection made straight to the transparent outbound port").then_some(())
    });
    wait_for("a plain connection still intercepted", SYNC, || echo(&host, backend.inbound, probe));
    transparent_proxy(&host, "uninstall");
    assert!(echo(&host, backend.inbound, probe).is_err(), "after uninstall the connection is no longer intercepted");
}

/// A line in backend's HTTP application that must never cross between hosts in clear.
const HTTP_SECRET: &str = "strait-e2e-http-body-that-must-never-cross-in-clear";

/// HTTP between sidecars, end to end: backend serves HTTP (`strait.io/protocol: http`); web's
/// application calls it through web's explicit outbound and, with transparent interception
/// installed (namespace mode), by backend's own address. The capture between the hosts shows
/// TLS only; a MeshTrafficPermission applied on the global turns both answers into a 403 that
/// names web, and deleting it brings the 200 back.
#[test]
fn http_through_sidecars_explicit_and_transparent() {
    let net = Net::new();
    let (global, zone) = mesh(&net);
    let backend = Workload::start_http(&net, &global, &zone, "backend", BACKEND_INBOUND, BACKEND_APP, &[], &[("secret.txt", HTTP_SECRET)]);
    let transparent = net.is_namespaced();
    let web = if transparent {
        web_as_proxy_uid(&net, &global, &zone)
    } else {
        println!("SKIPPED the transparent half: iptables rules need a network namespace of their own (loopback mode)");
        Workload::start(&net, &global, &zone, "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")]).sidecar
    };
    let explicit = SocketAddr::new(local_ip(&web.host), TO_BACKEND);

    let iface = if net.is_namespaced() { "eth0" } else { "lo" };
    let filter = format!("tcp and host {} and port {}", backend.inbound.ip(), backend.inbound.port());
    let capture = capture::tcpdump_available().then(|| Capture::start(&net, &web.host, "tcpdump", iface, &filter));
    if capture.is_none() {
        println!("SKIPPED the packet capture: tcpdump is not installed (scripts/test.sh installs it)");
    }
    let (status, body) = wait_for("web -> backend over HTTP through the explicit outbound", SYNC, || {
        http_get(&web.host, explicit, "backend", "/secret.txt")
    });
    assert_eq!((status, body.as_str()), (200, HTTP_SECRET), "the explicit outbound answer");
    if transparent {
        transparent_proxy(&web.host, "install");
        let (status, body) = wait_for("a plain HTTP request to backend's address, intercepted", SYNC, || {
            http_get(&web.host, backend.inbound, "backend", "/secret.txt")
                .and_then(|r| if r.0 == 200 { Ok(r) } else { Err(format!("{r:?}")) })
        });
        assert_eq!(body, HTTP_SECRET, "the intercepted answer ({status})");
    }
    let requests = web.metric(
        "strait_dp_http_requests_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\",status=\"200\"}",
    );
    assert!(requests.clone().unwrap_or(0.0) >= 1.0, "web counts its HTTP requests to backend: {requests:?}");

    if let Some(capture) = capture {
        let flows = capture::flows(&capture.stop());
        assert!(!flows.is_empty(), "the capture saw the connection between the sidecars");
        for ((src, dst), bytes) in &flows {
            assert!(!contains(bytes, HTTP_SECRET.as_bytes()), "the HTTP body crossed in clear from {src} to {dst}");
            assert!(!contains(bytes, b"GET /secret.txt"), "the HTTP request crossed in clear from {src} to {dst}");
        }
        let to_backend: Vec<_> = flows.iter().filter(|((_, dst), _)| *dst == v4(backend.inbound)).collect();
        assert!(to_backend.iter().all(|(_, b)| b.starts_with(&[0x16, 0x03])), "every connection to backend opens with a TLS handshake");
        println!("captured {} connection(s) web -> backend, TLS only, no HTTP in clear", to_backend.len());
    }

    global.apply(&net, "deny-web.yaml", DENY_WEB).assert_stdout_contains("meshtrafficpermission/deny-web created");
    let mut targets = vec![explicit];
    if transparent {
        targets.push(backend.inbound);
    }
    for target in &targets {
        let (_, body) = wait_for("a 403 for web", SYNC, || match http_get(&web.host, *target, "backend", "/secret.txt") {
            Ok((403, body)) => Ok((403, body)),
            other => Err(format!("{other:?}")),
        });
        assert!(body.contains("spiffe://default/web is not allowed to reach backend"), "the 403 names the caller and why: {body}");
    }
    global.straitctl(&net, &["delete", "meshtrafficpermission", "deny-web", "--mesh", "default"]).assert_success();
    for target in &targets {
        wait_for("web allowed again", SYNC, || match http_get(&web.host, *target, "backend", "/secret.txt") {
            Ok((200, body)) if body == HTTP_SECRET => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }
    if transparent {
        transparent_proxy(&web.host, "uninstall");
    }
}

/// `strait-dp transparent-proxy install` (the default rules, inbound included, leaving the
/// sidecar's uid [`PROXY_UID`] alone) or `uninstall` on `host`; it must succeed.
fn transparent_proxy(host: &strait_multizone::Host, action: &str) {
    let mut cmd = strait_multizone::Cmd::new(strait_multizone::bin("strait-dp")).args(["transparent-proxy", action]);
    if action == "install" {
        cmd = cmd.args(["--proxy-uid", PROXY_UID]);
    }
    host.run_cmd(cmd).assert_success();
}

/// Web's sidecar for the transparent scenarios: run as [`PROXY_UID`] (so that its own
/// connections are not redirected), with an explicit outbound to backend and
/// `transparentProxying`; waits until it is ready.
fn web_as_proxy_uid(net: &Net, global: &Global, zone: &Zone) -> Sidecar {
    let host = net.host("web");
    let local = local_ip(&host);
    let spec = DataplaneSpec {
        name: "web-1".into(),
        service: "web".into(),
        address: host.addr(),
        inbound_port: WEB_INBOUND,
        app: SocketAddr::new(local, WEB_APP),
        outbounds: vec![(TO_BACKEND, "backend".into())],
        outbound_address: local,
        protocol: None,
    };
    let yaml = format!("{}    transparentProxying:\n      redirectPortOutbound: 15001\n", spec.yaml());
    sidecar_as_proxy_uid(net, global, zone, &host, "web", &yaml)
}

/// The default `transparent-proxy install` also redirects inbound TCP to the sidecar's
/// transparent inbound port (15006). A caller's mTLS connection to the workload's inbound port
/// reaches the application through the inbound of that port, which enforces permissions; a
/// plain-text connection from another host to the application's own port, which worked before
/// the install, is refused.
#[test]
fn the_default_transparent_install_requires_mtls_for_inbound_connections() {
    let net = Net::new();
    if !net.is_namespaced() {
        println!("SKIPPED transparent inbound: iptables rules need a network namespace of their own (loopback mode)");
        return;
    }
    let (global, zone) = mesh(&net);
    let host = net.host("backend");
    // The application listens on every interface: other hosts reach it until the rules are in.
    let _app = strait_multizone::sidecar::echo_server(&host, "app", SocketAddr::from(([0, 0, 0, 0], BACKEND_APP)));
    let yaml = format!(
        "type: Dataplane\nname: backend-1\nmesh: default\nspec:\n  networking:\n    address: {}\n    inbound:\n    - port: {BACKEND_INBOUND}\n      serviceAddress: 127.0.0.1\n      servicePort: {BACKEND_APP}\n      tags: {{strait.io/service: backend}}\n    transparentProxying:\n      redirectPortOutbound: 15001\n      redirectPortInbound: 15006\n",
        host.addr()
    );
    let backend = sidecar_as_proxy_uid(&net, &global, &zone, &host, "backend", &yaml);
    let web = Workload::start(&net, &global, &zone, "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")]);
    let client = net.host("plain-client");
    let app_port = SocketAddr::new(host.addr(), BACKEND_APP);
    wait_for("a plain connection to backend's application port, before the install", SYNC, || echo(&client, app_port, b"plain\n"));
    wait_for("web -> backend", SYNC, || web.call("backend", b"before\n"));

    let install =
        strait_multizone::Cmd::new(strait_multizone::bin("strait-dp")).args(["transparent-proxy", "install", "--proxy-uid", PROXY_UID]);
    host.run_cmd(install).assert_success();
    let refused = echo(&client, app_port, b"plain after the install\n");
    assert!(refused.is_err(), "a plain connection to the application port is refused once inbound is intercepted");
    wait_for("the refusal in backend's sidecar log", SYNC, || backend.proc.log().contains("refused an inbound connection").then_some(()));
    let before = counter(&backend, INBOUND_CONNECTIONS);
    wait_for("web -> backend through the transparent inbound port", SYNC, || web.call("backend", b"intercepted\n"));
    assert!(counter(&backend, INBOUND_CONNECTIONS) > before, "the call went through backend's inbound");

    // Permissions hold on the transparent inbound port as on the inbound port itself.
    global.apply(&net, "deny-web.yaml", DENY_WEB);
    wait_for("web denied", SYNC, || match web.call("backend", b"denied?\n") {
        Ok(()) => Err("still allowed".to_string()),
        Err(e) => Ok(e),
    });
    global.straitctl(&net, &["delete", "meshtrafficpermission", "deny-web", "--mesh", "default"]).assert_success();
    wait_for("web allowed again", SYNC, || web.call("backend", b"allowed\n"));

    let uninstall = strait_multizone::Cmd::new(strait_multizone::bin("strait-dp")).args(["transparent-proxy", "uninstall"]);
    host.run_cmd(uninstall).assert_success();
    wait_for("the plain connection works again after the uninstall", SYNC, || echo(&client, app_port, b"plain again\n"));
}

/// A sidecar for `yaml` on `host`, run as [`PROXY_UID`] so that its own connections are not
/// redirected; waits until it is ready.
fn sidecar_as_proxy_uid(net: &Net, global: &Global, zone: &Zone, host: &strait_multizone::Host, service: &str, yaml: &str) -> Sidecar {
    let file = net.write_file(&format!("{service}.dataplane.yaml"), yaml);
    let token = dataplane_token(net, global, service, &format!("{service}.token"));
    let uid: u32 = PROXY_UID.parse().expect("uid");
    std::os::unix::fs::chown(&token, Some(uid), Some(uid)).expect("chown the token");
    std::fs::set_permissions(net.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod the net dir");
    let admin = SocketAddr::new(local_ip(host), 9901);
    let cmd =
        Sidecar::command(zone, ZONE_DPS_PORT, &file, &token).arg("--admin-address").arg(admin.to_string()).args(["--cp-max-backoff", "2s"]);
    let proc = host.spawn_cmd(
        "strait-dp",
        cmd.wrapped("setpriv", &[&format!("--reuid={PROXY_UID}"), &format!("--regid={PROXY_UID}"), "--clear-groups"]),
    );
    let sidecar = Sidecar { host: host.clone(), proc, admin };
    sidecar.wait_ready(SIDECAR_READY);
    sidecar
}

/// One request of a [`Load`]: when it started (since the load began) and what came back (the
/// body, which names the instance, or why there is none).
#[derive(Debug, Clone)]
struct Sent {
    start: Duration,
    answer: Result<String, String>,
}

/// Open-loop HTTP load: a new `GET /who.txt` to `target` every `every`, each on its own
/// thread and connection, whatever the earlier ones are doing (a stalled endpoint does not
/// slow the load down, as it would a fixed pool of callers).
struct Load {
    began: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(host: &strait_multizone::Host, target: SocketAddr, every: Duration) -> Load {
        let began = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (host, flag, shared) = (host.clone(), stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let mut calls = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (host, shared) = (host.clone(), shared.clone());
                calls.push(std::thread::spawn(move || {
                    let start = began.elapsed();
                    let answer = match http_get(&host, target, "backend", "/who.txt") {
                        Ok((200, body)) => Ok(body),
                        Ok((status, body)) => Err(format!("{status}: {body}")),
                        Err(e) => Err(e),
                    };
                    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Sent { start, answer });
                }));
                std::thread::sleep(every);
            }
            for call in calls {
                let _ = call.join();
            }
        });
        Load { began, stop, sent, thread: Some(thread) }
    }

    /// Time since the load began.
    fn now(&self) -> Duration {
        self.began.elapsed()
    }

    /// The requests that have ended so far.
    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stops sending and waits for every request in flight to end.
    fn finish(mut self) -> Vec<Sent> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread");
        }
        self.sent()
    }
}

/// Which instance answered each request of `sent` that started in `[from, to)`, and the
/// failures, as (answers of a, answers of b, failures).
fn answers_between(sent: &[Sent], from: Duration, to: Duration) -> (Vec<&Sent>, Vec<&Sent>, Vec<&Sent>) {
    let window: Vec<&Sent> = sent.iter().filter(|s| s.start >= from && s.start < to).collect();
    let by = |who: &str| window.iter().copied().filter(|s| s.answer.as_deref() == Ok(who)).collect::<Vec<_>>();
    let failed = window.iter().copied().filter(|s| s.answer.is_err()).collect();
    (by("a"), by("b"), failed)
}

/// An endpoint that hangs (its process stopped with SIGSTOP: connections open, nothing
/// answered) under constant load: callers move to the other endpoint within a second and, as
/// the stop ends before the mesh's default 15 s request timeout, not one request fails (only
/// those already in flight to it wait). First backend a's application is stopped (its sidecar
/// still answers), then a's sidecar itself.
#[test]
fn a_stopped_endpoint_is_passed_over_at_once_under_load() {
    const STOPPED: Duration = Duration::from_millis(2500);
    const MOVE_WITHIN: Duration = Duration::from_secs(1);
    let net = Net::new();
    let (global, zone) = mesh(&net);
    let instance = |host: &str, who: &str, offset: u16| {
        let files = [("who.txt", who)];
        Workload::start_on(&net, &global, &zone, host, "backend", BACKEND_INBOUND + offset, BACKEND_APP + offset, &[], Some(&files))
    };
    let (a, _b) = (instance("backend-a", "a", 0), instance("backend-b", "b", 10));
    let web = Workload::start(&net, &global, &zone, "web", WEB_INBOUND, WEB_APP, &[(TO_BACKEND, "backend")]);
    let target = web.outbound("backend");
    let mut seen = std::collections::BTreeSet::new();
    wait_for("web's calls to reach both backend instances", SYNC, || {
        match http_get(&web.host, target, "backend", "/who.txt")? {
            (200, who) => seen.insert(who),
            other => return Err(format!("{other:?}")),
        };
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("only {seen:?} so far"))
        }
    });

    let load = Load::start(&web.host, target, Duration::from_millis(10));
    for (what, proc) in [("application", &a.app), ("sidecar", &a.sidecar.proc)] {
        // Both instances take their share before the stop.
        let before = load.now();
        wait_for(&format!("both instances to answer the load before a's {what} stops"), SYNC, || {
            let sent = load.sent();
            let (by_a, by_b, _) = answers_between(&sent, before, Duration::MAX);
            if by_a.len() >= 5 && by_b.len() >= 5 {
                Ok(())
            } else {
                Err(format!("a {}, b {}", by_a.len(), by_b.len()))
            }
        });
        let stopped_at = load.now();
        proc.pause();
        std::thread::sleep(STOPPED);
        proc.resume();
        let resumed_at = load.now();
        // Once resumed, a takes its share again (and what it held completes).
        wait_for(&format!("a to answer again after its {what} resumed"), SYNC, || {
            let sent = load.sent();
            let (by_a, _, _) = answers_between(&sent, resumed_at, Duration::MAX);
            if by_a.is_empty() {
                Err("not yet".to_owned())
            } else {
                Ok(())
            }
        });
        let sent = load.sent();
        let (held, _, _) = answers_between(&sent, stopped_at, stopped_at + STOPPED);
        let (late, by_b, failed) = answers_between(&sent, stopped_at + MOVE_WITHIN, resumed_at);
        println!(
            "FIGURE stopped-{what}: {} requests sent to it after the stop (the last {:.0} ms after), {} answered by the other instance meanwhile",
            held.len(),
            held.iter().map(|s| s.start.saturating_sub(stopped_at)).max().unwrap_or_default().as_secs_f64() * 1000.0,
            by_b.len()
        );
        assert!(late.is_empty(), "requests started more than {MOVE_WITHIN:?} after a's {what} stopped still went to it: {late:?}");
        assert!(failed.is_empty(), "requests failed while a's {what} was stopped: {failed:?}");
        assert!(by_b.len() >= 50, "b answered the load while a's {what} was stopped: {}", by_b.len());
    }
    let sent = load.finish();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.answer.is_err()).collect();
    assert!(failed.is_empty(), "no request of the {} failed: {failed:?}", sent.len());
}
