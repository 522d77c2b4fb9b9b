//! The pool against peers of either kind: a sidecar that serves HTTP/1.1 between sidecars, and
//! an older one that answers only HTTP/2 (its TLS server offers `h2` alone).

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use strait_pki::{CertificateAuthority, KeyAndCsr, TrustBundle};
use strait_proxy_core::drain::Drain;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

/// A mesh root, its zone intermediate, and a bundle trusting the root.
struct Pki {
    zone: CertificateAuthority,
    intermediate: String,
    bundle: TrustBundle,
}

impl Pki {
    fn new() -> Self {
        let root = CertificateAuthority::new_root("default", "default root", 10 * DAY).expect("root");
        let csr = KeyAndCsr::generate("zone").expect("zone CSR");
        let intermediate = root.sign_intermediate(&csr.csr_pem, "zone", 10 * DAY).expect("intermediate");
        let zone = CertificateAuthority::from_pem(&intermediate, &csr.key_pem).expect("zone CA");
        Pki { zone, intermediate, bundle: TrustBundle::new(vec![root.cert_pem().to_string()]) }
    }

    /// `service`'s identity, its TLS server offering `alpn`.
    fn identity(&self, service: &str, alpn: &[&[u8]]) -> TlsIdentity {
        let csr = KeyAndCsr::generate(service).expect("workload CSR");
        let leaf = self.zone.sign_workload(&csr.csr_pem, &format!("spiffe://default/{service}"), DAY).expect("workload");
        TlsIdentity::from_pem(&format!("{leaf}{}", self.intermediate), &csr.key_pem, &self.bundle, alpn).expect("TLS identity")
    }
}

/// A peer sidecar's inbound as `identity` (whose server ALPN decides what it speaks): serves
/// HTTP/1.1 or HTTP/2 by the protocol agreed, answering each request with its version. Its
/// address and the count of TLS connections it accepted.
async fn peer(identity: TlsIdentity) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let acceptor = TlsAcceptor::from(identity.server_config());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                let answer = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, hyper::Error>(Response::new(Full::new(bytes::Bytes::from(format!("{:?}", request.version())))))
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    server2::Builder::new(TokioExecutor::new()).serve_connection(io, answer).await
                } else {
                    server1::Builder::new().serve_connection(io, answer).await
                };
            });
        }
    });
    (addr, accepted)
}

struct Health;

impl ConnectOutcome for Health {
    fn connected(&self, _: Duration) {}
    fn failed(&self) {}
}

/// Sends two requests one after the other through `slot` as an application's HTTP/1.1
/// requests are: the versions the peer saw, and whether each went over HTTP/1.1 between the
/// sidecars.
async fn two_requests(slot: &Slot, target: SocketAddr, pki: &Pki) -> Vec<(String, bool)> {
    let identities = IdentityStore::new(pki.identity("web", &[]));
    let expected = Identity::parse("spiffe://default/backend").expect("SPIFFE ID");
    let sni = ServerName::try_from("backend.default.strait").expect("SNI");
    let (metrics, drain, tasks) = (TunnelMetrics::default(), Drain::new(), TaskTracker::new());
    let watcher = drain.watcher();
    let connector = Connector {
        identities: &identities,
        expected: &expected,
        sni: &sni,
        health: &Health,
        connect_timeout: Duration::from_secs(5),
        max_age: None,
        max_requests: None,
        metrics: &metrics,
        drain: &watcher,
        tasks: &tasks,
    };
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut sender = slot.sender_http1(target, &connector).await.expect("a connection to the peer");
        let http1 = matches!(sender, Sender::Http1(_));
        // As the outbound sends it: an absolute URI, no Host header.
        let request = Request::get("http://backend.default/").body(Counted::empty(Default::default())).expect("request");
        let response = sender.try_send_request(request).await.map_err(|e| e.into_error()).expect("an answer");
        let body = response.into_body().collect().await.expect("the body").to_bytes();
        // The connection goes back to the pool when the response has ended.
        drop(sender.into_lease());
        seen.push((String::from_utf8_lossy(&body).into_owned(), http1));
    }
    seen
}

#[tokio::test]
async fn a_peer_that_serves_http1_gets_the_requests_over_one_pooled_http1_connection() {
    let pki = Pki::new();
    let (target, accepted) = peer(pki.identity("backend", &[ALPN_HTTP1, ALPN_H2])).await;
    let slot = Slot::default();
    let seen = two_requests(&slot, target, &pki).await;
    assert_eq!(seen, vec![("HTTP/1.1".to_string(), true), ("HTTP/1.1".to_string(), true)]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the second request reuses the idle connection");
}

#[tokio::test]
async fn an_older_peer_that_only_speaks_http2_between_sidecars_gets_them_over_its_http2_connection() {
    let pki = Pki::new();
    let (target, accepted) = peer(pki.identity("backend", &[ALPN_H2])).await;
    let slot = Slot::default();
    let seen = two_requests(&slot, target, &pki).await;
    assert_eq!(seen, vec![("HTTP/2.0".to_string(), false), ("HTTP/2.0".to_string(), false)]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the second request goes over the pooled HTTP/2 connection");
    assert!(slot.connected(), "the HTTP/2 connection is the endpoint's pooled one");
}
