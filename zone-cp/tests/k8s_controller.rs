//! The zone's Kubernetes controller against a Kubernetes API that answers as a real one does
//! (lists with a resource version, watch streams of `ADDED`/`MODIFIED`/`DELETED` events, a
//! `410 Gone` status event for an expired version, `500` errors during an outage), scenario
//! by scenario: Pod added, relabelled, deleted; Service changed; watch broken and resumed;
//! `410 Gone`; API errors. Dataplanes must follow the Pods, never be lost while the API is
//! away, never be duplicated, and leave the zone's VM Dataplanes alone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{json, Value};
use strait_api::{Resource, ResourceType};
use strait_cp_core::resources::Resources;
use strait_zone_cp::k8s::controller::{self, ORIGIN_LABEL};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Chunk = Result<Frame<Bytes>, Infallible>;
type Body = StreamBody<tokio_stream::wrappers::UnboundedReceiverStream<Chunk>>;
/// Open watches: the collection watched, and where its events go.
type Watchers = Vec<(String, mpsc::UnboundedSender<Chunk>)>;

#[derive(Default)]
struct State {
    version: u64,
    /// By (collection, namespace/name).
    objects: BTreeMap<(String, String), Value>,
    /// Every change, for watches that resume from a version.
    history: Vec<(u64, String, Value)>,
    watchers: Watchers,
    /// The next watch of each collection answers 410 Gone.
    expire: bool,
    /// Requests to answer with 500 before answering again.
    failing: u32,
    /// What was asked, in order.
    requests: Vec<String>,
}

/// A Kubernetes API for pods, services and namespaces.
#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

fn collection(kind: &str) -> &'static str {
    match kind {
        "Pod" => "pods",
        "Service" => "services",
        "Namespace" => "namespaces",
        _ => panic!("{kind}"),
    }
}

fn key(object: &Value) -> String {
    format!("{}/{}", object["metadata"]["namespace"].as_str().unwrap_or_default(), object["metadata"]["name"].as_str().unwrap_or_default())
}

fn body(frames: Vec<Bytes>, open: Option<&mut Watchers>, what: &str) -> Body {
    let (tx, rx) = mpsc::unbounded_channel();
    for f in frames {
        let _ = tx.send(Ok(Frame::data(f)));
    }
    if let Some(watchers) = open {
        watchers.push((what.to_string(), tx));
    }
    StreamBody::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

fn line(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

impl FakeApi {
    fn change(&self, kind: &str, event: &str, mut object: Value) {
        let mut s = self.0.lock().unwrap();
        s.version += 1;
        object["apiVersion"] = json!("v1");
        object["kind"] = json!(kind);
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let c = collection(kind).to_string();
        let k = (c.clone(), key(&object));
        if event == "DELETED" {
            s.objects.remove(&k);
        } else {
            s.objects.insert(k, object.clone());
        }
        let message = json!({ "type": event, "object": object });
        let version = s.version;
        s.history.push((version, c.clone(), message.clone()));
        s.watchers.retain(|(what, tx)| *what != c || tx.send(Ok(Frame::data(line(&message)))).is_ok());
    }

    fn add(&self, kind: &str, object: Value) {
        self.change(kind, "ADDED", object);
    }

    fn modify(&self, kind: &str, object: Value) {
        self.change(kind, "MODIFIED", object);
    }

    fn delete(&self, kind: &str, object: Value) {
        self.change(kind, "DELETED", object);
    }

    /// Ends every open watch (a connection reset, an API-server restart).
    fn break_watches(&self) {
        self.0.lock().unwrap().watchers.clear();
    }

    fn answer(&self, request: http::Request<kube::client::Body>) -> http::Response<Body> {
        let mut s = self.0.lock().unwrap();
        let uri = request.uri().clone();
        s.requests.push(uri.to_string());
        let status = |code: u16, reason: &str, message: &str| json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code });
        if s.failing > 0 {
            s.failing -= 1;
            let b = body(vec![line(&status(500, "InternalError", "etcdserver: request timed out"))], None, "");
            return http::Response::builder().status(500).header("content-type", "application/json").body(b).unwrap();
        }
        let path = uri.path().to_string();
        let c = path.rsplit('/').next().unwrap_or_default().to_string();
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        if query.get("watch").map(String::as_str) == Some("true") {
            if s.expire {
                s.expire = false;
                let gone = json!({ "type": "ERROR", "object": status(410, "Expired", "too old resource version") });
                let b = body(vec![line(&gone)], None, "");
                return http::Response::builder().status(200).header("content-type", "application/json").body(b).unwrap();
            }
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let replay: Vec<Bytes> = s.history.iter().filter(|(v, what, _)| *v > from && *what == c).map(|(_, _, m)| line(m)).collect();
            let b = body(replay, Some(&mut s.watchers), &c);
            return http::Response::builder().status(200).header("content-type", "application/json").body(b).unwrap();
        }
        let items: Vec<Value> = s.objects.iter().filter(|((what, _), _)| *what == c).map(|(_, o)| o.clone()).collect();
        let kind = match c.as_str() {
            "pods" => "PodList",
            "services" => "ServiceList",
            _ => "NamespaceList",
        };
        let list = json!({ "kind": kind, "apiVersion": "v1", "metadata": { "resourceVersion": s.version.to_string() }, "items": items });
        let b = body(vec![line(&list)], None, "");
        http::Response::builder().status(200).header("content-type", "application/json").body(b).unwrap()
    }
}

fn pod(name: &str, version: &str, sidecar: bool) -> Value {
    let mut p = json!({
        "metadata": { "name": name, "namespace": "shop", "labels": { "app": "web", "version": version } },
        "spec": { "containers": [{ "name": "app", "image": "web", "ports": [{ "name": "http", "containerPort": 8080 }] }] },
        "status": { "phase": "Running", "podIP": format!("10.1.0.{}", name.len()), "conditions": [{ "type": "Ready", "status": "True" }] },
    });
    if sidecar {
        p["spec"]["initContainers"] = json!([{ "name": "strait-dp", "image": "strait:0.1.0", "restartPolicy": "Always" }]);
    }
    p
}

fn web_service(ports: &[i64]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({ "name": format!("p{p}"), "port": p, "targetPort": if *p == 80 { json!("http") } else { json!(p) }, "appProtocol": "http" })).collect();
    json!({ "metadata": { "name": "web", "namespace": "shop" }, "spec": { "selector": { "app": "web" }, "ports": ports } })
}

async fn pod_dataplanes(resources: &Resources) -> BTreeMap<String, Resource> {
    resources
        .list(ResourceType::Dataplane, Some("default"))
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.labels.contains_key(ORIGIN_LABEL))
        .map(|r| (r.name.clone(), r))
        .collect()
}

async fn until(what: &str, resources: &Resources, check: impl Fn(&BTreeMap<String, Resource>) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = pod_dataplanes(resources).await;
        if check(&now) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; Dataplanes: {:?}", now.keys().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn inbound_services(dp: &Resource) -> Vec<String> {
    let strait_api::Spec::Dataplane(spec) = &dp.spec else { panic!("not a Dataplane") };
    spec.networking.inbound.iter().map(|i| format!("{}:{}", i.service(), i.port)).collect()
}

fn tag(dp: &Resource, key: &str) -> String {
    let strait_api::Spec::Dataplane(spec) = &dp.spec else { panic!("not a Dataplane") };
    spec.networking.inbound.first().and_then(|i| i.tags.get(key)).cloned().unwrap_or_default()
}

#[tokio::test]
async fn dataplanes_follow_pods_and_services_through_broken_watches_gone_versions_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let store = strait_store::SledStore::open_with(&dir.path().join("store"), strait_cp_core::kinds::store_options()).unwrap();
    let resources = Resources::new(Arc::new(store));
    resources.put(&Resource::from_value(json!({ "type": "Mesh", "name": "default" })).unwrap()).await.unwrap();
    // A VM's Dataplane, registered over the zone's REST API: not the controller's.
    let vm = json!({ "type": "Dataplane", "name": "vm-1", "mesh": "default", "spec": { "networking": { "address": "192.0.2.1",
        "inbound": [{ "port": 9000, "tags": { "strait.io/service": "billing" } }] } } });
    resources.put(&Resource::from_value(vm).unwrap()).await.unwrap();

    let api = FakeApi::default();
    api.add("Namespace", json!({ "metadata": { "name": "shop" } }));
    api.add("Service", web_service(&[80]));
    api.add("Pod", pod("web-1", "v1", true));
    api.add("Pod", pod("plain", "v1", false));

    let service = {
        let api = api.clone();
        tower::service_fn(move |request| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.answer(request)) }
        })
    };
    let client = kube::Client::new(service, "default");
    let shutdown = CancellationToken::new();
    let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = changes.clone();
    tokio::spawn(controller::run(
        client,
        "zone-1".into(),
        resources.clone(),
        move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
        shutdown.clone(),
    ));

    // Pod added (before the controller started): one Dataplane, none for the Pod without sidecar.
    until("web-1's Dataplane", &resources, |d| d.len() == 1 && d.contains_key("web-1.shop")).await;
    assert_eq!(inbound_services(&pod_dataplanes(&resources).await["web-1.shop"]), ["web.shop.svc.80:8080"]);

    // Relabelled.
    api.modify("Pod", pod("web-1", "v2", true));
    until("web-1 relabelled", &resources, |d| d.get("web-1.shop").is_some_and(|dp| tag(dp, "version") == "v2")).await;

    // Service changed: a second port.
    api.modify("Service", web_service(&[80, 9090]));
    until("the new Service port", &resources, |d| d.get("web-1.shop").is_some_and(|dp| inbound_services(dp).len() == 2)).await;

    // Watch broken; a Pod added and one deleted while no watch is open; resumed from the last
    // version, the watch replays them.
    api.break_watches();
    api.add("Pod", pod("web-22", "v1", true));
    until("web-22 after the watch resumed", &resources, |d| d.contains_key("web-22.shop")).await;
    api.break_watches();
    api.delete("Pod", pod("web-22", "v1", true));
    until("web-22 gone after the watch resumed", &resources, |d| !d.contains_key("web-22.shop")).await;

    // 410 Gone: the version expired, the controller lists again and sees what changed.
    let lists_before = api.0.lock().unwrap().requests.iter().filter(|r| !r.contains("watch=true")).count();
    api.0.lock().unwrap().expire = true;
    api.break_watches();
    api.add("Pod", pod("web-333", "v1", true));
    until("web-333 after a relist", &resources, |d| d.contains_key("web-333.shop")).await;
    let lists_after = api.0.lock().unwrap().requests.iter().filter(|r| !r.contains("watch=true")).count();
    assert!(lists_after > lists_before, "a 410 makes the watcher list again");

    // An outage: the API answers 500 for a while; nothing is lost meanwhile, and changes made
    // during it arrive after.
    api.0.lock().unwrap().failing = 6;
    api.break_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = pod_dataplanes(&resources).await;
    assert!(
        during.contains_key("web-1.shop") && during.contains_key("web-333.shop"),
        "Dataplanes kept during an outage: {:?}",
        during.keys()
    );
    api.delete("Pod", pod("web-333", "v1", true));
    until("web-333 removed after the outage", &resources, |d| !d.contains_key("web-333.shop") && d.contains_key("web-1.shop")).await;

    // Pod deleted: its Dataplane goes; the VM's stays; never a duplicate.
    api.delete("Pod", pod("web-1", "v2", true));
    until("web-1 removed", &resources, |d| d.is_empty()).await;
    let all = resources.list(ResourceType::Dataplane, Some("default")).await.unwrap();
    assert_eq!(all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["vm-1"]);
    assert!(changes.load(std::sync::atomic::Ordering::Relaxed) >= 6);
    shutdown.cancel();
}
