//! The REST API over real HTTP against an in-process server on an ephemeral port: every
//! success and error code, optimistic concurrency, metrics, OpenAPI, and a restart.

use std::sync::Arc;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use strait_global_cp::{Config, GlobalCp};

struct Server {
    cp: Option<GlobalCp>,
    base: String,
    token: String,
    http: Client,
    _dir: Arc<tempfile::TempDir>,
}

async fn start_in(dir: Arc<tempfile::TempDir>, max_body: Option<usize>) -> Server {
    let mut config = Config::for_dir(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    if let Some(n) = max_body {
        config.max_body_bytes = n;
    }
    let cp = GlobalCp::start(Arc::new(config)).await.expect("global control plane starts");
    let token = std::fs::read_to_string(&cp.token_file).unwrap().trim().to_string();
    Server { base: format!("http://{}", cp.api_addr), cp: Some(cp), token, http: Client::new(), _dir: dir }
}

async fn start() -> Server {
    start_in(Arc::new(tempfile::tempdir().unwrap()), None).await
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn put(&self, path: &str, body: &Value) -> (StatusCode, Option<String>, Value) {
        let resp = self.http.put(self.url(path)).bearer_auth(&self.token).json(body).send().await.unwrap();
        let status = resp.status();
        let result = resp.headers().get("strait-result").map(|v| v.to_str().unwrap().to_string());
        (status, result, resp.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.delete(self.url(path)).bearer_auth(&self.token).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn stop(&mut self) {
        let cp = self.cp.take().unwrap();
        cp.shutdown();
        cp.wait().await;
    }
}

fn mesh(name: &str) -> Value {
    json!({"type": "Mesh", "name": name})
}

fn timeout(name: &str, idle: &str) -> Value {
    json!({"type": "MeshTimeout", "name": name, "mesh": "default", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": idle}}]}})
}

#[tokio::test]
async fn create_configure_unchanged_get_list_delete() {
    let s = start().await;
    let bare = json!({"type": "Mesh", "name": "default", "spec": {"skipDefaultPolicies": true}});
    let (status, result, body) = s.put("/meshes/default", &bare).await;
    assert_eq!((status, result.as_deref()), (StatusCode::CREATED, Some("created")), "{body}");
    assert!(body["version"].as_u64().unwrap() > 0);
    assert!(body["creationTime"].is_string());

    let path = "/meshes/default/meshtimeouts/t1";
    let (status, result, created) = s.put(path, &timeout("t1", "1m")).await;
    assert_eq!((status, result.as_deref()), (StatusCode::CREATED, Some("created")), "{created}");
    let (status, result, same) = s.put(path, &timeout("t1", "60s")).await;
    assert_eq!((status, result.as_deref()), (StatusCode::OK, Some("unchanged")), "60s is the same duration as 1m");
    assert_eq!(same["version"], created["version"]);
    let (status, result, changed) = s.put(path, &timeout("t1", "2m")).await;
    assert_eq!((status, result.as_deref()), (StatusCode::OK, Some("configured")));
    assert!(changed["version"].as_u64() > created["version"].as_u64());
    assert_eq!(changed["creationTime"], created["creationTime"]);

    let (status, got) = s.get(path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["spec"]["to"][0]["default"]["idleTimeout"], "2m");
    assert_eq!(got["mesh"], "default");

    let (status, list) = s.get("/meshes/default/meshtimeouts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["name"], "t1");

    let (status, deleted) = s.delete(path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["name"], "t1");
    assert_eq!(s.get(path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.delete(path).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_new_mesh_gets_deletable_default_policies() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    let (status, mtp) = s.get("/meshes/default/meshtrafficpermissions/allow-all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mtp["spec"]["from"][0]["default"]["action"], "Allow");
    // Safe resilience defaults for every destination, each marked as a default.
    for (path, field, value) in [
        ("meshtimeouts/mesh-timeout-all-default", "/spec/to/0/default/http/requestTimeout", json!("15s")),
        ("meshretries/mesh-retry-all-default", "/spec/to/0/default/http/numRetries", json!(5)),
        ("meshretries/mesh-retry-all-default", "/spec/to/0/default/tcp/maxConnectAttempt", json!(5)),
        (
            "meshcircuitbreakers/mesh-circuit-breaker-all-default",
            "/spec/to/0/default/outlierDetection/detectors/localOriginFailures/consecutive",
            json!(5),
        ),
        ("meshcircuitbreakers/mesh-circuit-breaker-all-default", "/spec/to/0/default/connectionLimits/maxRequests", json!(1024)),
    ] {
        let (status, policy) = s.get(&format!("/meshes/default/{path}")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(policy.pointer(field), Some(&value), "{path}: {policy}");
        assert_eq!(policy["labels"]["strait.io/origin"], "default", "{path}");
    }
    assert_eq!(s.delete("/meshes/default/meshretries/mesh-retry-all-default").await.0, StatusCode::OK);
    assert_eq!(s.delete("/meshes/default/meshtrafficpermissions/allow-all").await.0, StatusCode::OK);
    s.put("/meshes/default", &json!({"type": "Mesh", "name": "default", "spec": {"mtls": {"certificateLifetime": "12h"}}})).await;
    assert_eq!(
        s.get("/meshes/default/meshtrafficpermissions/allow-all").await.0,
        StatusCode::NOT_FOUND,
        "updating a mesh does not recreate it"
    );
    assert_eq!(s.get("/meshes/default/meshretries/mesh-retry-all-default").await.0, StatusCode::NOT_FOUND, "nor the retry default");
    s.put("/meshes/bare", &json!({"type": "Mesh", "name": "bare", "spec": {"skipDefaultPolicies": true}})).await;
    for kind in ["meshtrafficpermissions", "meshtimeouts", "meshretries", "meshcircuitbreakers"] {
        assert_eq!(s.get(&format!("/meshes/bare/{kind}")).await.1["total"], 0, "{kind}");
    }
}

#[tokio::test]
async fn validation_errors_name_the_field_and_write_nothing() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    let bad = json!({"type": "MeshTimeout", "name": "t", "mesh": "default",
        "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "5 parsecs"}}}]}});
    let (status, _, body) = s.put("/meshes/default/meshtimeouts/t", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_resource");
    assert_eq!(body["details"][0]["field"], "spec.to[0].default.http.requestTimeout");
    assert!(body["details"][0]["message"].as_str().unwrap().starts_with("invalid duration \"5 parsecs\""), "{body}");
    assert_eq!(s.get("/meshes/default/meshtimeouts/t").await.0, StatusCode::NOT_FOUND);

    let (status, _, body) = s.put("/meshes/default/meshtimeouts/other", &timeout("t", "1s")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a body naming another resource than its path");
    assert_eq!(body["details"][0]["field"], "name");

    let (status, _, body) = s.put("/meshes/default/meshtimeouts/t", &json!(["not", "an", "object"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let resp = s
        .http
        .put(s.url("/meshes/default/meshtimeouts/t"))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("not valid JSON"), "{body}");
}

#[tokio::test]
async fn type_name_and_mesh_come_from_the_path_and_yaml_is_accepted() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    let yaml = "spec:\n  to:\n    - targetRef: {kind: Mesh}\n      default: {idleTimeout: 5s}\n";
    let resp = s
        .http
        .put(s.url("/meshes/default/meshtimeouts/from-yaml"))
        .bearer_auth(&s.token)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["type"].as_str(), body["name"].as_str(), body["mesh"].as_str()),
        (Some("MeshTimeout"), Some("from-yaml"), Some("default"))
    );
}

#[tokio::test]
async fn writes_need_the_admin_token() {
    let s = start().await;
    let resp = s.http.put(s.url("/meshes/default")).json(&mesh("default")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers().get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "unauthorized");

    let resp = s.http.put(s.url("/meshes/default")).bearer_auth("not-the-token").json(&mesh("default")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "forbidden");

    let resp = s.http.delete(s.url("/meshes/default")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/meshes/default").await.0, StatusCode::NOT_FOUND, "nothing was written");
    assert_eq!(s.get("/meshes").await.0, StatusCode::OK, "reads need no token");
}

#[tokio::test]
async fn not_found_cases() {
    let s = start().await;
    let (status, body) = s.get("/meshes/nope").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, _, body) = s
        .put(
            "/meshes/nope/meshtimeouts/t",
            &json!({"type": "MeshTimeout", "name": "t", "mesh": "nope", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a resource needs its mesh");
    assert!(body["message"].as_str().unwrap().contains("mesh \"nope\" not found"), "{body}");
    s.put("/meshes/default", &mesh("default")).await;
    let (status, body) = s.get("/meshes/default/widgets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].as_str().unwrap().contains("meshtrafficpermissions"), "lists the valid types: {body}");
    assert_eq!(s.get("/meshes/default/meshtimeouts/missing").await.0, StatusCode::NOT_FOUND);
    let (status, body) = s.get("/meshes/nope/meshtimeouts/t").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["message"], "mesh \"nope\" not found", "the missing mesh is named");
    assert_eq!(s.get("/no/such/path").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn optimistic_concurrency_conflicts_are_409() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    let (_, _, v1) = s.put("/meshes/default/meshtimeouts/t", &timeout("t", "1s")).await;
    let mut update = timeout("t", "2s");
    update["version"] = v1["version"].clone();
    let (status, _, v2) = s.put("/meshes/default/meshtimeouts/t", &update).await;
    assert_eq!(status, StatusCode::OK, "the current version is accepted");
    let mut stale = timeout("t", "3s");
    stale["version"] = v1["version"].clone();
    let (status, _, body) = s.put("/meshes/default/meshtimeouts/t", &stale).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "conflict");
    assert_eq!(
        s.get("/meshes/default/meshtimeouts/t").await.1["spec"]["to"][0]["default"]["idleTimeout"],
        "2s",
        "the stale write changed nothing"
    );

    let mut create_with_version = timeout("new", "1s");
    create_with_version["version"] = json!(7);
    assert_eq!(s.put("/meshes/default/meshtimeouts/new", &create_with_version).await.0, StatusCode::CONFLICT);

    let stale_delete = format!("/meshes/default/meshtimeouts/t?version={}", v1["version"]);
    assert_eq!(s.delete(&stale_delete).await.0, StatusCode::CONFLICT);
    let good_delete = format!("/meshes/default/meshtimeouts/t?version={}", v2["version"]);
    assert_eq!(s.delete(&good_delete).await.0, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_413_and_wrong_media_types_415() {
    let s = start_in(Arc::new(tempfile::tempdir().unwrap()), Some(2048)).await;
    let mut big = mesh("default");
    big["labels"] = json!({"padding": "x".repeat(60), "more": "y".repeat(60)});
    let huge = format!("{{\"type\":\"Mesh\",\"name\":\"default\",\"labels\":{{\"a\":\"{}\"}}}}", "z".repeat(4096));
    let resp = s
        .http
        .put(s.url("/meshes/default"))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "payload_too_large");

    let resp = s
        .http
        .put(s.url("/meshes/default"))
        .bearer_auth(&s.token)
        .header("content-type", "text/plain")
        .body("type: Mesh")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "unsupported_media_type");
    let resp = s.http.put(s.url("/meshes/default")).bearer_auth(&s.token).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content type");
    assert_eq!(s.put("/meshes/default", &big).await.0, StatusCode::CREATED, "a body under the limit is fine");
}

#[tokio::test]
async fn deleting_a_mesh_deletes_everything_in_it() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    s.put("/meshes/other", &mesh("other")).await;
    s.put("/meshes/default/meshtimeouts/t", &timeout("t", "1s")).await;
    assert_eq!(s.delete("/meshes/default").await.0, StatusCode::OK);
    assert_eq!(s.get("/meshes/default").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/meshes/default/meshtimeouts/t").await.0, StatusCode::NOT_FOUND);
    s.put("/meshes/default", &json!({"type": "Mesh", "name": "default", "spec": {"skipDefaultPolicies": true}})).await;
    assert_eq!(s.get("/meshes/default/meshtimeouts").await.1["total"], 0, "nothing of the old mesh comes back");
    assert_eq!(s.get("/meshes/other/meshtrafficpermissions/allow-all").await.0, StatusCode::OK, "other meshes are untouched");
}

#[tokio::test]
async fn zones_and_services() {
    let s = start().await;
    let (status, _, zone) = s.put("/zones/zone-1", &json!({"type": "Zone", "name": "zone-1"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(zone["spec"]["enabled"], true);
    assert_eq!(s.get("/zones").await.1["total"], 1);
    s.put("/meshes/default", &mesh("default")).await;
    // Dataplanes register in their zone: a write here would reach no sidecar, so it is refused.
    let dp = json!({"type": "Dataplane", "name": "web-1", "mesh": "default", "spec": {"networking": {"address": "192.0.2.1", "inbound": [{"port": 8080, "tags": {"strait.io/service": "web"}}]}}});
    let (status, _, body) = s.put("/meshes/default/dataplanes/web-1", &dp).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("registered with the control plane of their zone"), "{body}");
    assert_eq!(s.get("/meshes/default/dataplanes").await.1["total"], 0);
    // The services are those the zones report, summed over zones.
    let store = s.cp.as_ref().unwrap().store().clone();
    for (zone, services) in [("zone-1", json!([["web", 2], ["api", 1]])), ("zone-2", json!([["web", 1]]))] {
        let services: Vec<Value> = services
            .as_array()
            .unwrap()
            .iter()
            .map(|s| json!({"mesh": "default", "name": s[0], "endpoints": s[1], "healthy": s[1]}))
            .chain([json!({"mesh": "other", "name": "elsewhere", "endpoints": 5, "healthy": 5})])
            .collect();
        let key = strait_store::Key::new(strait_cp_core::kinds::ZONE_INVENTORY, "", zone);
        store.put(key, json!({"zone": zone, "services": services}), strait_store::Precondition::None).await.unwrap();
    }
    let (status, services) = s.get("/meshes/default/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(services["items"], json!([{"name": "api", "dataplanes": 1}, {"name": "web", "dataplanes": 3}]));
    assert_eq!(s.delete("/zones/zone-1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let s = start().await;
    assert_eq!(s.http.get(s.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(s.http.get(s.url("/readyz")).send().await.unwrap().status(), StatusCode::OK);
    s.put("/meshes/default", &mesh("default")).await;
    s.get("/meshes/nope").await;
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        "strait_global_http_requests_total{route=\"/meshes/{mesh}\",method=\"PUT\",status=\"201\"} 1",
        "strait_global_http_requests_total{route=\"/meshes/{mesh}\",method=\"GET\",status=\"404\"} 1",
        "strait_global_http_request_duration_seconds_bucket",
        "strait_global_store_resources{type=\"MeshTrafficPermission\"} 1",
        "strait_global_store_resources{type=\"Mesh\"} 1",
        "strait_global_store_size_bytes",
    ] {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/meshes", "/meshes/{mesh}", "/meshes/{mesh}/meshtimeouts/{name}", "/meshes/{mesh}/dataplanes", "/zones/{name}"] {
        assert!(doc["paths"][path].is_object(), "missing path {path}");
    }
    let resource = &doc["components"]["schemas"]["Resource"];
    assert_eq!(resource["properties"]["spec"]["anyOf"].as_array().unwrap().len(), strait_api::ResourceType::ALL.len());
    let put = &doc["paths"]["/meshes/{mesh}/meshtimeouts/{name}"]["put"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(put["properties"]["type"]["enum"], serde_json::json!(["MeshTimeout"]), "each type's PUT takes its own body: {put}");
    assert!(doc["components"]["schemas"]["TargetRef"].is_object(), "nested types are generated too");
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}

#[tokio::test]
async fn a_restart_keeps_data_and_the_token() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = start_in(dir.clone(), None).await;
    s.put("/meshes/default", &mesh("default")).await;
    let (_, _, t) = s.put("/meshes/default/meshtimeouts/t", &timeout("t", "9s")).await;
    let token = s.token.clone();
    s.stop().await;
    let s = start_in(dir, None).await;
    assert_eq!(s.token, token);
    let (status, got) = s.get("/meshes/default/meshtimeouts/t").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["version"], t["version"]);
    assert_eq!(got["spec"]["to"][0]["default"]["idleTimeout"], "9s");
    let (_, _, next) = s.put("/meshes/default/meshtimeouts/u", &timeout("u", "1s")).await;
    assert!(next["version"].as_u64() > t["version"].as_u64(), "versions keep increasing across restarts");
}

#[tokio::test]
async fn dataplane_tokens_are_bound_to_mesh_and_service_and_verifiable_with_the_synced_key() {
    let s = start().await;
    let issue = |path: &str| s.http.post(s.url(path)).bearer_auth(&s.token).send();
    assert_eq!(issue("/meshes/nope/dataplane-tokens?service=web").await.unwrap().status(), StatusCode::NOT_FOUND);
    s.put("/meshes/default", &mesh("default")).await;
    let resp = issue("/meshes/default/dataplane-tokens?service=Bad_Name").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<Value>().await.unwrap()["details"][0]["field"], "service");
    let unauthenticated = s.http.post(s.url("/meshes/default/dataplane-tokens?service=web")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);

    let body: Value = issue("/meshes/default/dataplane-tokens?service=web&validFor=1h").await.unwrap().json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    let keys = s.cp.as_ref().unwrap().store().get(&strait_store::Key::new("TokenKeys", "", "dataplane")).await.unwrap().unwrap();
    let keys: Vec<strait_pki::token::TokenVerifierKey> = serde_json::from_value(keys.data["keys"].clone()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = strait_pki::token::verify(token, &keys, now).expect("zones can verify it with the synced key");
    assert_eq!(claims.subject, strait_pki::token::TokenSubject::Dataplane { mesh: "default".into(), service: "web".into() });
    assert!(claims.expires_at <= now + 3600 + 1);
    assert!(strait_pki::token::verify(token, &keys, now + 7200).is_err(), "it expires");
}

/// Requests are counted before they are authenticated: made-up methods must not grow the
/// metrics' label set (an attacker could otherwise grow `/metrics` without bound).
#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let s = start().await;
    let before = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap().len();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("X{i:04}").as_bytes()).unwrap();
        s.http.request(method, s.url("/meshes")).send().await.unwrap();
    }
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("X0001"), "a made-up method became a label");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.len() < before + 4096, "/metrics grew from {before} to {} bytes", text.len());
}

/// A stored resource that no longer validates (damaged, or written by an incompatible
/// version) is skipped by lists, named in the log and counted, instead of failing every list of
/// its kind; reading it alone still says what is wrong with it.
#[tokio::test]
async fn a_resource_that_no_longer_validates_does_not_hide_the_others() {
    let s = start().await;
    s.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await;
    let good = json!({"type": "MeshTimeout", "name": "good", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s"}}]}});
    assert_eq!(s.put("/meshes/default/meshtimeouts/good", &good).await.0, StatusCode::CREATED);
    let store = s.cp.as_ref().unwrap().store().clone();
    let key = strait_store::Key::new("MeshTimeout", "default", "damaged");
    store.put(key, json!({"spec": {"to": "not a list"}}), strait_store::Precondition::None).await.unwrap();

    let (status, list) = s.get("/meshes/default/meshtimeouts").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert!(names.contains(&"good") && !names.contains(&"damaged"), "{list}");
    let (status, one) = s.get("/meshes/default/meshtimeouts/damaged").await;
    assert!(status.is_server_error(), "{status} {one}");
    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let skipped = text.lines().find(|l| l.starts_with("strait_global_store_skipped_records ")).expect("the metric");
    assert!(skipped.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0, "{skipped}");
}

/// `/openapi.json` is complete enough for generators and contract testers: every reference
/// resolves, every path parameter is declared with its rule, and every status the API answers
/// (400 for a bad path or query, 401/403 for writes, 413/415 for bodies) is documented; a bad
/// query string answers the JSON error, not plain text.
#[tokio::test]
async fn the_openapi_document_is_complete() {
    let missing = strait_global_cp::rest::openapi::document().1;
    assert!(missing.is_empty(), "validation rules refer to schemas the document lacks: {missing:?}");
    let s = start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1).filter_map(|r| r.split('"').next()) {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected reference {reference}"));
        assert!(doc["components"]["schemas"][name].is_object(), "{reference} is referenced but not defined");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        let names: Vec<&str> = path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for name in &names {
                let param = params.iter().find(|p| p["name"] == *name && p["in"] == "path");
                let param = param.unwrap_or_else(|| panic!("{method} {path}: path parameter {name} is not declared"));
                assert!(
                    param["schema"]["pattern"].is_string() || param["schema"]["enum"].is_array(),
                    "{method} {path}: {name} has no rule"
                );
            }
            let responses = op["responses"].as_object().unwrap();
            let mut needed = vec!["400"];
            if op.get("security").is_some() {
                needed.extend(["401", "403"]);
            }
            if method == "put" {
                needed.extend(["413", "415"]);
            }
            for code in needed {
                assert!(responses.contains_key(code), "{method} {path}: status {code} is not documented");
            }
        }
    }
    let bad = s.http.delete(s.url("/meshes/nope?version=abc")).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(bad.headers()["content-type"], "application/json");
    let body: Value = bad.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("query string"), "{body}");
}

/// The event log (history kept for watchers) never holds a private key: the events of a mesh's
/// root CA and of the global's secrets say that they changed, without their data.
#[tokio::test]
async fn private_keys_stay_out_of_the_event_log() {
    use futures::StreamExt;
    let s = start().await;
    s.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await;
    let store = s.cp.as_ref().unwrap().store().clone();
    let end = store.revision();
    let mut watch = store.watch(0).await.unwrap();
    let mut private = 0;
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
        if strait_cp_core::kinds::PRIVATE_KEY_KINDS.contains(&event.object.key.kind.as_str()) {
            private += 1;
            assert!(event.object.data.is_null(), "{} in the event log carries its data", event.object.key);
        } else {
            assert!(!event.object.data.to_string().contains("PRIVATE KEY"), "{} carries a key", event.object.key);
        }
        if event.revision >= end {
            break;
        }
    }
    assert!(private >= 2, "the system secrets and the mesh CA were written");
}

/// Nothing is stored that no sidecar enforces: a policy type not enforced yet answers 405 naming
/// the enforced ones (and stays deletable), and the fields not enforced of the other types
/// answer 400 naming the field.
#[tokio::test]
async fn what_no_sidecar_enforces_is_refused() {
    let s = start().await;
    s.put("/meshes/default", &mesh("default")).await;
    for kind in strait_api::support::NOT_ENFORCED_TYPES {
        let path = format!("/meshes/default/{}/p", kind.plural());
        let body = json!({"type": kind.name(), "name": "p", "mesh": "default", "spec": {}});
        let resp = s.http.put(s.url(&path)).bearer_auth(&s.token).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(resp.headers()["allow"], "GET, HEAD, DELETE", "{path}");
        let error: Value = resp.json().await.unwrap();
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(kind.name()) && message.contains("MeshTimeout"), "{message}");
        assert_eq!(s.delete(&path).await.0, StatusCode::NOT_FOUND, "{path}: DELETE is still routed");
    }
    let refused = [
        (
            json!({"from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"idleTimeout": "5s"}}]}),
            "spec.from[0].targetRef.kind",
            "every caller",
        ),
        (
            json!({"to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "5s", "requestHeadersTimeout": "5s"}}}]}),
            "spec.to[0].default.http.requestHeadersTimeout",
            "not enforced",
        ),
        (
            json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestHeadersTimeout": "5s"}}}]}),
            "spec.from[0].default.http.requestHeadersTimeout",
            "not enforced",
        ),
    ];
    for (spec, field, why) in refused {
        let (status, _, body) = s.put("/meshes/default/meshtimeouts/t", &json!({"type": "MeshTimeout", "spec": spec})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["details"][0]["field"], field, "{body}");
        assert!(body["details"][0]["message"].as_str().unwrap().contains(why), "{body}");
    }
    let every_timeout = json!({"type": "MeshTimeout", "spec": {
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"connectionTimeout": "1s", "idleTimeout": "5s",
            "http": {"requestTimeout": "5s", "streamIdleTimeout": "5s", "maxStreamDuration": "5s", "maxConnectionDuration": "1h"}}}],
        "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"streamIdleTimeout": "5s", "maxStreamDuration": "5s", "maxConnectionDuration": "1h"}}}]}});
    let (status, _, body) = s.put("/meshes/default/meshtimeouts/every", &every_timeout).await;
    assert_eq!(status, StatusCode::CREATED, "every timeout but requestHeadersTimeout is enforced, in and out: {body}");
    let threshold = json!({"type": "MeshLoadBalancingStrategy", "spec": {"to": [{"targetRef": {"kind": "Mesh"},
        "default": {"localityAwareness": {"crossZone": {"failoverThreshold": 50, "failover": [{"to": {"type": "Any"}}]}}}}]}});
    let (status, _, body) = s.put("/meshes/default/meshloadbalancingstrategies/l", &threshold).await;
    assert_eq!(status, StatusCode::CREATED, "failoverThreshold is enforced: {body}");
    let inbound = json!({"type": "MeshCircuitBreaker", "spec": {"from": [{"targetRef": {"kind": "Mesh"},
        "default": {"connectionLimits": {"maxConnections": 10}}}]}});
    let (status, _, body) = s.put("/meshes/default/meshcircuitbreakers/cb", &inbound).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["details"][0]["field"], "spec.from", "{body}");
    let limits = json!({"type": "MeshCircuitBreaker", "spec": {"to": [{"targetRef": {"kind": "Mesh"},
        "default": {"connectionLimits": {"maxConnections": 10, "maxPendingRequests": 5}, "outlierDetection": {"interval": "5s",
            "detectors": {"totalFailures": {"consecutive": 3}, "failurePercentage": {"threshold": 50}}}}}]}});
    let (status, _, body) = s.put("/meshes/default/meshcircuitbreakers/cb", &limits).await;
    assert_eq!(status, StatusCode::CREATED, "connection limits and the failure percentage are enforced: {body}");
    let (status, _, body) = s
        .put(
            "/meshes/default/meshretries/r",
            &json!({"type": "MeshRetry", "spec": {"to": [{"targetRef": {"kind": "Mesh"},
        "default": {"grpc": {"numRetries": 2}}}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "gRPC retries are enforced: {body}");
    let zipkin = json!({"type": "MeshTrace", "spec": {"default": {"backends": [{"zipkin": {"url": "http://zipkin:9411/api/v2/spans"}}]}}});
    let (status, _, body) = s.put("/meshes/default/meshtraces/t", &zipkin).await;
    assert_eq!(
        (status, body["details"][0]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("spec.default.backends[0].zipkin")),
        "{body}"
    );
    let otlp = json!({"type": "MeshTrace", "spec": {"default": {"backends": [{"openTelemetry": {"endpoint": "collector:4317"}}]}}});
    assert_eq!(s.put("/meshes/default/meshtraces/t", &otlp).await.0, StatusCode::CREATED, "MeshTrace over OTLP is enforced");
    let enforced = json!({"type": "MeshTimeout", "spec": {"to": [{"targetRef": {"kind": "Mesh"},
        "default": {"connectionTimeout": "2s", "idleTimeout": "1m", "http": {"requestTimeout": "3s"}}}]}});
    assert_eq!(s.put("/meshes/default/meshtimeouts/t", &enforced).await.0, StatusCode::CREATED);
}
