//! Traffic through two sidecars: the application's connection to an explicit outbound port
//! reaches the destination's application over mTLS, and MeshTrafficPermission changes made on
//! the global flip it between allowed and denied; a connection made before its destination
//! is known waits for it.

mod common;

use std::time::Duration;

use common::{admin, call, dataplane, echo_app, eventually, free_port, http_app, Mesh};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A TCP connection through the sidecars in which nothing moves is closed at the MeshTimeout
/// `idleTimeout` of its destination (an hour by default), so abandoned connections do not hold
/// descriptors forever; one that keeps talking stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tcp_connection_is_closed_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let (backend_in, web_out) = (free_port(), free_port());
    let backend = mesh
        .sidecar("backend", "backend", &format!("type: Dataplane\nname: backend-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {backend_in}, servicePort: {app}, tags: {{strait.io/service: backend}}}}]\n"))
        .await;
    let web = mesh
        .sidecar("web", "web", &format!("type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {}, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: {web_out}, tags: {{strait.io/service: backend}}}}]\n", free_port()))
        .await;
    mesh.put("/meshes/default/meshtimeouts/idle", json!({"type": "MeshTimeout", "name": "idle", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"idleTimeout": "1s"}}]}})).await;
    eventually("the idle timeout in web's configuration", async || {
        let config = web.state.served();
        let outbound = config.as_ref()?.1.outbounds.iter().find(|o| o.port == Some(web_out))?.policies.timeout.clone()?;
        (outbound.idle_timeout.map(|d| d.get()) == Some(Duration::from_secs(1))).then_some(())
    })
    .await;
    eventually("web -> backend", async || (call(("127.0.0.1", web_out), b"hello").await == b"hello").then_some(())).await;

    let mut talking = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    idle.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    idle.read_exact(&mut byte).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        talking.write_all(b"y").await.unwrap();
        talking.read_exact(&mut byte).await.expect("a talking connection stays open");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the idle connection was still open {:?} after its last byte", started.elapsed());

    // The same limit on backend's inbound (MeshTimeout `from`) closes an idle tunnel there.
    mesh.delete("/meshes/default/meshtimeouts/idle").await;
    mesh.put("/meshes/default/meshtimeouts/idle-in", json!({"type": "MeshTimeout", "name": "idle-in", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1s"}}]}})).await;
    eventually("the inbound idle timeout in backend's configuration", async || {
        let config = backend.state.served();
        let inbound = config.as_ref()?.1.inbounds.first()?.policies.timeout.first()?.conf.clone();
        (inbound.idle_timeout.map(|d| d.get()) == Some(Duration::from_secs(1))).then_some(())
    })
    .await;
    eventually("web's outbound idle timeout back to the default", async || {
        let config = web.state.served();
        let outbound = config.as_ref()?.1.outbounds.iter().find(|o| o.port == Some(web_out))?.policies.timeout.clone()?;
        (outbound.idle_timeout.map(|d| d.get()) != Some(Duration::from_secs(1))).then_some(())
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    idle.write_all(b"x").await.unwrap();
    idle.read_exact(&mut byte).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the inbound idle timeout did not close the tunnel {:?} after its last byte", started.elapsed());
    web.shutdown(Duration::from_secs(1)).await;
    backend.shutdown(Duration::from_secs(1)).await;
}

/// An application that calls through its sidecar as soon as it starts may do so before the
/// zone has sent the destination (here: before any instance of it is registered). The
/// connection waits for the destination and is answered, rather than being closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_before_its_destination_is_known_waits_for_it() {
    let mesh = Mesh::start().await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    eventually("web ready", async || (admin(&web, "/ready").await.0 == 200).then_some(())).await;
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    connection.write_all(b"GET /early HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n").await.unwrap();
    // The sidecar takes the connection at once; before, it closed it at once as well.
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), connection.read(&mut first)).await;
    assert!(early.is_err(), "the connection ended before backend existed: {early:?}");

    let app = http_app("backend").await;
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app.port, "http", &[])).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), connection.read_to_end(&mut answer)).await.expect("an answer within 20 s").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("backend GET /early"), "{answer}");
    web.shutdown(Duration::from_secs(1)).await;
    backend.shutdown(Duration::from_secs(1)).await;
}
