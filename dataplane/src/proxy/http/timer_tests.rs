//! A connection's timer lent to its requests in turn, and hyper's header-read timeout on it.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::*;

/// The address of the tokio timer a lent timer holds.
fn timer_of(lent: &Lent) -> *const Sleep {
    lent.sleep.as_deref().map(std::ptr::from_ref).expect("a lent timer holds one")
}

#[tokio::test]
async fn a_connections_timer_goes_back_to_it_and_fires_at_each_new_deadline() {
    let spare = Arc::new(Spare::default());
    let first = spare.lend(Instant::now() + Duration::from_millis(20));
    let address = timer_of(&first);
    first.await;
    // Filed in the wheel for 50 ms from now, then moved 250 ms later: it must not fire at the
    // old time.
    let started = Instant::now();
    let mut early = spare.lend(started + Duration::from_millis(50));
    assert_eq!(timer_of(&early), address, "the connection's timer was not lent again");
    assert!(futures::poll!(&mut early).is_pending());
    drop(early);
    let later = spare.lend(started + Duration::from_millis(300));
    assert_eq!(timer_of(&later), address);
    later.await;
    assert!(started.elapsed() >= Duration::from_millis(300), "fired after {:?}, before its new deadline", started.elapsed());
}

#[tokio::test]
async fn a_timer_moved_earlier_fires_at_its_new_deadline() {
    let spare = Arc::new(Spare::default());
    let mut far = spare.lend(Instant::now() + Duration::from_secs(60));
    assert!(futures::poll!(&mut far).is_pending());
    drop(far);
    let near = spare.lend(Instant::now() + Duration::from_millis(30));
    tokio::time::timeout(Duration::from_secs(10), near).await.expect("a timer moved 60 s earlier did not fire at its new deadline");
}

#[tokio::test]
async fn requests_at_once_get_timers_of_their_own_and_one_goes_back() {
    let spare = Arc::new(Spare::default());
    let at = Instant::now() + Duration::from_millis(30);
    let (first, second) = (spare.lend(at), spare.lend(at));
    assert_ne!(timer_of(&first), timer_of(&second), "two requests at once share one timer");
    tokio::join!(first, second);
    let kept = spare.0.lock().expect("lock").as_deref().map(std::ptr::from_ref);
    assert!(kept.is_some(), "no timer went back to the connection");
    let third = spare.lend(Instant::now());
    assert_eq!(Some(timer_of(&third)), kept);
}

/// A hyper HTTP/1.1 server on loopback whose header-read timeout is `limit`, on these timers.
async fn server(limit: Duration) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(|_: Request<Incoming>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(HeaderReads::default()).header_read_timeout(limit);
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    address
}

/// Sends a GET and reads its answer, whole (the answer is 2 bytes long).
async fn ask(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "closed before the whole answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits (at most 10 s) for the server to close the connection (once what it sent is read).
pub(in crate::proxy::http) async fn closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn the_header_read_timeout_restarts_with_each_request_and_closes_a_connection_left_idle() {
    let limit = Duration::from_millis(400);
    let address = server(limit).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // Each request comes within the limit of the last answer, but the third after the first
    // wait's deadline: the timer must have moved to each new wait.
    for _ in 0..3 {
        assert!(ask(&mut stream).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ask(&mut stream).await.starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    assert!(closed(&mut stream).await, "a connection idle for 10 s past its header-read limit is still open");
    assert!(idle.elapsed() >= Duration::from_millis(300), "closed after {:?} idle, before its limit", idle.elapsed());
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_at_the_limit() {
    let address = server(Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.expect("write");
    assert!(closed(&mut stream).await, "a request head left unfinished for 10 s was not cut");
}
