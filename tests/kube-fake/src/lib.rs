//! A Kubernetes API server for tests, over plain HTTP: what a zone control plane asks of a
//! cluster, answered as the API server answers it.
//!
//! It holds Pods, Services, EndpointSlices, Namespaces and Leases; serves their lists (`PodList` with a
//! resource version) and watches (one JSON event per line, resumed from a resource version,
//! closed after `timeoutSeconds`); creates and replaces Leases with optimistic concurrency (a
//! stale resource version is a `409 Conflict`, a second create `409 AlreadyExists`); and
//! answers TokenReviews for the tokens a test registers, bound to a Pod and an audience, as
//! the API server does for projected service-account tokens; and reads and replaces
//! MutatingWebhookConfigurations and `strait.io` custom resources (a stale resource version
//! is a conflict; lists take a label selector). Tests change objects while
//! clients watch, and point a client at it with [`FakeKube::write_kubeconfig`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// A change of an object, as a watch reports it.
#[derive(Debug, Clone)]
struct Event {
    revision: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

/// A token the API server would authenticate: the Pod and service account it is bound to.
#[derive(Debug, Clone)]
struct BoundToken {
    namespace: String,
    service_account: String,
    pod: String,
    pod_uid: String,
    audiences: Vec<String>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    /// By (collection, namespace, name); cluster-scoped objects have an empty namespace.
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Event>,
    tokens: HashMap<String, BoundToken>,
    requests: Vec<String>,
    unavailable: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake API server; it stops when dropped.
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The collection (plural resource) of a kind.
fn collection(kind: &str) -> &'static str {
    match kind {
        "Pod" => "pods",
        "Service" => "services",
        "Namespace" => "namespaces",
        "Lease" => "leases",
        "EndpointSlice" => "endpointslices",
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations",
        other => panic!("the fake API server does not hold {other}"),
    }
}

/// Whether objects of `kind` belong to no namespace.
fn cluster_scoped(kind: &str) -> bool {
    matches!(kind, "Namespace" | "MutatingWebhookConfiguration")
}

fn list_kind(collection: &str) -> &'static str {
    match collection {
        "pods" => "PodList",
        "services" => "ServiceList",
        "namespaces" => "NamespaceList",
        "endpointslices" => "EndpointSliceList",
        _ => "LeaseList",
    }
}

/// A `Status` object, as the API server sends with an error.
fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16()});
    (code, Json(body)).into_response()
}

impl FakeKube {
    /// Starts on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr) -> FakeKube {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared { inner: Mutex::new(Inner::default()), events });
        let router = Router::new()
            .route("/api/v1/{collection}", get(list_or_watch))
            .route("/apis/discovery.k8s.io/v1/{collection}", get(list_or_watch))
            .route("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", post(create_lease))
            .route("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", get(get_lease).put(replace_lease))
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .route("/apis/strait.io/v1alpha1/{plural}", get(custom_list_cluster).post(custom_create_cluster))
            .route(
                "/apis/strait.io/v1alpha1/{plural}/{name}",
                get(custom_get_cluster).put(custom_replace_cluster).delete(custom_delete_cluster),
            )
            .route("/apis/strait.io/v1alpha1/namespaces/{namespace}/{plural}", get(custom_list).post(custom_create))
            .route(
                "/apis/strait.io/v1alpha1/namespaces/{namespace}/{plural}/{name}",
                get(custom_get).put(custom_replace).delete(custom_delete),
            )
            .route(
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}",
                get(get_webhook_configuration).put(replace_webhook_configuration),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the fake Kubernetes API");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeKube { addr, shared, server }
    }

    /// Writes a kubeconfig for this server to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": format!("http://{}", self.addr)}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config).expect("kubeconfig")).expect("write the kubeconfig");
    }

    /// Creates or replaces `object` (a Pod, Service, Namespace or Lease), as `kubectl apply`
    /// would; returns it as stored (with its resource version and UID).
    pub fn apply(&self, mut object: Value) -> Value {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let collection = collection(&kind).to_string();
        let namespace =
            if cluster_scoped(&kind) { String::new() } else { object["metadata"]["namespace"].as_str().unwrap_or("default").to_string() };
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let mut inner = self.shared.lock();
        inner.revision += 1;
        let revision = inner.revision;
        let key = (collection.clone(), namespace.clone(), name.clone());
        let existing_uid = inner.objects.get(&key).and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string));
        let metadata = object["metadata"].as_object_mut().expect("metadata");
        if !namespace.is_empty() {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("resourceVersion".into(), json!(revision.to_string()));
        if !metadata.contains_key("uid") {
            let uid = existing_uid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{revision:012}"));
            metadata.insert("uid".into(), json!(uid));
        }
        metadata.entry("creationTimestamp").or_insert(json!("2026-12-01T00:00:00Z"));
        let kind_of_event = if inner.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let event = Event { revision, collection, kind: kind_of_event, object: object.clone() };
        inner.log.push(event.clone());
        let _ = self.shared.events.send(event);
        object
    }

    /// Deletes an object; whether it was there.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let collection = collection(kind).to_string();
        let namespace = if cluster_scoped(kind) { "" } else { namespace };
        let mut inner = self.shared.lock();
        let Some(mut object) = inner.objects.remove(&(collection.clone(), namespace.to_string(), name.to_string())) else { return false };
        inner.revision += 1;
        let revision = inner.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let event = Event { revision, collection, kind: "DELETED", object };
        inner.log.push(event.clone());
        let _ = self.shared.events.send(event);
        true
    }

    /// The object stored under that name, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let namespace = if cluster_scoped(kind) { "" } else { namespace };
        self.shared.lock().objects.get(&(collection(kind).to_string(), namespace.to_string(), name.to_string())).cloned()
    }

    /// Registers `token` as the projected service-account token of `pod` (as stored), for
    /// `audiences`.
    pub fn bind_token(&self, token: &str, pod: &Value, audiences: &[&str]) {
        let bound = BoundToken {
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            service_account: pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string(),
            pod: pod["metadata"]["name"].as_str().expect("the Pod's name").to_string(),
            pod_uid: pod["metadata"]["uid"].as_str().expect("the Pod's uid (apply it first)").to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        };
        self.shared.lock().tokens.insert(token.to_string(), bound);
    }

    /// While `on`, every request is answered `503 Service Unavailable` (an API-server outage),
    /// and open watches end.
    pub fn set_unavailable(&self, on: bool) {
        self.shared.lock().unavailable = on;
    }

    /// The `strait.io` custom resources of `plural` (in every namespace).
    pub fn custom_resources(&self, plural: &str) -> Vec<Value> {
        let collection = custom_collection(plural);
        self.shared.lock().objects.iter().filter(|((c, _, _), _)| *c == collection).map(|(_, o)| o.clone()).collect()
    }

    /// Stores a `strait.io` custom resource as a user would have written it.
    pub fn put_custom_resource(&self, plural: &str, mut object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let mut inner = self.shared.lock();
        inner.revision += 1;
        object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
        inner.objects.insert((custom_collection(plural), namespace, name), object);
    }

    /// The requests served so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

/// Records the request; the outage answer while the server is "down".
fn arrive(shared: &Shared, method: &str, path: &str) -> Option<Response> {
    let mut inner = shared.lock();
    inner.requests.push(format!("{method} {path}"));
    inner.unavailable.then(|| status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the fake API server is down"))
}

async fn list_or_watch(
    State(shared): State<Arc<Shared>>,
    Path(collection): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(down) = arrive(&shared, "GET", &format!("/api/v1/{collection}")) {
        return down;
    }
    if !["pods", "services", "namespaces", "endpointslices"].contains(&collection.as_str()) {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find the requested resource ({collection})"));
    }
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let inner = shared.lock();
        let items: Vec<Value> = inner.objects.iter().filter(|((c, _, _), _)| *c == collection).map(|(_, o)| o.clone()).collect();
        let body = json!({"kind": list_kind(&collection), "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.revision.to_string()}, "items": items});
        return Json(body).into_response();
    }
    let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
    // Subscribe before reading the log, so nothing falls between the two.
    let live = shared.events.subscribe();
    let (backlog, last) = {
        let inner = shared.lock();
        let backlog: Vec<Event> = inner.log.iter().filter(|e| e.collection == collection && e.revision > since).cloned().collect();
        (backlog, inner.revision)
    };
    let wanted = collection.clone();
    let live = tokio_stream::wrappers::BroadcastStream::new(live)
        .filter_map(move |e| std::future::ready(e.ok().filter(|e| e.collection == wanted && e.revision > last)));
    let down = shared.clone();
    let lines = futures::stream::iter(backlog)
        .chain(live)
        .take_while(move |_| std::future::ready(!down.lock().unavailable))
        .map(|e| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})))))
        .take_until(tokio::time::sleep(timeout));
    Response::builder().header("content-type", "application/json").body(Body::from_stream(lines)).unwrap_or_default()
}

fn lease_key(namespace: &str, name: &str) -> (String, String, String) {
    ("leases".into(), namespace.into(), name.into())
}

async fn get_lease(State(shared): State<Arc<Shared>>, Path((namespace, name)): Path<(String, String)>) -> Response {
    if let Some(down) = arrive(&shared, "GET", &format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")) {
        return down;
    }
    match shared.lock().objects.get(&lease_key(&namespace, &name)) {
        Some(lease) => Json(lease.clone()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("leases.coordination.k8s.io \"{name}\" not found")),
    }
}

/// Stores a Lease at a new resource version.
fn store_lease(shared: &Shared, namespace: &str, name: &str, mut lease: Value) -> Value {
    let mut inner = shared.lock();
    inner.revision += 1;
    let revision = inner.revision;
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(namespace);
    lease["metadata"]["resourceVersion"] = json!(revision.to_string());
    if lease["metadata"]["uid"].is_null() {
        lease["metadata"]["uid"] = json!(format!("00000000-0000-4000-9000-{revision:012}"));
    }
    inner.objects.insert(lease_key(namespace, name), lease.clone());
    lease
}

async fn create_lease(State(shared): State<Arc<Shared>>, Path(namespace): Path<String>, Json(lease): Json<Value>) -> Response {
    if let Some(down) = arrive(&shared, "POST", &format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")) {
        return down;
    }
    let name = lease["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if shared.lock().objects.contains_key(&lease_key(&namespace, &name)) {
        return status(StatusCode::CONFLICT, "AlreadyExists", format!("leases.coordination.k8s.io \"{name}\" already exists"));
    }
    (StatusCode::CREATED, Json(store_lease(&shared, &namespace, &name, lease))).into_response()
}

async fn replace_lease(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    Json(lease): Json<Value>,
) -> Response {
    if let Some(down) = arrive(&shared, "PUT", &format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")) {
        return down;
    }
    let current = shared.lock().objects.get(&lease_key(&namespace, &name)).map(|l| l["metadata"]["resourceVersion"].clone());
    match current {
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("leases.coordination.k8s.io \"{name}\" not found")),
        Some(version) if version != lease["metadata"]["resourceVersion"] => status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        ),
        Some(_) => Json(store_lease(&shared, &namespace, &name, lease)).into_response(),
    }
}

async fn token_review(State(shared): State<Arc<Shared>>, Json(review): Json<Value>) -> Response {
    if let Some(down) = arrive(&shared, "POST", "/apis/authentication.k8s.io/v1/tokenreviews") {
        return down;
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> =
        review["spec"]["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_string)).collect();
    let bound = shared.lock().tokens.get(token).cloned();
    let result = match bound {
        None => json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
        Some(b) if !wanted.is_empty() && !wanted.iter().any(|w| b.audiences.contains(w)) => json!({"user": {},
            "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", b.audiences, wanted)}),
        Some(b) => {
            let pod_exists = shared
                .lock()
                .objects
                .get(&("pods".into(), b.namespace.clone(), b.pod.clone()))
                .is_some_and(|p| p["metadata"]["uid"] == json!(b.pod_uid));
            if pod_exists {
                json!({"authenticated": true, "audiences": if wanted.is_empty() { b.audiences.clone() } else { wanted.clone() },
                    "user": {"username": format!("system:serviceaccount:{}:{}", b.namespace, b.service_account), "uid": "5d1c",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", b.namespace), "system:authenticated"],
                        "extra": {"authentication.kubernetes.io/pod-name": [b.pod], "authentication.kubernetes.io/pod-uid": [b.pod_uid],
                            "authentication.kubernetes.io/node-name": ["node-a"]}}})
            } else {
                // The API server refuses a bound token once its Pod is gone.
                json!({"user": {}, "error": format!("[invalid bearer token, pod \"{}\" not found or was deleted]", b.pod)})
            }
        }
    };
    let answer = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": null},
        "spec": review["spec"], "status": result});
    (StatusCode::CREATED, Json(answer)).into_response()
}

fn webhook_key(name: &str) -> (String, String, String) {
    ("mutatingwebhookconfigurations".into(), String::new(), name.into())
}

async fn get_webhook_configuration(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    if let Some(down) = arrive(&shared, "GET", &format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")) {
        return down;
    }
    match shared.lock().objects.get(&webhook_key(&name)) {
        Some(object) => Json(object.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("mutatingwebhookconfigurations.admissionregistration.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn replace_webhook_configuration(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(mut object): Json<Value>,
) -> Response {
    if let Some(down) = arrive(&shared, "PUT", &format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")) {
        return down;
    }
    let mut inner = shared.lock();
    let Some(current) = inner.objects.get(&webhook_key(&name)).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("mutatingwebhookconfigurations.admissionregistration.k8s.io \"{name}\" not found"),
        );
    };
    if current["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
        return status(StatusCode::CONFLICT, "Conflict", format!("Operation cannot be fulfilled on mutatingwebhookconfigurations.admissionregistration.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
    }
    inner.revision += 1;
    object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    inner.objects.insert(webhook_key(&name), object.clone());
    Json(object).into_response()
}

fn custom_collection(plural: &str) -> String {
    format!("strait.io/{plural}")
}

/// Whether `object` has every `key=value` of a label selector.
fn selected(object: &Value, selector: Option<&String>) -> bool {
    selector.into_iter().flat_map(|s| s.split(',')).filter(|p| !p.is_empty()).all(|pair| match pair.split_once('=') {
        Some((key, value)) => object["metadata"]["labels"][key] == json!(value),
        None => !object["metadata"]["labels"][pair].is_null(),
    })
}

fn custom_list_in(shared: &Shared, namespace: Option<&str>, plural: &str, query: &HashMap<String, String>) -> Response {
    let path = format!("/apis/strait.io/v1alpha1/{plural}");
    if let Some(down) = arrive(shared, "GET", &path) {
        return down;
    }
    let inner = shared.lock();
    let collection = custom_collection(plural);
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((c, ns, _), o)| *c == collection && namespace.is_none_or(|n| n == ns) && selected(o, query.get("labelSelector")))
        .map(|(_, o)| o.clone())
        .collect();
    Json(json!({"apiVersion": "strait.io/v1alpha1", "kind": "List", "metadata": {"resourceVersion": inner.revision.to_string()}, "items": items}))
        .into_response()
}

fn custom_create_in(shared: &Shared, namespace: &str, plural: &str, mut object: Value) -> Response {
    if let Some(down) = arrive(shared, "POST", &format!("/apis/strait.io/v1alpha1/{plural}")) {
        return down;
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let mut inner = shared.lock();
    let key = (custom_collection(plural), namespace.to_string(), name.clone());
    if inner.objects.contains_key(&key) {
        return status(StatusCode::CONFLICT, "AlreadyExists", format!("{plural}.strait.io \"{name}\" already exists"));
    }
    inner.revision += 1;
    object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
    object["metadata"]["uid"] = json!(format!("00000000-0000-4000-a000-{:012}", inner.revision));
    if !namespace.is_empty() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    inner.objects.insert(key, object.clone());
    (StatusCode::CREATED, Json(object)).into_response()
}

fn custom_get_in(shared: &Shared, namespace: &str, plural: &str, name: &str) -> Response {
    if let Some(down) = arrive(shared, "GET", &format!("/apis/strait.io/v1alpha1/{plural}/{name}")) {
        return down;
    }
    match shared.lock().objects.get(&(custom_collection(plural), namespace.to_string(), name.to_string())) {
        Some(object) => Json(object.clone()).into_response(),
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("{plural}.strait.io \"{name}\" not found")),
    }
}

fn custom_replace_in(shared: &Shared, namespace: &str, plural: &str, name: &str, mut object: Value) -> Response {
    if let Some(down) = arrive(shared, "PUT", &format!("/apis/strait.io/v1alpha1/{plural}/{name}")) {
        return down;
    }
    let mut inner = shared.lock();
    let key = (custom_collection(plural), namespace.to_string(), name.to_string());
    let Some(current) = inner.objects.get(&key).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("{plural}.strait.io \"{name}\" not found"));
    };
    if current["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
        return status(StatusCode::CONFLICT, "Conflict", format!("Operation cannot be fulfilled on {plural}.strait.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
    }
    inner.revision += 1;
    object["metadata"]["resourceVersion"] = json!(inner.revision.to_string());
    object["metadata"]["uid"] = current["metadata"]["uid"].clone();
    inner.objects.insert(key, object.clone());
    Json(object).into_response()
}

fn custom_delete_in(shared: &Shared, namespace: &str, plural: &str, name: &str) -> Response {
    if let Some(down) = arrive(shared, "DELETE", &format!("/apis/strait.io/v1alpha1/{plural}/{name}")) {
        return down;
    }
    let mut inner = shared.lock();
    match inner.objects.remove(&(custom_collection(plural), namespace.to_string(), name.to_string())) {
        Some(object) => {
            inner.revision += 1;
            Json(object).into_response()
        }
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("{plural}.strait.io \"{name}\" not found")),
    }
}

async fn custom_list_cluster(
    State(shared): State<Arc<Shared>>,
    Path(plural): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    custom_list_in(&shared, None, &plural, &query)
}

async fn custom_list(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    custom_list_in(&shared, Some(&namespace), &plural, &query)
}

async fn custom_create_cluster(State(shared): State<Arc<Shared>>, Path(plural): Path<String>, Json(object): Json<Value>) -> Response {
    custom_create_in(&shared, "", &plural, object)
}

async fn custom_create(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural)): Path<(String, String)>,
    Json(object): Json<Value>,
) -> Response {
    custom_create_in(&shared, &namespace, &plural, object)
}

async fn custom_get_cluster(State(shared): State<Arc<Shared>>, Path((plural, name)): Path<(String, String)>) -> Response {
    custom_get_in(&shared, "", &plural, &name)
}

async fn custom_get(State(shared): State<Arc<Shared>>, Path((namespace, plural, name)): Path<(String, String, String)>) -> Response {
    custom_get_in(&shared, &namespace, &plural, &name)
}

async fn custom_replace_cluster(
    State(shared): State<Arc<Shared>>,
    Path((plural, name)): Path<(String, String)>,
    Json(object): Json<Value>,
) -> Response {
    custom_replace_in(&shared, "", &plural, &name, object)
}

async fn custom_replace(
    State(shared): State<Arc<Shared>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Json(object): Json<Value>,
) -> Response {
    custom_replace_in(&shared, &namespace, &plural, &name, object)
}

async fn custom_delete_cluster(State(shared): State<Arc<Shared>>, Path((plural, name)): Path<(String, String)>) -> Response {
    custom_delete_in(&shared, "", &plural, &name)
}

async fn custom_delete(State(shared): State<Arc<Shared>>, Path((namespace, plural, name)): Path<(String, String, String)>) -> Response {
    custom_delete_in(&shared, &namespace, &plural, &name)
}
