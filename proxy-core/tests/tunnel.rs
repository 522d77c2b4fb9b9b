//! The mTLS tunnel end to end on real sockets: client sidecar → server sidecar → application.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use strait_pki::{fingerprint, fingerprint_der, Identity, TrustBundle};
use strait_proxy_core::drain::DrainOutcome;
use strait_proxy_core::tunnel::outbound::OutboundError;
use strait_proxy_core::DrainWatcher;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn allow_all(_: &Identity) -> bool {
    true
}

#[tokio::test]
async fn traffic_between_sidecars_is_mtls_and_reaches_the_app() {
    let mesh = Mesh::new("default");
    let echo = Echo::start().await;
    let server = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, allow_all).await;
    let relay = Recorder::start(server.addr).await;
    let client = Arc::new(tls_identity(&mesh.west_workload("client"), &mesh.bundle()));
    let (outbound_addr, client_metrics, _task) = client_sidecar(client, relay.addr, "spiffe://default/web").await;

    let mut app = TcpStream::connect(outbound_addr).await.expect("connect to the client sidecar");
    let payload = b"POST /orders HTTP/1.1\r\nx-secret: attack-at-dawn-4f1c9e\r\n\r\n".repeat(20);
    let back = echo_round_trip(&mut app, &payload).await.expect("echo through both sidecars");
    assert_eq!(back, payload);
    app.shutdown().await.expect("shutdown");
    assert!(read_until_closed(&mut app).await.expect("clean close").is_empty());

    let wire = relay.bytes();
    assert!(wire.len() > payload.len(), "the relay saw the tunnel traffic ({} bytes)", wire.len());
    assert_eq!(wire[0], 0x16, "the tunnel starts with a TLS handshake record");
    assert!(!contains(&wire, b"attack-at-dawn"), "application bytes must not cross the wire in clear");
    assert!(!contains(&wire, b"POST /orders"), "application bytes must not cross the wire in clear");

    assert_eq!(server.peers(), ["spiffe://default/client"], "the server authorized the client's SPIFFE ID");
    assert_eq!(echo.connections(), 1);
    eventually("byte counters", || {
        server.metrics.bytes_in.get() == payload.len() as u64 && client_metrics.bytes_out.get() == payload.len() as u64
    })
    .await;
    assert_eq!(server.metrics.bytes_out.get(), payload.len() as u64);
    assert_eq!(server.metrics.connections.get(), 1);
    assert_eq!(server.metrics.handshake_errors.get(), 0);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Dials `server` as `client` and asserts the connection is refused after the handshake: the
/// first read ends (error or EOF) and nothing reached the application.
async fn assert_refused(client: &strait_proxy_core::TlsIdentity, server: &Inbound, echo: &Echo) {
    // In TLS 1.3 the client may finish its side of the handshake before the server rejects it.
    if let Ok(mut stream) = dial(client, server.addr, "spiffe://default/web").await {
        let _ = stream.write_all(b"hello?").await;
        match read_until_closed(&mut stream).await {
            Ok(bytes) => assert!(bytes.is_empty(), "a refused client must not get data back"),
            Err(error) => assert_ne!(error.kind(), std::io::ErrorKind::TimedOut, "the server must close the connection"),
        }
    }
    eventually("the server counts the failed handshake", || server.metrics.handshake_errors.get() == 1).await;
    assert_eq!(echo.connections(), 0, "nothing may reach the application");
    assert!(server.peers().is_empty(), "authorization never ran for an unauthenticated peer");
}

#[tokio::test]
async fn a_peer_from_another_mesh_root_is_refused() {
    let mesh = Mesh::new("default");
    // Same mesh name, same SPIFFE IDs, but another root key: a regenerated or foreign CA.
    let impostor = Mesh::new("default");
    let echo = Echo::start().await;
    let server = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, allow_all).await;
    // The impostor trusts the real server (so the handshake gets as far as client auth).
    let both = TrustBundle::new(vec![mesh.root.cert_pem().to_string(), impostor.root.cert_pem().to_string()]);
    let client = tls_identity(&impostor.east_workload("client"), &both);
    assert_refused(&client, &server, &echo).await;
}

#[tokio::test]
async fn a_peer_whose_intermediate_is_revoked_is_refused() {
    let mesh = Mesh::new("default");
    let client = tls_identity(&mesh.west_workload("client"), &mesh.bundle());

    // Control: the same client is accepted while west's intermediate is trusted.
    let echo = Echo::start().await;
    let trusting = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, allow_all).await;
    let mut stream = dial(&client, trusting.addr, "spiffe://default/web").await.expect("dial");
    assert_eq!(echo_round_trip(&mut stream, b"ping").await.expect("echo"), b"ping");

    let mut revoking = mesh.bundle();
    revoking.revoked.insert(fingerprint(&mesh.west_pem).expect("fingerprint"));
    let echo = Echo::start().await;
    let server = Inbound::start(tls_identity(&mesh.east_workload("web"), &revoking), echo.addr, allow_all).await;
    assert_refused(&client, &server, &echo).await;
}

#[tokio::test]
async fn an_unauthorized_peer_is_closed_and_counted() {
    let mesh = Mesh::new("default");
    let echo = Echo::start().await;
    let only_frontend = |peer: &Identity| peer.path() == "frontend";
    let server = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, only_frontend).await;

    let frontend = tls_identity(&mesh.east_workload("frontend"), &mesh.bundle());
    let mut allowed = dial(&frontend, server.addr, "spiffe://default/web").await.expect("dial");
    assert_eq!(echo_round_trip(&mut allowed, b"ping").await.expect("allowed peer"), b"ping");

    let batch = tls_identity(&mesh.east_workload("batch"), &mesh.bundle());
    let mut denied = dial(&batch, server.addr, "spiffe://default/web").await.expect("the handshake itself succeeds");
    let _ = denied.write_all(b"let me in").await;
    match read_until_closed(&mut denied).await {
        Ok(bytes) => assert!(bytes.is_empty()),
        Err(error) => assert_ne!(error.kind(), std::io::ErrorKind::TimedOut, "a denied connection must be closed"),
    }
    eventually("denial counted", || server.metrics.denied.get() == 1).await;
    assert_eq!(server.peers(), ["spiffe://default/frontend", "spiffe://default/batch"]);
    assert_eq!(echo.connections(), 1, "only the authorized peer reached the application");
    assert_eq!(server.metrics.handshake_errors.get(), 0);
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_identity() {
    let mesh = Mesh::new("default");
    let echo = Echo::start().await;
    let server = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, allow_all).await;
    let client = tls_identity(&mesh.east_workload("client"), &mesh.bundle());

    match dial(&client, server.addr, "spiffe://default/payments").await {
        Err(OutboundError::IdentityMismatch { mismatch, .. }) => {
            assert_eq!(mismatch.expected.as_str(), "spiffe://default/payments");
            assert_eq!(mismatch.presented.as_str(), "spiffe://default/web");
        }
        Err(other) => panic!("expected an identity mismatch, got {other}"),
        Ok(_) => panic!("the client accepted a server with the wrong identity"),
    }
    eventually("the server sees the aborted handshake", || server.metrics.handshake_errors.get() == 1).await;
    assert_eq!(echo.connections(), 0);

    // The SNI is not what is checked: the same SNI with the right expected identity works.
    let mut stream = dial(&client, server.addr, "spiffe://default/web").await.expect("expected identity");
    assert_eq!(echo_round_trip(&mut stream, b"ok").await.expect("echo"), b"ok");
}

#[tokio::test]
async fn rotation_reaches_new_connections_while_open_ones_keep_working() {
    let mesh = Mesh::new("default");
    let echo = Echo::start().await;
    let first = tls_identity(&mesh.east_workload("web"), &mesh.bundle());
    let first_leaf = fingerprint_der(&first.cert().chain()[0]);
    let server = Inbound::start(first, echo.addr, allow_all).await;
    let client = tls_identity(&mesh.east_workload("client"), &mesh.bundle());
    let mut updates = server.store.subscribe();

    let mut old = dial(&client, server.addr, "spiffe://default/web").await.expect("dial before rotation");
    assert_eq!(presented_leaf(&old), first_leaf);
    assert_eq!(echo_round_trip(&mut old, b"before").await.expect("echo"), b"before");

    let second = tls_identity(&mesh.east_workload("web"), &mesh.bundle());
    let second_leaf = fingerprint_der(&second.cert().chain()[0]);
    assert_ne!(first_leaf, second_leaf);
    server.store.replace(second);
    within("rotation announced", updates.changed()).await.expect("watch");
    assert_eq!(fingerprint_der(&updates.borrow().cert().chain()[0]), second_leaf);

    let mut new = dial(&client, server.addr, "spiffe://default/web").await.expect("dial after rotation");
    assert_eq!(presented_leaf(&new), second_leaf, "a new connection presents the new certificate");
    assert_eq!(echo_round_trip(&mut new, b"new").await.expect("echo"), b"new");

    // The connection opened before the rotation still carries bytes both ways.
    let big = vec![7u8; 256 * 1024];
    assert_eq!(echo_round_trip(&mut old, &big).await.expect("old connection after rotation"), big);
    assert_eq!(presented_leaf(&old), first_leaf);
}

/// Fingerprint of the leaf certificate the server presented on `stream`.
fn presented_leaf(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| fingerprint_der(c)).expect("peer certificate")
}

#[tokio::test]
async fn drain_lets_a_connection_finish_and_cuts_one_past_the_deadline() {
    let mesh = Mesh::new("default");
    let echo = Echo::start().await;
    let mut server = Inbound::start(tls_identity(&mesh.east_workload("web"), &mesh.bundle()), echo.addr, allow_all).await;
    let client = tls_identity(&mesh.east_workload("client"), &mesh.bundle());
    let mut short = dial(&client, server.addr, "spiffe://default/web").await.expect("dial");
    let mut long = dial(&client, server.addr, "spiffe://default/web").await.expect("dial");
    assert_eq!(echo_round_trip(&mut short, b"1").await.expect("echo"), b"1");
    assert_eq!(echo_round_trip(&mut long, b"2").await.expect("echo"), b"2");

    let drain = server.drain.take().expect("drain");
    let watcher: DrainWatcher = drain.watcher();
    let deadline = Duration::from_millis(1500);
    let started = std::time::Instant::now();
    let draining = tokio::spawn(async move { drain.drain(deadline).await });
    within("drain signaled", watcher.signaled()).await;
    drop(watcher);

    // New connections are refused once the listener is closed...
    within("listener closed", async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // ...while an open connection keeps working and can finish cleanly within the deadline.
    assert_eq!(echo_round_trip(&mut short, b"still here").await.expect("in-flight during drain"), b"still here");
    short.shutdown().await.expect("shutdown");
    assert!(read_until_closed(&mut short).await.expect("clean close").is_empty());
    assert!(started.elapsed() < deadline, "the short connection finished within the deadline");
    assert!(!draining.is_finished(), "the long connection holds the drain open");

    // The long connection outlives the deadline and is cut.
    let cut = read_until_closed(&mut long).await;
    assert!(!matches!(&cut, Err(e) if e.kind() == std::io::ErrorKind::TimedOut), "the long connection must be cut: {cut:?}");
    assert!(started.elapsed() >= deadline - Duration::from_millis(50), "cut at the deadline, not before: {:?}", started.elapsed());
    assert_eq!(within("drain ends", draining).await.expect("join"), DrainOutcome::Forced);
    within("inbound task ends", &mut server.task).await.expect("join");
    assert_eq!(echo_round_trip(&mut long, b"x").await.ok(), None, "the cut connection carries nothing more");
}
