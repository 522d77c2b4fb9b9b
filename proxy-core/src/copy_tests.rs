use super::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

/// `a_peer` ⇄ [a ⇄ copy ⇄ b] ⇄ `b_peer`: what the two ends of a proxied connection see.
fn proxied(options: CopyOptions) -> (DuplexStream, DuplexStream, JoinHandle<Result<Copied, CopyError>>) {
    let (a_peer, mut a) = duplex(64);
    let (mut b, b_peer) = duplex(64);
    let task = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b, &options).await });
    (a_peer, b_peer, task)
}

#[tokio::test]
async fn copies_both_ways_and_propagates_half_close() {
    let (mut client, mut server, task) = proxied(CopyOptions::default());
    client.write_all(b"hello").await.expect("write");
    client.shutdown().await.expect("client half-close");

    // The server sees EOF only because the copy shut down its side after the client's EOF.
    let mut request = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut request)).await.expect("server sees EOF").expect("read");
    assert_eq!(request, b"hello");

    // The other direction still works on the half-closed connection.
    server.write_all(b"world!").await.expect("write");
    server.shutdown().await.expect("server close");
    let mut response = Vec::new();
    timeout(LIMIT, client.read_to_end(&mut response)).await.expect("client sees EOF").expect("read");
    assert_eq!(response, b"world!");

    let copied = timeout(LIMIT, task).await.expect("copy ends").expect("join").expect("copy ok");
    assert_eq!(copied, Copied { a_to_b: 5, b_to_a: 6 });
}

#[tokio::test]
async fn large_transfer_through_a_small_reused_buffer_is_intact() {
    let (mut client, mut server, task) = proxied(CopyOptions { buffer_size: 7, idle_timeout: None });
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.expect("write");
        client.shutdown().await.expect("shutdown");
        client
    });
    let mut received = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut received)).await.expect("in time").expect("read");
    assert!(received == payload, "payload corrupted ({} bytes received)", received.len());
    server.shutdown().await.expect("shutdown");
    drop(writer.await.expect("writer"));
    let copied = timeout(LIMIT, task).await.expect("copy ends").expect("join").expect("copy ok");
    assert_eq!(copied.a_to_b, payload.len() as u64);
}

#[tokio::test]
async fn an_error_reports_the_bytes_moved_before_it() {
    let (mut client, mut server, task) = proxied(CopyOptions::default());
    client.write_all(b"abc").await.expect("write");
    let mut buf = [0u8; 3];
    server.read_exact(&mut buf).await.expect("read");
    drop(server);
    client.write_all(b"def").await.expect("write");
    let result = timeout(LIMIT, task).await.expect("copy ends").expect("join");
    match result {
        Err(CopyError::Io { direction: Direction::AToB, copied, .. }) => assert_eq!(copied, Copied { a_to_b: 3, b_to_a: 0 }),
        other => panic!("expected a write error from a to b, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_ends_a_silent_copy_but_not_an_active_one() {
    let idle = Duration::from_secs(10);
    let (mut client, mut server, task) = proxied(CopyOptions { buffer_size: 1024, idle_timeout: Some(idle) });
    let started = Instant::now();
    // Activity every 6 s keeps the copy alive past several timeouts.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.expect("read");
    }
    assert!(!task.is_finished(), "an active copy must not time out");
    let result = task.await.expect("join");
    let elapsed = started.elapsed();
    match result {
        Err(CopyError::Idle { copied, .. }) => assert_eq!(copied.a_to_b, 5),
        other => panic!("expected an idle timeout, got {other:?}"),
    }
    // The timeout counts from the last byte (at 30 s), not from the start.
    assert!(elapsed >= Duration::from_secs(40) && elapsed < Duration::from_secs(41), "{elapsed:?}");
}

/// Polls `t` once, reading `reader` and writing `writer`.
fn poll_once(t: &mut Transfer, reader: &mut DuplexStream, writer: &mut DuplexStream) -> Poll<io::Result<()>> {
    let waker = std::task::Waker::noop();
    t.poll(&mut Context::from_waker(waker), Pin::new(reader), Pin::new(writer))
}

#[tokio::test]
async fn an_idle_direction_holds_no_buffer_and_its_buffer_follows_the_traffic() {
    let (mut source, mut reader) = duplex(1 << 20);
    let (mut writer, mut sink) = duplex(1 << 20);
    let mut t = Transfer::new(DEFAULT_BUFFER_SIZE);
    assert!(poll_once(&mut t, &mut reader, &mut writer).is_pending());
    assert!(t.buf.is_empty(), "nothing to read: no buffer held");

    // A small request passes and the buffer goes back.
    source.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    assert!(poll_once(&mut t, &mut reader, &mut writer).is_pending());
    assert!(t.buf.is_empty(), "everything read was written: no buffer held");
    assert_eq!(t.written, 18);
    assert_eq!(t.size, FIRST_BUFFER_SIZE);

    // Bulk: reads fill the buffer, which grows to the largest size and no further.
    source.write_all(&vec![7u8; 256 * 1024]).await.expect("write");
    assert!(poll_once(&mut t, &mut reader, &mut writer).is_pending());
    assert_eq!(t.size, DEFAULT_BUFFER_SIZE);
    assert!(t.buf.is_empty());
    let mut moved = vec![0u8; 18 + 256 * 1024];
    sink.read_exact(&mut moved).await.expect("everything came through");
    assert!(moved[18..].iter().all(|b| *b == 7));

    // Small reads again: it shrinks back.
    for _ in 0..3 {
        source.write_all(b"ping").await.expect("write");
        assert!(poll_once(&mut t, &mut reader, &mut writer).is_pending());
    }
    assert_eq!(t.size, FIRST_BUFFER_SIZE);
    assert!(t.buf.is_empty());
}
