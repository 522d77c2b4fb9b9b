//! The sidecar contract is typed, and what a sidecar cannot apply is refused, not ignored. A
//! MeshHTTPRoute on a service that speaks TCP (which the global cannot know) reaches the
//! sidecars, and the configuration asking for it is NACKed with the reason: the configuration
//! in force stays (a MeshTimeout that came with it does not apply), the NACK shows in the
//! sidecar's and the zone's metrics and in the global's zone status (`straitctl zone list`),
//! and once the policy is gone the sidecar applies the next configuration and the NACK
//! disappears.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{admin, dataplane, eventually, free_port, get, http_app, metric, scrape, Mesh};
use serde_json::{json, Value};

async fn zone_status(mesh: &Mesh) -> Value {
    let zone: Value = mesh.http.get(format!("{}/zones/zone-1", mesh.base)).send().await.unwrap().json().await.unwrap();
    zone["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_sidecar_cannot_apply_is_nacked_and_the_previous_one_stays() {
    let mesh = Mesh::start().await;
    let app = http_app("backend-1").await;
    let (backend_in, web_out) = (free_port(), free_port());
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", backend_in, app.port, "http", &[])).await;
    let web = mesh
        .sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend"), (free_port(), "db")]))
        .await;
    for s in [&backend, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    eventually("web -> backend", async || get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;
    let applied_before = web.state.config.load().as_ref().map(|c| c.0).unwrap();

    // A route on a service that speaks TCP: the API cannot know what a service speaks, the
    // sidecar does, and cannot apply it.
    let route = json!({"type": "MeshHTTPRoute", "name": "route-db", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "db"},
        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "b"}]}}]}}]}]}});
    mesh.put("/meshes/default/meshhttproutes/route-db", route).await;
    eventually("web's NACK", async || (metric(&web, "strait_dp_config_nacks_total").await >= 1.0).then_some(())).await;
    assert_eq!(web.state.config.load().as_ref().map(|c| c.0), Some(applied_before), "the refused configuration is not in force");

    // Refused configurations keep being refused as policies change: a timeout that comes with
    // the route does not apply.
    mesh.put("/meshes/default/meshtimeouts/short", json!({"type": "MeshTimeout", "name": "short", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"requestTimeout": "200ms"}}}]}})).await;
    eventually("a second NACK", async || (metric(&web, "strait_dp_config_nacks_total").await >= 2.0).then_some(())).await;
    app.delay_ms.store(600, Ordering::Relaxed);
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 200, "the previous configuration (no timeout) is still in force: {body}");

    // The NACK is visible on the zone and on the global.
    let zone_metrics = format!("http://{}/metrics", mesh.zone.as_ref().unwrap().api_addr);
    assert!(scrape(&zone_metrics, "strait_zone_dps_config_nacks_total").await >= 2.0);
    let status = eventually("the NACK in the global's zone status", async || {
        let status = zone_status(&mesh).await;
        status.pointer("/dataplaneNacks/0").is_some().then_some(status)
    })
    .await;
    let nack = &status["dataplaneNacks"][0];
    assert_eq!((nack["mesh"].as_str(), nack["dataplane"].as_str()), (Some("default"), Some("web-1")), "{status}");
    assert!(nack["error"].as_str().unwrap().contains("MeshHTTPRoute on db, which speaks TCP"), "the reason names the policy: {nack}");

    // Without the policy it cannot apply, the sidecar takes the next configuration, timeout
    // included, and the NACK is gone.
    mesh.delete("/meshes/default/meshhttproutes/route-db").await;
    eventually("web applies a configuration again", async || {
        (web.state.config.load().as_ref().map(|c| c.0) != Some(applied_before)).then_some(())
    })
    .await;
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 504, "the timeout now applies: {body}");
    eventually("the NACK gone from the global's zone status", async || {
        zone_status(&mesh).await.pointer("/dataplaneNacks/0").is_none().then_some(())
    })
    .await;
    for s in [web, backend] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// A Deny on caller tags other than the service (`version: v2`) would never apply: the
/// receiving sidecar knows a caller only by the service its certificate proves. The API refuses
/// it naming the field; one stored anyway is refused (NACK) by the sidecar it targets, whose
/// configuration in force stays, instead of being accepted and silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_caller_tags_is_refused_not_ignored() {
    let mesh = Mesh::start().await;
    let app = http_app("backend-1").await;
    let (backend, web, _, _) = mesh.web_and_backend(app.port).await;

    let deny = json!({"type": "MeshTrafficPermission", "name": "deny-web-v2", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "MeshSubset", "tags": {"strait.io/service": "web", "version": "v2"}}, "default": {"action": "Deny"}}]}});
    let refused = mesh
        .http
        .put(format!("{}/meshes/default/meshtrafficpermissions/deny-web-v2", mesh.base))
        .bearer_auth(&mesh.admin)
        .json(&deny)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400, "the API refuses a caller rule no sidecar can match");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["details"][0]["field"], "spec.from[0].targetRef.tags", "{body}");
    assert!(body["details"][0]["message"].as_str().unwrap().contains("would never apply"), "{body}");

    let resource = strait_api::Resource::from_value(deny).unwrap();
    strait_cp_core::resources::Resources::new(mesh.global.store().clone()).put(&resource).await.unwrap();
    eventually("backend's NACK", async || (metric(&backend, "strait_dp_config_nacks_total").await >= 1.0).then_some(())).await;
    let status = eventually("the NACK in the global's zone status", async || {
        let status = zone_status(&mesh).await;
        status.pointer("/dataplaneNacks/0").is_some().then_some(status)
    })
    .await;
    let nack = &status["dataplaneNacks"][0];
    assert_eq!(nack["dataplane"], "backend-1", "{status}");
    assert!(nack["error"].as_str().unwrap().contains("version"), "the reason names the tag: {nack}");
    for s in [web, backend] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}
