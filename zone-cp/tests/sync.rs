//! Zone sync in-process: a real global and real zones on ephemeral ports, over TLS with real
//! zone tokens. Large snapshots are chunked, a reconnect resumes without a snapshot, and a
//! restarted zone serves from disk before the global answers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_global_cp::GlobalCp;
use strait_store::{Key, Op, Precondition};
use strait_zone_cp::{Config as ZoneConfig, ZoneCp};

struct Global {
    cp: GlobalCp,
    base: String,
    token: String,
    http: reqwest::Client,
}

async fn global(dir: &Path) -> Global {
    let config = strait_global_cp::Config::for_dir(dir.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    let cp = GlobalCp::start(Arc::new(config)).await.expect("global starts");
    let token = std::fs::read_to_string(&cp.token_file).unwrap().trim().to_string();
    Global { base: format!("http://{}", cp.api_addr), cp, token, http: reqwest::Client::new() }
}

impl Global {
    async fn register(&self, zone: &str, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let resp = self.http.post(format!("{}/zones/{zone}/token", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let body: Value = resp.json().await.unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let (token, ca) = (dir.join("zone-token"), dir.join("global-ca.pem"));
        std::fs::write(&token, body["token"].as_str().unwrap()).unwrap();
        std::fs::write(&ca, body["caBundle"].as_str().unwrap()).unwrap();
        (token, ca)
    }

    async fn put(&self, path: &str, body: Value) {
        let resp = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }
}

async fn zone(global: &Global, name: &str, dir: &Path) -> ZoneCp {
    let (token, ca) = global.register_once(name, dir).await;
    let args = [
        "strait-zone".to_string(),
        "--zone".into(),
        name.into(),
        "--global-address".into(),
        format!("https://{}", global.cp.kds_addr),
        "--zone-token-file".into(),
        token.display().to_string(),
        "--global-ca-file".into(),
        ca.display().to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--api-plaintext".into(),
        "--api-address".into(),
        "127.0.0.1:0".into(),
        "--dps-address".into(),
        "127.0.0.1:0".into(),
        "--kds-max-backoff".into(),
        "1s".into(),
    ];
    ZoneCp::start(Arc::new(ZoneConfig::try_parse_from(args).unwrap())).await.expect("zone starts")
}

impl Global {
    /// Registers the zone unless its token files already exist (a restart keeps its token).
    async fn register_once(&self, zone: &str, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (token, ca) = (dir.join("zone-token"), dir.join("global-ca.pem"));
        if token.exists() {
            return (token, ca);
        }
        self.register(zone, dir).await
    }
}

async fn wait_for<T>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn zone_total(zone: &ZoneCp, path: &str) -> Option<u64> {
    let resp = reqwest::get(format!("http://{}{path}", zone.api_addr)).await.ok()?;
    resp.json::<Value>().await.ok()?.get("total")?.as_u64()
}

fn mesh_key(name: &str) -> Key {
    Key::new("Mesh", "", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_policies_arrive_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let g = global(&dir.path().join("global")).await;
    let mut ops = vec![Op::Put { key: mesh_key("default"), data: json!({"labels": {}, "spec": {}}), precondition: Precondition::None }];
    for i in 0..5000 {
        let spec = json!({"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": format!("svc-{i}")}, "default": {"idleTimeout": "1h", "http": {"requestTimeout": "15s"}}}]});
        ops.push(Op::Put {
            key: Key::new("MeshTimeout", "default", format!("timeout-{i:04}")),
            data: json!({"labels": {"team": "payments"}, "spec": spec}),
            precondition: Precondition::None,
        });
    }
    g.cp.store().apply(ops).await.unwrap();
    let z = zone(&g, "zone-1", &dir.path().join("zone-1")).await;
    let total = wait_for("5000 policies on the zone", Duration::from_secs(60), async || {
        zone_total(&z, "/meshes/default/meshtimeouts").await.filter(|n| *n == 5000)
    })
    .await;
    assert_eq!(total, 5000);
    assert_eq!(g.metric("strait_global_kds_snapshots_total").await, 1.0);
    assert!(g.metric("strait_global_kds_bytes_sent_total").await > 1_000_000.0, "over a megabyte: more than one chunk");
    z.shutdown();
    z.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_zone_resumes_and_a_restarted_zone_serves_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let g = global(&dir.path().join("global")).await;
    g.put("/meshes/default", json!({"type": "Mesh", "name": "default"})).await;
    let zdir = dir.path().join("zone-1");
    let z = zone(&g, "zone-1", &zdir).await;
    wait_for("the mesh's default policy on the zone", Duration::from_secs(20), async || {
        zone_total(&z, "/meshes/default/meshtrafficpermissions").await.filter(|n| *n == 1)
    })
    .await;
    z.shutdown();
    z.wait().await;

    // Changes while the zone is away arrive as a resume, not a second snapshot.
    g.put("/meshes/default/meshtimeouts/t", json!({"type": "MeshTimeout", "name": "t", "mesh": "default", "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "5s"}}]}})).await;
    let z = zone(&g, "zone-1", &zdir).await;
    wait_for("the change made while the zone was away", Duration::from_secs(20), async || {
        zone_total(&z, "/meshes/default/meshtimeouts").await.filter(|n| *n == 2)
        // the mesh's default and t
    })
    .await;
    assert_eq!(g.metric("strait_global_kds_snapshots_total").await, 1.0, "no second snapshot");
    assert_eq!(g.metric("strait_global_kds_resumes_total").await, 1.0);
    z.shutdown();
    z.wait().await;

    // Without the global, a restarted zone is ready at once and serves what it has.
    g.cp.shutdown();
    g.cp.wait().await;
    let z = zone_without_registration(&zdir, "zone-1").await;
    let ready = reqwest::get(format!("http://{}/readyz", z.api_addr)).await.unwrap();
    assert_eq!(ready.status(), 200, "ready from disk");
    assert_eq!(zone_total(&z, "/meshes/default/meshtimeouts").await, Some(2), "the mesh's default and t");
    z.shutdown();
    z.wait().await;
}

async fn zone_without_registration(dir: &Path, name: &str) -> ZoneCp {
    let args = [
        "strait-zone",
        "--zone",
        name,
        "--global-address",
        "https://127.0.0.1:9",
        "--zone-token-file",
        &dir.join("zone-token").display().to_string(),
        "--global-ca-file",
        &dir.join("global-ca.pem").display().to_string(),
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--api-plaintext",
        "--api-address",
        "127.0.0.1:0",
        "--dps-address",
        "127.0.0.1:0",
    ]
    .map(str::to_string);
    ZoneCp::start(Arc::new(ZoneConfig::try_parse_from(args).unwrap())).await.expect("zone starts")
}

async fn bundle(zone: &ZoneCp) -> Option<strait_pki::TrustBundle> {
    let obj = zone.store().get(&Key::new("TrustBundle", "default", "default")).await.ok()??;
    serde_json::from_value(obj.data).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_intermediates_chain_to_the_mesh_root_and_revocation_reaches_every_zone() {
    let dir = tempfile::tempdir().unwrap();
    let g = global(&dir.path().join("global")).await;
    g.put("/meshes/default", json!({"type": "Mesh", "name": "default"})).await;
    let z1 = zone(&g, "zone-1", &dir.path().join("zone-1")).await;
    let z2 = zone(&g, "zone-2", &dir.path().join("zone-2")).await;
    let ca_of = async |z: &ZoneCp| strait_zone_cp::zone_ca::get(z.store().as_ref(), "default").await.ok().flatten();
    let (cert1, key1, root1) = wait_for("zone-1's intermediate CA", Duration::from_secs(20), async || ca_of(&z1).await).await;
    wait_for("zone-2's intermediate CA", Duration::from_secs(20), async || ca_of(&z2).await).await;

    // What the zone received: its own key, the intermediate and the root certificate; never the root key.
    let root_obj = g.cp.store().get(&Key::new("MeshCA", "", "default")).await.unwrap().expect("the mesh has a root CA");
    assert_eq!(root_obj.data["cert"].as_str().unwrap(), root1, "the zone holds the mesh's root certificate");
    let root_key = root_obj.data["key"].as_str().unwrap().to_string();
    let token_keys = wait_for("the dataplane token keys on the zone", Duration::from_secs(20), async || {
        z1.store().get(&Key::new("TokenKeys", "", "dataplane")).await.ok().flatten()
    })
    .await;
    assert_eq!(token_keys.data["keys"].as_array().map(Vec::len), Some(1), "zones can verify dataplane tokens");
    for kind in
        ["Mesh", "MeshTrafficPermission", "TrustBundle", "TokenKeys", "ZoneInventory", "ZoneCA", "KdsState", "SystemSecret", "MeshCA"]
    {
        for obj in z1.store().list(kind, None).await.unwrap() {
            let text = obj.data.to_string();
            assert!(!text.contains(root_key.trim()), "{} holds the root key", obj.key);
            assert!(kind == "ZoneCA" || !text.contains("PRIVATE KEY"), "{} holds a private key", obj.key);
        }
    }

    // zone-1 issues a workload certificate; zone-2 trusts it through the synced bundle.
    let intermediate = strait_pki::CertificateAuthority::from_pem(&cert1, &key1).expect("the zone's CA loads");
    let csr = strait_pki::KeyAndCsr::generate("web").unwrap();
    let leaf = intermediate.sign_workload(&csr.csr_pem, "spiffe://default/web", Duration::from_secs(3600)).unwrap();
    let b2 = wait_for("zone-2's trust bundle", Duration::from_secs(20), async || bundle(&z2).await).await;
    let id = b2.verify(&leaf, std::slice::from_ref(&cert1), std::time::SystemTime::now()).expect("zone-2 trusts zone-1's workloads");
    assert_eq!(id.as_str(), "spiffe://default/web");

    // Revoking zone-1 revokes its intermediate everywhere.
    let resp = g.http.delete(format!("{}/zones/zone-1/token", g.base)).bearer_auth(&g.token).send().await.unwrap();
    assert!(resp.status().is_success());
    let err = wait_for("zone-2 to stop trusting zone-1's intermediate", Duration::from_secs(20), async || {
        bundle(&z2).await.and_then(|b| b.verify(&leaf, std::slice::from_ref(&cert1), std::time::SystemTime::now()).err())
    })
    .await;
    assert!(err.to_string().contains("revoked"), "{err}");

    // Registered again, zone-1 replaces its revoked intermediate with a new one.
    z1.shutdown();
    z1.wait().await;
    std::fs::remove_file(dir.path().join("zone-1/zone-token")).unwrap();
    let z1 = zone(&g, "zone-1", &dir.path().join("zone-1")).await;
    let (new_cert, _, _) =
        wait_for("a new intermediate for zone-1", Duration::from_secs(20), async || ca_of(&z1).await.filter(|(c, _, _)| *c != cert1)).await;
    let b2 = wait_for("zone-2's bundle", Duration::from_secs(20), async || bundle(&z2).await).await;
    let csr = strait_pki::KeyAndCsr::generate("web").unwrap();
    let (_, new_key, _) = ca_of(&z1).await.unwrap();
    let leaf = strait_pki::CertificateAuthority::from_pem(&new_cert, &new_key)
        .unwrap()
        .sign_workload(&csr.csr_pem, "spiffe://default/web", Duration::from_secs(3600))
        .unwrap();
    assert!(b2.verify(&leaf, &[new_cert], std::time::SystemTime::now()).is_ok(), "the new intermediate is trusted");
    z1.shutdown();
    z2.shutdown();
    z1.wait().await;
    z2.wait().await;
}
