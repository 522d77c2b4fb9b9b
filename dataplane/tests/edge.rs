//! MeshRateLimit and MeshFaultInjection through real sidecars: 100 requests at 50 a second
//! against a limit of 10 a second (the rest answered 429 with `retry-after`, or the configured
//! answer), a TCP connection rate, a 50% abort measured over 2,000 requests, a delay and a
//! bandwidth limit, each for the callers its rule selects.

mod common;

use std::time::{Duration, Instant};

use common::{call, dataplane, echo_app, eventually, free_port, get, http_app, metric, Mesh};
use serde_json::json;

fn from_policy(kind: &str, name: &str, caller: serde_json::Value, conf: serde_json::Value) -> serde_json::Value {
    json!({"type": kind, "name": name, "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": caller, "default": conf}]}})
}

/// Waits until `sidecar`'s configuration has `count` rules of `policy` (by its key in the
/// inbound's policies) on its first inbound.
async fn inbound_rules(sidecar: &strait_dataplane::Sidecar, policy: &str, count: usize) {
    eventually(&format!("{count} {policy} rules on the inbound"), async || {
        let config = sidecar.state.served()?;
        let policies = serde_json::to_value(&config.1.inbounds.first()?.policies).ok()?;
        (policies.get(policy).and_then(|p| p.as_array()).map_or(0, Vec::len) == count).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let mesh = Mesh::start().await;
    let app = http_app("backend").await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    mesh.put(
        "/meshes/default/meshratelimits/ten-a-second",
        from_policy(
            "MeshRateLimit",
            "ten-a-second",
            json!({"kind": "Mesh"}),
            json!({"local": {"http": {"requestRate": {"num": 10, "interval": "1s"}}}}),
        ),
    )
    .await;
    inbound_rules(&backend, "MeshRateLimit", 1).await;

    // 100 requests at 50 a second: about 2 s, so 2 or 3 intervals of 10 (more on a slow
    // machine, where they take longer: each interval they reach allows 10).
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let sending = Instant::now();
    let (mut allowed, mut limited) = (0, Vec::new());
    for _ in 0..100 {
        ticks.tick().await;
        let response = client.get(format!("http://127.0.0.1:{web_out}/")).send().await.unwrap();
        match response.status().as_u16() {
            200 => allowed += 1,
            429 => limited.push((response.headers().get("retry-after").cloned(), response.text().await.unwrap())),
            other => panic!("unexpected {other}"),
        }
    }
    let intervals = sending.elapsed().as_secs() + 2;
    println!("FIGURE rate limit 10/s: {allowed} of 100 requests at 50/s allowed in {:?}", sending.elapsed());
    assert!(allowed >= 10 && allowed as u64 <= 10 * intervals, "10 in each of at most {intervals} intervals: {allowed}");
    assert_eq!(allowed + limited.len(), 100);
    let (retry_after, body) = &limited[0];
    assert_eq!(retry_after.as_ref().map(|v| v.to_str().unwrap()), Some("1"), "seconds until the next interval, rounded up");
    assert!(body.contains("web is over the rate limit of backend: 10 per 1s (MeshRateLimit)"), "{body}");
    let counted = "strait_dp_rate_limited_total{direction=\"inbound\",source_service=\"web\",destination_service=\"backend\"}";
    assert_eq!(metric(&backend, counted).await, limited.len() as f64);

    // Per caller, with the answer configured: web gets 1 an hour and a 503 of its own; other
    // callers keep the limit for every caller.
    mesh.put(
        "/meshes/default/meshratelimits/web-only",
        from_policy(
            "MeshRateLimit",
            "web-only",
            json!({"kind": "MeshService", "name": "web"}),
            json!({"local": {"http": {"requestRate": {"num": 1, "interval": "1h"},
                "onRateLimit": {"status": 503, "headers": [{"name": "x-limited", "value": "yes"}], "body": "slow down"}}}}),
        ),
    )
    .await;
    inbound_rules(&backend, "MeshRateLimit", 2).await;
    let other_out = free_port();
    let other =
        mesh.sidecar("other", "other", &dataplane("other-1", "other", free_port(), free_port(), "http", &[(other_out, "backend")])).await;
    let _ = &other;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = client.get(format!("http://127.0.0.1:{web_out}/")).send().await.unwrap();
        answers.push((r.status().as_u16(), r.headers().get("x-limited").is_some(), r.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_eq!(answers[1..].to_vec(), vec![(503, true, "slow down".to_string()); 2]);
    eventually("other -> backend", async || get(&client, other_out, "/").await.filter(|r| r.0 == 200)).await;
    let _ = web;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_over_the_rate_limit_are_closed() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app, "tcp", &[])).await;
    let web_out = free_port();
    let _web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "tcp", &[(web_out, "backend")])).await;
    eventually("web -> backend over TCP", async || (call(("127.0.0.1", web_out), b"ping").await == b"ping").then_some(())).await;
    mesh.put(
        "/meshes/default/meshratelimits/two-connections",
        from_policy(
            "MeshRateLimit",
            "two-connections",
            json!({"kind": "Mesh"}),
            json!({"local": {"tcp": {"connectionRate": {"num": 2, "interval": "1h"}}}}),
        ),
    )
    .await;
    inbound_rules(&backend, "MeshRateLimit", 1).await;
    let answers: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(call(("127.0.0.1", web_out), b"ping").await == b"ping");
        }
        v
    };
    assert_eq!(answers, [true, true, false, false], "two connections an hour");
    let counted = "strait_dp_rate_limited_total{direction=\"inbound\",source_service=\"web\",destination_service=\"backend\"}";
    assert_eq!(metric(&backend, counted).await, 2.0);
}

/// An HTTP application answering 100 KiB to every request.
async fn big_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![
                        b'x';
                        100 * 1024
                    ]))))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_delay_and_slow_down_the_requests_of_the_callers_selected() {
    let mesh = Mesh::start().await;
    let app = big_app().await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app).await;
    let other_out = free_port();
    let _other =
        mesh.sidecar("other", "other", &dataplane("other-1", "other", free_port(), free_port(), "http", &[(other_out, "backend")])).await;
    eventually("other -> backend", async || get(&client, other_out, "/").await.filter(|r| r.0 == 200)).await;

    // Half of web's requests are aborted with 503, none of other's. (Without the mesh's
    // default MeshRetry, which would retry the 503s on web's side.)
    mesh.delete("/meshes/default/meshretries/mesh-retry-all-default").await;
    eventually("web without retries", async || {
        let config = web.state.served()?;
        config.1.outbounds.iter().find(|o| o.service == "backend")?.policies.retry.is_none().then_some(())
    })
    .await;
    mesh.put(
        "/meshes/default/meshfaultinjections/half",
        from_policy(
            "MeshFaultInjection",
            "half",
            json!({"kind": "MeshService", "name": "web"}),
            json!({"http": [{"abort": {"httpStatus": 503, "percentage": 50}}]}),
        ),
    )
    .await;
    inbound_rules(&backend, "MeshFaultInjection", 1).await;
    let mut aborted = 0;
    for _ in 0..2000 {
        match get(&client, web_out, "/").await.map(|r| r.0) {
            Some(503) => aborted += 1,
            Some(200) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("FIGURE fault injection 50% abort: {aborted} of 2000");
    assert!((900..=1100).contains(&aborted), "50% within ±5 points: {aborted}");
    for _ in 0..50 {
        assert_eq!(get(&client, other_out, "/").await.map(|r| r.0), Some(200), "other is not selected");
    }

    // A delay and a bandwidth limit for every request of web: 100 KiB at 1,600 kbps (200 kB/s)
    // takes about half a second, after 300 ms of delay.
    mesh.put(
        "/meshes/default/meshfaultinjections/half",
        from_policy(
            "MeshFaultInjection",
            "half",
            json!({"kind": "MeshService", "name": "web"}),
            json!({"http": [{"delay": {"value": "300ms", "percentage": 100}, "responseBandwidth": {"limit": "1600kbps", "percentage": 100}}]}),
        ),
    )
    .await;
    eventually("the delay to apply", async || {
        let config = backend.state.served()?;
        let rule = config.1.inbounds.first()?.policies.fault_injection.first()?.conf.http.first()?.delay.clone();
        rule.map(drop)
    })
    .await;
    let started = Instant::now();
    let (status, body) = get(&client, web_out, "/").await.unwrap();
    let took = started.elapsed();
    assert_eq!((status, body.len()), (200, 100 * 1024));
    println!("FIGURE fault injection delay 300ms + 100 KiB at 1600kbps: {took:?}");
    assert!(took >= Duration::from_millis(300 + 400), "delayed, then paced: {took:?}");
    assert_eq!(get(&client, other_out, "/").await.map(|r| r.1.len()), Some(100 * 1024));
    let injected_for = |caller: &str| {
        format!("strait_dp_faults_injected_total{{direction=\"inbound\",source_service=\"{caller}\",destination_service=\"backend\"}}")
    };
    assert_eq!(metric(&backend, &injected_for("other")).await, 0.0, "other is neither delayed nor paced");
    assert_eq!(metric(&backend, &injected_for("web")).await, aborted as f64 + 1.0, "every fault given to web is counted");

    // On the caller's side (`to`): web's own sidecar answers.
    mesh.put(
        "/meshes/default/meshfaultinjections/out",
        json!({"type": "MeshFaultInjection", "name": "out", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "web"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": [{"abort": {"httpStatus": 418, "percentage": 100}}]}}]}}),
    )
    .await;
    eventually("web's own sidecar to abort", async || {
        let response = client.get(format!("http://127.0.0.1:{web_out}/")).send().await.ok()?;
        (response.status() == 418 && response.headers().contains_key("x-strait-local-reply")).then_some(())
    })
    .await;
    let injected = "strait_dp_faults_injected_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    assert!(metric(&web, injected).await >= 1.0);
}

/// A MeshRateLimit on a MeshHTTPRoute: the called sidecar limits the requests that route sends
/// (its caller's sidecar names the route), by caller; other requests to the service are not
/// limited, and an application cannot claim a route it did not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_on_a_route_limits_only_that_routes_requests() {
    let mesh = Mesh::start().await;
    let app = http_app("backend").await;
    let (backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    mesh.put(
        "/meshes/default/meshhttproutes/orders",
        json!({"type": "MeshHTTPRoute", "name": "orders", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}], "default": {}}]}]}}),
    )
    .await;
    mesh.put(
        "/meshes/default/meshratelimits/orders-limit",
        json!({"type": "MeshRateLimit", "name": "orders-limit", "mesh": "default", "spec": {
            "targetRef": {"kind": "MeshHTTPRoute", "name": "orders"},
            "from": [{"targetRef": {"kind": "MeshService", "name": "web"},
                "default": {"local": {"http": {"requestRate": {"num": 3, "interval": "1h"}}}}}]}}),
    )
    .await;
    eventually("the route's limit in backend's configuration and the route in web's", async || {
        let config = backend.state.served()?;
        let limits = &config.1.inbounds.first()?.policies.route_rate_limit;
        let routed = web.state.served()?.1.outbounds.iter().find(|o| o.service == "backend")?.http_routes.len();
        (limits.contains_key("orders") && routed == 1).then_some(())
    })
    .await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&client, web_out, "/orders/1").await.unwrap().0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "3 an hour on the route");
    let (status, body) = get(&client, web_out, "/orders/2").await.unwrap();
    assert!(status == 429 && body.contains("web is over the rate limit of backend: 3 per 3600s (MeshRateLimit)"), "{status} {body}");
    // Other requests of web to backend: no limit, even with the route's header set by the application.
    for _ in 0..5 {
        let response = client.get(format!("http://127.0.0.1:{web_out}/other")).header("x-strait-route", "orders").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.contains("x-strait-route"), "the header never reaches the application: {text}");
    }
    let counted = "strait_dp_rate_limited_total{direction=\"inbound\",source_service=\"web\",destination_service=\"backend\"}";
    assert_eq!(metric(&backend, counted).await, 3.0);

    // Refused: connection limits on a route, and a route-targeted item in `to`.
    let refused = mesh
        .put_status(
            "/meshes/default/meshratelimits/bad",
            json!({"type": "MeshRateLimit", "name": "bad", "mesh": "default", "spec": {
                "targetRef": {"kind": "MeshHTTPRoute", "name": "orders"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {"tcp": {"connectionRate": {"num": 1, "interval": "1s"}}}}}]}}),
        )
        .await;
    assert_eq!(refused.0, 400, "{}", refused.1);
    assert!(refused.1.contains("spec.from[0].default.local.tcp"), "{}", refused.1);
}
