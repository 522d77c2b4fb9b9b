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
        let config = web.state.served()?;
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
    let ejections = "strait_dp_outlier_ejections_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
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
        let config = web.state.served()?;
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
    let overflows = "strait_dp_overflows_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    assert_eq!(metric(&web, overflows).await, 4.0);
}

/// `maxRequestsPerConnection`: a pooled connection between the sidecars is replaced after
/// that many requests, and no request fails for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_is_replaced_after_max_requests_per_connection() {
    let mesh = Mesh::start().await;
    let app = http_app("b1").await;
    let (_backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    let opened = async || metric(&web, "strait_dp_outbound_tunnel_connections_total").await;
    let before = opened().await;
    for _ in 0..20 {
        assert_eq!(get(&client, web_out, "/").await.map(|r| r.0), Some(200));
    }
    assert_eq!(opened().await, before, "without a limit, the pooled connection carries them all");
    mesh.put("/meshes/default/meshcircuitbreakers/per-connection", json!({"type": "MeshCircuitBreaker", "name": "per-connection", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"connectionLimits": {"maxRequestsPerConnection": 5}}}]}})).await;
    eventually("the limit to apply", async || {
        let config = web.state.served()?;
        let breaker = config.1.outbounds.iter().find(|o| o.service == "backend")?.policies.circuit_breaker.clone()?;
        (breaker.connection_limits?.max_requests_per_connection == Some(5)).then_some(())
    })
    .await;
    let before = opened().await;
    for _ in 0..20 {
        assert_eq!(get(&client, web_out, "/").await.map(|r| r.0), Some(200));
    }
    let new = opened().await - before;
    assert!((4.0..=5.0).contains(&new), "20 requests, 5 per connection: {new} connections opened");
}

/// An HTTP application that answers `<name> ...` with 200, or 500 to every other request while
/// `failing` is set.
async fn half_failing_app(name: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = (failing.clone(), count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (failing, count) = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    let fail = failing.load(Ordering::SeqCst) && count.fetch_add(1, Ordering::SeqCst) % 2 == 0;
                    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{name} answered")));
                    let status = if fail { 500 } else { 200 };
                    async move { Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(body).unwrap()) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    (port, failing)
}

/// MeshCircuitBreaker `failurePercentage`: every `interval`, an endpoint whose share of failed
/// requests reaches the threshold (with enough requests, and enough endpoints judged) is
/// ejected, though it never fails twice in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_half_its_requests_is_ejected_by_the_failure_percentage() {
    let mesh = Mesh::start().await;
    // Only this test's detector: no consecutive-failure defaults, no retries hiding failures.
    mesh.delete("/meshes/default/meshcircuitbreakers/mesh-circuit-breaker-all-default").await;
    mesh.delete("/meshes/default/meshretries/mesh-retry-all-default").await;
    let ((p1, _), (p2, failing)) = (half_failing_app("b1").await, half_failing_app("b2").await);
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), p1, "http", &[])).await;
    let s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), p2, "http", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    mesh.put("/meshes/default/meshcircuitbreakers/share", json!({"type": "MeshCircuitBreaker", "name": "share", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"outlierDetection": {
            "interval": "1s", "baseEjectionTime": "30s", "maxEjectionPercent": 50,
            "detectors": {"failurePercentage": {"threshold": 30, "requestVolume": 10, "minimumHosts": 2}}}}}]}})).await;
    let client = reqwest::Client::new();
    eventually("the detector in web's configuration, and both endpoints answering", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        let detectors = backend.policies.circuit_breaker.clone()?.outlier_detection?.detectors?;
        (detectors.failure_percentage.is_some() && detectors.total_failures.is_none() && backend.endpoints.len() == 2).then_some(())?;
        get(&client, web_out, "/").await.filter(|r| r.0 == 200)
    })
    .await;
    failing.store(true, Ordering::SeqCst);
    let ejections = "strait_dp_outlier_ejections_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    let mut failures = 0;
    eventually("backend-2 to be ejected at the end of an interval", async || {
        for _ in 0..20 {
            if get(&client, web_out, "/").await?.0 != 200 {
                failures += 1;
            }
        }
        (metric(&web, ejections).await >= 1.0).then_some(())
    })
    .await;
    println!("FIGURE failure percentage: {failures} failed requests before the ejection");
    for _ in 0..30 {
        let (status, body) = get(&client, web_out, "/").await.expect("an answer");
        assert_eq!((status, body.as_str()), (200, "b1 answered"), "once ejected, backend-2 gets no requests");
    }
    for s in [web, s1, s2] {
        s.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// MeshCircuitBreaker `maxConnections` (pooled HTTP/2 connections between the sidecars) and
/// `maxPendingRequests` (requests waiting for a connection to be opened): beyond them, 503 at
/// once with the reason, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_pending_requests_beyond_their_limits_get_503_at_once() {
    let mesh = Mesh::start().await;
    let (b1, b2) = (http_app("b1").await, http_app("b2").await);
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), b1.port, "http", &[])).await;
    let s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), b2.port, "http", &[])).await;
    let web_out = free_port();
    let limits = |limits: serde_json::Value| {
        json!({"type": "MeshCircuitBreaker", "name": "limits", "mesh": "default",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"connectionLimits": limits}}]}})
    };
    // Set before web's sidecar starts: no connection to either endpoint is open yet.
    mesh.put("/meshes/default/meshcircuitbreakers/limits", limits(json!({"maxConnections": 1}))).await;
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    eventually("the limit and both endpoints in web's configuration", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        let max = backend.policies.circuit_breaker.clone()?.connection_limits?.max_connections;
        (max == Some(1) && backend.endpoints.len() == 2).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let overflows = "strait_dp_overflows_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let (status, body) = get(&client, web_out, "/").await.expect("an answer");
        if status == 200 {
            ok.push(body)
        } else {
            refused.push((status, body))
        }
    }
    let served: std::collections::BTreeSet<&str> = ok.iter().map(|b| b.split(' ').next().unwrap_or_default()).collect();
    assert_eq!(served.len(), 1, "one connection, so one endpoint serves: {served:?}");
    assert!(!refused.is_empty(), "picks of the other endpoint would need a second connection");
    for (status, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("maxConnections"), "{body}");
    }
    assert!(metric(&web, overflows).await >= refused.len() as f64);

    // maxPendingRequests 1: of a burst of requests to a fresh connection, those that arrive
    // while another waits for it to open are refused.
    mesh.put("/meshes/default/meshcircuitbreakers/limits", limits(json!({"maxPendingRequests": 1}))).await;
    let fresh_out = free_port();
    let fresh = mesh.sidecar("web-2", "web", &dataplane("web-2", "web", free_port(), free_port(), "http", &[(fresh_out, "backend")])).await;
    eventually("the pending limit in the new sidecar's configuration", async || {
        let config = fresh.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        let max = backend.policies.circuit_breaker.clone()?.connection_limits?.max_pending_requests;
        (max == Some(1) && backend.endpoints.len() == 2).then_some(())
    })
    .await;
    let burst: Vec<_> =
        (0..40).map(|_| tokio::spawn(async move { get(&reqwest::Client::new(), fresh_out, "/").await.expect("an answer") })).collect();
    let mut answers = Vec::new();
    for call in burst {
        answers.push(call.await.unwrap());
    }
    let pending: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s == 503).collect();
    println!("FIGURE a burst of 40 to fresh connections, maxPendingRequests 1: {} refused", pending.len());
    assert!(answers.iter().any(|(s, _)| *s == 200), "the first request opens the connection");
    assert!(!pending.is_empty(), "requests arriving while one waits for the connection are refused");
    assert!(pending.iter().all(|(_, b)| b.contains("maxPendingRequests")), "{pending:?}");
    for s in [web, fresh, s1, s2] {
        s.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// An HTTP application answering `<name> answered` on every path but `/healthz`, which answers
/// 503 while `sick` is set.
async fn app_with_health(name: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let sick = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let flag = sick.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sick = flag.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let status = if request.uri().path() == "/healthz" && sick.load(Ordering::SeqCst) { 503 } else { 200 };
                    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{name} answered")));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::builder().status(status).body(body).unwrap()) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    (port, sick)
}

/// A TCP application that answers `pong <name>` to `ping`, or closes the connection at once
/// while `sick` is set.
async fn pong_app(name: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sick = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let flag = sick.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            if flag.load(Ordering::SeqCst) {
                continue;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(format!("pong {name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, sick)
}

/// MeshHealthCheck: an endpoint whose health check fails leaves the pool (though its other
/// requests would still succeed: the check, not a failure, takes it out) and comes back once
/// it passes; for TCP, a tunnel that must answer the expected bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_unhealthy_endpoint_out_and_bring_it_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    let ((p1, _), (p2, sick)) = (app_with_health("b1").await, app_with_health("b2").await);
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), p1, "http", &[])).await;
    let s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), p2, "http", &[])).await;
    let ((t1, _), (t2, tcp_sick)) = (pong_app("t1").await, pong_app("t2").await);
    let d1 = mesh.sidecar("db-1", "db", &dataplane("db-1", "db", free_port(), t1, "tcp", &[])).await;
    let d2 = mesh.sidecar("db-2", "db", &dataplane("db-2", "db", free_port(), t2, "tcp", &[])).await;
    let (web_out, db_out) = (free_port(), free_port());
    let web = mesh
        .sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend"), (db_out, "db")]))
        .await;
    let check = |service: &str, conf: serde_json::Value| {
        json!({"type": "MeshHealthCheck", "name": format!("check-{service}"), "mesh": "default",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": service}, "default": conf}]}})
    };
    let base = json!({"interval": "200ms", "timeout": "1s", "unhealthyThreshold": 2, "healthyThreshold": 1});
    let mut http_check = base.clone();
    http_check["http"] = json!({"path": "/healthz"});
    let mut tcp_check = base;
    tcp_check["tcp"] = json!({"send": "ping\n", "receive": ["pong"]});
    mesh.put("/meshes/default/meshhealthchecks/check-backend", check("backend", http_check)).await;
    mesh.put("/meshes/default/meshhealthchecks/check-db", check("db", tcp_check)).await;
    eventually("both checks and all endpoints in web's configuration", async || {
        let config = web.state.served()?;
        let ready =
            |s: &str| config.1.outbounds.iter().any(|o| o.service == s && o.policies.health_check.is_some() && o.endpoints.len() == 2);
        (ready("backend") && ready("db")).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let who = async |n: usize| {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let (status, body) = get(&client, web_out, "/").await?;
            assert_eq!(status, 200, "{body}");
            *seen.entry(body).or_insert(0) += 1;
        }
        Some(seen)
    };
    eventually("both HTTP endpoints answer", async || (who(20).await?.len() == 2).then_some(())).await;

    // backend-2's health endpoint fails: the checks take it out, though `/` still works there.
    sick.store(true, Ordering::SeqCst);
    eventually("backend-2 out of the pool", async || (who(20).await? == [("b1 answered".to_string(), 20)].into()).then_some(())).await;
    sick.store(false, Ordering::SeqCst);
    eventually("backend-2 back once its check passes", async || (who(20).await?.len() == 2).then_some(())).await;

    // TCP: db-2 stops answering; the check (ping, expect pong) takes it out.
    let pong = async || -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", db_out)).await.ok()?;
        s.write_all(b"ping\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    };
    eventually("both TCP endpoints answer", async || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(pong().await?);
        }
        (seen.len() == 2).then_some(())
    })
    .await;
    tcp_sick.store(true, Ordering::SeqCst);
    eventually("db-2 out of the pool", async || {
        for _ in 0..20 {
            if pong().await? != "pong t1" {
                return None;
            }
        }
        Some(())
    })
    .await;
    for s in [web, s1, s2, d1, d2] {
        s.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
