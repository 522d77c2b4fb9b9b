//! Certificates with a 20 s lifetime under constant load for 60 s: they rotate (at about 70% of
//! their life) and not one request fails: neither TCP calls on new connections nor on one held
//! open, nor HTTP requests, which share the pooled HTTP/2 connection between the sidecars until
//! a rotation replaces it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin, dataplane, echo_app, eventually, free_port, get, http_app, metric, Mesh};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn round_trip(s: &mut tokio::net::TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await, Ok(Ok(_))) && buf == msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_second_certificates_rotate_under_load_without_a_failed_request() {
    let mesh = Mesh::start().await;
    mesh.put("/meshes/default", json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"certificateLifetime": "20s"}}})).await;
    let app = echo_app().await;
    let (backend_in, web_in, web_out) = (free_port(), free_port(), free_port());
    let backend = mesh
        .sidecar("backend", "backend", &format!("type: Dataplane\nname: backend-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {backend_in}, servicePort: {app}, tags: {{strait.io/service: backend}}}}]\n"))
        .await;
    let web = mesh
        .sidecar("web", "web", &format!("type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {web_in}, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: {web_out}, tags: {{strait.io/service: backend}}}}]\n"))
        .await;
    let (api_app, api_in, web_to_api) = (http_app("api-1").await, free_port(), free_port());
    let api = mesh.sidecar("api", "api", &dataplane("api-1", "api", api_in, api_app.port, "http", &[])).await;
    let web_http =
        mesh.sidecar("web-http", "web", &dataplane("web-2", "web", free_port(), free_port(), "http", &[(web_to_api, "api")])).await;
    for s in [&backend, &web, &api, &web_http] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    eventually("a first HTTP request", async || get(&client, web_to_api, "/").await.filter(|r| r.0 == 200)).await;
    let pooled_before = metric(&web_http, "strait_dp_outbound_tunnel_connections_total").await;
    let mut held = eventually("a first connection", async || {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.ok()?;
        round_trip(&mut s, b"ping").await.then_some(s)
    })
    .await;
    let issued = |sc: &strait_dataplane::Sidecar| sc.state.identity.load().as_ref().map(|i| i.issued_at);
    let (first_web, first_backend) = (issued(&web), issued(&backend));

    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (http_ok, http_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut rotations_web = 0;
    let mut rotations_backend = 0;
    let (mut last_web, mut last_backend) = (first_web, first_backend);
    let end = Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut held_checked_at = std::collections::HashSet::new();
    // Every request of the load, each bounded by its own 5 s timeout.
    let mut load = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        sent += 1;
        while let Some(done) = load.try_join_next() {
            done.expect("a load task panicked");
        }
        // New connections at a constant rate...
        let (ok_c, failed_c) = (ok.clone(), failed.clone());
        load.spawn(async move {
            let good = match tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await {
                Ok(mut s) => round_trip(&mut s, b"request").await,
                Err(_) => false,
            };
            if good {
                ok_c.fetch_add(1, Ordering::Relaxed)
            } else {
                failed_c.fetch_add(1, Ordering::Relaxed)
            };
        });
        // ...HTTP requests over the pooled connection between sidecars...
        let (client, ok_h, failed_h) = (client.clone(), http_ok.clone(), http_failed.clone());
        load.spawn(async move {
            if get(&client, web_to_api, "/").await.is_some_and(|r| r.0 == 200) {
                ok_h.fetch_add(1, Ordering::Relaxed)
            } else {
                failed_h.fetch_add(1, Ordering::Relaxed)
            };
        });
        // ...and a connection opened before any rotation keeps carrying bytes.
        if ok.load(Ordering::Relaxed) % 25 == 0 && !held_checked_at.contains(&ok.load(Ordering::Relaxed)) {
            held_checked_at.insert(ok.load(Ordering::Relaxed));
            assert!(round_trip(&mut held, b"held").await, "the connection opened before the rotations broke");
        }
        if issued(&web) != last_web {
            rotations_web += 1;
            last_web = issued(&web);
        }
        if issued(&backend) != last_backend {
            rotations_backend += 1;
            last_backend = issued(&backend);
        }
    }
    // The last requests finish (or time out, and count as failed) before anything is counted.
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = load.join_next().await {
            done.expect("a load task panicked");
        }
    });
    joined.await.expect("every load request ends within its 5 s timeout");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let (http_ok, http_failed) = (http_ok.load(Ordering::Relaxed), http_failed.load(Ordering::Relaxed));
    let pooled = metric(&web_http, "strait_dp_outbound_tunnel_connections_total").await - pooled_before;
    let rotations_http = metric(&web_http, "strait_dp_certificate_rotations_total").await;
    assert_eq!((ok + failed, http_ok + http_failed), (sent, sent), "every request of the load was counted");
    println!("FIGURE rotation: {ok} TCP calls, {failed} failed; {http_ok} HTTP requests, {http_failed} failed; {rotations_web} rotations of web, {rotations_backend} of backend in 60 s; {pooled} pooled HTTP/2 connections opened after {rotations_http} certificates");
    assert_eq!(http_failed, 0, "no HTTP request failed during rotations");
    assert!(http_ok > 2000, "HTTP load was constant: {http_ok} requests");
    assert!(pooled >= 2.0, "rotations replaced the pooled connection ({pooled} opened)");
    assert!(pooled <= rotations_http + 2.0, "the pooled connection is replaced on rotation, not per request ({pooled} opened)");
    assert!(rotations_web >= 2 && rotations_backend >= 2, "certificates rotated: web {rotations_web}, backend {rotations_backend}");
    assert!(ok > 2000, "load was constant: {ok} requests");
    assert_eq!(failed, 0, "no request failed during rotations");
    assert!(round_trip(&mut held, b"still").await);
    for s in [web, backend, web_http, api] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}
