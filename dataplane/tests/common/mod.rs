//! A real global, zone and sidecars in-process for the sidecar's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_dataplane::config::{Cli, Command, Validated};
use strait_dataplane::Sidecar;
use strait_global_cp::GlobalCp;
use strait_zone_cp::ZoneCp;

/// Polls `f` every 50 ms until it returns Some, for at most 20 s.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port for a listener a test binds later (see
/// [`strait_runtime::sockets::port_for_a_later_listener`]).
pub fn free_port() -> u16 {
    strait_runtime::sockets::port_for_a_later_listener()
}

/// A global with mesh `default` and a registered, running zone-1.
pub struct Mesh {
    pub global: GlobalCp,
    pub zone: Option<ZoneCp>,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub dps: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    /// Flags every start of the zone gets on top of the usual ones.
    pub zone_args: Vec<String>,
}

impl Mesh {
    pub async fn start() -> Mesh {
        Mesh::start_with(|_| {}, &[]).await
    }

    /// A mesh whose global is configured by `tune` and whose zone gets `zone_args` as well.
    pub async fn start_with(tune: impl FnOnce(&mut strait_global_cp::Config), zone_args: &[&str]) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let mut config = strait_global_cp::Config::for_dir(dir.path().join("global"), "127.0.0.1:0".parse().unwrap());
        tune(&mut config);
        let global = GlobalCp::start(Arc::new(config)).await.unwrap();
        let (base, http) = (format!("http://{}", global.api_addr), reqwest::Client::new());
        let admin = std::fs::read_to_string(&global.token_file).unwrap().trim().to_string();
        let dps = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let zone_args = zone_args.iter().map(|a| a.to_string()).collect();
        let mut mesh = Mesh { global, zone: None, base, admin, http, dps, dir, zone_args };
        mesh.put("/meshes/default", json!({"type": "Mesh", "name": "default"})).await;
        let reg: Value = mesh
            .http
            .post(format!("{}/zones/zone-1/token", mesh.base))
            .bearer_auth(&mesh.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let zdir = mesh.zone_dir();
        std::fs::create_dir_all(&zdir).unwrap();
        std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap()).unwrap();
        std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap()).unwrap();
        mesh.start_zone().await;
        mesh
    }

    fn zone_dir(&self) -> PathBuf {
        self.dir.path().join("zone-1")
    }

    pub async fn start_zone(&mut self) {
        let zdir = self.zone_dir();
        let s = |p: &Path| p.display().to_string();
        let args = [
            "strait-zone",
            "--zone",
            "zone-1",
            "--global-address",
            &format!("https://{}", self.global.kds_addr),
            "--zone-token-file",
            &s(&zdir.join("token")),
            "--global-ca-file",
            &s(&zdir.join("ca.pem")),
            "--data-dir",
            &s(&zdir.join("data")),
            "--api-plaintext",
            "--api-address",
            "127.0.0.1:0",
            "--dps-address",
            &self.dps.to_string(),
            "--kds-max-backoff",
            "1s",
        ];
        let args = args.into_iter().map(str::to_string).chain(self.zone_args.iter().cloned());
        let zone = ZoneCp::start(Arc::new(strait_zone_cp::Config::try_parse_from(args).unwrap())).await.unwrap();
        eventually("the zone's intermediate CA", async || {
            strait_zone_cp::zone_ca::get(zone.store().as_ref(), "default").await.ok().flatten()
        })
        .await;
        self.zone = Some(zone);
    }

    pub async fn stop_zone(&mut self) {
        if let Some(z) = self.zone.take() {
            z.shutdown();
            z.wait().await;
        }
    }

    pub async fn put(&self, path: &str, body: Value) {
        let r = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        let status = r.status();
        assert!(status.is_success(), "{path}: {status} {}", r.text().await.unwrap_or_default());
    }

    /// PUTs `body` and returns the status and body of the answer, whatever they are.
    pub async fn put_status(&self, path: &str, body: Value) -> (u16, String) {
        let r = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    pub async fn delete(&self, path: &str) {
        let r = self.http.delete(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Backend (`backend-1`, HTTP, its application on `app`) and web with an outbound to it,
    /// once a request from web reaches backend: (backend, web, web's outbound port, a client).
    pub async fn web_and_backend(&self, app: u16) -> (Sidecar, Sidecar, u16, reqwest::Client) {
        let web_out = free_port();
        let backend = self.sidecar("backend", "backend", &dataplane("backend-1", "backend", free_port(), app, "http", &[])).await;
        let web = self.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
        let client = reqwest::Client::new();
        eventually("web -> backend", async || get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;
        (backend, web, web_out, client)
    }

    /// Starts a sidecar for Dataplane `yaml` of `service`.
    pub async fn sidecar(&self, name: &str, service: &str, yaml: &str) -> Sidecar {
        Sidecar::start(self.validated(name, service, yaml).await).await.unwrap()
    }

    /// The validated configuration of a sidecar for Dataplane `yaml` of `service`: its token,
    /// the zone's CA and the Dataplane written to files, its admin server on port 0.
    pub async fn validated(&self, name: &str, service: &str, yaml: &str) -> Validated {
        let token: Value = self
            .http
            .post(format!("{}/meshes/default/dataplane-tokens?service={service}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sdir = self.dir.path().join(name);
        std::fs::create_dir_all(&sdir).unwrap();
        std::fs::write(sdir.join("token"), token["token"].as_str().unwrap()).unwrap();
        std::fs::write(sdir.join("ca.pem"), &self.zone.as_ref().unwrap().dps_ca_pem).unwrap();
        std::fs::write(sdir.join("dp.yaml"), yaml).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        let args = [
            "strait-dp".to_string(),
            "run".into(),
            "--cp-address".into(),
            format!("https://{}", self.dps),
            "--cp-ca-file".into(),
            s(sdir.join("ca.pem")),
            "--dataplane-file".into(),
            s(sdir.join("dp.yaml")),
            "--dataplane-token-file".into(),
            s(sdir.join("token")),
            "--admin-address".into(),
            "127.0.0.1:0".into(),
            "--cp-max-backoff".into(),
            "1s".into(),
        ];
        let Command::Run(flags) = Cli::try_parse_from(args).unwrap().command else { panic!("run") };
        flags.validate().unwrap()
    }
}

/// Asks for any free port (port 0) for every inbound and outbound listener of the Dataplane;
/// inbounds must name their `servicePort`. A Dataplane file cannot say 0 (its validation
/// wants a real port), so tests set it on the validated configuration.
pub fn on_any_port(config: &mut Validated) {
    let strait_api::Spec::Dataplane(spec) = &mut config.dataplane.spec else { panic!("not a Dataplane") };
    for inbound in &mut spec.networking.inbound {
        assert!(inbound.service_port.is_some(), "port 0 needs servicePort");
        inbound.port = 0;
    }
    for outbound in &mut spec.networking.outbound {
        outbound.port = 0;
    }
}

/// `GET` on a sidecar's admin server.
pub async fn admin(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{}{path}", sidecar.admin_addr)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A Dataplane document: one inbound of `service` on `port` (application on `app`, with
/// `protocol`), and explicit outbounds `(local port, service)`.
pub fn dataplane(name: &str, service: &str, port: u16, app: u16, protocol: &str, outbounds: &[(u16, &str)]) -> String {
    let outbound: Vec<String> = outbounds.iter().map(|(p, s)| format!("{{port: {p}, tags: {{strait.io/service: {s}}}}}")).collect();
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {port}, servicePort: {app}, tags: {{strait.io/service: {service}, strait.io/protocol: {protocol}}}}}]\n    outbound: [{}]\n",
        outbound.join(", ")
    )
}

/// A TCP echo application on 127.0.0.1; returns its port.
pub async fn echo_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A running [`http_app`].
pub struct App {
    /// Where it listens on 127.0.0.1.
    pub port: u16,
    /// How long it waits before answering, in milliseconds (0 at start).
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An HTTP application on 127.0.0.1 (HTTP/1.1 and HTTP/2 without TLS) that answers
/// `<name> <method> <path> host=<host> body=<bytes received>`, after its delay (and returns a
/// request header `x-routed` as the response header `x-routed-seen`); `/grpc` ends
/// with the trailer `grpc-status: 0`; `/stream` sends `first ` at once and `rest` after the delay.
pub async fn http_app(name: &'static str) -> App {
    let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let delay = delay_ms.clone();
    use bytes::Bytes;
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let delay = delay.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let delay = Duration::from_millis(delay.load(std::sync::atomic::Ordering::Relaxed));
                    async move {
                        let (parts, body) = request.into_parts();
                        let received = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                        // HTTP/2 carries the host in the URI's authority, HTTP/1.1 in the Host header.
                        let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).map(str::to_string);
                        let host = host.or_else(|| parts.uri.authority().map(|a| a.to_string())).unwrap_or_else(|| "-".into());
                        if parts.uri.path() == "/stream" {
                            // Headers and a first chunk at once, the rest after the delay.
                            use futures::StreamExt;
                            let first = futures::stream::once(async {
                                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from("first ")))
                            });
                            let rest = futures::stream::once(async move {
                                tokio::time::sleep(delay).await;
                                Ok(hyper::body::Frame::data(Bytes::from("rest")))
                            });
                            let body = http_body_util::combinators::BoxBody::new(http_body_util::StreamBody::new(first.chain(rest)));
                            return Ok::<_, std::convert::Infallible>(http::Response::new(body));
                        }
                        tokio::time::sleep(delay).await;
                        let mut text = format!("{name} {} {} host={host} body={received}", parts.method, parts.uri.path());
                        // A header only sidecars may use, should one reach the application.
                        if let Some(route) = parts.headers.get("x-strait-route") {
                            text.push_str(&format!(" x-strait-route={route:?}"));
                        }
                        let mut frames = vec![Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(text)))];
                        if parts.uri.path() == "/grpc" {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            frames.push(Ok(hyper::body::Frame::trailers(trailers)));
                        }
                        let body =
                            http_body_util::combinators::BoxBody::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
                        let mut response = http::Response::new(body);
                        // What a route added to the request, sent back where a test can read it.
                        if let Some(routed) = parts.headers.get("x-routed") {
                            response.headers_mut().insert("x-routed-seen", routed.clone());
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    App { port, delay_ms }
}

/// `GET path` on 127.0.0.1:`port` with `client` (HTTP/1.1, kept alive); `None` if no response.
pub async fn get(client: &reqwest::Client, port: u16, path: &str) -> Option<(u16, String)> {
    let response = client.get(format!("http://127.0.0.1:{port}{path}")).timeout(Duration::from_secs(5)).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The sum of the samples `selector` picks on `sidecar`'s `/metrics` (a name, with the
/// labels a sample must carry), 0 when none.
pub async fn metric(sidecar: &Sidecar, selector: &str) -> f64 {
    let (_, text) = admin(sidecar, "/metrics").await;
    strait_proxy_core::metrics::sum_samples(&text, selector).unwrap_or(0.0)
}

/// The fingerprint of the certificate a TLS server at `addr` presents now, checked against
/// `ca_pem` for `name` (None if the handshake fails).
pub async fn server_fingerprint(addr: std::net::SocketAddr, ca_pem: &str, name: &str) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(strait_pki::fingerprint_der(&leaf))
}

/// The value of a Prometheus metric (the first series whose line starts with `prefix`) in
/// the text at `url`.
pub async fn scrape(url: &str, prefix: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Sends `msg` to `address` and returns what came back (empty if refused or closed).
pub async fn call(address: impl tokio::net::ToSocketAddrs, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(address).await else { return Vec::new() };
    if s.write_all(msg).await.is_err() {
        return Vec::new();
    }
    let mut buf = vec![0u8; msg.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        _ => Vec::new(),
    }
}
