//! MeshAccessLog through real sidecars: the caller's sidecar writes a JSON line per request
//! to a file, the server's sidecar sends a plain line per request to a TCP collector, each with
//! the request's method, path, status, services, zones, bytes and trace id; a TCP connection
//! gets a line once it has closed, with its bytes; a dead collector costs nothing but dropped
//! lines.

mod common;

use std::sync::{Arc, Mutex};

use common::{call, dataplane, echo_app, eventually, free_port, http_app, metric, Mesh};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// A TCP collector on 127.0.0.1: the lines it received.
async fn collector() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    seen.lock().unwrap().push(line);
                }
            });
        }
    });
    (address, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_connections_are_logged_on_both_sides() {
    let mesh = Mesh::start().await;
    let app = http_app("backend").await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    let file = mesh.dir.path().join("web-access.log");
    let (collector, received) = collector().await;
    mesh.put(
        "/meshes/default/meshaccesslogs/web-out",
        json!({"type": "MeshAccessLog", "name": "web-out", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"backends": [{"file": {"path": file.to_str().unwrap(),
                "format": {"json": [
                    {"key": "method", "value": "%METHOD%"}, {"key": "path", "value": "%PATH%"}, {"key": "status", "value": "%RESPONSE_CODE%"},
                    {"key": "from", "value": "%SOURCE_SERVICE%@%SOURCE_ZONE%"}, {"key": "to", "value": "%DESTINATION_SERVICE%@%DESTINATION_ZONE%"},
                    {"key": "sent", "value": "%BYTES_SENT%"}, {"key": "trace", "value": "%TRACE_ID%"}, {"key": "direction", "value": "%DIRECTION%"}]}}}]}}]}}),
    )
    .await;
    mesh.put(
        "/meshes/default/meshaccesslogs/backend-in",
        json!({"type": "MeshAccessLog", "name": "backend-in", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"tcp": {"address": collector,
                "format": {"plain": "%DIRECTION% %SOURCE_SERVICE% %DESTINATION_SERVICE% %METHOD% %PATH% %RESPONSE_CODE% %BYTES_RECEIVED% %TRACE_ID%"}}}]}}]}}),
    )
    .await;
    eventually("both logs in the sidecars' configurations", async || {
        let (w, b) = (web.state.served()?, backend.state.served()?);
        let out = w.1.outbounds.iter().find(|o| o.service == "backend")?.policies.access_log.is_some();
        let inb = !b.1.inbounds.first()?.policies.access_log.is_empty();
        (out && inb).then_some(())
    })
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = client
        .post(format!("http://127.0.0.1:{web_out}/orders?id=7"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("twelve bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.text().await.unwrap();

    let line = eventually("web's JSON line", async || {
        let text = std::fs::read_to_string(&file).ok()?;
        text.lines().find(|l| l.contains("/orders")).map(str::to_string)
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        line,
        json!({"method": "POST", "path": "/orders?id=7", "status": 200, "from": "web@zone-1", "to": "backend@zone-1",
            "sent": answer.len(), "trace": trace, "direction": "outbound"})
    );
    let plain =
        eventually("backend's line at the collector", async || received.lock().unwrap().iter().find(|l| l.contains("/orders")).cloned())
            .await;
    assert_eq!(plain, format!("inbound web backend POST /orders?id=7 200 12 {trace}"));

    // A dead collector: requests go on, lines are dropped and counted.
    mesh.put(
        "/meshes/default/meshaccesslogs/backend-in",
        json!({"type": "MeshAccessLog", "name": "backend-in", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": [{"tcp": {"address": format!("127.0.0.1:{}", free_port())}}]}}]}}),
    )
    .await;
    eventually("requests answered while lines to the dead collector are dropped", async || {
        let status = common::get(&client, web_out, "/").await?.0;
        assert_eq!(status, 200);
        (metric(&backend, "strait_dp_access_log_dropped_total").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_is_logged_once_it_has_closed() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app, "tcp", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "tcp", &[(web_out, "backend")])).await;
    eventually("web -> backend over TCP", async || (call(("127.0.0.1", web_out), b"ping").await == b"ping").then_some(())).await;
    let (collector, received) = collector().await;
    let plain = "%DIRECTION% %PROTOCOL% %SOURCE_SERVICE% %DESTINATION_SERVICE% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST%";
    let backends = json!([{"tcp": {"address": collector, "format": {"plain": plain}}}]);
    mesh.put(
        "/meshes/default/meshaccesslogs/all",
        json!({"type": "MeshAccessLog", "name": "all", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": backends.clone()}}],
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": backends}}]}}),
    )
    .await;
    eventually("the logs in both configurations", async || {
        let (w, b) = (web.state.served()?, backend.state.served()?);
        let out = w.1.outbounds.iter().find(|o| o.service == "backend")?.policies.access_log.is_some();
        (out && !b.1.inbounds.first()?.policies.access_log.is_empty()).then_some(())
    })
    .await;
    assert_eq!(call(("127.0.0.1", web_out), b"seventeen bytes!!").await, b"seventeen bytes!!");
    let lines = eventually("a line from each side", async || {
        let lines = received.lock().unwrap().clone();
        (lines.iter().any(|l| l.starts_with("outbound")) && lines.iter().any(|l| l.starts_with("inbound"))).then_some(lines)
    })
    .await;
    let outbound = lines.iter().find(|l| l.starts_with("outbound")).unwrap();
    assert!(outbound.starts_with("outbound tcp web backend 17 17 127.0.0.1:"), "{outbound}");
    let inbound = lines.iter().find(|l| l.starts_with("inbound")).unwrap();
    assert_eq!(inbound, &format!("inbound tcp web backend 17 17 127.0.0.1:{app}"));
}
