//! The global's zone sync endpoint against a hand-driven client: protocol violations, an
//! oversized message and refused tokens end that stream with a clear status, never the global;
//! and nothing a zone sends changes a policy.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use strait_api::kds::zone_sync_client::ZoneSyncClient;
use strait_api::kds::{self, global_message, zone_message, ZoneMessage, PROTOCOL_VERSION};
use strait_global_cp::GlobalCp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Code;

struct Setup {
    cp: GlobalCp,
    http: reqwest::Client,
    base: String,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = strait_global_cp::Config::for_dir(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    let cp = GlobalCp::start(Arc::new(config)).await.unwrap();
    let admin = std::fs::read_to_string(&cp.token_file).unwrap().trim().to_string();
    let s = Setup { base: format!("http://{}", cp.api_addr), cp, http: reqwest::Client::new(), admin, _dir: dir };
    s.http
        .put(format!("{}/meshes/default", s.base))
        .bearer_auth(&s.admin)
        .json(&json!({"type": "Mesh", "name": "default"}))
        .send()
        .await
        .unwrap();
    s
}

impl Setup {
    async fn token(&self, zone: &str) -> String {
        let v: Value = self
            .http
            .post(format!("{}/zones/{zone}/token", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// Opens a stream with `token`, sends `messages`, and returns the status that ended it (or
    /// None if it was still open after the first answer).
    async fn stream(&self, token: &str, messages: Vec<ZoneMessage>) -> Result<Vec<kds::GlobalMessage>, tonic::Status> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.cp.ca_bundle)).domain_name("strait-global");
        let channel =
            Endpoint::from_shared(format!("https://{}", self.cp.kds_addr)).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let mut client = ZoneSyncClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(64);
        for m in messages {
            tx.send(m).await.unwrap();
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut inbound = client.sync(request).await?.into_inner();
        let mut received = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(3), inbound.message()).await {
                Ok(Ok(Some(m))) => received.push(m),
                Ok(Ok(None)) => return Ok(received),
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    drop(tx);
                    return Ok(received);
                }
            }
        }
    }

    async fn global_still_serves(&self) {
        let resp = self.http.get(format!("{}/readyz", self.base)).send().await.unwrap();
        assert!(resp.status().is_success(), "the global survived");
    }
}

fn hello(zone: &str) -> ZoneMessage {
    ZoneMessage {
        message: Some(zone_message::Message::Hello(kds::Hello { protocol: PROTOCOL_VERSION, zone: zone.into(), ..Default::default() })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_and_protocol_violations_end_the_stream_not_the_global() {
    let s = setup().await;
    let good = s.token("zone-1").await;
    let cases: Vec<(&str, String, Vec<ZoneMessage>, Code)> = vec![
        ("garbage token", "not-a-token".into(), vec![hello("zone-1")], Code::Unauthenticated),
        ("token of another zone", good.clone(), vec![hello("zone-2")], Code::PermissionDenied),
        (
            "no Hello first",
            good.clone(),
            vec![ZoneMessage { message: Some(zone_message::Message::Ack(kds::Ack { revision: 1 })) }],
            Code::InvalidArgument,
        ),
        (
            "wrong protocol",
            good.clone(),
            vec![ZoneMessage {
                message: Some(zone_message::Message::Hello(kds::Hello { protocol: 99, zone: "zone-1".into(), ..Default::default() })),
            }],
            Code::FailedPrecondition,
        ),
        ("a second Hello", good.clone(), vec![hello("zone-1"), hello("zone-1")], Code::InvalidArgument),
        ("an empty message", good.clone(), vec![hello("zone-1"), ZoneMessage { message: None }], Code::InvalidArgument),
    ];
    for (what, token, messages, code) in cases {
        let status = s.stream(&token, messages).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        s.global_still_serves().await;
    }
    // After all that, the zone's token still works.
    let received = s.stream(&good, vec![hello("zone-1")]).await.expect("a well-behaved stream");
    assert!(
        received.iter().any(|m| matches!(&m.message, Some(global_message::Message::Batch(b)) if b.snapshot && b.last_chunk)),
        "got a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_the_stream_and_the_global_carries_on() {
    let s = setup().await;
    let token = s.token("zone-1").await;
    let huge = kds::Inventory {
        services: (0..600_000)
            .map(|i| kds::ServiceInventory {
                mesh: "default".into(),
                name: format!("service-with-a-long-name-{i:08}"),
                endpoints: 1,
                healthy: 1,
                protocol: "tcp".into(),
                ..Default::default()
            })
            .collect(),
        ingress_addresses: vec![],
        dataplane_nacks: vec![],
    };
    let status = match s.stream(&token, vec![hello("zone-1"), ZoneMessage { message: Some(zone_message::Message::Inventory(huge)) }]).await
    {
        Ok(received) => panic!("an oversized message was accepted ({} messages received)", received.len()),
        Err(status) => status,
    };
    assert!(matches!(status.code(), Code::Aborted | Code::ResourceExhausted | Code::OutOfRange | Code::Internal), "{status:?}");
    s.global_still_serves().await;
    assert!(s.stream(&token, vec![hello("zone-1")]).await.is_ok(), "the zone can connect again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_zone_sends_changes_a_policy() {
    let s = setup().await;
    let token = s.token("zone-1").await;
    let before: Value = s.http.get(format!("{}/meshes/default/meshtrafficpermissions", s.base)).send().await.unwrap().json().await.unwrap();
    let inventory = kds::Inventory {
        services: vec![kds::ServiceInventory {
            mesh: "default".into(),
            name: "allow-all".into(),
            endpoints: 1,
            healthy: 1,
            protocol: "http".into(),
            ..Default::default()
        }],
        ingress_addresses: vec!["198.18.0.9:10001".into()],
        dataplane_nacks: vec![],
    };
    let nack = kds::Nack {
        revision: 1,
        errors: vec![kds::ResourceError {
            key: Some(kds::ResourceKey { r#type: "MeshTrafficPermission".into(), mesh: "default".into(), name: "allow-all".into() }),
            message: "x".into(),
        }],
    };
    let _ = s
        .stream(
            &token,
            vec![
                hello("zone-1"),
                ZoneMessage { message: Some(zone_message::Message::Inventory(inventory)) },
                ZoneMessage { message: Some(zone_message::Message::Nack(nack)) },
                ZoneMessage { message: Some(zone_message::Message::Ack(kds::Ack { revision: u64::MAX })) },
            ],
        )
        .await;
    let after: Value = s.http.get(format!("{}/meshes/default/meshtrafficpermissions", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(before, after, "policies are written only through the global's API");
    let zones: Value = s.http.get(format!("{}/zones", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        zones["items"][0]["status"]["inventory"]["ingressAddresses"][0], "198.18.0.9:10001",
        "only the zone's own inventory changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_identity_is_signed_by_the_system_ca_and_revoked_with_the_zone() {
    let s = setup().await;
    let token = s.token("zone-1").await;
    let kc = strait_pki::KeyAndCsr::generate("zone-1 zone").unwrap();
    let inventory = kds::Inventory {
        services: vec![kds::ServiceInventory {
            mesh: "default".into(),
            name: "db".into(),
            endpoints: 1,
            healthy: 1,
            protocol: "tcp".into(),
            ..Default::default()
        }],
        ingress_addresses: vec!["198.18.0.9:10001".into()],
        dataplane_nacks: vec![],
    };
    let csr = kds::CertificateRequest { csr_pem: kc.csr_pem, zone_identity: true, ..Default::default() };
    let received = s
        .stream(
            &token,
            vec![
                hello("zone-1"),
                ZoneMessage { message: Some(zone_message::Message::Inventory(inventory)) },
                ZoneMessage { message: Some(zone_message::Message::CertificateRequest(csr)) },
            ],
        )
        .await
        .expect("the stream stays open");
    let cert = received
        .into_iter()
        .find_map(|m| match m.message {
            Some(kds::global_message::Message::Certificate(c)) if c.zone_identity => Some(c),
            _ => None,
        })
        .expect("a zone identity");
    assert!(cert.error.is_empty(), "{}", cert.error);
    let bundle = strait_pki::TrustBundle { roots: vec![cert.root_pem.clone()], revoked: Default::default() };
    let id = bundle.verify(&cert.cert_pem, &[], std::time::SystemTime::now()).expect("verifies under the system CA");
    assert_eq!(id.as_str(), "spiffe://strait.system/zone/zone-1", "bound to the token's zone");
    assert_eq!(cert.root_pem, s.cp.ca_bundle, "the system CA, not a mesh's");

    let zone = |s: &Setup| {
        let (http, url, admin) = (s.http.clone(), format!("{}/zones/zone-1", s.base), s.admin.clone());
        async move { http.get(url).bearer_auth(admin).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(zone(&s).await.pointer("/status/inventory/ingressAddresses"), Some(&json!(["198.18.0.9:10001"])));
    let trust = |s: &Setup| {
        let store = s.cp.store().clone();
        async move {
            let o = store.get(&strait_store::Key::new("SystemTrust", "", "default")).await.unwrap().expect("the system trust");
            serde_json::from_value::<strait_api::gateway_config::SystemTrust>(o.data).unwrap()
        }
    };
    assert_eq!(trust(&s).await.roots, vec![s.cp.ca_bundle.clone()]);
    let fingerprint = strait_pki::fingerprint(&cert.cert_pem).unwrap();
    assert!(!trust(&s).await.revoked.contains(&fingerprint));

    let revoked = s.http.delete(format!("{}/zones/zone-1/token", s.base)).bearer_auth(&s.admin).send().await.unwrap();
    assert!(revoked.status().is_success());
    assert!(trust(&s).await.revoked.contains(&fingerprint), "the zone's identity is revoked in the system trust every zone gets");
    assert_eq!(zone(&s).await.pointer("/status/inventory"), None, "the revoked zone's services are withdrawn");
}
