//! `strait-dp` against a real zone and global in-process: it registers, becomes ready with its
//! configuration and certificate, keeps its configuration while the zone is away, and resyncs.

mod common;

use std::time::Duration;

use common::{admin, eventually, Mesh};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_becomes_ready_and_survives_a_zone_restart() {
    let mut mesh = Mesh::start().await;
    let port = common::free_port();
    let sidecar = mesh
        .sidecar("web", "web", &format!("type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {port}, tags: {{strait.io/service: web}}}}]\n"))
        .await;

    eventually("/ready", async || (admin(&sidecar, "/ready").await.0 == 200).then_some(())).await;
    let (_, dump) = admin(&sidecar, "/config_dump").await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["config"]["identity"], "spiffe://default/web");
    assert!(dump["certificate"]["chain"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert!(!dump.to_string().contains("PRIVATE KEY"), "the key is never dumped");
    let version = dump["version"].as_u64().unwrap();

    // The zone goes away: the sidecar keeps its configuration and stays ready.
    mesh.stop_zone().await;
    assert_eq!(admin(&sidecar, "/ready").await.0, 200);
    assert_eq!(sidecar.state.config.load().as_ref().map(|c| c.0), Some(version));
    mesh.put("/meshes/default/meshtrafficpermissions/deny-all", json!({"type": "MeshTrafficPermission", "name": "deny-all", "mesh": "default", "spec": {"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}})).await;

    // It comes back: the sidecar resyncs and gets the change made meanwhile.
    mesh.start_zone().await;
    eventually("the change made while the zone was away", async || {
        let cfg = sidecar.state.served();
        serde_json::to_string(&cfg.as_ref()?.1).ok()?.contains("deny-all").then_some(())
    })
    .await;
    sidecar.shutdown(Duration::from_secs(1)).await;
    mesh.stop_zone().await;
    mesh.global.shutdown();
}
