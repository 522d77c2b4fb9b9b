//! A zone in Kubernetes mode (`--environment kubernetes`) against an API server that answers as
//! Kubernetes does: the leading replica keeps a Dataplane for each Pod with a sidecar, the
//! sidecar connects with its Pod's projected service-account token (reviewed by the API
//! server) and no Dataplane of its own, gets its configuration and certificate, follows its
//! Services, and loses its stream when its Pod goes; a second replica stands by until the
//! first one shuts down, then takes over.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_api::dps::{dataplane_message, zone_message, DataplaneMessage, ZoneMessage};
use strait_api::proxy_config::ProxyConfig;
use strait_api::{Resource, ResourceType};
use strait_kube_fake::FakeKube;
use strait_zone_cp::ZoneCp;
use tokio::sync::mpsc;

mod common;

const AUDIENCE: &str = "strait-zone";

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"strait.io/sidecar-injection": "enabled"}}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "version": "v1"}},
        "spec": {"serviceAccountName": "web",
            "initContainers": [{"name": "strait-dp", "image": "strait:dev", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn service(ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": ports}})
}

/// Replica `name` of zone-1 in Kubernetes mode, with its own data directory.
async fn replica(args: &[String], dir: &Path, kubeconfig: &Path, name: &str) -> ZoneCp {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let mut args: Vec<String> = std::iter::once("strait-zone".to_string()).chain(args.iter().cloned()).collect();
    let at = args.iter().position(|a| a == "--data-dir").unwrap() + 1;
    args[at] = data.display().to_string();
    for extra in [
        "--environment",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--replica-name",
        name,
        "--namespace",
        "strait-system",
        "--leader-lease-duration",
        "3s",
        "--sidecar-image",
        "registry.example/strait:test",
        "--injection-address",
        "127.0.0.1:0",
    ] {
        args.push(extra.to_string());
    }
    let config = <strait_zone_cp::Config as clap::Parser>::try_parse_from(args).unwrap();
    config.validate().unwrap();
    ZoneCp::start(Arc::new(config)).await.unwrap()
}

async fn until<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.get("Lease", "strait-system", "strait-zone-leader")?["spec"]["holderIdentity"].as_str().map(str::to_string)
}

async fn dataplane(zone: &ZoneCp, name: &str) -> Option<Resource> {
    let resources = strait_cp_core::resources::Resources::new(zone.store().clone());
    resources.get(ResourceType::Dataplane, Some("default"), name).await.unwrap()
}

/// A sidecar's stream, opened with a service-account token and no Dataplane.
struct Sidecar {
    tx: mpsc::Sender<DataplaneMessage>,
    rx: tonic::Streaming<ZoneMessage>,
}

async fn connect(zone: &ZoneCp, token: &str) -> Result<Sidecar, tonic::Status> {
    connect_with(zone, token, Vec::new()).await
}

async fn connect_with(zone: &ZoneCp, token: &str, dataplane: Vec<u8>) -> Result<Sidecar, tonic::Status> {
    let (tx, rx) = common::open_stream(&zone.dps_addr.to_string(), &zone.dps_ca_pem, token, dataplane).await?;
    Ok(Sidecar { tx, rx })
}

impl Sidecar {
    async fn next(&mut self) -> Result<zone_message::Message, tonic::Status> {
        let message = tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await.expect("a message within 10 s")?;
        Ok(message.expect("the stream is open").message.expect("a message"))
    }

    async fn config(&mut self) -> ProxyConfig {
        loop {
            if let zone_message::Message::Config(c) = self.next().await.expect("stream ok") {
                return serde_json::from_slice(&c.json).unwrap();
            }
        }
    }
}

async fn connected_sidecars(zone: &ZoneCp) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", zone.api_addr)).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with("strait_zone_dps_connected_proxies{kind=\"sidecar\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_dataplanes_their_sidecars_connect_with_service_account_tokens_and_one_replica_leads() {
    let dir = tempfile::tempdir().unwrap();
    let kube = FakeKube::start("127.0.0.1:0".parse().unwrap()).await;
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig);
    let (_global, args, http, base, admin) = common::global_and_zone_args(dir.path(), "127.0.0.1:0").await;

    // The webhook configuration as an install left it, with a CA that is not the zone's.
    kube.apply(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "strait-sidecar-injector-strait-system"},
        "webhooks": [{"name": "sidecar-injector.strait.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"caBundle": "c3RhbGU=", "service": {"name": "strait-zone", "namespace": "strait-system", "path": "/inject", "port": 443}}}]}));

    // The first replica takes the Lease; the second stands by and refuses sidecars.
    let first = replica(&args, dir.path(), &kubeconfig, "zone-a").await;
    until("zone-a to lead", Duration::from_secs(10), async || (holder(&kube).as_deref() == Some("zone-a")).then_some(())).await;
    // The leader makes the webhook trust its certificate's CA.
    use base64::Engine as _;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&first.dps_ca_pem);
    until("the webhook's caBundle to be the zone's CA", Duration::from_secs(10), async || {
        let hook = kube.get("MutatingWebhookConfiguration", "", "strait-sidecar-injector-strait-system")?;
        (hook["webhooks"][0]["clientConfig"]["caBundle"] == json!(ca_bundle)).then_some(())
    })
    .await;
    let second = replica(&args, dir.path(), &kubeconfig, "zone-b").await;

    // The leader keeps read-only copies of the global's policies in its namespace: a new one
    // appears, a stale copy goes, what a user wrote without the zone's label stays.
    let timeout = json!({"type": "MeshTimeout", "name": "timeouts", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "1h"}}]}});
    let put = http.put(format!("{base}/meshes/default/meshtimeouts/timeouts")).bearer_auth(&admin).json(&timeout).send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let copy = |name: &str| {
        json!({"apiVersion": "strait.io/v1alpha1", "kind": "MeshTimeout",
        "metadata": {"name": name, "namespace": "strait-system", "labels": {"k8s.strait.io/origin": "global", "strait.io/mesh": "default"}},
        "spec": timeout["spec"]})
    };
    kube.put_custom_resource("meshtimeouts", copy("gone.default"));
    let mut own = copy("mine");
    own["metadata"]["labels"] = json!({"strait.io/mesh": "default"});
    kube.put_custom_resource("meshtimeouts", own);
    let names = |plural: &str| -> Vec<String> {
        let mut names: Vec<String> =
            kube.custom_resources(plural).iter().filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string)).collect();
        names.sort();
        names
    };
    let has = |names: &[String], name: &str| names.iter().any(|n| n == name);
    until("the MeshTimeout's copy", Duration::from_secs(20), async || {
        let names = names("meshtimeouts");
        (has(&names, "timeouts.default") && !has(&names, "gone.default")).then_some(())
    })
    .await;
    assert!(has(&names("meshtimeouts"), "mine"), "what a user wrote without the zone's label stays");
    let copied = kube.custom_resources("meshtimeouts").into_iter().find(|o| o["metadata"]["name"] == "timeouts.default").unwrap();
    assert_eq!(copied["spec"], timeout["spec"]);
    assert_eq!(copied["metadata"]["labels"]["strait.io/mesh"], "default");
    assert!(names("meshes").contains(&"default".to_string()), "the mesh is copied cluster-wide: {:?}", names("meshes"));
    let deleted = http.delete(format!("{base}/meshes/default/meshtimeouts/timeouts")).bearer_auth(&admin).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    until("the copy to go with the policy", Duration::from_secs(20), async || {
        (!has(&names("meshtimeouts"), "timeouts.default")).then_some(())
    })
    .await;
    assert!(has(&names("meshtimeouts"), "mine"));

    // The injection webhook answers the API server's AdmissionReview over HTTPS, with the
    // certificate of the DPS endpoint (the webhook configuration's caBundle is its CA).
    let webhook = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(first.dps_ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let inject = async |pod: Value| -> Value {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "b1", "namespace": "shop",
            "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE", "object": pod}});
        let url = format!("https://localhost:{}/inject", first.injection_addr.unwrap().port());
        webhook.post(url).json(&review).send().await.unwrap().json().await.unwrap()
    };
    let answer = inject(pod("web-0", "")).await;
    assert_eq!(answer["response"]["uid"], "b1");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "a Pod that has the sidecar already is left alone: {answer}");
    let mut plain = pod("web-0", "");
    plain["spec"]["initContainers"] = json!([]);
    let answer = inject(plain).await;
    let patch = base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().expect("a patch")).unwrap();
    let patch = String::from_utf8(patch).unwrap();
    assert!(
        patch.contains("registry.example/strait:test") && patch.contains("--cp-address=https://strait-zone.strait-system.svc:7678"),
        "{patch}"
    );

    kube.apply(namespace());
    kube.apply(service(json!([{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}])));
    let web = kube.apply(pod("web-1", "127.0.0.1"));
    let uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    kube.bind_token("web-1-token", &web, &[AUDIENCE]);
    kube.bind_token("web-1-api-token", &web, &["https://kubernetes.default.svc.cluster.local"]);

    let dp = until("the Pod's Dataplane", Duration::from_secs(20), async || dataplane(&first, "web-1.shop").await).await;
    assert_eq!(dp.labels.get("k8s.strait.io/pod-uid"), Some(&uid));

    let standby = connect(&second, "web-1-token").await.err().expect("the standby replica refuses sidecars");
    assert_eq!(standby.code(), tonic::Code::Unavailable, "{standby:?}");
    assert!(standby.message().contains("stands by"), "{standby:?}");
    assert_eq!(holder(&kube).as_deref(), Some("zone-a"), "the standby did not take the Lease");

    // The sidecar presents its Pod's token and no Dataplane; the zone serves the Pod's.
    let mut sidecar =
        until("the leader to accept the sidecar", Duration::from_secs(20), async || connect(&first, "web-1-token").await.ok()).await;
    let config = sidecar.config().await;
    assert_eq!(config.dataplane, "web-1.shop");
    assert_eq!(config.identity, "spiffe://default/web.shop.svc.80");
    assert_eq!(config.inbounds.len(), 1);
    assert_eq!((config.inbounds[0].port, config.inbounds[0].service.as_str()), (8080, "web.shop.svc.80"));

    let csr = strait_pki::KeyAndCsr::generate("web").unwrap();
    let request = strait_api::dps::CertificateRequest { csr_pem: csr.csr_pem };
    sidecar.tx.send(DataplaneMessage { message: Some(dataplane_message::Message::CertificateRequest(request)) }).await.unwrap();
    let chain = loop {
        if let zone_message::Message::Certificate(c) = sidecar.next().await.unwrap() {
            assert!(c.error.is_empty(), "{}", c.error);
            break c.cert_chain_pem;
        }
    };
    let certs: Vec<String> = chain.split_inclusive("-----END CERTIFICATE-----\n").map(str::to_string).collect();
    let bundle = strait_pki::TrustBundle { roots: config.trust_bundle.roots.clone(), revoked: config.trust_bundle.revoked.clone() };
    let id = bundle.verify(&certs[0], &certs[1..], std::time::SystemTime::now()).expect("chains to the mesh root");
    assert_eq!(id.as_str(), "spiffe://default/web.shop.svc.80");

    // Refusals, each saying why.
    let own = serde_json::to_vec(&json!({"type": "Dataplane", "name": "web-1.shop", "mesh": "default",
        "spec": {"networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"strait.io/service": "db"}}]}}}))
    .unwrap();
    let cases = [
        (connect_with(&first, "web-1-token", own).await.err(), tonic::Code::InvalidArgument, "sends no Dataplane"),
        (connect(&first, "web-1-api-token").await.err(), tonic::Code::Unauthenticated, "audiences"),
        (connect(&first, "forged").await.err(), tonic::Code::Unauthenticated, "invalid bearer token"),
    ];
    for (refused, code, why) in cases {
        let refused = refused.expect("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }
    // A Pod whose IP is not where its sidecar connects from.
    let elsewhere = kube.apply(pod("web-2", "127.0.0.7"));
    kube.bind_token("web-2-token", &elsewhere, &[AUDIENCE]);
    until("the second Pod's Dataplane", Duration::from_secs(20), async || dataplane(&first, "web-2.shop").await).await;
    let spoofed = connect(&first, "web-2-token").await.err().expect("refused");
    assert_eq!(spoofed.code(), tonic::Code::PermissionDenied, "{spoofed:?}");
    assert!(spoofed.message().contains("not the address this sidecar connects from"), "{spoofed:?}");
    kube.delete("Pod", "shop", "web-2");

    // A new Service port reaches the connected sidecar as a second inbound.
    kube.apply(service(json!([{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"},
        {"name": "grpc", "port": 9090, "targetPort": 9090, "appProtocol": "grpc"}])));
    let config = loop {
        let config = sidecar.config().await;
        if config.inbounds.len() == 2 {
            break config;
        }
    };
    assert!(config.inbounds.iter().any(|i| i.port == 9090 && i.service == "web.shop.svc.9090"), "{:?}", config.inbounds);

    // Readiness follows the Pod (not Ready, then Ready again) and its Service's EndpointSlice.
    let ready_of = async |service: &str| -> Option<bool> {
        let dp = dataplane(&first, "web-1.shop").await?;
        let strait_api::Spec::Dataplane(spec) = dp.spec else { return None };
        spec.networking.inbound.iter().find(|i| i.service() == service).map(|i| i.is_ready())
    };
    let mut unready = kube.get("Pod", "shop", "web-1").unwrap();
    unready["status"]["conditions"][0]["status"] = json!("False");
    kube.apply(unready.clone());
    until("the not-Ready Pod to leave the pool", Duration::from_secs(10), async || {
        (ready_of("web.shop.svc.80").await == Some(false)).then_some(())
    })
    .await;
    unready["status"]["conditions"][0]["status"] = json!("True");
    kube.apply(unready);
    until("the Ready Pod to come back", Duration::from_secs(10), async || (ready_of("web.shop.svc.80").await == Some(true)).then_some(()))
        .await;
    kube.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "web-grpc-x1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true},
            "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}]}));
    until("the EndpointSlice to take the Pod out of its Service", Duration::from_secs(10), async || {
        (ready_of("web.shop.svc.80").await == Some(false) && ready_of("web.shop.svc.9090").await == Some(false)).then_some(())
    })
    .await;
    kube.delete("EndpointSlice", "shop", "web-grpc-x1");
    until("the Pod back in once the slice is gone", Duration::from_secs(10), async || {
        (ready_of("web.shop.svc.80").await == Some(true)).then_some(())
    })
    .await;

    // The stream's end leaves the Pod's Dataplane in place: the Pod is still there.
    drop(sidecar);
    until("the zone to see the sidecar leave", Duration::from_secs(10), async || (connected_sidecars(&first).await == 0).then_some(()))
        .await;
    assert!(dataplane(&first, "web-1.shop").await.is_some(), "a sidecar's reconnection finds its Pod's Dataplane");

    // The Pod's deletion removes its Dataplane and ends its sidecar's stream.
    let mut sidecar = connect(&first, "web-1-token").await.expect("reconnects");
    sidecar.config().await;
    kube.delete("Pod", "shop", "web-1");
    let ended = loop {
        match sidecar.next().await {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("its Pod is gone"), "{ended:?}");
    assert!(dataplane(&first, "web-1.shop").await.is_none());

    // A rolling update: the leader shuts down and releases the Lease; the standby takes over
    // at once (well within the Lease's duration), keeps Dataplanes following Pods, and serves.
    first.shutdown();
    first.wait().await;
    let took_over = Instant::now();
    until("zone-b to lead", Duration::from_secs(10), async || (holder(&kube).as_deref() == Some("zone-b")).then_some(())).await;
    assert!(took_over.elapsed() < Duration::from_secs(3), "the successor waited for the Lease to expire");
    let web = kube.apply(pod("web-3", "127.0.0.1"));
    kube.bind_token("web-3-token", &web, &[AUDIENCE]);
    until("web-3's Dataplane on zone-b", Duration::from_secs(20), async || dataplane(&second, "web-3.shop").await).await;
    let mut sidecar =
        until("zone-b to accept the sidecar", Duration::from_secs(20), async || connect(&second, "web-3-token").await.ok()).await;
    assert_eq!(sidecar.config().await.dataplane, "web-3.shop");
    second.shutdown();
    second.wait().await;
}
