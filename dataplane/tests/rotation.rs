//! Every certificate short-lived under constant load for 60 s: workload certificates (20 s,
//! capped by the zone's intermediate), the zone's intermediate CA (8 s), the global's zone
//! sync (KDS) server certificate and the zone's DPS server certificate (4 s each). Each one
//! renews itself (at about 70% of its own life) and not one request fails: neither TCP calls
//! on new connections nor on one held open, nor HTTP requests, which reuse the pooled
//! connections between sidecars until a rotation replaces them; and no control-plane stream is
//! dropped: every sidecar and the zone keep the one stream they opened.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{admin, dataplane, echo_app, eventually, free_port, get, http_app, metric, scrape, server_fingerprint, Mesh};
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
async fn every_certificate_renews_itself_under_load_without_a_failed_request_or_a_dropped_stream() {
    let mesh = Mesh::start_with(
        |global| {
            global.kds_certificate_lifetime = Duration::from_secs(4);
            global.zone_ca_lifetime = Duration::from_secs(8);
        },
        &["--dps-certificate-lifetime", "4s"],
    )
    .await;
    let zone = mesh.zone.as_ref().unwrap();
    let (kds_addr, kds_ca, dps_addr, dps_ca) =
        (mesh.global.kds_addr, mesh.global.ca_bundle.clone(), zone.dps_addr, zone.dps_ca_pem.clone());
    let zone_store = zone.store().clone();
    let zone_metrics = format!("http://{}/metrics", zone.api_addr);
    let intermediate = async || strait_zone_cp::zone_ca::get(zone_store.as_ref(), "default").await.ok().flatten().map(|(cert, _, _)| cert);
    let mut seen_kds = std::collections::HashSet::new();
    let mut seen_dps = std::collections::HashSet::new();
    let mut seen_intermediates = std::collections::HashSet::new();
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
    // HTTP requests in flight, and the most there ever were: each takes a pooled HTTP/1.1
    // connection of its own while it lasts, so a slow moment opens more than one.
    let (in_flight, most_in_flight) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
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
        let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
        load.spawn(async move {
            most_in_flight.fetch_max(in_flight.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            let good = get(&client, web_to_api, "/").await.is_some_and(|r| r.0 == 200);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            if good {
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
        // ...while the control planes' certificates are looked at twice a second.
        if sent.is_multiple_of(25) {
            seen_kds.extend(server_fingerprint(kds_addr, &kds_ca, "strait-global").await);
            seen_dps.extend(server_fingerprint(dps_addr, &dps_ca, "strait-zone").await);
            seen_intermediates.extend(intermediate().await);
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
    let most_in_flight = most_in_flight.load(Ordering::SeqCst) as f64;
    println!("FIGURE rotation: {ok} TCP calls, {failed} failed; {http_ok} HTTP requests, {http_failed} failed; {rotations_web} rotations of web, {rotations_backend} of backend in 60 s; {pooled} pooled HTTP/1.1 connections opened after {rotations_http} certificates, at most {most_in_flight} requests at once");
    assert_eq!(http_failed, 0, "no HTTP request failed during rotations");
    assert!(http_ok > 2000, "HTTP load was constant: {http_ok} requests");
    assert!(pooled >= 2.0, "rotations replaced the pooled connections ({pooled} opened)");
    // A connection is opened only when every one made with the current certificate is busy:
    // per certificate, at most one per request in flight at once, however many requests.
    let bound = (rotations_http + 2.0) * most_in_flight;
    assert!(
        pooled <= bound,
        "pooled connections are replaced on rotation, not per request: {pooled} opened, more than {bound} ({rotations_http} certificates, at most {most_in_flight} requests at once)"
    );
    assert!(pooled < http_ok as f64 / 10.0, "pooled connections carry many requests each: {pooled} opened for {http_ok}");
    assert!(rotations_web >= 2 && rotations_backend >= 2, "certificates rotated: web {rotations_web}, backend {rotations_backend}");
    assert!(ok > 2000, "load was constant: {ok} requests");
    assert_eq!(failed, 0, "no request failed during rotations");
    assert!(round_trip(&mut held, b"still").await);
    println!(
        "FIGURE rotation: {} KDS server, {} DPS server and {} intermediate certificates seen in 60 s",
        seen_kds.len(),
        seen_dps.len(),
        seen_intermediates.len()
    );
    assert!(seen_kds.len() >= 3, "the KDS server certificate renewed itself: {} seen", seen_kds.len());
    assert!(seen_dps.len() >= 3, "the DPS server certificate renewed itself: {} seen", seen_dps.len());
    assert!(seen_intermediates.len() >= 3, "the zone's intermediate CA renewed itself: {} seen", seen_intermediates.len());
    for s in [&web, &backend, &web_http, &api] {
        assert_eq!(metric(s, "strait_dp_control_plane_streams_total").await, 1.0, "a sidecar's DPS stream was dropped");
    }
    assert_eq!(scrape(&zone_metrics, "strait_zone_kds_streams_total").await, 1.0, "the zone's sync stream was dropped");
    for s in [web, backend, web_http, api] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// The workload certificate belongs to the sidecar, not to its stream: when the zone control
/// plane restarts, the sidecar reconnects and keeps the certificate it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_to_the_zone_mints_no_new_certificate() {
    let mut mesh = Mesh::start().await;
    let app = echo_app().await;
    let sidecar = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app, "tcp", &[])).await;
    eventually("the sidecar ready", async || (admin(&sidecar, "/ready").await.0 == 200).then_some(())).await;
    let fingerprint = |sc: &strait_dataplane::Sidecar| {
        sc.state.identity.load().as_ref().map(|i| strait_pki::fingerprint(&i.cert_chain_pem).unwrap_or_default())
    };
    let before = fingerprint(&sidecar).expect("a certificate");
    assert_eq!(metric(&sidecar, "strait_dp_control_plane_streams_total").await, 1.0);
    mesh.stop_zone().await;
    mesh.start_zone().await;
    eventually("the sidecar back on a new stream", async || {
        (metric(&sidecar, "strait_dp_control_plane_streams_total").await >= 2.0).then_some(())
    })
    .await;
    // The old client sent a CSR as its first message on every stream, answered within
    // milliseconds: watch for a second's worth that no new certificate arrives.
    let window = Instant::now() + Duration::from_secs(1);
    while Instant::now() < window {
        assert_eq!(fingerprint(&sidecar).as_deref(), Some(before.as_str()), "a reconnection minted a new certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&sidecar, "strait_dp_certificate_rotations_total").await, 1.0);
    sidecar.shutdown(Duration::from_secs(1)).await;
}
