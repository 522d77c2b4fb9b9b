//! MeshRetry through real sidecars: a server that fails the first two attempts succeeds
//! through retries (counted in the metrics), a POST is never sent twice while a PUT is, with
//! its body, and a failing server under concurrent load receives no more retries than the
//! budget allows. Without MeshRetry, a safe bodiless request whose connection fails with it
//! in flight goes to another endpoint.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{admin, dataplane, eventually, free_port, metric, Mesh};
use serde_json::json;

/// An HTTP application that answers 503 to the next `fail` requests (all of them while `fail`
/// is `u64::MAX`), after `delay_ms`, and 200 otherwise; `hits` counts what it received.
struct Flaky {
    port: u16,
    fail: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
}

async fn flaky_app() -> Flaky {
    let (fail, delay_ms, hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicUsize::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = (fail.clone(), delay_ms.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (fail, delay_ms, hits) = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (fail, delay_ms, hits) = (fail.clone(), delay_ms.clone(), hits.clone());
                    async move {
                        use http_body_util::BodyExt;
                        // What the request was, for the application to check that a retry is
                        // the request it sent.
                        let order = request.headers().get("x-order").and_then(|v| v.to_str().ok()).unwrap_or("-");
                        let seen = format!("{} {} {order}", request.method(), request.uri());
                        let received = request.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        hits.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst))).await;
                        let failing = fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                            0 => None,
                            u64::MAX => Some(u64::MAX),
                            n => Some(n - 1),
                        });
                        let status = if failing.is_ok() { 503 } else { 200 };
                        let text = if received > 0 { format!("flaky {received}") } else { "flaky".into() };
                        let body = http_body_util::Full::new(bytes::Bytes::from(text));
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder().status(status).header("x-seen", seen).body(body).unwrap(),
                        )
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    Flaky { port, fail, delay_ms, hits }
}

fn retry(http: serde_json::Value) -> serde_json::Value {
    json!({"type": "MeshRetry", "name": "retry", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": http}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_within_the_budget() {
    let mesh = Mesh::start().await;
    let app = flaky_app().await;
    let backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app.port, "http", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&backend, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{web_out}/");
    eventually("web -> backend", async || (client.get(&url).send().await.ok()?.status() == 200).then_some(())).await;

    // The mesh's default MeshRetry retries a 503: the application sees 200.
    app.fail.store(1, Ordering::SeqCst);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200, "the default MeshRetry retries a 503");

    // Without MeshRetry, a 503 reaches the application.
    mesh.delete("/meshes/default/meshretries/mesh-retry-all-default").await;
    eventually("the default MeshRetry to be gone from web's configuration", async || {
        let config = web.state.served()?;
        config.1.outbounds.iter().find(|o| o.service == "backend")?.policies.retry.is_none().then_some(())
    })
    .await;
    app.fail.store(1, Ordering::SeqCst);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 503);

    mesh.put("/meshes/default/meshretries/retry", retry(json!({"numRetries": 3, "retryOn": ["5xx"], "backOff": {"baseInterval": "5ms"}})))
        .await;
    let retries_total = "strait_dp_http_retries_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    eventually("the retry policy to apply", async || {
        app.fail.store(1, Ordering::SeqCst);
        (client.get(&url).send().await.ok()?.status() == 200).then_some(())
    })
    .await;

    // Two failures, then success: the application sees 200, the server three attempts.
    let (hits, retries) = (app.hits.load(Ordering::SeqCst), metric(&web, retries_total).await);
    app.fail.store(2, Ordering::SeqCst);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(app.hits.load(Ordering::SeqCst) - hits, 3, "the first attempt and two retries");
    assert_eq!(metric(&web, retries_total).await - retries, 2.0, "retries are counted");

    // A POST is not idempotent: it is never sent twice.
    let hits = app.hits.load(Ordering::SeqCst);
    app.fail.store(1, Ordering::SeqCst);
    assert_eq!(client.post(&url).body("order").send().await.unwrap().status(), 503);
    assert_eq!(app.hits.load(Ordering::SeqCst) - hits, 1);
    // A PUT is: its body, kept as it passed, is sent again, with its method, path and headers.
    let hits = app.hits.load(Ordering::SeqCst);
    app.fail.store(1, Ordering::SeqCst);
    let put = client.put(format!("{url}orders?id=7")).header("x-order", "order-7").body("order").send().await.unwrap();
    let seen = put.headers().get("x-seen").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!((put.status(), put.text().await.unwrap().as_str()), (reqwest::StatusCode::OK, "flaky 5"));
    assert_eq!(seen, "PUT /orders?id=7 order-7", "the retry is the request the application sent");
    assert_eq!(app.hits.load(Ordering::SeqCst) - hits, 2);
    app.fail.store(0, Ordering::SeqCst);

    // A failing server under 10 concurrent requests: one retry slot (10% of 10 in progress, at
    // least 1), so at most a few of the 10 failures are retried, and the rest are counted.
    mesh.put(
        "/meshes/default/meshretries/retry",
        retry(json!({"numRetries": 1, "retryOn": ["5xx"], "backOff": {"baseInterval": "5ms"}, "budget": {"percent": 10, "minRetryConcurrency": 1}})),
    )
    .await;
    let over_budget =
        "strait_dp_http_retries_over_budget_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}";
    app.delay_ms.store(300, Ordering::SeqCst);
    app.fail.store(u64::MAX, Ordering::SeqCst);
    eventually("the budget to apply", async || {
        let config = web.state.served()?;
        let retry = config.1.outbounds.iter().find(|o| o.service == "backend")?.policies.retry.clone()?;
        retry.http?.budget.map(drop)
    })
    .await;
    let (hits, refused) = (app.hits.load(Ordering::SeqCst), metric(&web, over_budget).await);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(&url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 503, "every request fails in the end");
    }
    let received = app.hits.load(Ordering::SeqCst) - hits;
    let refused = metric(&web, over_budget).await - refused;
    println!("FIGURE retry budget: 10 concurrent failing requests, {received} reached the server, {refused} retries refused by the budget");
    assert!(received <= 13, "without the budget there would be 20: {received}");
    assert!(refused >= 7.0, "{refused}");
}

/// Sends `method /` through web until backend-2's application holds one such request
/// unanswered (the others are answered by backend-1), and returns the held request's task.
async fn held_by_backend_2(
    client: &reqwest::Client,
    web_out: u16,
    method: reqwest::Method,
    hits: &AtomicUsize,
) -> tokio::task::JoinHandle<Option<(u16, String)>> {
    let before = hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        let request = client.request(method.clone(), format!("http://127.0.0.1:{web_out}/")).timeout(Duration::from_secs(30));
        let task = tokio::spawn(async move {
            let response = request.send().await.ok()?;
            Some((response.status().as_u16(), response.text().await.ok()?))
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if hits.load(Ordering::SeqCst) > before {
                return task;
            }
            if task.is_finished() {
                let answered = task.await.unwrap();
                assert!(
                    answered.as_ref().is_some_and(|(s, b)| *s == 200 && b.starts_with("b1 ")),
                    "{method} answered by backend-1: {answered:?}"
                );
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{method} neither answered nor held by backend-2 within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("20 {method} requests and none reached backend-2");
}

/// Without a MeshRetry: a safe request without a body whose connection fails with it in
/// flight (its endpoint's sidecar gone before answering) is sent to another endpoint; a POST,
/// which the peer may have acted on, is not, and is answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_request_whose_connection_fails_in_flight_goes_to_another_endpoint() {
    let mesh = Mesh::start().await;
    let b1 = common::http_app("b1").await;
    let hung = flaky_app().await;
    hung.delay_ms.store(60_000, Ordering::SeqCst);
    let s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), b1.port, "http", &[])).await;
    let s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), hung.port, "http", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&s1, &s2, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    // No MeshRetry (the mesh's default one retries resets), and endpoints in turn: the default
    // (fewest requests in flight) would keep away from the endpoint holding a request.
    mesh.delete("/meshes/default/meshretries/mesh-retry-all-default").await;
    mesh.put(
        "/meshes/default/meshloadbalancingstrategies/lb",
        json!({"type": "MeshLoadBalancingStrategy", "name": "lb", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
            "default": {"loadBalancer": {"type": "RoundRobin"}}}]}}),
    )
    .await;
    eventually("web to know both endpoints, taken in turn", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        (backend.endpoints.len() == 2 && backend.policies.load_balancing.is_some() && backend.policies.retry.is_none()).then_some(())
    })
    .await;
    // Each held request is on a connection of its own, new: nothing else went to backend-2.
    let client = reqwest::Client::new();
    let get = held_by_backend_2(&client, web_out, reqwest::Method::GET, &hung.hits).await;
    let post = held_by_backend_2(&client, web_out, reqwest::Method::POST, &hung.hits).await;
    // backend-2's sidecar goes away with both requests in flight.
    drop(s2);
    let get = get.await.unwrap().expect("the GET is answered");
    assert_eq!(get.0, 200, "{get:?}");
    assert!(get.1.starts_with("b1 GET /"), "the GET went to backend-1: {get:?}");
    let post = post.await.unwrap().expect("the POST is answered");
    assert_eq!(post.0, 502, "{post:?}");
    assert!(post.1.contains("failed the request"), "{post:?}");
}
