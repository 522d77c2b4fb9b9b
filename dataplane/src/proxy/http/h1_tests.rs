//! HTTP/1.1 on pooled connections against bare local servers that write the wire by hand:
//! framing both ways, reuse, early answers, and peers that close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::proxy::http::body::Upstream;
use crate::proxy::http::pool::{Http1, Idle};

/// [`super::send`], the request given by value.
async fn send(lease: Lease, mut request: Request<Counted>, reused: bool) -> Result<Response<Body>, Failed> {
    super::send(lease, &mut request, reused).await
}

/// What a scripted server saw: the bytes of each connection, and how many it accepted.
#[derive(Clone, Default)]
struct Seen {
    accepted: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("lock")).into_owned()
    }
}

/// What a scripted server does on a request head.
#[derive(Clone, Copy)]
enum Answer {
    /// Writes this.
    Reply(&'static [u8]),
    /// Writes this and closes the connection.
    ReplyAndClose(&'static [u8]),
    /// Closes the connection unanswered.
    Close,
    /// Leaves the request unanswered, the connection open.
    Silent,
}

use Answer::{Close, Reply, ReplyAndClose, Silent};

/// A server that, on each connection, reads up to each `\r\n\r\n` (a request head) and
/// does the next of `answers` (closing when they run out).
async fn scripted(answers: Vec<Answer>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen = Seen::default();
    let saw = seen.clone();
    tokio::spawn(async move {
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        while let Ok((mut tcp, _)) = listener.accept().await {
            saw.accepted.fetch_add(1, Ordering::SeqCst);
            let (answers, saw) = (answers.clone(), saw.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let next = answers.lock().expect("lock").next().unwrap_or(Close);
                        match next {
                            Reply(answer) => {
                                if tcp.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            ReplyAndClose(answer) => {
                                let _ = tcp.write_all(answer).await;
                                return;
                            }
                            Close => return,
                            Silent => {}
                        }
                    }
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            saw.bytes.lock().expect("lock").extend_from_slice(&buffer[..n]);
                            pending.extend_from_slice(&buffer[..n]);
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A new connection to `addr`, lent from `idle`.
async fn open(addr: SocketAddr, idle: &Arc<Idle>) -> Lease {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    Lease::new(Http1::new(Conn::new(Io::Plain(tcp)), None, None), idle)
}

/// `request`'s answer on a new connection to `addr` (pooled in `idle` once it ends cleanly).
async fn ask(addr: SocketAddr, idle: &Arc<Idle>, request: Request<Counted>) -> Response<Body> {
    send(open(addr, idle).await, request, false).await.expect("answered")
}

/// The connection idle in `idle`, lent again.
fn reuse(idle: &Arc<Idle>) -> Lease {
    Lease::new(idle.take(|_, _| true).expect("an idle connection in the pool"), idle)
}

fn get(uri: &str) -> Request<Counted> {
    Request::get(uri).header(header::HOST, "backend").body(Counted::empty(Counter::default())).expect("request")
}

async fn text(response: Response<Body>) -> String {
    String::from_utf8(response.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("text")
}

fn idle() -> Arc<Idle> {
    Arc::new(Idle::new(Duration::from_secs(60)))
}

#[tokio::test]
async fn a_response_with_a_length_is_read_and_its_connection_reused() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello";
    let (addr, seen) = scripted(vec![Reply(ok), Reply(ok)]).await;
    let idle = idle();
    let response = ask(addr, &idle, get("/a?b=1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-a"], "1");
    assert_eq!(text(response).await, "hello");
    let again = reuse(&idle);
    assert!(again.reused());
    assert_eq!(text(send(again, get("/c"), true).await.expect("answered")).await, "hello");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(seen.text(), "GET /a?b=1 HTTP/1.1\r\nhost: backend\r\n\r\nGET /c HTTP/1.1\r\nhost: backend\r\n\r\n");
}

#[tokio::test]
async fn an_absolute_uri_goes_in_absolute_form() {
    let (addr, seen) = scripted(vec![Reply(b"HTTP/1.1 204 No Content\r\n\r\n")]).await;
    let request = Request::get("http://backend.default:80/x").body(Counted::empty(Counter::default())).expect("request");
    let response = send(open(addr, &idle()).await, request, false).await.expect("answered");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(seen.text(), "GET http://backend.default:80/x HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn a_chunked_response_is_decoded_with_its_trailers_and_its_connection_reused() {
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n";
    let (addr, seen) = scripted(vec![Reply(chunked), Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]).await;
    let idle = idle();
    let response = ask(addr, &idle, get("/")).await;
    let collected = response.into_body().collect().await.expect("body");
    assert_eq!(collected.trailers().expect("trailers")["x-sum"], "9");
    assert_eq!(collected.to_bytes(), "wikipedia");
    let again = reuse(&idle);
    assert_eq!(text(send(again, get("/"), true).await.expect("answered")).await, "ok");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_response_without_length_ends_with_its_connection_which_is_not_reused() {
    let (addr, _seen) = scripted(vec![ReplyAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")]).await;
    let idle = idle();
    let response = ask(addr, &idle, get("/")).await;
    assert!(!response.body().is_end_stream());
    assert_eq!(text(response).await, "until the end");
    assert!(idle.take(|_, _| true).is_none(), "a connection whose body ends with it is never pooled");
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body_whatever_their_length_says() {
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
    let not_modified: &[u8] = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\n\r\n";
    let (addr, seen) = scripted(vec![Reply(head), Reply(not_modified), Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")]).await;
    let idle = idle();
    let request = Request::head("/").body(Counted::empty(Counter::default())).expect("request");
    let response = ask(addr, &idle, request).await;
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "1000");
    assert!(response.body().is_end_stream());
    drop(response);
    let lease = reuse(&idle);
    let response = send(lease, get("/"), true).await.expect("answered");
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert!(response.body().is_end_stream());
    let lease = reuse(&idle);
    assert_eq!(text(send(lease, get("/"), true).await.expect("answered")).await, "ok");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_chunked() {
    let (addr, seen) = scripted(vec![Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")]).await;
    let idle = idle();
    let body = Counted::full(bytes::Bytes::from_static(b"name=strait"), Counter::default());
    let request = Request::post("/form").body(body).expect("request");
    ask(addr, &idle, request).await;
    assert_eq!(seen.text(), "POST /form HTTP/1.1\r\ncontent-length: 11\r\n\r\nname=strait");

    // A body of unknown length (a chunked response, forwarded) goes chunked.
    let source: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let (from, _) = scripted(vec![Reply(source)]).await;
    let streamed = ask(from, &idle, get("/")).await.into_body();
    let (to, seen) = scripted(vec![Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")]).await;
    let request = Request::put("/up").body(Counted::new(Upstream::Http1(streamed), Counter::default())).expect("request");
    ask(to, &idle, request).await;
    let wire = seen.text();
    assert!(wire.starts_with("PUT /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"), "{wire}");
    let body = &wire["PUT /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".len()..];
    assert_eq!(dechunk(body), "abcde");
    assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
}

/// The data of a chunked body's text.
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a size line");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        if size == 0 {
            return data;
        }
        data.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test]
async fn an_answer_before_the_whole_request_body_is_heard_and_the_connection_not_reused() {
    // The server reads the head only, answers at once, and reads nothing more.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        tcp.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n").await.expect("answer");
        // Held open, unread, until the client goes.
        let _ = tcp.read(&mut [0u8; 0]).await;
        std::future::pending::<()>().await;
    });
    let idle = idle();
    let large = Counted::full(bytes::Bytes::from(vec![b'x'; 32 << 20]), Counter::default());
    let request = Request::post("/upload").body(large).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), send(open(addr, &idle).await, request, false))
        .await
        .expect("the answer came while the body could not be sent")
        .expect("answered");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(response);
    assert!(idle.take(|_, _| true).is_none(), "a connection with a request half sent is not reused");
}

#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_gives_back_a_safe_bodiless_request_only() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _seen) = scripted(vec![Reply(ok), Close, Reply(ok), Close]).await;
    let idle = idle();
    assert_eq!(text(ask(addr, &idle, get("/")).await).await, "ok");
    let lease = reuse(&idle);
    let failed = send(lease, get("/"), true).await.expect_err("closed unanswered");
    assert!(failed.again, "a GET may go again: {failed:?}");
    assert!(matches!(failed.error, H1Error::Closed | H1Error::Read(_)), "{failed:?}");

    assert_eq!(text(ask(addr, &idle, get("/")).await).await, "ok");
    let lease = reuse(&idle);
    let post = Request::post("/").body(Counted::empty(Counter::default())).expect("request");
    let failed = send(lease, post, true).await.expect_err("closed unanswered");
    assert!(!failed.again, "a POST the peer may have acted on does not go again: {failed:?}");
}

#[tokio::test]
async fn an_idle_connection_the_peer_closed_is_seen_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (close, closing) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let _ = closing.await;
        drop(tcp);
    });
    let mut conn = Conn::new(Io::Plain(TcpStream::connect(addr).await.expect("connect")));
    assert!(!conn.closed_while_idle(), "open and quiet");
    close.send(()).expect("server waiting");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conn.closed_while_idle() {
        assert!(Instant::now() < deadline, "the close was never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_that_say_what_is_wrong() {
    for (answer, says) in [
        (&b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"[..], "conflicting content-length"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x response head"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ] {
        let (addr, _) = scripted(vec![Reply(answer)]).await;
        let failed = send(open(addr, &idle()).await, get("/"), false).await.expect_err("malformed");
        assert!(failed.error.to_string().contains(says), "{}: {}", String::from_utf8_lossy(answer), failed.error);
    }
    // A body cut short is an error of the body.
    let (addr, _) = scripted(vec![ReplyAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")]).await;
    let idle = idle();
    let response = ask(addr, &idle, get("/")).await;
    let error = response.into_body().collect().await.expect_err("cut short");
    assert!(error.to_string().contains("closed before the end of the response body"), "{error}");
    assert!(idle.take(|_, _| true).is_none(), "a connection that failed mid-body is not reused");
}

#[tokio::test]
async fn an_exchange_abandoned_half_way_closes_its_connection() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, seen) = scripted(vec![Silent, Reply(ok)]).await;
    let idle = idle();
    // The caller gives up (its timeout): the answer may still come on that connection, so it
    // must not serve another request.
    let abandoned = tokio::time::timeout(Duration::from_millis(50), send(open(addr, &idle).await, get("/slow"), false)).await;
    assert!(abandoned.is_err(), "the server never answers");
    assert!(idle.take(|_, _| true).is_none(), "an abandoned exchange's connection is not pooled");
    assert_eq!(text(ask(addr, &idle, get("/")).await).await, "ok");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_large_body_is_read_in_large_frames_and_its_buffer_not_kept_idle() {
    const SIZE: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (written, all_written) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
        answer.extend(std::iter::repeat_n(b'x', SIZE));
        tcp.write_all(&answer).await.expect("answer");
        let _ = written.send(());
        std::future::pending::<()>().await;
    });
    let idle = idle();
    let response = ask(addr, &idle, get("/large")).await;
    // Everything is in the socket's buffers: a read takes what its room allows.
    all_written.await.expect("written");
    let mut body = response.into_body();
    let (mut total, mut largest) = (0, 0);
    while let Some(frame) = body.frame().await {
        let data = frame.expect("data").into_data().expect("data");
        total += data.len();
        largest = largest.max(data.len());
    }
    assert_eq!(total, SIZE);
    assert!(largest > 8 * READ_SIZE, "reads of a large body ask for more than a head's: largest frame {largest}");
    let mut lease = reuse(&idle);
    assert!(lease.conn().read.capacity() <= KEPT_BUFFER, "an idle connection keeps {} bytes of buffer", lease.conn().read.capacity());
}
