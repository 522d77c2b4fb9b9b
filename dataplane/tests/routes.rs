//! MeshHTTPRoute through real sidecars: a weighted split between two versions of a service
//! (90/10 over 2,000 requests), a header match that sends one user to v2 only, a redirect the
//! sidecar answers itself, a prefix rewrite with request and response header changes, a
//! route change applied under load with no failed request, every enforced policy type
//! applied, changed and deleted under constant load with no failed request, request
//! mirroring, and a MeshTimeout on one route.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{admin, eventually, free_port, http_app, Mesh};
use serde_json::json;

/// A Dataplane of service backend, version `version`, its inbound on `port` and its
/// application on `app`.
fn backend(name: &str, version: &str, port: u16, app: u16) -> String {
    format!(
        "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {port}, servicePort: {app}, tags: {{strait.io/service: backend, strait.io/protocol: http, version: {version}}}}}]\n"
    )
}

fn route(rules: serde_json::Value) -> serde_json::Value {
    json!({"type": "MeshHTTPRoute", "name": "backend-routes", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": rules}]}})
}

fn version(v: &str, weight: u32) -> serde_json::Value {
    json!({"kind": "MeshService", "name": "backend", "tags": {"version": v}, "weight": weight})
}

/// Backend v1 and v2 (HTTP) and web with an outbound to backend: (v1, v2, web, web's outbound port).
async fn versions_and_web(mesh: &Mesh) -> (strait_dataplane::Sidecar, strait_dataplane::Sidecar, strait_dataplane::Sidecar, u16) {
    let (app1, app2) = (http_app("v1").await.port, http_app("v2").await.port);
    let b1 = mesh.sidecar("backend-1", "backend", &backend("backend-1", "v1", free_port(), app1)).await;
    let b2 = mesh.sidecar("backend-2", "backend", &backend("backend-2", "v2", free_port(), app2)).await;
    let web_out = free_port();
    let web =
        mesh.sidecar("web", "web", &common::dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    (b1, b2, web, web_out)
}

/// The versions that answered `n` requests to `path` (with `headers`), as counts of v1 and v2.
async fn count(client: &reqwest::Client, port: u16, path: &str, headers: &[(&str, &str)], n: usize) -> (usize, usize) {
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        let mut request = client.get(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("a response");
        assert_eq!(response.status(), 200, "{path}");
        let body = response.text().await.unwrap();
        match body.split(' ').next() {
            Some("v1") => v1 += 1,
            Some("v2") => v2 += 1,
            other => panic!("unexpected answer {other:?}: {body}"),
        }
    }
    (v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_split_match_redirect_and_rewrite() {
    let mesh = Mesh::start().await;
    let (b1, b2, web, web_out) = versions_and_web(&mesh).await;
    for s in [&b1, &b2, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let client = reqwest::Client::new();
    eventually("both versions answer without a route", async || {
        let (v1, v2) = count(&client, web_out, "/", &[], 20).await;
        (v1 > 0 && v2 > 0).then_some(())
    })
    .await;

    mesh.put(
        "/meshes/default/meshhttproutes/backend-routes",
        route(json!([
            {"matches": [{"headers": [{"type": "Exact", "name": "x-user", "value": "beta"}]}],
             "default": {"backendRefs": [version("v2", 1)],
                         "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-route", "value": "beta"}]}}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "default": {"filters": [{"type": "RequestRedirect", "requestRedirect": {"path": "/new", "statusCode": 301}}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
             "default": {"backendRefs": [version("v1", 1)],
                         "filters": [{"type": "URLRewrite", "urlRewrite": {"replacePrefixMatch": "/v2/api"}},
                                     {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-routed", "value": "yes"}]}}]}},
            {"default": {"backendRefs": [version("v1", 90), version("v2", 10)]}},
        ])),
    )
    .await;

    // The split: 90/10 within three points over 2,000 requests.
    eventually("the route to apply (the beta user reaches v2 only)", async || {
        let (v1, v2) = count(&client, web_out, "/", &[("x-user", "beta")], 20).await;
        (v1 == 0 && v2 == 20).then_some(())
    })
    .await;
    let (v1, v2) = count(&client, web_out, "/", &[], 2000).await;
    let share = v2 as f64 / 2000.0 * 100.0;
    println!("FIGURE 90/10 split over 2000 requests: v1 {v1}, v2 {v2} ({share:.1}% to v2)");
    assert!((7.0..=13.0).contains(&share), "v2 got {share:.1}% of the requests, expected 10 ± 3");

    // The header match: only v2, 200 of 200, with the response header the rule sets.
    assert_eq!(count(&client, web_out, "/", &[("x-user", "beta")], 200).await, (0, 200));
    let beta = client.get(format!("http://127.0.0.1:{web_out}/")).header("x-user", "beta").send().await.unwrap();
    assert_eq!(beta.headers()["x-route"], "beta");
    assert!(reqwest::Client::new().get(format!("http://127.0.0.1:{web_out}/")).send().await.unwrap().headers().get("x-route").is_none());

    // The redirect is answered by the sidecar, keeping the host the client sent.
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let moved = no_follow.get(format!("http://127.0.0.1:{web_out}/old/page?x=1")).send().await.unwrap();
    assert_eq!(moved.status(), 301);
    assert_eq!(moved.headers()["location"], format!("http://127.0.0.1:{web_out}/new"));
    assert!(!moved.headers().contains_key("x-routed-seen"), "no backend saw it");

    // The rewrite: v1 sees /v2/api/..., with the header the rule added; a POST does not match.
    let rewritten = client.get(format!("http://127.0.0.1:{web_out}/api/orders?id=7")).send().await.unwrap();
    assert_eq!(rewritten.headers()["x-routed-seen"], "yes");
    let body = rewritten.text().await.unwrap();
    assert!(body.starts_with("v1 GET /v2/api/orders host="), "{body}");
    let posted = client.post(format!("http://127.0.0.1:{web_out}/api/orders")).send().await.unwrap();
    assert!(!posted.headers().contains_key("x-routed-seen"));
    assert!(posted.text().await.unwrap().contains(" POST /api/orders "), "the POST takes the default rule, unchanged");

    // A route change under constant load fails no request: all of v1 becomes all of v2.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(format!("http://127.0.0.1:{web_out}/load")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    mesh.put("/meshes/default/meshhttproutes/backend-routes", route(json!([{"default": {"backendRefs": [version("v2", 1)]}}]))).await;
    eventually("all requests to reach v2", async || {
        let (v1, v2) = count(&client, web_out, "/", &[], 20).await;
        (v1 == 0 && v2 == 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!("FIGURE route change under load: {} requests ok, {} failed", ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a route change fails no request");
}

/// A route this sidecar cannot apply (its backend is not a destination) is refused as a whole,
/// with the reason, and the configuration in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_unknown_backend_is_refused_with_the_reason() {
    let mesh = Mesh::start().await;
    let app = http_app("v1").await.port;
    let b1 = mesh.sidecar("backend-1", "backend", &backend("backend-1", "v1", free_port(), app)).await;
    let web_out = free_port();
    let web =
        mesh.sidecar("web", "web", &common::dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;
    for s in [&b1, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    // A configuration in force first: until web knows backend's endpoint and protocol, its
    // outbound can only close the connections it takes.
    let client = reqwest::Client::new();
    eventually("web -> backend", async || common::get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;
    let to_nowhere = route(json!([{"default": {"backendRefs": [{"kind": "MeshService", "name": "nowhere"}]}}]));
    mesh.put("/meshes/default/meshhttproutes/backend-routes", to_nowhere).await;
    let nack = eventually("the sidecar's NACK in the global's zone status", async || {
        let zone: serde_json::Value = mesh.http.get(format!("{}/zones/zone-1", mesh.base)).send().await.ok()?.json().await.ok()?;
        zone.pointer("/status/dataplaneNacks/0/error").and_then(|e| e.as_str()).map(str::to_string)
    })
    .await;
    assert!(nack.contains("backend nowhere") && nack.contains("is not a destination of this sidecar"), "{nack}");
    assert!(common::metric(&web, "strait_dp_config_nacks_total").await >= 1.0);
    assert_eq!(count(&client, web_out, "/", &[], 5).await, (5, 0), "the configuration in force stays");
}

/// A TCP application on 127.0.0.1 that writes `name` to each connection and closes it.
async fn named_tcp_app(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

/// The name the TCP application behind `port` writes, through the sidecars.
async fn tcp_answer(port: u16) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_string(&mut answer)).await.ok()?.ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// MeshTCPRoute: connections to a TCP service are split by weight across the versions of its
/// endpoints (1:3 over 400 connections, within 7 points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_split_connections_by_weight() {
    let mesh = Mesh::start().await;
    let (app1, app2) = (named_tcp_app("v1").await, named_tcp_app("v2").await);
    let tcp_backend =
        |name: &str, version: &str, app: u16| backend(name, version, free_port(), app).replace("protocol: http", "protocol: tcp");
    let b1 = mesh.sidecar("backend-1", "backend", &tcp_backend("backend-1", "v1", app1)).await;
    let b2 = mesh.sidecar("backend-2", "backend", &tcp_backend("backend-2", "v2", app2)).await;
    let web_out = free_port();
    let web =
        mesh.sidecar("web", "web", &common::dataplane("web-1", "web", free_port(), free_port(), "tcp", &[(web_out, "backend")])).await;
    for s in [&b1, &b2, &web] {
        eventually("sidecars ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    eventually("a TCP answer", async || tcp_answer(web_out).await).await;
    mesh.put(
        "/meshes/default/meshtcproutes/split",
        json!({"type": "MeshTCPRoute", "name": "split", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [{"default": {"backendRefs": [version("v1", 1), version("v2", 3)]}}]}]}}),
    )
    .await;
    // Applied once a run of connections is no longer an even round robin: wait for v2 to get
    // at least 65 of 100 (an even split gets that in 0.2% of runs, which would start the
    // measurement before the route applies; the 1:3 split misses it in 1%, which only waits a
    // round more), then measure.
    eventually("the TCP route to apply", async || {
        let mut v2 = 0;
        for _ in 0..100 {
            v2 += usize::from(tcp_answer(web_out).await? == "v2");
        }
        (v2 >= 65).then_some(())
    })
    .await;
    let mut v2 = 0;
    for _ in 0..400 {
        v2 += usize::from(tcp_answer(web_out).await.expect("an answer") == "v2");
    }
    let share = v2 as f64 / 4.0;
    println!("FIGURE 1:3 TCP split over 400 connections: {share:.1}% to v2");
    // 400 draws of 3 in 4: a standard deviation of 2.2 points; ± 9 is 4 of them.
    assert!((66.0..=84.0).contains(&share), "v2 got {share:.1}% of the connections, expected 75 ± 9");
}

/// Every policy type the sidecars enforce, applied, changed and deleted in turn while four
/// callers keep sending requests: not one request fails (pooled connections replaced by a
/// connection lifetime included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_change_under_constant_load_fails_no_request() {
    let mesh = Mesh::start().await;
    let (b1, b2, web, web_out) = versions_and_web(&mesh).await;
    let client = reqwest::Client::new();
    eventually("both versions answer", async || {
        let (v1, v2) = count(&client, web_out, "/", &[], 20).await;
        (v1 > 0 && v2 > 0).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failed, failures) = (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent =
                        client.get(format!("http://127.0.0.1:{web_out}/load")).header("x-user", format!("user-{i}-{}", n % 7)).send().await;
                    match sent {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failures.lock().unwrap().push(format!("{other:?}"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let to_backend = |kind: &str, name: &str, default: serde_json::Value| {
        json!({"type": kind, "name": name, "mesh": "default",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": default}]}})
    };
    let lb = |balancer: serde_json::Value| to_backend("MeshLoadBalancingStrategy", "lb", json!({"loadBalancer": balancer}));
    let hash = json!([{"type": "Header", "name": "x-user"}]);
    let steps: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("meshhttproutes/backend-routes", Some(route(json!([{"default": {"backendRefs": [version("v1", 50), version("v2", 50)]}}])))),
        (
            "meshretries/retry",
            Some(to_backend(
                "MeshRetry",
                "retry",
                json!({"http": {"numRetries": 3, "perTryTimeout": "2s"}, "tcp": {"maxConnectAttempt": 3}}),
            )),
        ),
        (
            "meshtimeouts/timeout",
            Some(to_backend(
                "MeshTimeout",
                "timeout",
                json!({"http": {"requestTimeout": "5s", "streamIdleTimeout": "5s", "maxConnectionDuration": "300ms"}}),
            )),
        ),
        (
            "meshcircuitbreakers/breaker",
            Some(to_backend(
                "MeshCircuitBreaker",
                "breaker",
                json!({"connectionLimits": {"maxRequests": 1000, "maxConnections": 100},
                "outlierDetection": {"interval": "1s", "detectors": {"totalFailures": {"consecutive": 3}, "failurePercentage": {"threshold": 90}}}}),
            )),
        ),
        ("meshloadbalancingstrategies/lb", Some(lb(json!({"type": "RingHash", "ringHash": {"hashPolicies": hash}})))),
        ("meshloadbalancingstrategies/lb", Some(lb(json!({"type": "Maglev", "maglev": {"hashPolicies": hash}})))),
        ("meshloadbalancingstrategies/lb", Some(lb(json!({"type": "RoundRobin"})))),
        ("meshhttproutes/backend-routes", Some(route(json!([{"default": {"backendRefs": [version("v2", 1)]}}])))),
        ("meshhttproutes/backend-routes", None),
        ("meshretries/retry", None),
        ("meshtimeouts/timeout", None),
        ("meshcircuitbreakers/breaker", None),
        ("meshloadbalancingstrategies/lb", None),
    ];
    for (path, body) in steps {
        let before = web.state.config.load().as_ref().map_or(0, |c| c.0);
        let what = match body {
            Some(body) => {
                mesh.put(&format!("/meshes/default/{path}"), body).await;
                format!("{path} applied")
            }
            None => {
                mesh.delete(&format!("/meshes/default/{path}")).await;
                format!("{path} deleted")
            }
        };
        eventually(&format!("{what} in web's configuration"), async || (web.state.served().map_or(0, |c| c.0) > before).then_some(()))
            .await;
        // Some requests under the new configuration before the next change.
        let served = ok.load(Ordering::Relaxed);
        eventually(&format!("requests served after {what}"), async || (ok.load(Ordering::Relaxed) >= served + 40).then_some(())).await;
        if what == "meshtimeouts/timeout applied" {
            // Connections that live 300 ms: the load goes on over their replacements.
            let opened = common::metric(&web, "strait_dp_outbound_tunnel_connections_total").await;
            eventually("two pooled connections replaced under load", async || {
                (common::metric(&web, "strait_dp_outbound_tunnel_connections_total").await >= opened + 2.0).then_some(())
            })
            .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("FIGURE every policy changed under load: {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0, "no request fails while policies change: {:?}", failures.lock().unwrap());
    for s in [web, b1, b2] {
        s.shutdown(std::time::Duration::from_secs(1)).await;
    }
}

/// An HTTP application that answers 200 and records each request it receives: (method,
/// body, whether it carries `x-strait-mirror`).
async fn recording_app() -> (u16, Arc<std::sync::Mutex<Vec<(String, String, bool)>>>) {
    use http_body_util::BodyExt;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let mirrored = parts.headers.contains_key("x-strait-mirror");
                        record.lock().unwrap().push((parts.method.to_string(), String::from_utf8_lossy(&body).to_string(), mirrored));
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                            b"shadow",
                        ))))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    (port, seen)
}

/// RequestMirror: every request (bodies included) is copied to the mirror, whose answers are
/// dropped; with a percentage, about that share is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_mirrored_by_percentage_and_the_copies_answers_dropped() {
    let mesh = Mesh::start().await;
    let app = http_app("v1").await.port;
    let (shadow_app, copies) = recording_app().await;
    let _b1 = mesh.sidecar("backend-1", "backend", &backend("backend-1", "v1", free_port(), app)).await;
    let _shadow = mesh.sidecar("shadow", "shadow", &common::dataplane("shadow-1", "shadow", free_port(), shadow_app, "http", &[])).await;
    let web_out = free_port();
    let web_yaml = common::dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend"), (free_port(), "shadow")]);
    let web = mesh.sidecar("web", "web", &web_yaml).await;
    let client = reqwest::Client::new();
    eventually("web -> backend", async || common::get(&client, web_out, "/").await.filter(|r| r.0 == 200)).await;
    let mirror = |percentage: Option<f64>| {
        let mut filter = json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"kind": "MeshService", "name": "shadow"}}});
        if let Some(p) = percentage {
            filter["requestMirror"]["percentage"] = json!(p);
        }
        route(json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"filters": [filter]}}]))
    };
    mesh.put("/meshes/default/meshhttproutes/backend-routes", mirror(None)).await;
    eventually("the mirror to apply", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        let shadow = config.1.outbounds.iter().find(|o| o.service == "shadow")?;
        (!backend.http_routes.is_empty() && !shadow.endpoints.is_empty()).then_some(())
    })
    .await;
    eventually("a first copy", async || {
        common::get(&client, web_out, "/").await?;
        (!copies.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    // A copy is counted on web once its answer (dropped) has come: every copy so far has been
    // answered when the mirror received as many as web counts.
    let answered =
        "strait_dp_http_requests_total{direction=\"outbound\",source_service=\"web\",destination_service=\"shadow\",status=\"200\"}";
    let settled = async || {
        let received = copies.lock().unwrap().len();
        let answered = common::metric(&web, answered).await;
        (received as f64 == answered).then_some(received)
    };

    // Every request, its body too, reaches the mirror marked as a copy; the caller gets the
    // backend's answer.
    let start = eventually("the first copies to be answered", settled).await;
    for i in 0..20 {
        let response = client.post(format!("http://127.0.0.1:{web_out}/orders")).body(format!("order-{i}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().starts_with("v1 POST /orders"), "the backend answers, not the mirror");
    }
    eventually("20 copies", async || (settled().await? == start + 20).then_some(())).await;
    let mut bodies: Vec<String> = copies.lock().unwrap()[start..].iter().map(|(m, b, marked)| format!("{m} {b} {marked}")).collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("POST order-{i} true")).collect();
    expected.sort();
    assert_eq!(bodies, expected);

    // 50%: about half of 400 requests are copied.
    mesh.put("/meshes/default/meshhttproutes/backend-routes", mirror(Some(50.0))).await;
    eventually("the percentage to apply", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        let filter = backend.http_routes.first()?.conf.filters.first()?;
        (filter.request_mirror.as_ref()?.percentage == Some(50.0)).then_some(())
    })
    .await;
    let start = start + 20;
    for _ in 0..400 {
        assert_eq!(common::get(&client, web_out, "/").await.map(|r| r.0), Some(200));
    }
    let mirrored = eventually("the copies to be answered", settled).await - start;
    println!("FIGURE mirror 50%: {mirrored} of 400 requests copied");
    assert!((160..=240).contains(&mirrored), "about half of 400: {mirrored}");
}

/// MeshTimeout on a route: the requests that route sends get its timeout; the destination's
/// other requests keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_on_a_route_applies_to_its_requests_only() {
    let mesh = Mesh::start().await;
    let app = http_app("backend").await;
    let (_backend, web, web_out, client) = mesh.web_and_backend(app.port).await;
    mesh.put(
        "/meshes/default/meshhttproutes/slow-route",
        json!({"type": "MeshHTTPRoute", "name": "slow-route", "mesh": "default", "spec": {"targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}], "default": {}}]}]}}),
    )
    .await;
    mesh.put(
        "/meshes/default/meshtimeouts/slow-route-timeout",
        json!({"type": "MeshTimeout", "name": "slow-route-timeout", "mesh": "default", "spec": {
            "targetRef": {"kind": "MeshHTTPRoute", "name": "slow-route"},
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "200ms"}}}]}}),
    )
    .await;
    eventually("the route's timeout in web's configuration", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        backend.http_routes.first()?.timeout.as_ref().map(drop)
    })
    .await;
    app.delay_ms.store(600, Ordering::SeqCst);
    let (status, body) = common::get(&client, web_out, "/slow/report").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("the request timeout of 200ms (MeshTimeout http.requestTimeout)"), "the route's timeout: {body}");
    let (status, body) = common::get(&client, web_out, "/other").await.unwrap();
    assert_eq!(status, 200, "other requests keep the destination's timeout: {body}");
    assert!(body.starts_with("backend GET /other"), "{body}");
}
