//! Traffic through two sidecars: the application's connection to an explicit outbound port
//! reaches the destination's application over mTLS, and MeshTrafficPermission changes made on
//! the global flip it between allowed and denied.

mod common;

use std::time::Duration;

use common::{admin, call, echo_app, eventually, free_port, Mesh};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_outbound_over_mtls_and_permissions_flip_it() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let (backend_in, web_in, web_out) = (free_port(), free_port(), free_port());
    let backend = mesh
        .sidecar("backend", "backend", &format!("type: Dataplane\nname: backend-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {backend_in}, servicePort: {app}, tags: {{strait.io/service: backend}}}}]\n"))
        .await;
    let web = mesh
        .sidecar("web", "web", &format!("type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {web_in}, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: {web_out}, tags: {{strait.io/service: backend}}}}]\n"))
        .await;
    for s in [&backend, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    eventually("web -> backend through both sidecars", async || (call(("127.0.0.1", web_out), b"hello").await == b"hello").then_some(()))
        .await;

    // The payload never crosses between the sidecars in the clear: the backend inbound refuses plaintext.
    assert_ne!(call(("127.0.0.1", backend_in), b"hello").await, b"hello", "a plaintext client cannot use the mTLS inbound");

    mesh.put("/meshes/default/meshtrafficpermissions/deny-web", json!({"type": "MeshTrafficPermission", "name": "deny-web", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}})).await;
    eventually("the deny to take effect", async || (call(("127.0.0.1", web_out), b"hello").await != b"hello").then_some(())).await;
    let (_, metrics) = admin(&backend, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("strait_dp_inbound_tunnel_denied") && !l.ends_with(" 0")),
        "denials are counted:\n{metrics}"
    );

    mesh.delete("/meshes/default/meshtrafficpermissions/deny-web").await;
    eventually("allowed again", async || (call(("127.0.0.1", web_out), b"again").await == b"again").then_some(())).await;
    web.shutdown(Duration::from_secs(1)).await;
    backend.shutdown(Duration::from_secs(1)).await;
}
