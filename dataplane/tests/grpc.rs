//! gRPC through real sidecars: MeshRetry's `grpc` section retries a call answered
//! `Unavailable` with the same message (a message too large to keep is not retried), and
//! MeshHealthCheck's `grpc` check (`grpc.health.v1.Health/Check`) takes an endpoint that
//! answers `NOT_SERVING` out of the pool and brings it back when it serves again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{dataplane, eventually, free_port, Mesh};
use http_body_util::BodyExt;
use serde_json::json;

/// A gRPC server (h2c) named `name`: `grpc.health.v1.Health/Check` answers `SERVING`, or
/// `NOT_SERVING` while `sick`; any other call answers trailers-only `Unavailable` while `fail`
/// counts down, else echoes `<name>:` and the request's bytes, with `grpc-status: 0` in the
/// trailers. `bodies` keeps every request body it received.
struct GrpcApp {
    port: u16,
    fail: Arc<AtomicU64>,
    sick: Arc<AtomicBool>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

async fn grpc_app(name: &'static str) -> GrpcApp {
    let (fail, sick, bodies) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = (fail.clone(), sick.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (fail, sick, bodies) = state.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let body = request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let grpc = |frames: Vec<hyper::body::Frame<Bytes>>| {
                            let frames = frames.into_iter().map(Ok::<_, std::convert::Infallible>);
                            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                            http::Response::builder().header("content-type", "application/grpc").body(body)
                        };
                        let ok_trailers = || {
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", http::HeaderValue::from_static("0"));
                            hyper::body::Frame::trailers(t)
                        };
                        if path == "/grpc.health.v1.Health/Check" {
                            let status = if sick.load(Ordering::SeqCst) { 2 } else { 1 };
                            let message = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                            return Ok::<_, std::convert::Infallible>(
                                grpc(vec![hyper::body::Frame::data(message), ok_trailers()]).unwrap(),
                            );
                        }
                        bodies.lock().unwrap().push(body.clone());
                        if fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                            // Trailers-only: the status in the only HEADERS frame.
                            let mut response = grpc(Vec::new()).unwrap();
                            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("14"));
                            response.headers_mut().insert("grpc-message", http::HeaderValue::from_static("try again"));
                            return Ok(response);
                        }
                        let mut echo = format!("{name}:").into_bytes();
                        echo.extend_from_slice(&body);
                        Ok(grpc(vec![hyper::body::Frame::data(Bytes::from(echo)), ok_trailers()]).unwrap())
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    GrpcApp { port, fail, sick, bodies }
}

/// An h2c client connection to 127.0.0.1:`port`.
async fn h2c(port: u16) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One unary call carrying `message`: its `grpc-status` (from the headers or the trailers)
/// and its response bytes.
async fn call(sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>, message: Bytes) -> (String, Bytes) {
    let request = http::Request::post("http://backend/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(message))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let early = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    let collected = response.into_body().collect().await.unwrap();
    let late = collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.to_str().unwrap().to_string());
    (early.or(late).unwrap_or_else(|| "none".into()), collected.to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_answered_unavailable_are_retried_with_the_same_message() {
    let mesh = Mesh::start().await;
    let app = grpc_app("b1").await;
    let _backend = mesh.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app.port, "grpc", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    mesh.put(
        "/meshes/default/meshretries/grpc",
        json!({"type": "MeshRetry", "name": "grpc", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"grpc": {"numRetries": 3, "retryOn": ["Unavailable"], "backOff": {"baseInterval": "5ms"}}}}]}}),
    )
    .await;
    eventually("the gRPC retry policy in web's configuration", async || {
        let config = web.state.served()?;
        let grpc = config.1.outbounds.iter().find(|o| o.service == "backend" && !o.endpoints.is_empty())?.policies.retry.clone()?.grpc?;
        (grpc.num_retries == Some(3)).then_some(())
    })
    .await;
    let mut sender = h2c(web_out).await;
    let message = Bytes::from_static(b"\0\0\0\0\x05hello");
    eventually("web -> backend over gRPC", async || (call(&mut sender, message.clone()).await.0 == "0").then_some(())).await;

    // Two Unavailable answers, then success: the caller sees the answer, the server got the
    // same message three times.
    app.bodies.lock().unwrap().clear();
    app.fail.store(2, Ordering::SeqCst);
    let (status, answer) = call(&mut sender, message.clone()).await;
    assert_eq!(status, "0", "retried until it succeeded");
    assert_eq!(&answer[..], b"b1:\0\0\0\0\x05hello");
    assert_eq!(*app.bodies.lock().unwrap(), vec![message.clone(); 3], "the first attempt and two retries, each with the message");
    let retries =
        common::metric(&web, "strait_dp_http_retries_total{direction=\"outbound\",source_service=\"web\",destination_service=\"backend\"}")
            .await;
    assert!(retries >= 2.0, "retries are counted: {retries}");

    // A message larger than what is kept for retries goes through once, and is not retried.
    app.bodies.lock().unwrap().clear();
    app.fail.store(1, Ordering::SeqCst);
    let large = Bytes::from(vec![7u8; 100 * 1024]);
    let (status, _) = call(&mut sender, large.clone()).await;
    assert_eq!(status, "14", "not retried: the caller gets Unavailable");
    assert_eq!(app.bodies.lock().unwrap().len(), 1);
    assert_eq!(app.bodies.lock().unwrap()[0], large, "streamed whole to the first endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_takes_a_not_serving_endpoint_out_and_brings_it_back() {
    let mesh = Mesh::start().await;
    let (a1, a2) = (grpc_app("b1").await, grpc_app("b2").await);
    let _s1 = mesh.sidecar("backend-1", "backend", &dataplane("backend-1", "backend", free_port(), a1.port, "grpc", &[])).await;
    let _s2 = mesh.sidecar("backend-2", "backend", &dataplane("backend-2", "backend", free_port(), a2.port, "grpc", &[])).await;
    let web_out = free_port();
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    mesh.put(
        "/meshes/default/meshhealthchecks/check-backend",
        json!({"type": "MeshHealthCheck", "name": "check-backend", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"interval": "200ms", "timeout": "1s", "unhealthyThreshold": 2, "healthyThreshold": 1, "grpc": {}}}]}}),
    )
    .await;
    eventually("the check and both endpoints in web's configuration", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        (backend.policies.health_check.is_some() && backend.endpoints.len() == 2).then_some(())
    })
    .await;
    let mut sender = h2c(web_out).await;
    let message = Bytes::from_static(b"\0\0\0\0\x02hi");
    let who = async |sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>, n: usize| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let (status, answer) = call(sender, message.clone()).await;
            assert_eq!(status, "0");
            seen.insert(String::from_utf8_lossy(&answer[..2]).to_string());
        }
        seen
    };
    eventually("both endpoints answer", async || (who(&mut sender, 20).await.len() == 2).then_some(())).await;

    // b2 answers NOT_SERVING (its calls would still succeed): the check takes it out.
    a2.sick.store(true, Ordering::SeqCst);
    eventually("b2 out of the pool", async || (who(&mut sender, 20).await == ["b1".to_string()].into()).then_some(())).await;
    a2.sick.store(false, Ordering::SeqCst);
    eventually("b2 back once it serves", async || (who(&mut sender, 20).await.len() == 2).then_some(())).await;
}
