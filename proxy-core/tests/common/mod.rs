//! Test fixtures: a mesh PKI made with strait-pki, an echo application, inbound sidecars,
//! a recording TCP relay, and polling with a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use strait_pki::{CertificateAuthority, Identity, KeyAndCsr, TrustBundle};
use strait_proxy_core::tls::{ALPN_H2, ALPN_TCP};
use strait_proxy_core::tunnel::inbound::{self, InboundConfig};
use strait_proxy_core::tunnel::{outbound, TunnelMetrics};
use strait_proxy_core::{Drain, IdentityStore, TlsIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

pub const DAY: Duration = Duration::from_secs(86_400);
pub const YEAR: Duration = Duration::from_secs(365 * 86_400);
pub const LIMIT: Duration = Duration::from_secs(10);

/// A mesh root with two zone intermediates.
pub struct Mesh {
    pub root: CertificateAuthority,
    pub east: CertificateAuthority,
    pub east_pem: String,
    pub west: CertificateAuthority,
    pub west_pem: String,
}

impl Mesh {
    pub fn new(name: &str) -> Self {
        let root = CertificateAuthority::new_root(name, &format!("{name} root"), 10 * YEAR).expect("root");
        let (east, east_pem) = zone(&root, "east");
        let (west, west_pem) = zone(&root, "west");
        Mesh { root, east, east_pem, west, west_pem }
    }

    /// A bundle trusting this mesh's root only.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(vec![self.root.cert_pem().to_string()])
    }

    /// A workload certificate chain (leaf + east intermediate) and key for `spiffe://<mesh>/<service>`.
    pub fn east_workload(&self, service: &str) -> (String, String) {
        workload(&self.east, &self.east_pem, service)
    }

    /// Same under the west intermediate.
    pub fn west_workload(&self, service: &str) -> (String, String) {
        workload(&self.west, &self.west_pem, service)
    }
}

fn zone(root: &CertificateAuthority, name: &str) -> (CertificateAuthority, String) {
    let kc = KeyAndCsr::generate(name).expect("zone CSR");
    let pem = root.sign_intermediate(&kc.csr_pem, name, YEAR).expect("sign intermediate");
    (CertificateAuthority::from_pem(&pem, &kc.key_pem).expect("load intermediate"), pem)
}

fn workload(ca: &CertificateAuthority, intermediate: &str, service: &str) -> (String, String) {
    let kc = KeyAndCsr::generate(service).expect("workload CSR");
    let id = format!("spiffe://{}/{service}", ca.trust_domain());
    let leaf = ca.sign_workload(&kc.csr_pem, &id, DAY).expect("sign workload");
    (format!("{leaf}{intermediate}"), kc.key_pem)
}

/// TLS configs for a certificate under `bundle`, accepting both Strait ALPN protocols.
pub fn tls_identity((chain, key): &(String, String), bundle: &TrustBundle) -> TlsIdentity {
    TlsIdentity::from_pem(chain, key, bundle, &[ALPN_TCP, ALPN_H2]).expect("TLS identity")
}

pub fn id(s: &str) -> Identity {
    Identity::parse(s).expect("SPIFFE ID")
}

pub fn sni() -> ServerName<'static> {
    ServerName::try_from("web.default.mesh.strait").expect("SNI")
}

/// An application that echoes every connection until EOF, counting connections.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo { addr, accepted, task }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server sidecar: the inbound tunnel in front of an application.
pub struct Inbound {
    pub addr: SocketAddr,
    pub store: Arc<IdentityStore>,
    pub metrics: TunnelMetrics,
    pub peers: Arc<Mutex<Vec<String>>>,
    pub drain: Option<Drain>,
    pub task: JoinHandle<()>,
}

impl Inbound {
    /// Starts an inbound tunnel to `app`; `allow` decides on each peer identity (and every
    /// identity asked about is recorded in `peers`).
    pub async fn start(identity: TlsIdentity, app: SocketAddr, allow: fn(&Identity) -> bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind inbound");
        let addr = listener.local_addr().expect("addr");
        let store = Arc::new(IdentityStore::new(identity));
        let metrics = TunnelMetrics::default();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let authorize = move |peer: &Identity| {
            seen.lock().expect("lock").push(peer.to_string());
            allow(peer)
        };
        let drain = Drain::new();
        let task =
            tokio::spawn(inbound::serve(listener, store.clone(), InboundConfig::new(app), authorize, metrics.clone(), drain.watcher()));
        Inbound { addr, store, metrics, peers, drain: Some(drain), task }
    }

    pub fn peers(&self) -> Vec<String> {
        self.peers.lock().expect("lock").clone()
    }
}

/// Opens an mTLS connection from `client` to `addr`, expecting `expected` there.
pub async fn dial(client: &TlsIdentity, addr: SocketAddr, expected: &str) -> Result<TlsStream<TcpStream>, outbound::OutboundError> {
    outbound::connect(addr, client.client_config(&id(expected), ALPN_TCP), sni(), LIMIT).await
}

/// Writes `payload` and reads back as many bytes (the echo), or fails.
pub async fn echo_round_trip<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload).await?;
    stream.flush().await?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut back)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(back)
}

/// Reads until EOF or error: what a refused client sees. Returns the bytes read (if EOF).
pub async fn read_until_closed<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Vec<u8>, std::io::Error> {
    let mut all = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut all)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(all)
}

/// A TCP relay that forwards to `target` and records every byte sent from client to server.
pub struct Recorder {
    pub addr: SocketAddr,
    pub recorded: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = recorded.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut client_r, mut client_w) = client.into_split();
                    let (mut server_r, mut server_w) = server.into_split();
                    let upstream = async {
                        let mut buf = [0u8; 4096];
                        loop {
                            match client_r.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    sink.lock().expect("lock").extend_from_slice(&buf[..n]);
                                    if server_w.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = server_w.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                        let _ = client_w.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Recorder { addr, recorded, task }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.recorded.lock().expect("lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client sidecar with one explicit outbound port: local app connections are forwarded over
/// mTLS to `target`, which must be `expected`.
pub async fn client_sidecar(client: Arc<TlsIdentity>, target: SocketAddr, expected: &str) -> (SocketAddr, TunnelMetrics, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind outbound");
    let addr = listener.local_addr().expect("addr");
    let metrics = TunnelMetrics::default();
    let counters = metrics.clone();
    let expected = id(expected);
    let task = tokio::spawn(async move {
        while let Ok((app, _)) = listener.accept().await {
            let config = client.client_config(&expected, ALPN_TCP);
            let counters = counters.clone();
            tokio::spawn(async move {
                let options = outbound::ForwardOptions::default();
                let _ = outbound::forward(app, target, config, sni(), &options, &counters).await;
            });
        }
    });
    (addr, metrics, task)
}

/// Polls `condition` every 10 ms until it holds or `LIMIT` passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future` with the test limit.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}
