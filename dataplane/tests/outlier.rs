//! MeshCircuitBreaker outlier detection through real sidecars: an endpoint that hangs (its
//! application stops answering, its connections stay open) is ejected after the configured
//! number of timed-out requests, so that under constant load only those requests fail; it
//! gets traffic again once its ejection ends.

mod common;

use std::sync::atomic::Ordering;

use common::{admin, dataplane, eventually, free_port, get, http_app, metric, Mesh};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_is_ejected_after_its_timeouts_and_comes_back() {
    let mesh = Mesh::start().await;
    let (b1, b2) = (http_app("b1").await, http_app("b2").await);
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), b1.port, "http", &[])).await;
    let s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), b2.port, "http", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&s1, &s2, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    mesh.put("/meshes/default/meshtimeouts/fast", json!({"type": "MeshTimeout", "name": "fast", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"requestTimeout": "300ms"}}}]}})).await;
    mesh.put("/meshes/default/meshcircuitbreakers/eject", json!({"type": "MeshCircuitBreaker", "name": "eject", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"outlierDetection": {
            "baseEjectionTime": "2s", "maxEjectionPercent": 50, "detectors": {"localOriginFailures": {"consecutive": 2}}}}}]}})).await;
    eventually("both endpoints answer, with the policies applied", async || {
        let config = web.state.config.load_full()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        backend.policies.circuit_breaker.as_ref()?;
        backend.policies.timeout.as_ref()?;
        let mut seen = (false, false);
        for _ in 0..10 {
            let (_, body) = get(&client, web_out, "/").await?;
            seen = (seen.0 || body.starts_with("b1 "), seen.1 || body.starts_with("b2 "));
        }
        (seen == (true, true)).then_some(())
    })
    .await;

    // backend-2's application hangs: each request to it times out, until it is ejected.
    b2.delay_ms.store(60_000, Ordering::Relaxed);
    let mut failed = 0;
    let mut answered_by = Vec::new();
    for _ in 0..60 {
        match get(&client, web_out, "/").await {
            Some((200, body)) => answered_by.push(body.split(' ').next().unwrap_or_default().to_string()),
            _ => failed += 1,
        }
    }
    println!("FIGURE hung endpoint under constant load: {failed} of 60 requests failed before its ejection");
    assert!(failed <= 3, "only the requests that reached the hung endpoint before its ejection fail: {failed}");
    assert!(answered_by.iter().rev().take(40).all(|b| b == "b1"), "the last 40 went to the healthy endpoint: {answered_by:?}");
    let ejections = "strait_dp_outlier_ejections_total{direction=\"outbound\",source=\"web\",destination=\"backend\"}";
    assert!(metric(&web, ejections).await >= 1.0);

    // It recovers: once its ejection ends, it gets requests again.
    b2.delay_ms.store(0, Ordering::Relaxed);
    eventually("backend-2 to get traffic again after its ejection", async || {
        for _ in 0..10 {
            if get(&client, web_out, "/").await?.1.starts_with("b2 ") {
                return Some(());
            }
        }
        None
    })
    .await;
}

/// MeshCircuitBreaker `maxRequests`: requests beyond the limit in progress are answered 503 at
/// once, with the reason, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_requests_get_503_at_once() {
    let mesh = Mesh::start().await;
    let app = http_app("b1").await;
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), app.port, "http", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&s1, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    mesh.put("/meshes/default/meshcircuitbreakers/limit", json!({"type": "MeshCircuitBreaker", "name": "limit", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"connectionLimits": {"maxRequests": 2}}}]}})).await;
    eventually("the limit to apply", async || {
        let config = web.state.config.load_full()?;
        let breaker = config.1.outbounds.iter().find(|o| o.service == "backend")?.policies.circuit_breaker.clone()?;
        (breaker.connection_limits?.max_requests == Some(2)).then_some(())
    })
    .await;
    app.delay_ms.store(500, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let r = client.get(format!("http://127.0.0.1:{web_out}/")).send().await.unwrap();
                let (status, elapsed) = (r.status().as_u16(), started.elapsed());
                (status, r.text().await.unwrap(), elapsed)
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let overflowed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ok, overflowed.len()), (2, 4), "{results:?}");
    for (_, body, elapsed) in &overflowed {
        assert!(body.contains("maxRequests"), "{body}");
        assert!(*elapsed < std::time::Duration::from_millis(400), "answered at once, not after the backend: {elapsed:?}");
    }
    let overflows = "strait_dp_http_overflows_total{direction=\"outbound\",source=\"web\",destination=\"backend\"}";
    assert_eq!(metric(&web, overflows).await, 4.0);
}
