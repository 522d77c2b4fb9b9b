//! A zone against a global of two replicas on one PostgreSQL database: the `strait-zone`
//! binary with `--global-address https://<a>,https://<b>` syncs with the first, and when that
//! replica stops it moves to the other and resumes from the revision it applied (no snapshot),
//! receiving what was written meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Logged;
use serde_json::{json, Value};
use strait_global_cp::GlobalCp;

mod common;

/// The offline-zone grace period of both replicas: short, so a replica that wrongly thought the
/// zone offline (it is connected to the other one) would withdraw its services within the test.
const GRACE: Duration = Duration::from_secs(1);

async fn replica(dir: &std::path::Path, url: &str) -> GlobalCp {
    let mut config = strait_global_cp::Config::for_dir(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.store = url.to_string();
    config.zone_grace_period = GRACE;
    GlobalCp::start(Arc::new(config)).await.unwrap()
}

async fn metric(http: &reqwest::Client, global: &GlobalCp, name: &str) -> f64 {
    let text = http.get(format!("http://{}/metrics", global.api_addr)).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_moves_to_another_replica_and_resumes_without_a_snapshot() {
    if !strait_pg_harness::available() {
        return;
    }
    let server = strait_pg_harness::start().expect("a PostgreSQL server");
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&dir.path().join("a"), &server.url()).await;
    let b = replica(&dir.path().join("b"), &server.url()).await;
    let http = reqwest::Client::new();
    let admin = |g: &GlobalCp| std::fs::read_to_string(&g.token_file).unwrap().trim().to_string();
    let put = |g: &GlobalCp, path: &str, body: Value| {
        let (request, path) = (http.put(format!("http://{}{path}", g.api_addr)).bearer_auth(admin(g)).json(&body), path.to_string());
        async move { assert!(request.send().await.unwrap().status().is_success(), "PUT {path}") }
    };
    put(&a, "/meshes/default", json!({"type": "Mesh", "name": "default"})).await;
    let reg: Value =
        http.post(format!("http://{}/zones/zone-1/token", a.api_addr)).bearer_auth(admin(&a)).send().await.unwrap().json().await.unwrap();
    let zdir = dir.path().join("zone-1");
    std::fs::create_dir_all(zdir.join("data")).unwrap();
    std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap()).unwrap();
    std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap()).unwrap();
    let (first, second) = (format!("https://{}", a.kds_addr), format!("https://{}", b.kds_addr));
    let s = |p: std::path::PathBuf| p.display().to_string();
    let args: Vec<String> = [
        "--zone",
        "zone-1",
        "--global-address",
        &format!("{first},{second}"),
        "--zone-token-file",
        &s(zdir.join("token")),
        "--global-ca-file",
        &s(zdir.join("ca.pem")),
        "--data-dir",
        &s(zdir.join("data")),
        "--api-plaintext",
        "--api-address",
        "127.0.0.1:0",
        "--dps-address",
        "127.0.0.1:0",
        "--kds-max-backoff",
        "1s",
        "--log-format",
        "json",
        "--log-level",
        "info,strait_zone_cp::kds_client=debug",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    // Everything written so far; the zone's own status records, written once it connects, also
    // move the store's revision but are never sent to it (so are never "applied").
    let synced = a.store().revision();
    let zone = Logged::spawn(env!("CARGO_BIN_EXE_strait-zone"), &args);
    let connected = zone.line("connected to the global control plane").await;
    assert_eq!(connected["global"], first.as_str(), "the first address first");
    let applied = |at_least: u64| move |v: &Value| v["revision"].as_u64().is_some_and(|r| r >= at_least);
    zone.line_where("applied", applied(synced)).await;

    // Both replicas say the same of the zone: connected (to the first), its address, version,
    // revisions; and its inventory stays on both, far past the grace period.
    let status = |g: &GlobalCp| {
        let request = http.get(format!("http://{}/zones/zone-1", g.api_addr));
        async move {
            let mut zone: Value = request.send().await.unwrap().json().await.unwrap();
            // Refreshed by the zone's own replica every few seconds.
            zone["status"].as_object_mut().map(|s| s.remove("lastSeen"));
            zone["status"].clone()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (on_a, on_b) = (status(&a).await, status(&b).await);
        if on_a["connected"] == true && on_a["inventory"].is_object() && on_a == on_b {
            assert!(on_b["ackedRevision"].as_u64().is_some_and(|r| r >= synced), "{on_b}");
            break;
        }
        assert!(Instant::now() < deadline, "the replicas disagree on the zone: {on_a} vs {on_b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(GRACE * 3).await;
    assert!(status(&b).await["inventory"].is_object(), "the replica without the zone's stream expired it: {}", status(&b).await);

    // The first replica stops; a policy is written through the second meanwhile.
    a.shutdown();
    tokio::time::timeout(Duration::from_secs(20), a.wait()).await.expect("the first replica stops within 20 s");
    let timeout = json!({"type": "MeshTimeout", "name": "t1", "mesh": "default",
        "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "7s"}}]}});
    put(&b, "/meshes/default/meshtimeouts/t1", timeout).await;
    // The policy's own revision: the zone's status, rewritten by the replica it moves to, moves
    // the store's revision past it without being sent.
    let key = strait_store::Key::new("MeshTimeout", "default", "t1");
    let written = b.store().get(&key).await.unwrap().expect("the policy is stored").version;
    assert!(written > synced);

    let moved = zone.line_where("connected to the global control plane", |v| v["global"] == second.as_str()).await;
    assert!(moved["resume"].as_u64().is_some_and(|r| r >= synced), "it resumes from what it applied: {moved}");
    zone.line_where("applied", applied(written)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&http, &b, "strait_global_kds_resumes_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the second replica resumed the zone's stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&http, &b, "strait_global_kds_snapshots_total").await, 0.0, "no snapshot: only what it missed");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_b = status(&b).await;
        if on_b["connected"] == true && on_b["ackedRevision"].as_u64().is_some_and(|r| r >= written) {
            break;
        }
        assert!(Instant::now() < deadline, "the second replica never showed the zone connected to it: {on_b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
