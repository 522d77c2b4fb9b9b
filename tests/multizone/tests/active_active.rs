//! Scenario: an active-active global, two `strait-global` replicas on one PostgreSQL, with two
//! zones under constant cross-zone traffic (the real binaries, each zone a host of its own).
//!
//! - both replicas share one admin token and say the same of every zone; a sidecar inspected
//!   through the replica that does not hold its zone's stream is answered (forwarded);
//! - `kill -9` of the replica holding both zones' streams: each zone reconnects to the other
//!   replica within 5 s and resumes from the revision it applied (no snapshot, so a policy
//!   written during the switch reaches each zone exactly once, in one delta); no request
//!   between the zones fails; every acknowledged write is still there;
//! - PostgreSQL stopped: writes are refused with a 503 that says the store is unavailable;
//!   started again: writes succeed, reach the zones, and nothing acknowledged is lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_multizone::control_plane::{Global, Zone, SYNC};
use strait_multizone::gateway::start_zones_to;
use strait_multizone::sidecar::{Traffic, Workload};
use strait_multizone::{wait_for, Net};

const WEB_INBOUND: u16 = 8001;
const WEB_APP: u16 = 9001;
const DB_INBOUND: u16 = 8003;
const DB_APP: u16 = 9003;
const TO_DB: u16 = 10012;

/// Within this, a zone whose replica died is connected to another one.
const FAILOVER: Duration = Duration::from_secs(5);

fn timeout(name: &str, seconds: u32) -> Value {
    json!({"type": "MeshTimeout", "name": name, "mesh": "default",
        "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{seconds}s")}}]}})
}

/// PUT of MeshTimeout `name` through `global`: the status and body.
fn put(global: &Global, name: &str) -> (u16, Value) {
    let url = format!("{}/meshes/default/meshtimeouts/{name}", global.server);
    match global.client.put(url).bearer_auth(&global.token).json(&timeout(name, 7)).send() {
        Ok(resp) => (resp.status().as_u16(), resp.json().unwrap_or(Value::Null)),
        Err(e) => panic!("PUT {name} through {}: {e}", global.server),
    }
}

fn names_on(global: &Global) -> Vec<String> {
    let (_, list) = global.get("/meshes/default/meshtimeouts").expect("a list");
    list["items"].as_array().expect("items").iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect()
}

/// The zone statuses as a replica shows them, without `lastSeen` (refreshed every few seconds).
fn statuses(global: &Global) -> Result<Vec<(String, Value)>, String> {
    let mut statuses = global.zone_statuses()?;
    for (_, status) in &mut statuses {
        status.as_object_mut().map(|s| s.remove("lastSeen"));
    }
    Ok(statuses)
}

fn streams(zone: &Zone) -> f64 {
    zone.metric("strait_zone_kds_streams_total").unwrap_or(0.0)
}

#[test]
fn zones_move_between_replicas_on_postgresql_without_losing_traffic_or_writes() {
    if !strait_pg_harness::available() {
        return;
    }
    let mut postgres = strait_pg_harness::start().expect("a PostgreSQL server");
    let url = postgres.url();
    let net = Net::new();
    let store = ["--store", url.as_str()];
    let g1 = Global::start_on(&net, "global", &store);
    let g2 = Global::start_on(&net, "global-2", &store);
    assert_eq!(g1.token, g2.token, "one admin token for both replicas");

    let zones = start_zones_to(&net, &g1, &[&g2], &["zone-1", "zone-2"]);
    let ((zone1, _gw1), (zone2, _gw2)) = (&zones[0], &zones[1]);
    let db = Workload::start_on(&net, &g1, zone2, "db-2", "db", DB_INBOUND, DB_APP, &[], None);
    let web = Workload::start_on(&net, &g1, zone1, "web-1", "web", WEB_INBOUND, WEB_APP, &[(TO_DB, "db")], None);
    wait_for("web (zone-1) -> db (zone-2)", SYNC, || web.call("db", b"hello db\n"));
    let traffic = Traffic::start(&web.host, web.outbound("db"), Duration::from_millis(20));

    for zone in [zone1, zone2] {
        assert_eq!(streams(zone), 1.0, "{} synced with the first replica on its list, once", zone.name);
    }
    wait_for("both replicas to say the same of the zones", SYNC, || {
        let (a, b) = (statuses(&g1)?, statuses(&g2)?);
        let connected = a.iter().filter(|(_, s)| s["connected"] == true).count();
        if a == b && connected == 2 {
            Ok(())
        } else {
            Err(format!("{a:?} vs {b:?}"))
        }
    });
    let mut acknowledged: Vec<String> = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        let (status, body) = put(if i % 2 == 0 { &g1 } else { &g2 }, &name);
        assert!(status < 300, "{name}: {status} {body}");
        acknowledged.push(name);
    }

    // A sidecar of each zone inspected through the replica that holds neither stream: it
    // forwards to the one that does (which it finds in the shared zone status).
    for (dataplane, zone, what) in [("web-1", "zone-1", "config"), ("db-2", "zone-2", "policies")] {
        for query in [format!("what={what}"), format!("what={what}&zone={zone}")] {
            let path = format!("/meshes/default/dataplanes/{dataplane}/inspect?{query}");
            let (status, body) = g2.get(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status.as_u16(), 200, "GET {path} through the second replica: {body}");
            assert_eq!((body["zone"].as_str(), body["dataplane"].as_str()), (Some(zone), Some(dataplane)), "{body}");
            assert!(body["result"].is_object(), "the zone's answer: {body}");
        }
    }
    let (status, body) = g2.get("/meshes/default/dataplanes/nobody/inspect").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.as_u16(), 404, "{body}");

    // The replica holding both zones' streams dies; a policy is written through the other.
    g1.proc.kill9();
    let killed = Instant::now();
    let (status, body) = put(&g2, "during-switch");
    assert!(status < 300, "a write through the surviving replica: {status} {body}");
    acknowledged.push("during-switch".to_owned());
    for zone in [zone1, zone2] {
        wait_for(&format!("{} to reconnect to the second replica", zone.name), FAILOVER.saturating_sub(killed.elapsed()), || {
            match (streams(zone), zone.metric("strait_zone_kds_connected")?) {
                (s, c) if s >= 2.0 && c == 1.0 => Ok(()),
                (s, c) => Err(format!("streams {s}, connected {c}")),
            }
        });
    }
    println!("FIGURE replica-failover ms={:.0}", killed.elapsed().as_secs_f64() * 1000.0);
    for zone in [zone1, zone2] {
        wait_for(&format!("{} to receive the policy written during the switch", zone.name), SYNC, || {
            zone.resource("/meshes/default/meshtimeouts/during-switch")?.ok_or_else(|| "not yet".to_owned())
        });
    }
    // Exactly once: each zone resumed from its revision and got only what it missed.
    assert_eq!(g2.metric("strait_global_kds_resumes_total"), Ok(2.0), "both zones resumed on the second replica");
    assert_eq!(g2.metric("strait_global_kds_snapshots_total"), Ok(0.0), "no zone got a snapshot (a second copy of everything)");
    let on_g2 = names_on(&g2);
    for name in &acknowledged {
        assert!(on_g2.contains(name), "acknowledged write {name} lost after the kill");
    }

    // PostgreSQL goes down: writes get a clear 503; back up, nothing acknowledged is lost.
    postgres.stop();
    let (status, body) = put(&g2, "while-down");
    assert_eq!(status, 503, "a write while the database is down: {body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("store unavailable")), "the 503 says why: {body}");
    postgres.start_again();
    wait_for("a write once PostgreSQL is back", SYNC, || match put(&g2, "after-restart") {
        (status, _) if status < 300 => Ok(()),
        (status, body) => Err(format!("{status} {body}")),
    });
    acknowledged.push("after-restart".to_owned());
    let on_g2 = names_on(&g2);
    for name in &acknowledged {
        assert!(on_g2.contains(name), "acknowledged write {name} lost after the database restart");
    }
    for zone in [zone1, zone2] {
        wait_for(&format!("{} to receive the write made after the database restart", zone.name), SYNC, || {
            zone.resource("/meshes/default/meshtimeouts/after-restart")?.ok_or_else(|| "not yet".to_owned())
        });
    }

    let report = traffic.stop();
    assert!(report.ok > 0 && report.kept_ok > 0, "traffic flowed: {report:?}");
    assert!(report.failures.is_empty(), "no request between the zones failed: {:?}", report.failures);
    drop(db);
}
