//! The application-side pool against real local servers: HTTP/1.1 (hyper's, and a bare one
//! that closes every connection after one answer) and HTTP/2 without TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::*;

/// An application on `listener` answering each request with its `Host`, URI and version; the
/// count of connections it accepted. Dropping the set stops it and cuts its connections.
fn app(listener: TcpListener, http2: bool) -> (Arc<AtomicUsize>, JoinSet<()>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            connections.spawn(async move {
                let answer = service_fn(|request: Request<Incoming>| async move {
                    let host = request.headers().get(HOST).map(|h| h.to_str().unwrap_or("?").to_string()).unwrap_or_default();
                    let said = format!("{host} {} {:?}", request.uri(), request.version());
                    Ok::<_, hyper::Error>(Response::new(Full::new(bytes::Bytes::from(said))))
                });
                let io = TokioIo::new(tcp);
                let _ = if http2 {
                    server2::Builder::new(TokioExecutor::new()).serve_connection(io, answer).await
                } else {
                    server1::Builder::new().serve_connection(io, answer).await
                };
            });
        }
    });
    (accepted, tasks)
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    (listener, addr)
}

fn request(uri: &str) -> Request<Counted> {
    Request::builder().uri(uri).body(Counted::empty(Counter::default())).expect("request")
}

/// Sends a request for `uri`, reads the response whole and gives its connection back.
async fn answer(pool: &AppPool, uri: &str) -> String {
    let response = pool.send(&mut request(uri), Duration::from_secs(5)).await.expect("answered");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("text")
}

/// Sends `n` requests for `/`, their responses left unread (each holding its connection).
async fn unread(pool: &AppPool, n: usize) -> Vec<Response<Upstream>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.send(&mut request("http://backend/"), Duration::from_secs(5)).await.expect("answered"));
    }
    held
}

#[tokio::test]
async fn http1_requests_reuse_idle_connections_in_origin_form_with_the_callers_authority() {
    let (listener, addr) = listener().await;
    let (accepted, _app) = app(listener, false);
    let pool = AppPool::new(addr, false);
    for _ in 0..3 {
        assert_eq!(answer(&pool, "http://backend:8080/orders?id=7").await, "backend:8080 /orders?id=7 HTTP/1.1");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for requests one after the other");

    // A Host the request has is kept; user information never goes into one.
    let mut with_host = request("http://backend/");
    with_host.headers_mut().insert(HOST, HeaderValue::from_static("orders.example"));
    let response = pool.send(&mut with_host, Duration::from_secs(5)).await.expect("answered");
    assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "orders.example / HTTP/1.1");
    assert_eq!(answer(&pool, "http://user@backend:8080").await, "backend:8080 / HTTP/1.1");

    // Lent connections are not shared: three responses not yet read hold three (the idle one
    // and two more), which come back once read.
    let held = unread(&pool, 3).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    for response in held {
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "backend / HTTP/1.1");
    }
    for _ in 0..3 {
        answer(&pool, "http://backend/").await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "the connections came back to the pool");

    // A response dropped before its end leaves its connection mid-answer: it is closed, not reused.
    drop(pool.send(&mut request("http://backend/"), Duration::from_secs(5)).await.expect("answered"));
    answer(&pool, "http://backend/").await;
    answer(&pool, "http://backend/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "two idle connections were left for these");
    let held = unread(&pool, 3).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "the dropped one's connection was not among them");
    drop(held);
}

#[tokio::test]
async fn an_idle_connection_is_not_reused_past_its_idle_limit() {
    let (listener, addr) = listener().await;
    let (accepted, _app) = app(listener, false);
    let limit = Duration::from_millis(50);
    let pool = AppPool::with_idle_limit(addr, false, limit);
    answer(&pool, "http://backend/").await;
    answer(&pool, "http://backend/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(limit * 2).await;
    answer(&pool, "http://backend/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the connection idle past the limit was closed, not lent");
}

/// An application that answers one request per connection and then closes it, without saying
/// so (no `Connection: close`): the pool finds out only from the connection itself.
#[tokio::test]
async fn requests_succeed_when_the_application_closes_idle_connections_unannounced() {
    let (listener, addr) = listener().await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let _app = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    let pool = AppPool::new(addr, false);
    for n in 0..50 {
        let response =
            pool.send(&mut request("http://backend/"), Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 50, "each request had a connection of its own");
}

#[tokio::test]
async fn an_application_that_refuses_connections_is_named_in_the_error() {
    let (listener, addr) = listener().await;
    drop(listener);
    let pool = AppPool::new(addr, false);
    let error = pool.send(&mut request("http://backend/"), Duration::from_secs(5)).await.expect_err("nothing listens");
    assert!(matches!(error, AppError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[tokio::test]
async fn http2_requests_share_one_connection_and_a_closed_one_is_replaced() {
    let (listener, addr) = listener().await;
    let (accepted, app_tasks) = app(listener, true);
    let pool = Arc::new(AppPool::new(addr, true));
    let mut at_once = JoinSet::new();
    for _ in 0..10 {
        let pool = pool.clone();
        at_once.spawn(async move { answer(&pool, "http://backend:8080/orders").await });
    }
    while let Some(said) = at_once.join_next().await {
        assert_eq!(said.expect("request task"), " http://backend:8080/orders HTTP/2.0");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "ten requests at once over one HTTP/2 connection");

    // The application restarts on the same port: its connection closes, and the next request
    // opens another.
    drop(app_tasks);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pool.shared.load().as_ref().is_some_and(|s| s.is_closed()) {
        assert!(Instant::now() < deadline, "the closed connection was never seen closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (accepted, _app) = app(TcpListener::bind(addr).await.expect("bind again"), true);
    assert_eq!(answer(&pool, "http://backend:8080/orders").await, " http://backend:8080/orders HTTP/2.0");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
