use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::tls::{crypto_provider, ALPN_H2, ALPN_TCP};

/// The first flight of a real rustls client: its ClientHello, as it would appear on the wire.
fn rustls_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).expect("write_tls");
    }
    wire
}

/// Re-frames the handshake bytes of `wire` (one record) into records of at most `size` bytes.
fn fragmented(wire: &[u8], size: usize) -> Vec<u8> {
    let (header, payload) = wire.split_at(RECORD_HEADER);
    let len = usize::from(header[3]) << 8 | usize::from(header[4]);
    let mut out = Vec::new();
    for chunk in payload[..len].chunks(size) {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn names(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

#[test]
fn parses_real_client_hellos() {
    let with_both = rustls_hello("web.default.svc.strait", &[ALPN_H2, ALPN_TCP]);
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, Vec<Vec<u8>>);
    let cases: Vec<Case<'_>> = vec![
        ("SNI and two ALPN protocols", with_both.clone(), Some("web.default.svc.strait"), names(&[ALPN_H2, ALPN_TCP])),
        ("SNI, no ALPN", rustls_hello("backend", &[]), Some("backend"), vec![]),
        ("IP address: rustls sends no SNI", rustls_hello("10.0.0.7", &[ALPN_TCP]), None, names(&[ALPN_TCP])),
        ("hello split over 100-byte records", fragmented(&with_both, 100), Some("web.default.svc.strait"), names(&[ALPN_H2, ALPN_TCP])),
        ("hello split over 1-byte records", fragmented(&with_both, 1), Some("web.default.svc.strait"), names(&[ALPN_H2, ALPN_TCP])),
        (
            "trailing application bytes after the hello",
            [with_both.clone(), b"GET /".to_vec()].concat(),
            Some("web.default.svc.strait"),
            names(&[ALPN_H2, ALPN_TCP]),
        ),
    ];
    for (name, wire, sni, alpn) in cases {
        let hello = parse_client_hello(&wire).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hello.server_name.as_deref(), sni, "{name}");
        assert_eq!(hello.alpn, alpn, "{name}");
    }
}

#[test]
fn every_truncation_of_a_hello_is_incomplete() {
    for wire in [rustls_hello("web.default", &[ALPN_H2]), fragmented(&rustls_hello("web.default", &[ALPN_H2]), 64)] {
        for len in 0..wire.len() {
            match parse_client_hello(&wire[..len]) {
                Err(SniError::Incomplete) => {}
                other => panic!("prefix of {len}/{} bytes: expected Incomplete, got {other:?}", wire.len()),
            }
        }
    }
}

#[test]
fn rejects_non_tls_and_malformed_input() {
    let hello = rustls_hello("web.default", &[ALPN_H2]);
    let mut server_hello = hello.clone();
    server_hello[RECORD_HEADER] = 2;
    let mut overrun = hello.clone();
    // Claim a cipher suite list longer than the rest of the message.
    let suites_at = RECORD_HEADER + 4 + 2 + 32 + 1 + usize::from(hello[RECORD_HEADER + 4 + 2 + 32]);
    overrun[suites_at..suites_at + 2].copy_from_slice(&[0xff, 0xff]);
    let mut huge_record = hello.clone();
    huge_record[3..5].copy_from_slice(&0x5000u16.to_be_bytes());
    let mut huge_message = hello.clone();
    huge_message[RECORD_HEADER + 1..RECORD_HEADER + 4].copy_from_slice(&[0x01, 0, 0]);
    let mut alert_inside = fragmented(&hello, 100);
    alert_inside[105] = 21;

    type Case<'a> = (&'a str, Vec<u8>, fn(&SniError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(), |e| matches!(e, SniError::NotTls)),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(), |e| matches!(e, SniError::NotTls)),
        ("one non-TLS byte", vec![0x47], |e| matches!(e, SniError::NotTls)),
        ("TLS application data record", vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5], |e| matches!(e, SniError::NotTls)),
        ("handshake record with a bad version", vec![22, 9, 1, 0, 5, 1, 0, 0, 1, 0], |e| matches!(e, SniError::NotTls)),
        ("ServerHello instead of ClientHello", server_hello, |e| matches!(e, SniError::Malformed(_))),
        ("length field overrun", overrun, |e| matches!(e, SniError::Malformed(_))),
        ("record longer than TLS allows", huge_record, |e| matches!(e, SniError::Malformed(_))),
        ("handshake message over the size cap", huge_message, |e| matches!(e, SniError::TooLarge)),
        ("alert record in the middle of the hello", alert_inside, |e| matches!(e, SniError::Malformed(_))),
        ("zero-length record", vec![22, 3, 1, 0, 0], |e| matches!(e, SniError::Malformed(_))),
    ];
    for (name, wire, expected) in cases {
        match parse_client_hello(&wire) {
            Err(e) if expected(&e) => {}
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn garbage_never_panics() {
    // Every single-byte corruption of a real hello, and pseudo-random noise after a valid header.
    let hello = rustls_hello("web.default", &[ALPN_H2, ALPN_TCP]);
    for i in 0..hello.len() {
        for value in [0x00, 0x7f, 0xff] {
            let mut wire = hello.clone();
            wire[i] = value;
            let _ = parse_client_hello(&wire);
        }
    }
    let mut seed = 0x2545_f491_u32;
    for _ in 0..2000 {
        let mut wire = vec![22, 3, 1, 1, 0];
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            wire.push(seed as u8);
        }
        let _ = parse_client_hello(&wire);
    }
}

#[tokio::test]
async fn peek_waits_for_a_split_hello_and_consumes_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let wire = rustls_hello("db.default", &[ALPN_TCP]);
    let sent = wire.clone();
    let client = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (head, tail) = sent.split_at(40);
        stream.write_all(head).await.expect("write head");
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(tail).await.expect("write tail");
        stream.shutdown().await.expect("shutdown");
    });
    let (mut stream, _) = listener.accept().await.expect("accept");
    let hello = peek_client_hello(&stream, Duration::from_secs(5)).await.expect("peek");
    assert_eq!(hello.server_name.as_deref(), Some("db.default"));
    assert_eq!(hello.alpn, names(&[ALPN_TCP]));
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.expect("read");
    assert_eq!(all, wire, "peeking must leave every byte in the socket");
    client.await.expect("client");
}

#[tokio::test]
async fn peek_reports_non_tls_closed_and_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");

    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let (server, _) = listener.accept().await.expect("accept");
    assert!(matches!(peek_client_hello(&server, Duration::from_secs(5)).await, Err(SniError::NotTls)));

    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial.write_all(&rustls_hello("web", &[])[..20]).await.expect("write");
    let (server, _) = listener.accept().await.expect("accept");
    let started = Instant::now();
    assert!(matches!(peek_client_hello(&server, Duration::from_millis(200)).await, Err(SniError::Timeout(_))));
    assert!(started.elapsed() < Duration::from_secs(2));

    partial.shutdown().await.expect("shutdown");
    drop(partial);
    let closed = TcpStream::connect(addr).await.expect("connect");
    drop(closed);
    let (server, _) = listener.accept().await.expect("accept");
    assert!(matches!(peek_client_hello(&server, Duration::from_secs(5)).await, Err(SniError::Closed)));
}
