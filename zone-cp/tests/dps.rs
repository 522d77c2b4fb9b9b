//! The zone's dataplane config server (DPS) against a hand-driven sidecar: registration with a
//! dataplane token, the effective configuration and its updates, the workload certificate,
//! and refusals. Sidecars' streams go over the framed transport, as `strait-dp`'s do; the
//! registration and the refusals are checked over gRPC too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_api::dps::dataplane_sync_client::DataplaneSyncClient;
use strait_api::dps::{dataplane_message, zone_message, DataplaneMessage, ZoneMessage, PROTOCOL_VERSION};
use strait_api::proxy_config::ProxyConfig;
use strait_global_cp::GlobalCp;
use strait_zone_cp::ZoneCp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod common;

struct Env {
    global: GlobalCp,
    zone: ZoneCp,
    http: reqwest::Client,
    base: String,
    admin: String,
    zone_token: String,
    proxy_token: String,
    /// Sidecars open their streams over gRPC rather than the framed transport.
    grpc: bool,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (global, args, http, base, admin) = common::global_and_zone_args(dir.path(), "127.0.0.1:0").await;
    let zdir = dir.path().join("zone-1");
    let read = |file: &str| std::fs::read_to_string(zdir.join(file)).unwrap();
    let (zone_token, proxy_token) = (read("token"), read("proxy-token"));
    let args = std::iter::once("strait-zone".to_string()).chain(args);
    let zone = ZoneCp::start(Arc::new(strait_zone_cp::Config::try_parse_from(args).unwrap())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while strait_zone_cp::zone_ca::get(zone.store().as_ref(), "default").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the zone never got its intermediate CA");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Env { global, zone, http, base, admin, zone_token, proxy_token, grpc: false, _dir: dir }
}

impl Env {
    async fn token(&self, service: &str) -> String {
        self.issue(&format!("service={service}")).await["token"].as_str().unwrap().to_string()
    }

    /// `POST /meshes/default/dataplane-tokens?<query>`: the token, its id and expiry.
    async fn issue(&self, query: &str) -> Value {
        self.http
            .post(format!("{}/meshes/default/dataplane-tokens?{query}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `DELETE <path>` (a revocation) with the admin token.
    async fn revoke(&self, path: &str) {
        let r = self.http.delete(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await.unwrap();
        assert!(r.status().is_success(), "revoking {path}: {}", r.status());
    }

    async fn put(&self, path: &str, body: Value) {
        let r = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

/// A sidecar stream: what it sends and what it receives.
struct Sidecar {
    tx: mpsc::Sender<DataplaneMessage>,
    rx: std::pin::Pin<Box<dyn futures::Stream<Item = Result<ZoneMessage, tonic::Status>> + Send>>,
}

fn dataplane(name: &str, service: &str, port: u16) -> Vec<u8> {
    calling(name, service, port, &[])
}

/// A Dataplane with an explicit outbound to each of `calls`.
fn calling(name: &str, service: &str, port: u16, calls: &[&str]) -> Vec<u8> {
    let outbound: Vec<Value> =
        calls.iter().enumerate().map(|(i, s)| json!({"port": 10001 + i, "tags": {"strait.io/service": s}})).collect();
    serde_json::to_vec(&json!({"type": "Dataplane", "name": name, "mesh": "default",
        "spec": {"networking": {"address": "127.0.0.1", "outbound": outbound,
            "inbound": [{"port": port, "tags": {"strait.io/service": service, "strait.io/protocol": "http"}}]}}}))
    .unwrap()
}

async fn connect(env: &Env, token: &str, dp: Vec<u8>) -> Result<Sidecar, tonic::Status> {
    connect_with(env, token, dp, false).await
}

/// A sidecar stream; `deltas`: it takes its configuration in parts.
async fn connect_with(env: &Env, token: &str, dp: Vec<u8>, deltas: bool) -> Result<Sidecar, tonic::Status> {
    connect_hello(env, token, dp, deltas, false).await
}

/// A sidecar stream; `pieces`: it takes its deltas in pieces.
async fn connect_hello(env: &Env, token: &str, dp: Vec<u8>, deltas: bool, pieces: bool) -> Result<Sidecar, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(DataplaneMessage {
        message: Some(dataplane_message::Message::Hello(strait_api::dps::Hello {
            protocol: PROTOCOL_VERSION,
            dataplane: dp,
            software_version: "test".into(),
            deltas,
            pieces,
        })),
    })
    .await
    .unwrap();
    if !env.grpc {
        let address = format!("https://{}", env.zone.dps_addr);
        let strait_proxy_core::cp_client::Framed { read, write } =
            strait_proxy_core::cp_client::connect_framed(&address, &env.zone.dps_ca_pem, "strait-zone", None, token)
                .await
                .map_err(tonic::Status::unavailable)?;
        strait_runtime::framed::spawn_writer(write, rx);
        // A refusal comes as the stream's end: see `Sidecar::message`.
        return Ok(Sidecar { tx, rx: Box::pin(strait_runtime::framed::messages(read, 64 << 20)) });
    }
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&env.zone.dps_ca_pem)).domain_name("strait-zone");
    let channel =
        Endpoint::from_shared(format!("https://{}", env.zone.dps_addr)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let rx = DataplaneSyncClient::new(channel).stream(request).await?.into_inner();
    Ok(Sidecar { tx, rx: Box::pin(rx) })
}

impl Sidecar {
    /// The next message, `None` at the stream's end, or the status it ended with.
    async fn message(&mut self) -> Result<Option<ZoneMessage>, tonic::Status> {
        futures::StreamExt::next(&mut self.rx).await.transpose()
    }

    async fn next(&mut self) -> zone_message::Message {
        let m = tokio::time::timeout(Duration::from_secs(10), self.message())
            .await
            .expect("a message within 10s")
            .expect("stream ok")
            .expect("stream open");
        m.message.expect("a message")
    }

    async fn config(&mut self) -> (u64, ProxyConfig) {
        loop {
            if let zone_message::Message::Config(c) = self.next().await {
                return (c.version, serde_json::from_slice(&c.json).unwrap());
            }
        }
    }

    async fn delta(&mut self) -> strait_api::dps::ConfigDelta {
        loop {
            match self.next().await {
                zone_message::Message::ConfigDelta(d) => return d,
                zone_message::Message::Config(_) => panic!("a sidecar that takes deltas got a whole configuration"),
                _ => continue,
            }
        }
    }
}

fn action_for(cfg: &ProxyConfig, caller: &str) -> Option<String> {
    let tags = [("strait.io/service".to_string(), caller.to_string())].into();
    let rule = strait_api::proxy_policies::rule_for(&cfg.inbounds[0].policies.traffic_permission, &tags)?;
    Some(format!("{:?}", rule.conf.action))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_registers_gets_its_config_and_certificate_and_follows_changes() {
    registers_and_follows_changes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_over_grpc_registers_gets_its_config_and_certificate_and_follows_changes() {
    registers_and_follows_changes(true).await;
}

async fn registers_and_follows_changes(grpc: bool) {
    let mut env = env().await;
    env.grpc = grpc;
    let token = env.token("web").await;
    let mut web = connect(&env, &token, calling("web-1", "web", 8080, &["api"])).await.expect("registered");
    let (v1, cfg) = web.config().await;
    assert_eq!(cfg.identity, "spiffe://default/web");
    assert_eq!(action_for(&cfg, "frontend").as_deref(), Some("Allow"), "the mesh's default allow-all");
    assert_eq!(cfg.trust_bundle.roots.len(), 1);

    // The certificate: issued for the token's service, chained to the mesh root via the zone.
    let kc = strait_pki::KeyAndCsr::generate("web").unwrap();
    web.tx
        .send(DataplaneMessage {
            message: Some(dataplane_message::Message::CertificateRequest(strait_api::dps::CertificateRequest { csr_pem: kc.csr_pem })),
        })
        .await
        .unwrap();
    let chain = loop {
        if let zone_message::Message::Certificate(c) = web.next().await {
            assert!(c.error.is_empty(), "{}", c.error);
            break c.cert_chain_pem;
        }
    };
    let certs: Vec<String> = chain.split_inclusive("-----END CERTIFICATE-----\n").map(str::to_string).collect();
    assert_eq!(certs.len(), 2, "leaf and the zone's intermediate");
    let bundle = strait_pki::TrustBundle { roots: cfg.trust_bundle.roots.clone(), revoked: cfg.trust_bundle.revoked.clone() };
    let id = bundle.verify(&certs[0], &certs[1..], std::time::SystemTime::now()).expect("verifies against the mesh root");
    assert_eq!(id.as_str(), "spiffe://default/web");

    // A permission change on the global reaches the sidecar as a new version.
    env.put("/meshes/default/meshtrafficpermissions/deny-frontend", json!({"type": "MeshTrafficPermission", "name": "deny-frontend", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "web"}, "from": [{"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Deny"}}]}})).await;
    let (v2, cfg) = web.config().await;
    assert!(v2 > v1);
    assert_eq!(action_for(&cfg, "frontend").as_deref(), Some("Deny"));
    assert_eq!(action_for(&cfg, "other").as_deref(), Some("Allow"));

    // A second sidecar becomes an endpoint of the first one's destination `api`.
    let mut api = connect(&env, &env.token("api").await, dataplane("api-1", "api", 9090)).await.expect("api registers");
    let _ = api.config().await;
    let (_, cfg) = web.config().await;
    let api_out = cfg.outbounds.iter().find(|o| o.service == "api").expect("api is a destination of web");
    assert_eq!(api_out.endpoints.len(), 1);
    assert_eq!(api_out.endpoints[0].port, 9090);
    assert_eq!(api_out.endpoints[0].zone, "zone-1");

    // A change reaches only the sidecars it affects: a sidecar of a service web does not call
    // is not in web's configuration, and a permission for api changes api's configuration
    // and not web's, so web's next configuration is the one of the change after, which
    // affects both.
    let mut other = connect(&env, &env.token("other").await, dataplane("other-1", "other", 9191)).await.expect("other registers");
    let (_, other_cfg) = other.config().await;
    assert!(other_cfg.outbounds.is_empty(), "other calls nothing: {:?}", other_cfg.outbounds);
    env.put("/meshes/default/meshtrafficpermissions/deny-frontend-api", json!({"type": "MeshTrafficPermission", "name": "deny-frontend-api", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "api"}, "from": [{"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Deny"}}]}})).await;
    let (_, api_cfg) = api.config().await;
    assert_eq!(action_for(&api_cfg, "frontend").as_deref(), Some("Deny"));
    env.put(
        "/meshes/default/meshtimeouts/idle",
        json!({"type": "MeshTimeout", "name": "idle", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "api"}, "default": {"idleTimeout": "7s"}}]}}),
    )
    .await;
    let (_, cfg) = web.config().await;
    let api_out = cfg.outbounds.iter().find(|o| o.service == "api").expect("api is still a destination of web");
    assert_eq!(
        api_out.policies.timeout.as_ref().and_then(|t| t.idle_timeout).map(|d| d.get()),
        Some(Duration::from_secs(7)),
        "web's next configuration must be the timeout's: neither other's registration nor the permission for api concerned web"
    );
    assert!(cfg.outbounds.iter().all(|o| o.service == "api"), "only what web calls: {:?}", cfg.outbounds);
    drop(other);

    // Registered Dataplanes are the zone's inventory; leaving unregisters.
    let zones = |env: &Env| {
        let url = format!("http://{}/zones", env.zone.api_addr);
        async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() }
    };
    let services = |v: &Value| v["items"][0]["services"].as_array().map(|s| s.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while services(&zones(&env).await) != 2 {
        assert!(Instant::now() < deadline, "the zone's inventory lists web and api");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // api's application fails its probe: api leaves web's endpoints and the inventory's
    // healthy count (other zones stop sending to it), and comes back when it passes.
    let report = |ready: bool| DataplaneMessage {
        message: Some(dataplane_message::Message::Health(strait_api::dps::Health {
            inbounds: vec![strait_api::dps::InboundReadiness { port: 9090, ready, reason: if ready { "" } else { "refused" }.into() }],
        })),
    };
    let api_healthy = |v: &Value| {
        v["items"][0]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "api"))
            .map(|s| (s["endpoints"].clone(), s["healthy"].clone()))
    };
    for (ready, endpoints) in [(false, 0), (true, 1)] {
        api.tx.send(report(ready)).await.unwrap();
        let (_, cfg) = web.config().await;
        let api_out = cfg.outbounds.iter().find(|o| o.service == "api");
        assert_eq!(api_out.map_or(0, |o| o.endpoints.len()), endpoints, "api ready={ready}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while api_healthy(&zones(&env).await) != Some((json!(1), json!(endpoints))) {
            assert!(Instant::now() < deadline, "the inventory counts api's healthy endpoints: {:?}", api_healthy(&zones(&env).await));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(api);
    let deadline = Instant::now() + Duration::from_secs(10);
    while services(&zones(&env).await) != 1 {
        assert!(Instant::now() < deadline, "api left the inventory when its sidecar left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.zone.shutdown();
    env.global.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_bind_the_service_and_bad_registrations_are_refused() {
    refuses_bad_registrations(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_grpc_tokens_bind_the_service_and_bad_registrations_are_refused() {
    refuses_bad_registrations(true).await;
}

async fn refuses_bad_registrations(grpc: bool) {
    let mut env = env().await;
    env.grpc = grpc;
    let web_token = env.token("web").await;
    let cases: Vec<(&str, String, Vec<u8>, tonic::Code, &str)> = vec![
        (
            "a token for web registering api",
            web_token.clone(),
            dataplane("api-1", "api", 9090),
            tonic::Code::PermissionDenied,
            "cannot register service \"api\"",
        ),
        ("a garbage token", "garbage".into(), dataplane("web-1", "web", 8080), tonic::Code::Unauthenticated, "dataplane token refused"),
        (
            "an invalid Dataplane",
            web_token.clone(),
            b"{\"type\": \"Dataplane\"}".to_vec(),
            tonic::Code::InvalidArgument,
            "invalid Dataplane",
        ),
    ];
    for (what, token, dp, code, message) in cases {
        let status = match connect(&env, &token, dp).await {
            Ok(mut s) => s.message().await.expect_err(what),
            Err(s) => s,
        };
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {status:?}");
    }
    let mut first = connect(&env, &web_token, dataplane("web-1", "web", 8080)).await.expect("registers");
    // Registered once configured (over the framed transport, opening the stream does not wait).
    first.config().await;
    let status = match connect(&env, &web_token, dataplane("web-1", "web", 8080)).await {
        Ok(mut s) => s.message().await.expect_err("duplicate"),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    env.zone.shutdown();
    env.global.shutdown();
}

/// A gateway's DPS stream, opened with `token` and `hello`.
async fn connect_gateway(
    env: &Env,
    token: &str,
    hello: strait_api::dps::GatewayHello,
) -> Result<(mpsc::Sender<strait_api::dps::GatewayMessage>, tonic::Streaming<ZoneMessage>), tonic::Status> {
    use strait_api::dps::{gateway_message, GatewayMessage};
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&env.zone.dps_ca_pem)).domain_name("strait-zone");
    let channel =
        Endpoint::from_shared(format!("https://{}", env.zone.dps_addr)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(GatewayMessage { message: Some(gateway_message::Message::Hello(hello)) }).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let rx = DataplaneSyncClient::new(channel).gateway(request).await?.into_inner();
    Ok((tx, rx))
}

fn gateway_hello(ingress: &str) -> strait_api::dps::GatewayHello {
    strait_api::dps::GatewayHello {
        protocol: PROTOCOL_VERSION,
        name: "gateway-1".into(),
        ingress_address: ingress.into(),
        egress_address: "192.0.2.10:10002".into(),
        software_version: "test".into(),
        metrics_address: "192.0.2.10:9902".into(),
    }
}

/// The zone's ingress addresses as the global's `/zones/zone-1` shows them.
async fn ingress_on_global(env: &Env) -> Value {
    let zone: Value =
        env.http.get(format!("{}/zones/zone-1", env.base)).bearer_auth(&env.admin).send().await.unwrap().json().await.unwrap();
    zone.pointer("/status/inventory/ingressAddresses").cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_registers_with_the_zone_proxy_token_gets_the_zone_identity_and_is_reported_upstream() {
    let env = env().await;
    let token = env.token("backend").await;
    let _backend = connect(&env, &token, dataplane("backend-1", "backend", 8080)).await.expect("registered");

    let refused = connect_gateway(&env, "not-a-token", gateway_hello("192.0.2.10:10001")).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let zone_token = connect_gateway(&env, &env.zone_token, gateway_hello("192.0.2.10:10001")).await.expect_err("refused");
    assert_eq!(zone_token.code(), tonic::Code::Unauthenticated, "the zone's sync token is no gateway token: {zone_token:?}");
    assert!(zone_token.message().contains("zone-proxy token"), "says which token a gateway needs: {zone_token:?}");
    let dp_token = connect_gateway(&env, &token, gateway_hello("192.0.2.10:10001")).await.expect_err("refused");
    assert_eq!(dp_token.code(), tonic::Code::Unauthenticated, "a dataplane token is no gateway token: {dp_token:?}");
    // A bad Hello is refused, by the call itself or as the stream's first status.
    let bad = match connect_gateway(&env, &env.proxy_token, gateway_hello("0.0.0.0:10001")).await {
        Ok((_tx, mut rx)) => tokio::time::timeout(Duration::from_secs(5), rx.message()).await.unwrap().expect_err("refused"),
        Err(status) => status,
    };
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("ingress_address") && bad.message().contains("advertised"), "names the field: {bad:?}");
    let (_tx, mut rx) = connect_gateway(&env, &env.proxy_token, gateway_hello("192.0.2.10:10001")).await.expect("registered");

    // Its configuration: this zone's services with their endpoints, the system trust, and the
    // zone identity once the global has signed it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let config = loop {
        assert!(Instant::now() < deadline, "no gateway configuration with the zone identity");
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message()).await.unwrap().unwrap().unwrap();
        let Some(zone_message::Message::Config(c)) = m.message else { continue };
        let config: strait_api::gateway_config::GatewayConfig = serde_json::from_slice(&c.json).unwrap();
        if config.identity.is_some() {
            break config;
        }
    };
    assert_eq!(config.zone, "zone-1");
    let backend = config.services.iter().find(|s| s.service == "backend").expect("backend is served by this zone");
    assert_eq!((backend.mesh.as_str(), backend.endpoints.as_slice()), ("default", ["127.0.0.1:8080".to_string()].as_slice()));
    let identity = config.identity.unwrap();
    let bundle = strait_pki::TrustBundle { roots: config.trust.roots.clone(), revoked: Default::default() };
    let id = bundle.verify(&identity.cert_pem, &[], std::time::SystemTime::now()).expect("the identity verifies under the system CA");
    assert_eq!(id.as_str(), "spiffe://strait.system/zone/zone-1");
    assert!(identity.key_pem.contains("PRIVATE KEY"));

    // The ingress address reaches the global in the zone's inventory, and leaves with the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ingress_on_global(&env).await != json!(["192.0.2.10:10001"]) {
        assert!(Instant::now() < deadline, "the global never saw the ingress: {}", ingress_on_global(&env).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((_tx, rx));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ingress_on_global(&env).await != json!([]) {
        assert!(Instant::now() < deadline, "the ingress stayed after the gateway left: {}", ingress_on_global(&env).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A new zone-proxy token revokes the previous one: the zone, still connected, closes the
    // stream of a gateway that uses the old one and refuses it from then on.
    let (_tx, mut old) = connect_gateway(&env, &env.proxy_token, gateway_hello("192.0.2.10:10001")).await.expect("registered");
    let rotated: Value =
        env.http.post(format!("{}/zones/zone-1/proxy-token", env.base)).bearer_auth(&env.admin).send().await.unwrap().json().await.unwrap();
    let new_token = rotated["proxyToken"].as_str().expect("a new zone-proxy token").to_string();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(20), old.message()).await.expect("the old gateway's stream ends") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    let again = connect_gateway(&env, &env.proxy_token, gateway_hello("192.0.2.10:10001")).await.expect_err("refused");
    assert!(again.message().contains("revoked"), "{again:?}");
    let (_tx, _rx) = connect_gateway(&env, &new_token, gateway_hello("192.0.2.10:10001")).await.expect("the new token registers");
    env.zone.shutdown();
    env.global.shutdown();
}

/// The status a stream ends with (it may first deliver the messages already sent).
async fn end_of(sidecar: &mut Sidecar, within: Duration) -> tonic::Status {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sidecar.message()).await.expect("the stream ends in time") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => return status,
        }
    }
}

/// The status a new connection with `token` is refused with.
async fn refusal(env: &Env, token: &str, dp: Vec<u8>) -> tonic::Status {
    match connect(env, token, dp).await {
        Ok(mut s) => end_of(&mut s, Duration::from_secs(10)).await,
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_dataplane_tokens_end_their_streams_and_are_refused() {
    let env = env().await;

    // One token revoked by id: its open stream ends, it cannot reconnect, other tokens hold.
    let web = env.issue("service=web").await;
    let (web_token, web_id) = (web["token"].as_str().unwrap().to_string(), web["id"].as_str().unwrap().to_string());
    let other_web = env.token("web").await;
    let mut sidecar = connect(&env, &web_token, dataplane("web-1", "web", 8080)).await.expect("registers");
    let _ = sidecar.config().await;
    env.revoke(&format!("/meshes/default/dataplane-tokens/{web_id}")).await;
    let ended = end_of(&mut sidecar, Duration::from_secs(20)).await;
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains(&web_id), "names the revoked token: {ended:?}");
    let again = refusal(&env, &web_token, dataplane("web-1", "web", 8080)).await;
    assert!(again.message().contains("revoked"), "{again:?}");
    let mut web_again = connect(&env, &other_web, dataplane("web-1", "web", 8080)).await.expect("another token of web holds");
    let _ = web_again.config().await;

    // Every token of a service issued so far: open streams end; a token issued afterwards works.
    let api_token = env.token("api").await;
    let mut api = connect(&env, &api_token, dataplane("api-1", "api", 9090)).await.expect("registers");
    let _ = api.config().await;
    env.revoke("/meshes/default/services/api/dataplane-tokens").await;
    let ended = end_of(&mut api, Duration::from_secs(20)).await;
    assert!(ended.message().contains("\"api\"") && ended.message().contains("revoked"), "{ended:?}");
    let fresh = env.token("api").await;
    let mut api = connect(&env, &fresh, dataplane("api-1", "api", 9090)).await.expect("a token issued after the revocation works");
    let _ = api.config().await;

    // Expiry ends an open stream too, not only the next connect.
    let short = env.issue("service=db&validFor=2s").await["token"].as_str().unwrap().to_string();
    let mut db = connect(&env, &short, dataplane("db-1", "db", 5432)).await.expect("registers");
    let _ = db.config().await;
    let ended = end_of(&mut db, Duration::from_secs(10)).await;
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");

    // Bad revocations name the field.
    let bad = env.http.delete(format!("{}/meshes/default/dataplane-tokens/nope", env.base)).bearer_auth(&env.admin).send().await.unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("\"id\""));
    env.zone.shutdown();
    env.global.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_name_belongs_to_the_service_that_registered_it() {
    let env = env().await;
    let (api_token, web_token) = (env.token("api").await, env.token("web").await);
    let mut api = connect(&env, &api_token, dataplane("api-1", "api", 9090)).await.expect("registers");
    let _ = api.config().await;
    drop(api);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.zone.store().get(&strait_store::Key::new("Dataplane", "default", "api-1")).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "api-1 never left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // api-1 left; a token for web still cannot take its name (and so lock api-1 out).
    let stolen = refusal(&env, &web_token, dataplane("api-1", "web", 8080)).await;
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied, "{stolen:?}");
    assert!(stolen.message().contains("belongs to service \"api\""), "{stolen:?}");
    let registered = loop {
        match connect(&env, &api_token, dataplane("api-1", "api", 9090)).await {
            Err(s) if s.code() == tonic::Code::AlreadyExists && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    let _ = registered.expect("api-1 registers again").config().await;

    // A Dataplane stored without a binding (through the zone's API, or before bindings existed)
    // belongs to its own service all the same.
    let stored = strait_api::Resource::from_value(serde_json::from_slice(&dataplane("legacy-1", "api", 9191)).unwrap()).unwrap();
    strait_cp_core::resources::Resources::new(env.zone.store().clone()).put(&stored).await.unwrap();
    let taken = refusal(&env, &web_token, dataplane("legacy-1", "web", 8081)).await;
    assert_eq!(taken.code(), tonic::Code::PermissionDenied, "{taken:?}");
    assert!(taken.message().contains("belongs to service \"api\""), "{taken:?}");
    env.zone.shutdown();
    env.global.shutdown();
}

/// The zone's data directory holds its keys and admin token: its owner's only, whatever the
/// umask (sidecars and gateways get a copy of the public `dps-ca.pem`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zone_data_directory_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = env().await;
    let data = env._dir.path().join("zone-1/data");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(std::fs::read_to_string(data.join("dps-ca.pem")).unwrap().contains("CERTIFICATE"));
    env.zone.shutdown();
    env.global.shutdown();
}

/// A sidecar that takes its configuration in parts gets everything first, then only what
/// changed: a policy write sends its settings alone, a new endpoint of a service it calls
/// sends that service's endpoints alone, and a change that does not touch it sends nothing.
/// Put together, the parts are the configuration a sidecar taking it whole gets; a delta it
/// could not put together (NACK) is followed by everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_takes_deltas_gets_only_what_changed() {
    let env = env().await;
    let mut api = connect(&env, &env.token("api").await, dataplane("api-1", "api", 9090)).await.expect("api registers");
    let _ = api.config().await;
    let web_token = env.token("web").await;
    let mut parts = connect_with(&env, &web_token, calling("web-1", "web", 8080, &["api"]), true).await.expect("web-1 registers");
    let mut assembler = strait_api::dps_delta::Assembler::new("web-1");
    let first = parts.delta().await;
    assert!(!first.settings.is_empty(), "the first delta holds the settings");
    let sent: Vec<_> = first.endpoints.iter().map(|e| e.service.as_str()).collect();
    assert_eq!(sent, ["api"], "and every outbound's endpoints");
    let config = assembler.apply(&first).unwrap();
    assert_eq!(config.1.outbounds[0].endpoints.len(), 1);
    let settings: ProxyConfig = serde_json::from_slice(&first.settings).unwrap();
    assert!(settings.outbounds[0].endpoints.is_empty(), "settings carry no endpoints");
    assert_eq!((settings.dataplane.as_str(), config.1.dataplane.as_str()), ("", "web-1"), "shared settings name no sidecar");

    // A second web sidecar, taking whole configurations: an endpoint of web, which web-1 does
    // not call, so web-1 hears nothing of it (the next delta it gets is the policy's).
    let mut whole = connect(&env, &web_token, calling("web-2", "web", 8081, &["api"])).await.expect("web-2 registers");
    let _ = whole.config().await;

    env.put("/meshes/default/meshtrafficpermissions/deny-frontend", json!({"type": "MeshTrafficPermission", "name": "deny-frontend", "mesh": "default",
        "spec": {"targetRef": {"kind": "MeshService", "name": "web"}, "from": [{"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Deny"}}]}})).await;
    let policy = parts.delta().await;
    assert!(!policy.settings.is_empty() && policy.endpoints.is_empty(), "a policy write sends the settings alone: {policy:?}");
    let config = assembler.apply(&policy).unwrap();
    assert_eq!(action_for(&config.1, "frontend").as_deref(), Some("Deny"));
    assert_eq!(config.1.outbounds[0].endpoints.len(), 1, "the endpoints sent before stay");

    let mut api2 = connect(&env, &env.token("api").await, dataplane("api-2", "api", 9091)).await.expect("api-2 registers");
    let _ = api2.config().await;
    let endpoint = parts.delta().await;
    assert!(endpoint.settings.is_empty(), "a new endpoint leaves the settings alone: {endpoint:?}");
    assert_eq!(endpoint.endpoints.len(), 1);
    let config = assembler.apply(&endpoint).unwrap();
    let ports: std::collections::BTreeSet<u16> = config.1.outbounds[0].endpoints.iter().map(|e| e.port).collect();
    assert_eq!(ports, [9090, 9091].into());

    // The whole configuration of web-2 at the same point: the same outbounds and inbound rules.
    let whole_config = loop {
        let (_, c) = whole.config().await;
        if c.outbounds[0].endpoints.len() == 2 && action_for(&c, "frontend").as_deref() == Some("Deny") {
            break c;
        }
    };
    assert_eq!(config.1.outbounds, whole_config.outbounds);
    assert_eq!(config.1.inbounds[0].policies, whole_config.inbounds[0].policies);

    // web-1 could not put the last delta together: everything comes again.
    let nack = strait_api::dps::Nack { version: endpoint.version, error: "test".into() };
    parts.tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Nack(nack)) }).await.unwrap();
    let again = parts.delta().await;
    assert!(!again.settings.is_empty() && again.endpoints.len() == 1, "everything again: {again:?}");
    let config = strait_api::dps_delta::Assembler::new("web-1").apply(&again).unwrap();
    assert_eq!(config.1.outbounds, whole_config.outbounds);

    // Sidecars alike share their settings' computation, but not what a policy gives one of
    // them by name.
    let mut twin = connect_with(&env, &web_token, calling("web-3", "web", 8080, &["api"]), true).await.expect("web-3 registers");
    let mut twin_assembler = strait_api::dps_delta::Assembler::new("web-3");
    let twin_first = twin_assembler.apply(&twin.delta().await).unwrap();
    assert_eq!((twin_first.1.dataplane.as_str(), &twin_first.1.outbounds), ("web-3", &config.1.outbounds));
    env.put("/meshes/default/meshtimeouts/web-1-only", json!({"type": "MeshTimeout", "name": "web-1-only", "mesh": "default",
        "spec": {"targetRef": {"kind": "Dataplane", "name": "web-1"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}})).await;
    let named = assembler.apply(&parts.delta().await).unwrap();
    let idle = |c: &ProxyConfig| {
        c.outbounds[0].policies.timeout.as_ref().and_then(|t| serde_json::to_value(t).ok()).map(|t| t["idleTimeout"].clone())
    };
    assert_eq!(idle(&named.1), Some(json!("7s")));
    env.put(
        "/meshes/default/meshtimeouts/everyone",
        json!({"type": "MeshTimeout", "name": "everyone", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}]}}),
    )
    .await;
    let twin_now = twin_assembler.apply(&twin.delta().await).unwrap();
    assert_eq!(twin_now.1.dataplane, "web-3");
    let conf = serde_json::to_value(twin_now.1.outbounds[0].policies.timeout.as_ref().expect("everyone's timeout")).unwrap();
    assert_eq!(conf["connectionTimeout"], "3s");
    assert_ne!(conf["idleTimeout"], "7s", "web-1's own timeout stays web-1's: {conf}");
}

/// A sidecar that takes pieces gets a delta larger than a piece as messages of at most
/// `PIECE_BYTES` of parts, each marked `more` but the last; put together, they are the
/// configuration a sidecar taking it whole gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_delta_comes_in_pieces_that_put_together_are_the_whole_configuration() {
    use prost::Message;
    use strait_api::dps_delta::{Assembler, PIECE_BYTES};
    let env = env().await;
    // One api Dataplane with 60 inbounds: 60 endpoints of api, several KB of JSON.
    let inbound: Vec<Value> =
        (0..60).map(|i| json!({"port": 9100 + i, "tags": {"strait.io/service": "api", "strait.io/protocol": "http"}})).collect();
    let many = serde_json::to_vec(&json!({"type": "Dataplane", "name": "api-many", "mesh": "default",
        "spec": {"networking": {"address": "127.0.0.1", "inbound": inbound}}}))
    .unwrap();
    let mut api = connect(&env, &env.token("api").await, many).await.expect("api registers");
    let _ = api.config().await;
    let web_token = env.token("web").await;
    let mut whole = connect(&env, &web_token, calling("web-2", "web", 8081, &["api"])).await.expect("web-2 registers");
    let mut piecewise =
        connect_hello(&env, &web_token, calling("web-1", "web", 8080, &["api"]), true, true).await.expect("web-1 registers");
    let mut assembler = Assembler::new("web-1");
    let (mut count, mut bytes) = (0, 0);
    let (version, config) = loop {
        let piece = piecewise.delta().await;
        count += 1;
        let parts = piece.settings.len() + piece.endpoints.iter().map(|e| e.json.len()).sum::<usize>();
        bytes += parts;
        assert!(parts <= PIECE_BYTES && piece.encoded_len() < 4096, "a piece of {parts} bytes of parts, {} encoded", piece.encoded_len());
        match assembler.take(&piece) {
            Some(done) => {
                assert!(!piece.more, "answered before the last piece");
                break done;
            }
            None => assert!(piece.more, "the last piece did not complete the version"),
        }
    };
    assert!(count > 1 && bytes > PIECE_BYTES, "{bytes} bytes came in {count} piece(s)");
    let config = config.expect("the pieces put together apply");
    let whole_config = loop {
        let (_, c) = whole.config().await;
        if c.outbounds[0].endpoints.len() == 60 {
            break c;
        }
    };
    assert_eq!(config.1.outbounds[0].endpoints.len(), 60);
    assert_eq!(config.1.outbounds, whole_config.outbounds);
    // The version is answered once, after its last piece, and taken.
    piecewise.tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Ack(strait_api::dps::Ack { version })) }).await.unwrap();
    env.put(
        "/meshes/default/meshtimeouts/everyone",
        json!({"type": "MeshTimeout", "name": "everyone", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "3s"}}]}}),
    )
    .await;
    let policy = piecewise.delta().await;
    let (_, after) = assembler.take(&policy).expect("a policy's settings alone fit one piece");
    assert_eq!(after.unwrap().1.outbounds[0].endpoints.len(), 60, "the endpoints put together before stay");
}
