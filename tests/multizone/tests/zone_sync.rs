//! Scenarios: zone sync (KDS) end to end, with the real `strait-global`, `strait-zone` and
//! `straitctl`. The global runs on host "global", zone N on host "zone-N"; zones are registered
//! with `straitctl zone register` from the global host and started with the files it writes.
//!
//! - a policy applied on the global reaches every zone, and its updates and deletion follow;
//! - zones keep serving what they have while the global is down (also across a zone restart),
//!   reconnect when it is back, and a zone stopped meanwhile resumes from its revision;
//! - a dead zone goes offline, and its services leave the other zones only after the grace period;
//! - bad, revoked and duplicate zones are refused, and a zone's NACK is shown on the global.
//!
//! Assertions are on REST answers (the global's `/zones`, the zones' read-only API); log lines
//! are only extra evidence. Measured latencies are printed as `FIGURE <name> ms=<n>` lines
//! (nextest shows them with `--no-capture` or `--success-output immediate`).
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`).

use std::fs;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use strait_multizone::control_plane::{start_zone, Global, Zone, ZoneArgs, SYNC};
use strait_multizone::{holds_for, wait_for, wait_for_every, Net};

/// Polling pace while measuring a latency.
const MEASURE_EVERY: Duration = Duration::from_millis(5);

/// Counters of the global: full snapshots sent, and streams resumed without one.
const SNAPSHOTS: &str = "strait_global_kds_snapshots_total";
const RESUMES: &str = "strait_global_kds_resumes_total";

const MESH: &str = "type: Mesh\nname: default\n";
/// REST path of the MeshTrafficPermission of [`allow_web`], the same on the global and the zones.
const ALLOW_WEB: &str = "/meshes/default/meshtrafficpermissions/allow-web";

/// A MeshTrafficPermission `allow-web` with the given action.
fn allow_web(action: &str) -> String {
    format!(
        "type: MeshTrafficPermission\nname: allow-web\nmesh: default\nspec:\n  targetRef: {{kind: MeshService, name: web}}\n  \
         from:\n    - targetRef: {{kind: Mesh}}\n      default: {{action: {action}}}\n"
    )
}

/// A MeshTimeout `name` with the given idle timeout.
fn timeout(name: &str, idle: &str) -> String {
    format!(
        "type: MeshTimeout\nname: {name}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: Mesh}}\n      \
         default: {{idleTimeout: {idle}}}\n"
    )
}

/// A MeshLoadBalancingStrategy `name` that spreads requests to service backend at random.
fn load_balancing(name: &str) -> String {
    format!(
        "type: MeshLoadBalancingStrategy\nname: {name}\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    \
         - targetRef: {{kind: MeshService, name: backend}}\n      default:\n        loadBalancer: {{type: Random}}\n"
    )
}

/// The action of the first `from` rule of a MeshTrafficPermission.
fn action(resource: &Value) -> Option<&str> {
    resource.pointer("/spec/from/0/default/action").and_then(Value::as_str)
}

/// Milliseconds with one decimal, for `FIGURE` lines (local hops often take under 1 ms).
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Waits until every zone serves `path` (`None`: does not serve it) as `expected` says.
fn wait_all_serve(zones: &[&Zone], path: &str, what: &str, expected: impl Fn(Option<&Value>) -> bool) {
    wait_for(&format!("every zone to serve {path} {what}"), SYNC, || {
        for zone in zones {
            let got = zone.resource(path)?;
            if !expected(got.as_ref()) {
                return Err(format!("zone {} serves {got:?}", zone.name));
            }
        }
        Ok(())
    });
}

/// How long a change took to reach the zones, from the moment its write returned.
struct Propagation {
    /// Until every zone's REST API served the change.
    served: Duration,
    /// Until the global showed every zone's `ackedRevision` at or past the change's revision.
    acked: Duration,
}

impl Propagation {
    /// Polls (every [`MEASURE_EVERY`]) every zone's `path` until it is as `expected` says, and
    /// the global's `/zones` until each zone acknowledged `revision`.
    fn measure(
        global: &Global,
        zones: &[&Zone],
        since: Instant,
        revision: u64,
        path: &str,
        expected: impl Fn(Option<&Value>) -> bool,
    ) -> Self {
        let (mut served, mut acked) = (None, None);
        let what = format!("every zone to serve the change of {path} and to ACK revision {revision}");
        wait_for_every(&what, SYNC, MEASURE_EVERY, || {
            if served.is_none() {
                let mut lagging = Vec::new();
                for zone in zones {
                    if !expected(zone.resource(path)?.as_ref()) {
                        lagging.push(zone.name.as_str());
                    }
                }
                if lagging.is_empty() {
                    served = Some(since.elapsed());
                } else {
                    return Err(format!("not served yet by {lagging:?}"));
                }
            }
            if acked.is_none() {
                let statuses = global.zone_statuses()?;
                let behind: Vec<String> = zones
                    .iter()
                    .filter_map(|z| {
                        let s = statuses.iter().find(|(n, _)| *n == z.name).map(|(_, s)| s);
                        let ack = s.and_then(|s| s["ackedRevision"].as_u64()).unwrap_or(0);
                        (ack < revision).then(|| format!("{} acked {ack}", z.name))
                    })
                    .collect();
                if behind.is_empty() {
                    acked = Some(since.elapsed());
                } else {
                    return Err(format!("served everywhere, but ACKs are behind: {behind:?}"));
                }
            }
            Ok::<_, String>(())
        });
        Propagation { served: served.expect("set before success"), acked: acked.expect("set before success") }
    }

    /// Prints both figures for the change called `change`.
    fn print(&self, change: &str, zones: usize) {
        println!("FIGURE {change} write->all-{zones}-zones-serve ms={}", ms(self.served));
        println!("FIGURE {change} write->all-{zones}-zones-acked ms={}", ms(self.acked));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_reaches_every_zone() {
    let net = Net::new();
    let global = Global::start(&net, &[]);
    let owned: Vec<Zone> = ["zone-1", "zone-2", "zone-3"].iter().map(|name| start_zone(&net, &global, name, &[])).collect();
    let zones: Vec<&Zone> = owned.iter().collect();
    for zone in &zones {
        global.assert_online(&zone.name);
    }
    global.apply(&net, "mesh.yaml", MESH);
    wait_all_serve(&zones, "/meshes/default", "(the mesh)", |m| m.is_some());

    // Create.
    global.apply(&net, "allow-web.yaml", &allow_web("Allow")).assert_stdout_contains("meshtrafficpermission/allow-web created");
    let since = Instant::now();
    let created = global.version(ALLOW_WEB);
    let p = Propagation::measure(&global, &zones, since, created, ALLOW_WEB, |r| r.and_then(action) == Some("Allow"));
    p.print("policy-create", zones.len());
    for zone in &zones {
        let got = zone.resource(ALLOW_WEB).unwrap_or_else(|e| panic!("{e}")).expect("served");
        assert_eq!(
            (got["type"].as_str(), got["name"].as_str(), got["mesh"].as_str()),
            (Some("MeshTrafficPermission"), Some("allow-web"), Some("default")),
            "{got:#}"
        );
        assert_eq!(got.pointer("/spec/targetRef/name"), Some(&json!("web")), "zone {} serves {got:#}", zone.name);
    }

    // Update.
    global.apply(&net, "allow-web.yaml", &allow_web("Deny")).assert_stdout_contains("meshtrafficpermission/allow-web configured");
    let since = Instant::now();
    let updated = global.version(ALLOW_WEB);
    assert!(updated > created, "an update must bump the version ({created} -> {updated})");
    let p = Propagation::measure(&global, &zones, since, updated, ALLOW_WEB, |r| r.and_then(action) == Some("Deny"));
    p.print("policy-update", zones.len());

    // Delete. Its revision is not returned; it is past the update's, and nothing else is
    // written meanwhile, so an ACK past `updated` is the ACK of the deletion.
    global.straitctl(&net, &["delete", "meshtrafficpermission", "allow-web", "--mesh", "default"]).assert_success();
    let since = Instant::now();
    let p = Propagation::measure(&global, &zones, since, updated + 1, ALLOW_WEB, |r| r.is_none());
    p.print("policy-delete", zones.len());
    let (status, _) = global.get(ALLOW_WEB).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, StatusCode::NOT_FOUND, "the global no longer has it either");

    // The operator's view agrees: every zone online, everything sent acknowledged.
    let list = global.straitctl(&net, &["zone", "list"]);
    list.assert_success();
    println!("{}", list.stdout);
    for zone in &zones {
        let row = list.stdout.lines().find(|l| l.split_whitespace().next() == Some(zone.name.as_str()));
        let row = row.unwrap_or_else(|| panic!("no row for {} in: {list}", zone.name));
        assert!(row.contains("Online"), "{} must be Online: {row}", zone.name);
    }
    for (name, status) in global.zone_statuses().unwrap_or_else(|e| panic!("{e}")) {
        assert_eq!(status["ackedRevision"], status["sentRevision"], "zone {name} acknowledged all it was sent: {status}");
    }
}

#[test]
fn zones_survive_a_global_outage() {
    let net = Net::new();
    let global = Global::start(&net, &[]);
    let zone1 = start_zone(&net, &global, "zone-1", &[]);
    let zone2 = start_zone(&net, &global, "zone-2", &[]);
    let both = [&zone1, &zone2];
    global.apply(&net, "allow-web.yaml", &format!("{MESH}---\n{}", allow_web("Allow")));
    wait_all_serve(&both, ALLOW_WEB, "(Allow)", |r| r.and_then(action) == Some("Allow"));

    // The global crashes: zones keep serving what they have, and stay ready.
    global.proc.kill9();
    let serving = |zone: &Zone| -> Result<(), String> {
        match (zone.readyz()?, zone.resource(ALLOW_WEB)?) {
            (StatusCode::OK, Some(r)) if action(&r) == Some("Allow") => Ok(()),
            (ready, r) => Err(format!("zone {}: readyz {ready}, allow-web {r:?}", zone.name)),
        }
    };
    // Evidence that the zones noticed the outage, so the checks below happen during it.
    for zone in both {
        wait_for(&format!("zone {} to notice the global is gone", zone.name), SYNC, || {
            (zone.metric("strait_zone_kds_connected") == Ok(0.0)).then_some(())
        });
    }
    holds_for("both zones serving allow-web and ready with the global down", Duration::from_secs(6), || {
        both.iter().try_for_each(|z| serving(z))
    });

    // Zone-1 restarts while the global is still down: it serves from its disk.
    zone1.proc.restart();
    zone1.wait_ready();
    serving(&zone1).unwrap_or_else(|e| panic!("after a restart with the global down: {e}"));
    assert!(global.proc.exit_status().is_some(), "the global must still be down");
    assert_eq!(zone1.metric("strait_zone_kds_connected"), Ok(0.0), "zone-1 cannot be connected to a dead global");

    // The global comes back (same data dir, same ports): both zones reconnect.
    global.proc.start_again();
    global.wait_ready();
    let back = Instant::now();
    for zone in both {
        global.wait_connected(&zone.name, true, SYNC);
    }
    println!("FIGURE global-restart->both-zones-online ms={}", ms(back.elapsed()));
    global.apply(&net, "timeout-a.yaml", &timeout("timeout-a", "30s"));
    let timeout_a = "/meshes/default/meshtimeouts/timeout-a";
    wait_all_serve(&both, timeout_a, "(30s)", |r| r.and_then(|r| r.pointer("/spec/to/0/default/idleTimeout")) == Some(&json!("30s")));

    // Zone-2 is stopped, a change is made, zone-2 starts again: it catches up by resuming.
    let metric = |name: &str| global.metric(name).unwrap_or_else(|e| panic!("{e}"));
    let (snapshots, resumes) = (metric(SNAPSHOTS), metric(RESUMES));
    let snapshots_before = global.log_lines_with(&["sent snapshot", "zone=zone-2"]);
    let resumes_before = global.log_lines_with(&["resuming zone from its revision", "zone=zone-2"]);
    zone2.proc.terminate();
    global.wait_connected("zone-2", false, SYNC);
    global.apply(&net, "timeout-a.yaml", &timeout("timeout-a", "45s"));
    let changed = global.version(timeout_a);
    zone2.proc.start_again();
    let restarted = Instant::now();
    wait_all_serve(&[&zone2], timeout_a, "(45s)", |r| r.and_then(|r| r.pointer("/spec/to/0/default/idleTimeout")) == Some(&json!("45s")));
    println!("FIGURE zone-restart->caught-up ms={}", ms(restarted.elapsed()));
    global.wait_connected("zone-2", true, SYNC);
    wait_for("the global to show zone-2's ACK of the change", SYNC, || {
        let s = global.zone_status("zone-2")?;
        (s["ackedRevision"].as_u64().unwrap_or(0) >= changed).then_some(()).ok_or_else(|| format!("status {s}"))
    });
    serving(&zone1).unwrap_or_else(|e| panic!("zone-1 after the global came back: {e}"));
    // The global resumed zone-2 from its revision instead of sending a new snapshot (metrics;
    // the log, which names the zone, says the same).
    assert_eq!(metric(SNAPSHOTS), snapshots, "no snapshot may be sent when zone-2 comes back");
    assert!(metric(RESUMES) > resumes, "zone-2's stream must be resumed");
    assert_eq!(global.log_lines_with(&["sent snapshot", "zone=zone-2"]), snapshots_before, "zone-2 must resume, not get a new snapshot");
    assert!(
        global.log_lines_with(&["resuming zone from its revision", "zone=zone-2"]) > resumes_before,
        "the global must log zone-2's resume"
    );
}

#[test]
fn dead_zone_goes_offline_and_its_services_leave_after_the_grace_period() {
    const GRACE: Duration = Duration::from_secs(15);
    let net = Net::new();
    let global = Global::start(&net, &["--zone-grace-period", "15s"]);
    let zone1 = start_zone(&net, &global, "zone-1", &[]);
    let zone2 = start_zone(&net, &global, "zone-2", &[]);
    global.apply(&net, "mesh.yaml", MESH);
    wait_all_serve(&[&zone1, &zone2], "/meshes/default", "(the mesh)", |m| m.is_some());

    let address = format!("{}", zone2.host.addr());
    zone2.put_dataplane("web-1", &address, "web");
    let web_in_zone2 =
        |zone: &Zone| -> Result<bool, String> { Ok(zone.services_of("zone-2")?.is_some_and(|s| s.contains(&"web".to_owned()))) };
    wait_for("zone-1 to list service web in zone-2", SYNC, || web_in_zone2(&zone1)?.then_some(()).ok_or("not yet".to_owned()));
    assert_eq!(global.zone_status("zone-2").map(|s| s.pointer("/inventory/services").cloned()), Ok(Some(json!(1))));

    zone2.proc.kill9();
    let killed = Instant::now();
    let offline = global.wait_connected("zone-2", false, Duration::from_secs(30));
    println!("FIGURE zone-kill9->global-shows-offline ms={}", ms(offline));

    // Zone-2's services stay in zone-1's view during the grace period (zone-1 stays online)...
    holds_for(
        "zone-2's web in zone-1's view during the first half of the grace period",
        (GRACE / 2).saturating_sub(killed.elapsed()),
        || {
            if !global.is_online("zone-1")? {
                return Err("zone-1 went offline".to_owned());
            }
            web_in_zone2(&zone1)?.then_some(()).ok_or_else(|| "zone-1 no longer lists web in zone-2".to_owned())
        },
    );
    // ...and leave after it.
    wait_for("zone-2's web to leave zone-1's view after the grace period", GRACE + Duration::from_secs(15), || {
        if !global.is_online("zone-1")? {
            return Err("zone-1 went offline".to_owned());
        }
        if web_in_zone2(&zone1)? {
            Err(format!("still listed {:.1?} after the kill", killed.elapsed()))
        } else {
            Ok(())
        }
    });
    let gone = killed.elapsed();
    println!("FIGURE zone-kill9->services-leave-other-zones ms={} (grace {}s)", ms(gone), GRACE.as_secs());
    // The global counts the grace period from zone-2's last message (a heartbeat at most 1 s
    // before the kill); earlier than that would be a bug.
    assert!(gone >= GRACE - Duration::from_secs(2), "zone-2's services left after {gone:?}, before the grace period of {GRACE:?}");
    global.assert_online("zone-1");
    assert!(zone1.services_of("zone-1").unwrap_or_else(|e| panic!("{e}")).is_some(), "zone-1's own inventory stays");
    let status = global.zone_status("zone-2").unwrap_or_else(|e| panic!("{e}"));
    assert!(status.get("inventory").is_none_or(|i| i["services"] == 0), "the global dropped zone-2's inventory too: {status}");
}

#[test]
fn bad_tokens_are_refused_and_nacks_are_shown() {
    let net = Net::new();
    let global = Global::start(&net, &[]);
    a_garbage_token_is_refused(&net, &global);
    let zone1 = a_revoked_zone_is_refused_until_registered_again(&net, &global);
    a_second_process_of_a_connected_zone_is_refused(&net, &global, &zone1);
    a_disabled_policy_type_is_nacked_and_shown(&net, &global, &zone1);
}

/// Part (a): a zone started with a garbage token is refused: never online, never ready.
fn a_garbage_token_is_refused(net: &Net, global: &Global) {
    let creds = global.register_zone(net, "zone-3", "zone-3-creds");
    let bad = net.mkdir("zone-3-bad-creds");
    fs::copy(creds.join("global-ca.pem"), bad.join("global-ca.pem")).expect("copy the CA bundle");
    fs::write(bad.join("zone-token"), "not-a-token\n").expect("write a garbage token");
    let args = ZoneArgs { zone: "zone-3".into(), creds: bad.clone(), data: net.mkdir("zone-3-data"), extra: Vec::new() };
    let host = net.host("zone-3");
    let zone3 = Zone::spawn(global, &host, "strait-zone", &args);
    wait_for_refusal(&zone3, "zone token refused");
    holds_for("zone-3 (garbage token) staying disconnected and unready", Duration::from_secs(5), || {
        let status = global.zone_status("zone-3")?;
        if status["connected"] == true {
            return Err(format!("the global shows zone-3 connected: {status}"));
        }
        match zone3.readyz()? {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(format!("zone-3's /readyz answered {other}, not 503")),
        }
    });
    assert!(global.log_lines_with(&["zone refused", "zone token refused"]) > 0, "the global logs why it refused zone-3");
    zone3.proc.terminate();

    // Whoever holds a gateway host has the zone-proxy token, not the zone token: presented as
    // a zone token it opens no sync stream, so no intermediate CA of any mesh.
    fs::copy(creds.join("zone-proxy-token"), bad.join("zone-token")).expect("copy the zone-proxy token");
    let args = ZoneArgs { zone: "zone-3".into(), creds: bad, data: net.mkdir("zone-3-data-proxy"), extra: Vec::new() };
    let zone3 = Zone::spawn(global, &host, "strait-zone-with-proxy-token", &args);
    wait_for_refusal(&zone3, "zone-proxy token");
    assert_eq!(
        global.zone_status("zone-3").unwrap_or_else(|e| panic!("{e}"))["connected"],
        false,
        "zone-3 connected with a zone-proxy token"
    );
    zone3.proc.terminate();
}

/// Part (b): revoking zone-1 closes its stream at once and it stays refused; registered again,
/// it comes back with its new token. Returns the zone-1 now running.
fn a_revoked_zone_is_refused_until_registered_again(net: &Net, global: &Global) -> Zone {
    let zone1 = start_zone(net, global, "zone-1", &[]);
    global.apply(net, "mesh-for-revoke.yaml", MESH);
    let old_ca = wait_for("zone-1's intermediate CA of mesh default", SYNC, || intermediate(&zone1));
    global.straitctl(net, &["zone", "revoke", "zone-1"]).assert_success();
    let offline = global.wait_connected("zone-1", false, Duration::from_secs(5));
    println!("FIGURE zone-revoke->global-shows-offline ms={}", ms(offline));
    // The closed stream is retried, and the retries are refused.
    wait_for_refusal(&zone1, "revoked or replaced");
    holds_for("revoked zone-1 staying disconnected", Duration::from_secs(5), || {
        if global.is_online("zone-1")? {
            Err("the global shows revoked zone-1 connected".to_owned())
        } else {
            Ok(())
        }
    });

    zone1.proc.terminate();
    let creds = global.register_zone(net, "zone-1", "zone-1-creds-2");
    let args = ZoneArgs { zone: "zone-1".into(), creds, data: zone1.data.clone(), extra: Vec::new() };
    let zone1 = Zone::spawn(global, &zone1.host, "strait-zone-new-token", &args);
    zone1.wait_ready();
    global.wait_connected("zone-1", true, SYNC);
    // Its old intermediate was revoked with it: the zone gets a new one.
    wait_for("a new intermediate CA for zone-1", SYNC, || {
        intermediate(&zone1).and_then(|f| if f != old_ca { Ok(f) } else { Err("still the revoked one".into()) })
    });
    zone1
}

/// The fingerprint of the zone's intermediate CA of mesh `default`.
fn intermediate(zone: &Zone) -> Result<String, String> {
    let (_, body) = zone.get("/intermediates")?;
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["mesh"] == "default"))
        .and_then(|i| i["fingerprint"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("no intermediate yet: {body}"))
}

/// Part (c): a second process for connected zone `first`, with a valid token and a fresh data
/// dir, is refused; the first keeps its stream.
fn a_second_process_of_a_connected_zone_is_refused(net: &Net, global: &Global, first: &Zone) {
    let args = ZoneArgs { zone: first.name.clone(), creds: first.creds.clone(), data: net.mkdir("zone-1-twin-data"), extra: Vec::new() };
    let twin = Zone::spawn(global, &net.host("zone-1-twin"), "strait-zone", &args);
    wait_for_refusal(&twin, "already connected");
    let first_peer = global.zone_status(&first.name).unwrap_or_else(|e| panic!("{e}"))["peer"].clone();
    holds_for("zone-1 staying online and its twin unready", Duration::from_secs(5), || {
        let status = global.zone_status(&first.name)?;
        if status["connected"] != true || status["peer"] != first_peer {
            return Err(format!("zone-1's status changed: {status}"));
        }
        match (twin.readyz()?, twin.metric("strait_zone_kds_connected")?) {
            (StatusCode::SERVICE_UNAVAILABLE, 0.0) => Ok(()),
            (ready, connected) => Err(format!("the twin: readyz {ready}, connected {connected}")),
        }
    });
    if net.is_namespaced() {
        let peer = first_peer.as_str().unwrap_or_default();
        assert!(peer.starts_with(&format!("{}:", first.host.addr())), "the stream must still be zone-1's own, from its host: {peer}");
    }
    twin.proc.terminate();
    global.assert_online(&first.name);
}

/// Part (d): a zone that disables MeshLoadBalancingStrategy NACKs it and applies the rest; the global
/// (`/zones`, `straitctl zone list`) shows the NACK until the resource is deleted. `other` is a
/// zone without disabled types.
fn a_disabled_policy_type_is_nacked_and_shown(net: &Net, global: &Global, other: &Zone) {
    let zone2 = start_zone(net, global, "zone-2", &["--disabled-policy-types", "MeshLoadBalancingStrategy"]);
    global.apply(net, "policies.yaml", &format!("{MESH}---\n{}---\n{}", load_balancing("chaos"), timeout("timeouts", "1h")));
    let (chaos, timeouts) = ("/meshes/default/meshloadbalancingstrategies/chaos", "/meshes/default/meshtimeouts/timeouts");
    wait_all_serve(&[other, &zone2], timeouts, "(the MeshTimeout)", |r| r.is_some());
    wait_all_serve(&[other], chaos, "(the load-balancing strategy, in a zone that allows it)", |r| r.is_some());
    let nack = wait_for("the global to show zone-2's NACK", SYNC, || {
        let status = global.zone_status("zone-2")?;
        nack_errors(&status).into_iter().find(|e| e.contains("MeshLoadBalancingStrategy")).ok_or_else(|| format!("status: {status}"))
    });
    println!("zone-2's NACK as the global shows it: {nack}");
    assert_eq!(zone2.resource(chaos), Ok(None), "zone-2 must not serve the strategy it refused");
    assert!(zone2.resource(timeouts).unwrap_or_else(|e| panic!("{e}")).is_some(), "zone-2 applies the rest");
    let other_status = global.zone_status(&other.name).unwrap_or_else(|e| panic!("{e}"));
    assert!(nack_errors(&other_status).is_empty(), "{} NACKs nothing: {other_status}", other.name);

    let listed = global.straitctl(net, &["zone", "list", "-o", "json"]).assert_success().json();
    let item = listed["items"].as_array().into_iter().flatten().find(|z| z["name"] == "zone-2").cloned().unwrap_or(Value::Null);
    assert!(
        nack_errors(&item["status"]).iter().any(|e| e.contains("MeshLoadBalancingStrategy")),
        "zone list -o json must show zone-2's NACK: {item:#}"
    );
    let table = global.straitctl(net, &["zone", "list"]);
    table.assert_success();
    println!("{}", table.stdout);
    let row = table.stdout.lines().find(|l| l.starts_with("zone-2 ")).unwrap_or_else(|| panic!("no zone-2 row: {table}"));
    assert!(
        row.contains("Online") && row.contains("MeshLoadBalancingStrategy"),
        "zone-2's row must be Online and name the refused type: {row}"
    );

    // Deleting the refused resource clears the NACK.
    global.straitctl(net, &["delete", "meshloadbalancingstrategy", "chaos", "--mesh", "default"]).assert_success();
    wait_for("zone-2's NACK to clear once the strategy is deleted", SYNC, || {
        let status = global.zone_status("zone-2")?;
        nack_errors(&status).is_empty().then_some(()).ok_or_else(|| format!("status: {status}"))
    });
}

/// Waits until `zone` logs that the global refused it, with `reason` in the same line (extra
/// evidence beside the REST checks: the status code and message are only in the log).
fn wait_for_refusal(zone: &Zone, reason: &str) {
    let what = format!("zone {} ({}) to log a refusal for {reason:?}", zone.name, zone.host.name());
    wait_for(&what, SYNC, || {
        zone.proc.assert_running(&what);
        zone.proc.log().lines().any(|l| l.contains("the global control plane refused this zone") && l.contains(reason)).then_some(())
    });
}

/// The `nackErrors` of a zone status (empty when absent).
fn nack_errors(status: &Value) -> Vec<String> {
    status["nackErrors"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(str::to_owned)).collect()
}

/// A zone that stops answering without closing its connection (frozen with SIGSTOP, as a
/// partition would look) is marked offline by the heartbeat timeout, and comes back by itself.
#[test]
fn a_silent_zone_goes_offline_by_heartbeat_and_comes_back() {
    let net = Net::new();
    let global = Global::start(&net, &[]);
    let zone1 = start_zone(&net, &global, "zone-1", &[]);
    let pid = zone1.proc.pid().expect("zone-1 runs").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let offline = global.wait_connected("zone-1", false, Duration::from_secs(30));
    println!("FIGURE zone-silent->global-shows-offline ms={}", ms(offline));
    signal("-CONT");
    let back = global.wait_connected("zone-1", true, Duration::from_secs(30));
    println!("FIGURE zone-resumed->online-again ms={}", ms(back));
}
