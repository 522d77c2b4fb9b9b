//! Building TLS identities: refusing bad certificates, caching client configs, ALPN, SNI peeking.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use strait_pki::fingerprint;
use strait_proxy_core::sni::peek_client_hello;
use strait_proxy_core::tls::{TlsError, WorkloadCert, ALPN_H2, ALPN_TCP};
use strait_proxy_core::tunnel::outbound;
use strait_proxy_core::TlsIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[test]
fn a_certificate_that_does_not_verify_against_the_bundle_is_not_used() {
    let mesh = Mesh::new("default");
    let other = Mesh::new("other");
    let (chain, key) = mesh.east_workload("web");
    let mut revoking = mesh.bundle();
    revoking.revoked.insert(fingerprint(&mesh.east_pem).expect("fingerprint"));
    let leaf_only = chain.split_inclusive("-----END CERTIFICATE-----\n").next().expect("leaf").to_string();
    let (_, other_key) = mesh.east_workload("web");

    type Case<'a> = (&'a str, Result<TlsIdentity, TlsError>, fn(&TlsError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        ("foreign root", TlsIdentity::from_pem(&chain, &key, &other.bundle(), &[ALPN_TCP]), |e| matches!(e, TlsError::OwnChain(_))),
        ("own intermediate revoked", TlsIdentity::from_pem(&chain, &key, &revoking, &[ALPN_TCP]), |e| matches!(e, TlsError::OwnChain(_))),
        ("intermediate missing", TlsIdentity::from_pem(&leaf_only, &key, &mesh.bundle(), &[ALPN_TCP]), |e| {
            matches!(e, TlsError::OwnChain(_))
        }),
        ("key of another certificate", TlsIdentity::from_pem(&chain, &other_key, &mesh.bundle(), &[ALPN_TCP]), |e| {
            matches!(e, TlsError::Rustls(_))
        }),
        ("no certificate", TlsIdentity::from_pem("", &key, &mesh.bundle(), &[ALPN_TCP]), |e| matches!(e, TlsError::BadCertificate { .. })),
        ("no key", TlsIdentity::from_pem(&chain, "", &mesh.bundle(), &[ALPN_TCP]), |e| matches!(e, TlsError::BadKey { .. })),
        ("empty bundle", TlsIdentity::from_pem(&chain, &key, &strait_pki::TrustBundle::default(), &[ALPN_TCP]), |e| {
            matches!(e, TlsError::Bundle(_))
        }),
    ];
    for (name, result, expected) in cases {
        match result {
            Err(e) if expected(&e) => {}
            Err(e) => panic!("{name}: unexpected error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }

    let good = TlsIdentity::from_pem(&chain, &key, &mesh.bundle(), &[ALPN_TCP]).expect("valid identity");
    assert_eq!(good.identity().as_str(), "spiffe://default/web");
    let cert = WorkloadCert::from_pem(&chain, &key).expect("cert");
    assert_eq!(cert.chain().len(), 2);
    let left = good.not_after().duration_since(std::time::SystemTime::now()).expect("in the future");
    assert!(left > DAY - Duration::from_secs(120) && left <= DAY, "{left:?}");
}

#[test]
fn client_configs_are_cached_per_peer_and_alpn() {
    let mesh = Mesh::new("default");
    let client = tls_identity(&mesh.east_workload("client"), &mesh.bundle());
    let web = id("spiffe://default/web");
    let a = client.client_config(&web, ALPN_TCP);
    let b = client.client_config(&web, ALPN_TCP);
    assert!(Arc::ptr_eq(&a, &b), "the same peer and ALPN reuse one config");
    let h2 = client.client_config(&web, ALPN_H2);
    assert!(!Arc::ptr_eq(&a, &h2));
    assert_eq!(h2.alpn_protocols, vec![ALPN_H2.to_vec()]);
    let db = client.client_config(&id("spiffe://default/db"), ALPN_TCP);
    assert!(!Arc::ptr_eq(&a, &db));
    assert!(Arc::ptr_eq(&db, &client.client_config(&id("spiffe://default/db"), ALPN_TCP)));
}

#[tokio::test]
async fn sni_is_peeked_without_consuming_and_the_handshake_still_succeeds() {
    let mesh = Mesh::new("default");
    let server = tls_identity(&mesh.east_workload("web"), &mesh.bundle());
    let client = tls_identity(&mesh.east_workload("client"), &mesh.bundle());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");

    let config = client.client_config(&id("spiffe://default/web"), ALPN_H2);
    let dialer = tokio::spawn(async move {
        let mut stream = outbound::connect(addr, config, sni(), LIMIT).await.expect("mTLS handshake after the peek");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        stream.write_all(b"over tls").await.expect("write");
        stream.shutdown().await.expect("shutdown");
    });

    let (stream, _) = listener.accept().await.expect("accept");
    let hello = peek_client_hello(&stream, LIMIT).await.expect("peek");
    assert_eq!(hello.server_name.as_deref(), Some("web.default.mesh.strait"));
    assert_eq!(hello.alpn, vec![ALPN_H2.to_vec()]);
    // The peeked bytes are still there: rustls reads the whole ClientHello itself.
    let mut tls = within("handshake", TlsAcceptor::from(server.server_config()).accept(stream)).await.expect("server handshake");
    let peer = strait_proxy_core::tls::peer_identity(tls.get_ref().1).expect("peer identity");
    assert_eq!(peer.as_str(), "spiffe://default/client");
    let mut got = Vec::new();
    within("read", tls.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"over tls");
    dialer.await.expect("dialer");
}
