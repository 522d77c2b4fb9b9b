//! HTTP through two sidecars: the application's HTTP/1.1 requests cross between sidecars over
//! pooled HTTP/1.1 mTLS connections (one per request in flight, reused), its HTTP/2 (gRPC)
//! requests over one pooled HTTP/2 mTLS connection; requests are balanced per request across
//! the destination's endpoints, are authorised per request (a permission change applies to
//! the pooled connection at once, with a 403 that names the caller and the reason), and are
//! counted by source, destination and status.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{admin, dataplane, eventually, free_port, get, http_app, metric, Mesh};
use http_body_util::BodyExt;
use serde_json::json;

fn deny_web() -> serde_json::Value {
    json!({"type": "MeshTrafficPermission", "name": "deny-web", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Deny"}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_pooled_authorised_per_request_and_counted() {
    let mesh = Mesh::start().await;
    let backend_app = http_app("backend-1").await;
    let app = backend_app.port;
    let (backend_in, web_in, web_out) = (free_port(), free_port(), free_port());
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", backend_in, app, "http", &[])).await;
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", web_in, free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&backend, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    let (status, body) =
        eventually("web -> backend over HTTP", async || get(&client, web_out, "/orders?id=7").await.filter(|r| r.0 == 200)).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("backend-1 GET /orders host=127.0.0.1:"),
        "the application sees the path and the Host the client sent: {body}"
    );

    // A request body crosses both sidecars.
    let posted = client.post(format!("http://127.0.0.1:{web_out}/upload")).body(vec![b'x'; 100_000]).send().await.unwrap();
    assert_eq!(posted.text().await.unwrap().rsplit(' ').next(), Some("body=100000"));

    // HTTP/1.1 between the sidecars: each request in flight has a connection of its own...
    let app_delay = backend_app.delay_ms.clone();
    app_delay.store(300, Ordering::Relaxed);
    let slow: Vec<_> =
        (0..8).map(|_| tokio::spawn(async move { get(&reqwest::Client::new(), web_out, "/slow").await.map(|r| r.0) })).collect();
    for call in slow {
        assert_eq!(call.await.unwrap(), Some(200));
    }
    app_delay.store(0, Ordering::Relaxed);
    let active = "strait_dp_outbound_tunnel_active_connections";
    assert_eq!(metric(&web, active).await, 8.0, "8 requests at once, 8 HTTP/1.1 connections between the sidecars (HTTP/2 would have one)");
    // ...and many requests, from several application connections, reuse them.
    let opened = metric(&web, "strait_dp_outbound_tunnel_connections_total").await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let client = reqwest::Client::new();
        calls.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(get(&client, web_out, "/").await.map(|r| r.0), Some(200));
            }
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(metric(&web, "strait_dp_outbound_tunnel_connections_total").await, opened, "200 requests opened no new connection");
    let ok = metric(
        &web,
        "strait_dp_http_requests_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\",status=\"200\"}",
    )
    .await;
    assert!(ok >= 210.0, "outbound requests are counted by source, destination and status: {ok}");
    let inbound_ok = metric(
        &backend,
        "strait_dp_http_requests_total{direction=\"inbound\",source_service=\"web\",destination_service=\"backend\",status=\"200\"}",
    )
    .await;
    assert_eq!(inbound_ok, ok, "the inbound side counts the same requests");
    assert!(metric(&backend, "strait_dp_http_request_body_bytes_total{direction=\"inbound\",source_service=\"web\"").await >= 100_000.0);
    assert!(metric(&web, "strait_dp_http_request_duration_seconds_count{direction=\"outbound\"").await >= 210.0);
    assert!(metric(&web, "strait_dp_certificate_expiry_timestamp_seconds").await > 1.7e9);

    // A deny applies to the next request on the same pooled connection, with a reason.
    mesh.put("/meshes/default/meshtrafficpermissions/deny-web", deny_web()).await;
    let denied = eventually("a 403", async || get(&client, web_out, "/orders").await.filter(|r| r.0 == 403)).await;
    assert!(denied.1.contains("spiffe://default/web is not allowed to reach backend (MeshTrafficPermission)"), "{denied:?}");
    assert!(
        metric(
            &backend,
            "strait_dp_http_denied_requests_total{direction=\"inbound\",source_service=\"web\",destination_service=\"backend\"}"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &web,
            "strait_dp_http_requests_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\",status=\"403\"}"
        )
        .await
            >= 1.0
    );
    mesh.delete("/meshes/default/meshtrafficpermissions/deny-web").await;
    eventually("allowed again", async || get(&client, web_out, "/orders").await.filter(|r| r.0 == 200)).await;
    assert_eq!(metric(&web, "strait_dp_outbound_tunnel_connections_total").await, opened, "still the pooled connections");

    // An application connection that has sent nothing yet does not hold the drain back (its
    // first request may take a minute to come).
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), web.shutdown(Duration::from_secs(1)))
        .await
        .expect("the sidecar stops with a silent application connection open");
    eprintln!("stopped in {:?} with a silent application connection open", started.elapsed());
    drop(silent);
    backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_http2_keeps_trailers_and_requests_are_balanced() {
    let mesh = Mesh::start().await;
    let (app1, app2) = (http_app("backend-1").await, http_app("backend-2").await);
    let (in1, in2, web_in, web_out) = (free_port(), free_port(), free_port(), free_port());
    let b1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", in1, app1.port, "grpc", &[])).await;
    let b2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", in2, app2.port, "grpc", &[])).await;
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", web_in, free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&b1, &b2, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    eventually("both endpoints in web's configuration", async || {
        let config = web.state.served();
        (config.as_ref()?.1.outbounds.iter().find(|o| o.service == "backend")?.endpoints.len() == 2).then_some(())
    })
    .await;

    // An h2c client (as gRPC is) on one connection to web's outbound.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", web_out)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut answered_by = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let request = http::Request::post("http://backend/grpc")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x05hello")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap()),
            Some("0"),
            "trailers cross both sidecars"
        );
        let text = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
        assert!(text.contains("POST /grpc host=backend body=10"), "{text}");
        *answered_by.entry(text.split(' ').next().unwrap().to_string()).or_insert(0) += 1;
    }
    // Each request is balanced on its own (least request; both idle, so either), not the
    // connection: both endpoints answer a share of the 40.
    for backend in ["backend-1", "backend-2"] {
        let n = answered_by.get(backend).copied().unwrap_or(0);
        assert!(n >= 8, "balanced per request, not per connection: {answered_by:?}");
    }

    // LeastRequest: with backend-1 slow, concurrent callers mostly get backend-2.
    app1.delay_ms.store(100, std::sync::atomic::Ordering::Relaxed);
    mesh.put("/meshes/default/meshloadbalancingstrategies/least", json!({"type": "MeshLoadBalancingStrategy", "name": "least", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 2}}}}]}})).await;
    eventually("the strategy in web's configuration", async || {
        let config = web.state.served();
        serde_json::to_string(&config.as_ref()?.1).ok()?.contains("LeastRequest").then_some(())
    })
    .await;
    let counts = least_request_run(web_out).await;
    println!("FIGURE least-request: {counts:?}");
    assert!(counts.1 > counts.0 * 3, "the less loaded endpoint got most requests: backend-1 {} backend-2 {}", counts.0, counts.1);
    for s in [web, b1, b2] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// 8 concurrent callers for 2 s: returns (answers from backend-1, answers from backend-2).
/// Round robin would give both about as many; least request keeps most off the slow one.
async fn least_request_run(web_out: u16) -> (usize, usize) {
    let end = Instant::now() + Duration::from_secs(2);
    let mut callers = Vec::new();
    for _ in 0..8 {
        callers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut one, mut two) = (0, 0);
            while Instant::now() < end {
                let Some((_, body)) = get(&client, web_out, "/").await else { continue };
                if body.starts_with("backend-1") {
                    one += 1
                } else {
                    two += 1
                }
            }
            (one, two)
        }));
    }
    let mut total = (0, 0);
    for c in callers {
        let (a, b) = c.await.unwrap();
        total.0 += a;
        total.1 += b;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_timeout_cuts_slow_responses_with_a_504_or_a_reset_body() {
    let mesh = Mesh::start().await;
    let app = http_app("backend-1").await;
    let (backend_in, web_in, web_out) = (free_port(), free_port(), free_port());
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", backend_in, app.port, "http", &[])).await;
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", web_in, free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&backend, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    eventually("web -> backend", async || get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;

    mesh.put("/meshes/default/meshtimeouts/short", json!({"type": "MeshTimeout", "name": "short", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"requestTimeout": "300ms"}}}]}})).await;
    eventually("the timeout in web's configuration", async || {
        let config = web.state.served();
        serde_json::to_string(&config.as_ref()?.1).ok()?.contains("300ms").then_some(())
    })
    .await;
    app.delay_ms.store(3000, std::sync::atomic::Ordering::Relaxed);

    // No response headers in time: the sidecar answers 504 and says why.
    let started = Instant::now();
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("request timeout of 300ms"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(2500), "cut by the timeout, not by the application's 3 s: {:?}", started.elapsed());
    assert!(
        metric(
            &web,
            "strait_dp_http_requests_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\",status=\"504\"}"
        )
        .await
            >= 1.0
    );

    // Headers in time, the rest of the body not: the body is cut.
    let response = client.get(format!("http://127.0.0.1:{web_out}/stream")).send().await.expect("headers");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let body = response.text().await;
    assert!(body.is_err(), "a body not complete within the timeout must fail, got {body:?}");
    assert!(started.elapsed() < Duration::from_millis(2500), "cut by the timeout: {:?}", started.elapsed());

    // Without the policy, the default (15 s) lets a 3 s answer through.
    mesh.delete("/meshes/default/meshtimeouts/short").await;
    eventually("the default timeout back", async || {
        let config = web.state.served();
        (!serde_json::to_string(&config.as_ref()?.1).ok()?.contains("300ms")).then_some(())
    })
    .await;
    let (status, _) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 200);
    for s in [web, backend] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// The rest of MeshTimeout: `streamIdleTimeout` (waiting for the headers counts; a body that
/// stalls is cut), `maxStreamDuration`, `maxConnectionDuration` (the pooled connection between
/// the sidecars is replaced) and, on the inbound (`from`), `requestTimeout` answered 504 by the
/// server's sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_timeout_stream_limits_connection_lifetime_and_inbound_timeouts() {
    let mesh = Mesh::start().await;
    let app = http_app("backend-1").await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    let to_backend = |http: serde_json::Value| {
        json!({"type": "MeshTimeout", "name": "t", "mesh": "default",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": http}}]}})
    };
    let applied = async |sidecar: &strait_dataplane::Sidecar, needle: &str| {
        eventually(&format!("{needle} in the sidecar's configuration"), async || {
            let config = sidecar.state.served();
            serde_json::to_string(&config.as_ref()?.1).ok()?.contains(needle).then_some(())
        })
        .await
    };

    // streamIdleTimeout: no headers for 1 s is idle; a body that stalls for 1 s is cut; one
    // whose frames come every 100 ms is not.
    mesh.put("/meshes/default/meshtimeouts/t", to_backend(json!({"requestTimeout": "0s", "streamIdleTimeout": "300ms"}))).await;
    applied(&web, "\"streamIdleTimeout\":\"300ms\"").await;
    app.delay_ms.store(1000, Ordering::Relaxed);
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("stream idle timeout of 300ms (MeshTimeout http.streamIdleTimeout)"), "{body}");
    let response = client.get(format!("http://127.0.0.1:{web_out}/stream")).send().await.expect("headers");
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err(), "a body that stalls past the stream idle timeout is cut");
    app.delay_ms.store(100, Ordering::Relaxed);
    let response = client.get(format!("http://127.0.0.1:{web_out}/stream")).send().await.expect("headers");
    assert_eq!(response.text().await.expect("a body that keeps moving"), "first rest");

    // maxStreamDuration: the whole exchange, whatever the request timeout says.
    mesh.put("/meshes/default/meshtimeouts/t", to_backend(json!({"requestTimeout": "10s", "maxStreamDuration": "400ms"}))).await;
    applied(&web, "\"maxStreamDuration\":\"400ms\"").await;
    app.delay_ms.store(1000, Ordering::Relaxed);
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("stream duration limit of 400ms (MeshTimeout http.maxStreamDuration)"), "{body}");
    app.delay_ms.store(0, Ordering::Relaxed);

    // maxConnectionDuration: the pooled connection to backend is replaced once 500 ms old;
    // requests go on without a failure.
    let opened = "strait_dp_outbound_tunnel_connections_total";
    let before = metric(&web, opened).await;
    for _ in 0..15 {
        assert_eq!(get(&client, web_out, "/").await.expect("an answer").0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&web, opened).await - before <= 1.0, "without the limit, one pooled connection serves them all");
    mesh.put("/meshes/default/meshtimeouts/t", to_backend(json!({"maxConnectionDuration": "500ms"}))).await;
    applied(&web, "\"maxConnectionDuration\":\"500ms\"").await;
    let before = metric(&web, opened).await;
    for _ in 0..15 {
        assert_eq!(get(&client, web_out, "/").await.expect("an answer").0, 200, "no request fails as connections are replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replaced = metric(&web, opened).await - before;
    assert!(replaced >= 2.0, "1.5 s of requests over connections that live 500 ms: {replaced} opened");
    mesh.delete("/meshes/default/meshtimeouts/t").await;

    // Inbound: backend's sidecar answers 504 when its application is slower than its
    // MeshTimeout `from` allows, whatever the callers' own timeouts.
    mesh.put("/meshes/default/meshtimeouts/inbound", json!({"type": "MeshTimeout", "name": "inbound", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "300ms"}}}]}})).await;
    applied(&backend, "\"requestTimeout\":\"300ms\"").await;
    app.delay_ms.store(1000, Ordering::Relaxed);
    let (status, body) = get(&client, web_out, "/").await.expect("an answer");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within the request timeout of 300ms (MeshTimeout http.requestTimeout), inbound"), "{body}");
    for s in [web, backend] {
        s.shutdown(Duration::from_secs(1)).await;
    }
}

/// Which instance answers each of 300 users (header `x-user`), asked twice: a user always
/// gets the same one.
async fn placement(client: &reqwest::Client, web_out: u16) -> Vec<String> {
    let mut placed = Vec::new();
    for user in 0..300 {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let r = client.get(format!("http://127.0.0.1:{web_out}/")).header("x-user", format!("user-{user}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            answers.push(r.text().await.unwrap().split(' ').next().unwrap().to_string());
        }
        assert_eq!(answers[0], answers[1], "user-{user} stays on one endpoint");
        placed.push(answers.remove(0));
    }
    placed
}

/// MeshLoadBalancingStrategy RingHash and Maglev by a header: each key stays on one endpoint,
/// keys spread over all of them, and when an endpoint comes (ring) or goes (Maglev) only
/// about 1/N of the keys move, to or from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_keeps_each_key_on_one_endpoint_and_moves_few_when_endpoints_change() {
    let mesh = Mesh::start().await;
    let apps = [http_app("backend-1").await, http_app("backend-2").await, http_app("backend-3").await];
    let backend = |i: usize| dataplane(&format!("backend-{}", i + 1), "backend", free_port(), apps[i].port, "http", &[]);
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    let mut backends =
        vec![mesh.sidecar("backend-1", "backend", &backend(0)).await, mesh.sidecar("backend-2", "backend", &backend(1)).await];
    let endpoints = async |n: usize| {
        eventually(&format!("{n} backend endpoints in web's configuration"), async || {
            let config = web.state.served();
            (config.as_ref()?.1.outbounds.iter().find(|o| o.service == "backend")?.endpoints.len() == n).then_some(())
        })
        .await
    };
    let strategy = async |kind: &str, field: &str| {
        mesh.put(
            "/meshes/default/meshloadbalancingstrategies/hash",
            json!({"type": "MeshLoadBalancingStrategy", "name": "hash", "mesh": "default",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"loadBalancer": {"type": kind, field: {"hashPolicies": [{"type": "Header", "name": "x-user"}]}}}}]}}),
        )
        .await;
        eventually(&format!("{kind} in web's configuration"), async || {
            let config = web.state.served();
            serde_json::to_string(&config.as_ref()?.1).ok()?.contains(&format!("\"{kind}\"")).then_some(())
        })
        .await;
    };
    let client = reqwest::Client::new();
    endpoints(2).await;
    eventually("web -> backend", async || get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;
    let count = |placed: &[String], who: &str| placed.iter().filter(|p| *p == who).count();

    // RingHash: a third endpoint takes about a third of the keys, from the others only.
    strategy("RingHash", "ringHash").await;
    let before = placement(&client, web_out).await;
    assert!(
        count(&before, "backend-1") >= 90 && count(&before, "backend-2") >= 90,
        "keys spread: {:?}",
        (count(&before, "backend-1"), count(&before, "backend-2"))
    );
    backends.push(mesh.sidecar("backend-3", "backend", &backend(2)).await);
    endpoints(3).await;
    let after = placement(&client, web_out).await;
    let moved: Vec<(&String, &String)> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    println!("FIGURE ring hash, 2 -> 3 endpoints: {} of 300 keys moved", moved.len());
    assert!(moved.iter().all(|(_, a)| *a == "backend-3"), "keys move only to the new endpoint: {moved:?}");
    assert!((60..=140).contains(&moved.len()), "about a third of the keys move: {}", moved.len());

    // Maglev: the keys of an endpoint that leaves move; the others stay.
    strategy("Maglev", "maglev").await;
    let before = placement(&client, web_out).await;
    let on_3 = count(&before, "backend-3");
    assert!((60..=140).contains(&on_3), "about a third of the keys on each endpoint: {on_3} on backend-3");
    backends.pop().unwrap().shutdown(Duration::from_secs(1)).await;
    endpoints(2).await;
    let after = placement(&client, web_out).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let stray = before.iter().zip(&after).filter(|(b, a)| b != a && *b != "backend-3").count();
    println!("FIGURE maglev, 3 -> 2 endpoints: {moved} of 300 keys moved ({on_3} were on the one that left)");
    assert!(stray <= 15, "keys of the remaining endpoints stay where they were: {stray} moved");
    assert!(after.iter().all(|a| a != "backend-3"));
    for s in backends.into_iter().chain([web]) {
        s.shutdown(Duration::from_secs(1)).await;
    }
}
