//! `strait-dp` against a real zone and global in-process: it registers, becomes ready with its
//! configuration and certificate, keeps its configuration while the zone is away, and resyncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_dataplane::config::{Cli, Command};
use strait_dataplane::Sidecar;
use strait_global_cp::GlobalCp;
use strait_zone_cp::ZoneCp;

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_zone(global: &GlobalCp, dir: &std::path::Path, dps: &str) -> ZoneCp {
    let s = |p: &std::path::Path| p.display().to_string();
    let args = [
        "strait-zone",
        "--zone",
        "zone-1",
        "--global-address",
        &format!("https://{}", global.kds_addr),
        "--zone-token-file",
        &s(&dir.join("token")),
        "--global-ca-file",
        &s(&dir.join("ca.pem")),
        "--data-dir",
        &s(&dir.join("data")),
        "--api-address",
        "127.0.0.1:0",
        "--dps-address",
        dps,
        "--kds-max-backoff",
        "1s",
    ];
    ZoneCp::start(Arc::new(strait_zone_cp::Config::try_parse_from(args).unwrap())).await.unwrap()
}

async fn admin(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{}{path}", sidecar.admin_addr)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_becomes_ready_and_survives_a_zone_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = strait_global_cp::Config::for_dir(dir.path().join("global"), "127.0.0.1:0".parse().unwrap());
    let global = GlobalCp::start(Arc::new(config)).await.unwrap();
    let (base, http) = (format!("http://{}", global.api_addr), reqwest::Client::new());
    let admin_token = std::fs::read_to_string(&global.token_file).unwrap().trim().to_string();
    http.put(format!("{base}/meshes/default"))
        .bearer_auth(&admin_token)
        .json(&json!({"type": "Mesh", "name": "default"}))
        .send()
        .await
        .unwrap();
    let reg: Value = http.post(format!("{base}/zones/zone-1/token")).bearer_auth(&admin_token).send().await.unwrap().json().await.unwrap();
    let zdir = dir.path().join("zone-1");
    std::fs::create_dir_all(&zdir).unwrap();
    std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap()).unwrap();
    std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap()).unwrap();
    // A fixed DPS port, so the sidecar finds the zone again after its restart.
    let dps = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let zone = start_zone(&global, &zdir, &dps.to_string()).await;
    eventually("the zone's intermediate CA", async || strait_zone_cp::zone_ca::get(zone.store().as_ref(), "default").await.ok().flatten())
        .await;

    let token: Value = http
        .post(format!("{base}/meshes/default/dataplane-tokens?service=web"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sdir = dir.path().join("web");
    std::fs::create_dir_all(&sdir).unwrap();
    std::fs::write(sdir.join("token"), token["token"].as_str().unwrap()).unwrap();
    std::fs::write(sdir.join("ca.pem"), &zone.dps_ca_pem).unwrap();
    std::fs::write(sdir.join("dp.yaml"), "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{port: 18080, tags: {strait.io/service: web}}]\n").unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    let args = [
        "strait-dp".to_string(),
        "run".into(),
        "--cp-address".into(),
        format!("https://{dps}"),
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
    let Command::Run(flags) = Cli::try_parse_from(args).unwrap().command;
    let sidecar = Sidecar::start(flags.validate().unwrap()).await.unwrap();

    eventually("/ready", async || (admin(&sidecar, "/ready").await.0 == 200).then_some(())).await;
    let (_, dump) = admin(&sidecar, "/config_dump").await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["config"]["identity"], "spiffe://default/web");
    assert!(dump["certificate"]["chain"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert!(!dump.to_string().contains("PRIVATE KEY"), "the key is never dumped");
    let version = dump["version"].as_u64().unwrap();

    // The zone goes away: the sidecar keeps its configuration and stays ready.
    zone.shutdown();
    zone.wait().await;
    assert_eq!(admin(&sidecar, "/ready").await.0, 200);
    assert_eq!(sidecar.state.config.load().as_ref().map(|c| c.0), Some(version));
    http.put(format!("{base}/meshes/default/meshtrafficpermissions/deny-all"))
        .bearer_auth(&admin_token)
        .json(&json!({"type": "MeshTrafficPermission", "name": "deny-all", "mesh": "default", "spec": {"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}}))
        .send()
        .await
        .unwrap();

    // It comes back: the sidecar resyncs and gets the change made meanwhile.
    let zone = start_zone(&global, &zdir, &dps.to_string()).await;
    eventually("the change made while the zone was away", async || {
        let cfg = sidecar.state.config.load();
        let text = serde_json::to_string(&cfg.as_ref()?.1).ok()?;
        text.contains("deny-all").then_some(())
    })
    .await;
    sidecar.shutdown(Duration::from_secs(1)).await;
    zone.shutdown();
    zone.wait().await;
    global.shutdown();
}
