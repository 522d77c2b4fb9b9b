//! The own HTTP/1.1 server against raw clients: bodiless requests answered by it, the rest by
//! hyper on the same connection, and how connections end.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::http::timer::tests::closed;

/// What the test service saw of each request: method, URI, version, headers, body and which
/// server read it.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A server on loopback whose service records each request and answers as its path says:
/// `/stream` in two chunks of unknown length, `/empty` with 204, `/slow` after 300 ms,
/// `/cut` a body that fails after its first chunk, `/size` the request body's length, `/early`
/// at once without reading the request body, anything else `hello` (`content-length`).
async fn server(header_read: Duration) -> (std::net::SocketAddr, Seen, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedSender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let seen = Seen::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (shut, mut shutdowns) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (record, gone) = (seen.clone(), dropped.clone());
    tokio::spawn(async move {
        let mut connections = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { return };
                    let (record, gone) = (record.clone(), gone.clone());
                    let service = move |request: Request<Upstream>| {
                        let (record, gone) = (record.clone(), gone.clone());
                        async move { answer(request, record, gone).await }
                    };
                    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                    connections.push(tx);
                    tokio::spawn(async move {
                        let connection = serve(stream, service, header_read);
                        let mut connection = pin!(connection);
                        tokio::select! {
                            _ = connection.as_mut() => return,
                            _ = rx => connection.as_mut().graceful_shutdown(),
                        }
                        let _ = connection.await;
                    });
                }
                Some(()) = shutdowns.recv() => {
                    for tx in connections.drain(..) {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    (address, seen, dropped, shut)
}

/// Counts a drop: the request's future was dropped before it answered.
struct Dropped(Arc<AtomicUsize>, bool);

impl Drop for Dropped {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn answer(request: Request<Upstream>, seen: Seen, dropped: Arc<AtomicUsize>) -> Response<TestBody> {
    let mut guard = Dropped(dropped, false);
    let (parts, body) = request.into_parts();
    let server = if matches!(body, Upstream::Empty | Upstream::Own(_)) { "own" } else { "hyper" };
    let (text, size) = if parts.uri.path() == "/early" {
        drop(body);
        (String::new(), 0)
    } else {
        match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().map(|t| format!(" trailers {t:?}")).unwrap_or_default();
                let bytes = collected.to_bytes();
                let shown = if bytes.len() > 64 { format!("{} bytes", bytes.len()) } else { String::from_utf8_lossy(&bytes).into_owned() };
                (format!("{shown}{trailers}"), bytes.len())
            }
            Err(e) => (format!("<{e}>"), 0),
        }
    };
    let mut headers: Vec<String> = parts.headers.iter().map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?"))).collect();
    headers.sort();
    seen.0.lock().expect("lock").push(format!(
        "{server} {} {} {:?} [{}] {text:?}",
        parts.method,
        parts.uri,
        parts.version,
        headers.join(" "),
    ));
    let response = match parts.uri.path() {
        "/stream" => {
            let chunks = futures::stream::iter([
                Ok(http_body::Frame::data(Bytes::from_static(b"hel"))),
                Ok(http_body::Frame::data(Bytes::from_static(b"lo"))),
            ]);
            Response::new(StreamBody::new(chunks).boxed_unsync())
        }
        "/cut" => {
            let chunks = futures::stream::iter([
                Ok(http_body::Frame::data(Bytes::from_static(b"hel"))),
                Err::<http_body::Frame<Bytes>, BoxError>("broken".into()),
            ]);
            let mut response = Response::new(StreamBody::new(chunks).boxed_unsync());
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            response
        }
        "/empty" => {
            let mut response = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed_unsync());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        "/size" => Response::new(Full::new(Bytes::from(size.to_string())).map_err(|e| match e {}).boxed_unsync()),
        path => {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"hello")).map_err(|e| match e {}).boxed_unsync());
            response.headers_mut().insert("x-test", HeaderValue::from_static("1"));
            response
        }
    };
    guard.1 = true;
    response
}

/// Reads from `stream` until `done` says the bytes so far are complete, or the peer closes;
/// everything read (at most 10 s).
async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut buffer = [0_u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&String::from_utf8_lossy(&got)) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn answers(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn bodiless_requests_are_answered_on_one_connection_with_each_bodys_framing() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET /a?x=1 HTTP/1.1\r\nHost: web\r\nX-Many: 1\r\nx-many: 2\r\n\r\n").await.expect("write");
    let first = read_until(&mut stream, |t| t.ends_with("hello")).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(first.contains("content-length: 5\r\n") && first.contains("x-test: 1\r\n") && first.contains("date: "), "{first}");
    assert!(!first.contains("connection: close"), "{first}");
    stream.write_all(b"GET /stream HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    let second = read_until(&mut stream, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(second.contains("transfer-encoding: chunked\r\n") && second.ends_with("\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"), "{second}");
    stream
        .write_all(b"HEAD /a HTTP/1.1\r\nhost: web\r\n\r\nDELETE /empty HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("write");
    let rest = read_until(&mut stream, |t| answers(t) == 2 && t.ends_with("\r\n\r\n")).await;
    let (head, empty) = rest.split_at(rest.find("HTTP/1.1 204").expect("a 204 answer"));
    assert!(
        head.starts_with("HTTP/1.1 200") && head.contains("content-length: 5\r\n") && !head.contains("hello"),
        "a HEAD answer carries no body: {head}"
    );
    assert!(!empty.contains("content-length") && !empty.contains("transfer-encoding"), "{empty}");
    assert_eq!(
        seen.all(),
        vec![
            "own GET /a?x=1 HTTP/1.1 [host=web x-many=1 x-many=2] \"\"",
            "own GET /stream HTTP/1.1 [host=web] \"\"",
            "own HEAD /a HTTP/1.1 [host=web] \"\"",
            "own DELETE /empty HTTP/1.1 [content-length=0 host=web] \"\"",
        ]
    );
}

#[tokio::test]
async fn requests_with_bodies_and_what_follows_them_are_served_on_the_same_connection() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET /first HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    assert!(read_until(&mut stream, |t| t.ends_with("hello")).await.starts_with("HTTP/1.1 200"));
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: 4\r\n\r\nabcdPUT /chunks HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n2\r\nxy\r\n3;ext=1\r\nzzz\r\n0\r\nx-sum: 5\r\n\r\nGET /after HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .expect("write");
    let rest = read_until(&mut stream, |t| answers(t) == 3 && t.ends_with("hello")).await;
    assert_eq!(answers(&rest), 3, "{rest}");
    assert!(!rest.contains("connection: close"), "{rest}");
    let seen = seen.all();
    assert_eq!(seen[0], "own GET /first HTTP/1.1 [host=web] \"\"");
    assert_eq!(seen[1], "own POST /upload HTTP/1.1 [content-length=4 host=web] \"abcd\"");
    assert_eq!(seen[2], "own PUT /chunks HTTP/1.1 [host=web transfer-encoding=chunked] \"xyzzz trailers {\\\"x-sum\\\": \\\"5\\\"}\"");
    assert_eq!(seen[3], "own GET /after HTTP/1.1 [host=web] \"\"");
}

#[tokio::test]
async fn a_large_body_is_read_as_it_comes_in_either_framing() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let size = 3 * 1024 * 1024 + 7;
    let body = vec![b'x'; size];
    stream.write_all(format!("POST /size HTTP/1.1\r\nhost: web\r\ncontent-length: {size}\r\n\r\n").as_bytes()).await.expect("write");
    // In pieces, so that the body crosses many reads and frames.
    for piece in body.chunks(100_000) {
        stream.write_all(piece).await.expect("write");
    }
    let answer = read_until(&mut stream, |t| t.ends_with(&size.to_string())).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("\r\n\r\n{size}")), "{answer}");
    stream.write_all(b"POST /size HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n").await.expect("write");
    for piece in body.chunks(70_001) {
        stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.expect("write");
        stream.write_all(piece).await.expect("write");
        stream.write_all(b"\r\n").await.expect("write");
    }
    stream.write_all(b"0\r\n\r\n").await.expect("write");
    let second = read_until(&mut stream, |t| t.ends_with(&size.to_string())).await;
    assert!(second.starts_with("HTTP/1.1 200") && second.ends_with(&format!("\r\n\r\n{size}")), "{second}");
    let seen = seen.all();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.starts_with("own POST /size") && s.ends_with(&format!("\"{size} bytes\""))), "{seen:?}");
}

#[tokio::test]
async fn the_rest_of_a_body_answered_before_it_came_is_dropped_and_the_connection_carries_the_next_request() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"POST /early HTTP/1.1\r\nhost: web\r\ncontent-length: 100000\r\n\r\nsome of it").await.expect("write");
    let answer = read_until(&mut stream, |t| t.ends_with("hello")).await;
    assert!(answer.starts_with("HTTP/1.1 200") && !answer.contains("connection: close"), "{answer}");
    stream.write_all(&vec![b'y'; 100_000 - "some of it".len()]).await.expect("write");
    stream.write_all(b"GET /next HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    let next = read_until(&mut stream, |t| t.ends_with("hello")).await;
    assert!(next.starts_with("HTTP/1.1 200"), "the request after a dropped body was not answered: {next}");
    let seen = seen.all();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1], "own GET /next HTTP/1.1 [host=web] \"\"", "the dropped body's bytes were taken for a request");
}

#[tokio::test]
async fn a_body_too_long_to_drop_after_its_answer_ends_the_connection() {
    let (address, _, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"POST /early HTTP/1.1\r\nhost: web\r\ncontent-length: 100000000\r\n\r\n").await.expect("write");
    let answer = read_until(&mut stream, |t| t.ends_with("hello")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let piece = vec![b'y'; 64 * 1024];
    let mut sent = 0;
    while sent < 100_000_000 {
        match tokio::time::timeout(Duration::from_secs(10), stream.write_all(&piece)).await {
            Ok(Ok(())) => sent += piece.len(),
            Ok(Err(_)) => break,
            Err(_) => panic!("the server neither read the body nor closed the connection"),
        }
    }
    assert!(sent < 10_000_000, "the server read {sent} bytes of a body nobody wanted");
    assert!(closed(&mut stream).await, "the connection stayed open");
}

#[tokio::test]
async fn a_body_cut_short_or_malformed_fails_the_request_and_ends_the_connection() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"POST /cut-short HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\n\r\nabc").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut bad = TcpStream::connect(address).await.expect("connect");
    bad.write_all(b"POST /bad HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nxy\r\n").await.expect("write");
    let answer = read_until(&mut bad, |_| false).await;
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.all().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seen = seen.all();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "own POST /bad HTTP/1.1 [host=web transfer-encoding=chunked] \"<malformed request body: bad chunk size>\"",
            "own POST /cut-short HTTP/1.1 [content-length=10 host=web] \"<the client closed the connection before the end of the request body>\"",
        ]
    );
}

#[tokio::test]
async fn what_this_server_does_not_take_is_answered_by_hyper_as_before() {
    let (address, seen, _, _) = server(Duration::from_secs(60)).await;
    for (request, status) in [
        (&b"GET /old HTTP/1.0\r\nhost: web\r\n\r\n"[..], "HTTP/1.0 200"),
        (b"GET /x HTTP/1.1\r\nhost: web\r\nexpect: 100-continue\r\n\r\n", "HTTP/1.1 200"),
        (b"OPTIONS * HTTP/1.1\r\nhost: web\r\n\r\n", "HTTP/1.1 200"),
        (b"POST /gz HTTP/1.1\r\nhost: web\r\ntransfer-encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", "HTTP/1.1 200"),
        (b"POST /two HTTP/1.1\r\nhost: web\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na", "HTTP/1.1 200"),
        (b"POST /both HTTP/1.1\r\nhost: web\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", "HTTP/1.1 200"),
        (b"POST /plus HTTP/1.1\r\nhost: web\r\ncontent-length: +1\r\n\r\na", "HTTP/1.1 400"),
        (b"GET /\x01bad HTTP/1.1\r\nhost: web\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "HTTP/1.1 400"),
    ] {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(request).await.expect("write");
        let answer = read_until(&mut stream, |t| t.contains("\r\n\r\n")).await;
        assert!(answer.starts_with(status), "{}: {answer}", String::from_utf8_lossy(request));
    }
    let served: Vec<String> = seen.all().iter().map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(served, vec!["hyper GET /old", "hyper GET /x", "hyper OPTIONS *", "hyper POST /gz", "hyper POST /two", "hyper POST /both"]);
}

#[tokio::test]
async fn connection_close_is_honoured_and_said() {
    let (address, _, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").await.expect("write");
    let answer = read_until(&mut stream, |t| t.ends_with("hello")).await;
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(closed(&mut stream).await, "the connection stayed open after `connection: close`");
}

#[tokio::test]
async fn a_peer_that_closes_while_its_request_is_served_cancels_it() {
    let (address, seen, dropped, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET /slow HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the request of a peer that left was not dropped");
    assert_eq!(seen.all().len(), 1, "the request reached the service");
}

#[tokio::test]
async fn a_response_body_that_fails_cuts_the_connection() {
    let (address, _, _, _) = server(Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET /cut HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    let answer = read_until(&mut stream, |_| false).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("content-length: 5\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhel"), "a failed body must end with the connection, short of its length: {answer}");
}

#[tokio::test]
async fn graceful_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer() {
    let (address, _, _, shut) = server(Duration::from_secs(60)).await;
    let mut idle = TcpStream::connect(address).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    assert!(read_until(&mut idle, |t| t.ends_with("hello")).await.starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(address).await.expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    // The slow request is in the service before the shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shut.send(()).expect("shutdown");
    assert!(closed(&mut idle).await, "an idle connection stayed open after a graceful shutdown");
    let answer = read_until(&mut busy, |_| false).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "the request in progress lost its answer: {answer}");
}

#[tokio::test]
async fn a_connection_waits_for_a_head_no_longer_than_the_header_read_limit() {
    let (address, _, _, _) = server(Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n").await.expect("write");
    assert!(read_until(&mut stream, |t| t.ends_with("hello")).await.starts_with("HTTP/1.1 200"));
    stream.write_all(b"GET / HTTP/1.1\r\nhost: we").await.expect("write");
    assert!(closed(&mut stream).await, "a head left unfinished was not cut at the limit");
}
