//! The pool against peers of either kind: a sidecar that serves HTTP/1.1 between sidecars, and
//! an older one that answers only HTTP/2 (its TLS server offers `h2` alone).

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
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
/// HTTP/1.1 or HTTP/2 by the protocol agreed, answering each request with its version (in the
/// body and in `x-version`). Its
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
                    let version = format!("{:?}", request.version());
                    let mut response = Response::new(Full::new(bytes::Bytes::from(version.clone())));
                    response.headers_mut().insert("x-version", version.parse().expect("a header value"));
                    Ok::<_, hyper::Error>(response)
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

/// What a connector borrows: the client's identity, the peer's expected one, and the rest.
struct Client {
    identities: IdentityStore,
    expected: Identity,
    sni: ServerName<'static>,
    metrics: TunnelMetrics,
    _drain: Drain,
    watcher: DrainWatcher,
    tasks: TaskTracker,
}

impl Client {
    fn new(pki: &Pki) -> Client {
        let drain = Drain::new();
        Client {
            identities: IdentityStore::new(pki.identity("web", &[])),
            expected: Identity::parse("spiffe://default/backend").expect("SPIFFE ID"),
            sni: ServerName::try_from("backend.default.strait").expect("SNI"),
            metrics: TunnelMetrics::default(),
            watcher: drain.watcher(),
            _drain: drain,
            tasks: TaskTracker::new(),
        }
    }

    fn connector(&self) -> Connector<'_, Health> {
        Connector {
            identities: &self.identities,
            expected: &self.expected,
            sni: &self.sni,
            health: &Health,
            connect_timeout: Duration::from_secs(5),
            max_age: None,
            max_requests: None,
            metrics: &self.metrics,
            drain: &self.watcher,
            tasks: &self.tasks,
        }
    }
}

/// Sends one request through `slot` as an application's HTTP/1.1 request is, on a connection
/// the pool gives for HTTP/1.1: the version the peer saw, whether it went over HTTP/1.1
/// between the sidecars, and the response (its unread body holding an HTTP/1.1 connection).
async fn one_request(slot: &Slot, target: SocketAddr, connector: &Connector<'_, Health>) -> (String, bool, Response<Upstream>) {
    let sender = slot.sender_http1(target, connector).await.expect("a connection to the peer");
    let http1 = matches!(sender, Sender::Http1(_));
    // As the outbound sends it: an absolute URI, no Host header.
    let request = Request::get("http://backend.default/").body(Counted::empty(Default::default())).expect("request");
    let response = sender.send(&mut { request }).await.map_err(|e| e.error).expect("an answer");
    let version = response.headers()["x-version"].to_str().expect("text").to_string();
    (version, http1, response)
}

/// Reads `response` to its end (its connection goes back to the pool): its body.
async fn read(response: Response<Upstream>) -> String {
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends two requests one after the other through `slot`: the versions the peer saw, and
/// whether each went over HTTP/1.1 between the sidecars.
async fn two_requests(slot: &Slot, target: SocketAddr, pki: &Pki) -> Vec<(String, bool)> {
    let client = Client::new(pki);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (version, http1, response) = one_request(slot, target, &client.connector()).await;
        // The connection goes back to the pool when the response has ended.
        assert_eq!(read(response).await, version);
        seen.push((version, http1));
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

#[tokio::test]
async fn requests_beyond_the_lent_http1_connections_share_the_http2_one() {
    let pki = Pki::new();
    let (target, accepted) = peer(pki.identity("backend", &[ALPN_HTTP1, ALPN_H2])).await;
    let (slot, client) = (Slot::default(), Client::new(&pki));
    let connector = client.connector();
    // As many requests at once as HTTP/1.1 connections may be lent: each has its own.
    let mut held = Vec::new();
    for _ in 0..MAX_LENT_HTTP1 {
        let (version, http1, response) = one_request(&slot, target, &connector).await;
        assert_eq!((version.as_str(), http1), ("HTTP/1.1", true));
        held.push(response);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), MAX_LENT_HTTP1);
    // Two more while those are lent: over one HTTP/2 connection, not two more handshakes.
    for _ in 0..2 {
        let (version, http1, response) = one_request(&slot, target, &connector).await;
        assert_eq!((version.as_str(), http1), ("HTTP/2.0", false));
        read(response).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), MAX_LENT_HTTP1 + 1, "one HTTP/2 connection for both");
    // Once the first ones are back, an HTTP/1.1 request takes an idle HTTP/1.1 connection again.
    for response in held {
        read(response).await;
    }
    let (version, http1, _response) = one_request(&slot, target, &connector).await;
    assert_eq!((version.as_str(), http1), ("HTTP/1.1", true));
    assert_eq!(accepted.load(Ordering::SeqCst), MAX_LENT_HTTP1 + 1, "no connection opened");
}

#[tokio::test]
async fn idle_http1_connections_close_when_the_sidecar_drains() {
    let pki = Pki::new();
    let (target, _accepted) = peer(pki.identity("backend", &[ALPN_HTTP1, ALPN_H2])).await;
    let (slot, client) = (Slot::default(), Client::new(&pki));
    let (version, _, response) = one_request(&slot, target, &client.connector()).await;
    assert_eq!(read(response).await, version);
    assert_eq!(slot.http1.lock().len(), 1, "idle in the pool");
    client._drain.signal();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !slot.http1.lock().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the idle connection was never closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Those still lent are closed as they come back.
    assert!(slot.http1.closed.load(Ordering::Relaxed));
}
