//! The admin server over real HTTP/1.1.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::within;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use strait_proxy_core::admin::{AdminServer, AdminState};
use strait_proxy_core::drain::DrainOutcome;
use strait_proxy_core::{Drain, Ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request on a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    within("admin response", stream.read_to_string(&mut response)).await.expect("read");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad response {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_ready_metrics_and_config_dump() {
    let ready = Ready::new();
    let cert_guard = ready.register("workload certificate");
    let mut registry = Registry::with_prefix("strait_dp");
    let requests = Counter::<u64>::default();
    registry.register("requests", "requests seen", requests.clone());
    requests.inc_by(3);
    let state = AdminState {
        ready: ready.clone(),
        registry: Arc::new(registry),
        config_dump: Arc::new(|| r#"{"mesh":"default","service":"web"}"#.to_string()),
    };
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"), state).await.expect("bind");
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0, "the bound port is reported");
    let drain = Drain::new();
    let task = tokio::spawn(server.serve(drain.watcher()));

    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "not ready while a guard is held");
    assert!(body.contains("workload certificate"), "{body}");
    drop(cert_guard);
    let (status, _) = get(addr, "/ready").await;
    assert_eq!(status, 200, "ready once every guard is dropped");

    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("strait_dp_requests_total 3"), "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text: {body}");

    let (status, body) = get(addr, "/config_dump").await;
    assert_eq!((status, body.as_str()), (200, r#"{"mesh":"default","service":"web"}"#));

    assert_eq!(get(addr, "/nope").await.0, 404);

    assert_eq!(within("drain", drain.drain(std::time::Duration::from_secs(5))).await, DrainOutcome::Completed);
    within("admin stops", task).await.expect("join");
    assert!(TcpStream::connect(addr).await.is_err(), "the admin port is closed after the drain");
}
