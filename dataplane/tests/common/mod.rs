//! A real global, zone and sidecars in-process for the sidecar's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_dataplane::config::{Cli, Command};
use strait_dataplane::Sidecar;
use strait_global_cp::GlobalCp;
use strait_zone_cp::ZoneCp;

/// Polls `f` every 50 ms until it returns Some, for at most 20 s.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A global with mesh `default` and a registered, running zone-1.
pub struct Mesh {
    pub global: GlobalCp,
    pub zone: Option<ZoneCp>,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub dps: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub async fn start() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let config = strait_global_cp::Config::for_dir(dir.path().join("global"), "127.0.0.1:0".parse().unwrap());
        let global = GlobalCp::start(Arc::new(config)).await.unwrap();
        let (base, http) = (format!("http://{}", global.api_addr), reqwest::Client::new());
        let admin = std::fs::read_to_string(&global.token_file).unwrap().trim().to_string();
        let mut mesh = Mesh { global, zone: None, base, admin, http, dps: format!("127.0.0.1:{}", free_port()).parse().unwrap(), dir };
        mesh.put("/meshes/default", json!({"type": "Mesh", "name": "default"})).await;
        let reg: Value = mesh
            .http
            .post(format!("{}/zones/zone-1/token", mesh.base))
            .bearer_auth(&mesh.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let zdir = mesh.zone_dir();
        std::fs::create_dir_all(&zdir).unwrap();
        std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap()).unwrap();
        std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap()).unwrap();
        mesh.start_zone().await;
        mesh
    }

    fn zone_dir(&self) -> PathBuf {
        self.dir.path().join("zone-1")
    }

    pub async fn start_zone(&mut self) {
        let zdir = self.zone_dir();
        let s = |p: &Path| p.display().to_string();
        let args = [
            "strait-zone",
            "--zone",
            "zone-1",
            "--global-address",
            &format!("https://{}", self.global.kds_addr),
            "--zone-token-file",
            &s(&zdir.join("token")),
            "--global-ca-file",
            &s(&zdir.join("ca.pem")),
            "--data-dir",
            &s(&zdir.join("data")),
            "--api-address",
            "127.0.0.1:0",
            "--dps-address",
            &self.dps.to_string(),
            "--kds-max-backoff",
            "1s",
        ];
        let zone = ZoneCp::start(Arc::new(strait_zone_cp::Config::try_parse_from(args).unwrap())).await.unwrap();
        eventually("the zone's intermediate CA", async || {
            strait_zone_cp::zone_ca::get(zone.store().as_ref(), "default").await.ok().flatten()
        })
        .await;
        self.zone = Some(zone);
    }

    pub async fn stop_zone(&mut self) {
        if let Some(z) = self.zone.take() {
            z.shutdown();
            z.wait().await;
        }
    }

    pub async fn put(&self, path: &str, body: Value) {
        let r = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    pub async fn delete(&self, path: &str) {
        let r = self.http.delete(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }

    /// Starts a sidecar for Dataplane `yaml` of `service`.
    pub async fn sidecar(&self, name: &str, service: &str, yaml: &str) -> Sidecar {
        let token: Value = self
            .http
            .post(format!("{}/meshes/default/dataplane-tokens?service={service}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sdir = self.dir.path().join(name);
        std::fs::create_dir_all(&sdir).unwrap();
        std::fs::write(sdir.join("token"), token["token"].as_str().unwrap()).unwrap();
        std::fs::write(sdir.join("ca.pem"), &self.zone.as_ref().unwrap().dps_ca_pem).unwrap();
        std::fs::write(sdir.join("dp.yaml"), yaml).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        let args = [
            "strait-dp".to_string(),
            "run".into(),
            "--cp-address".into(),
            format!("https://{}", self.dps),
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
        let Command::Run(flags) = Cli::try_parse_from(args).unwrap().command else { panic!("run") };
        Sidecar::start(flags.validate().unwrap()).await.unwrap()
    }
}

/// `GET` on a sidecar's admin server.
pub async fn admin(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{}{path}", sidecar.admin_addr)).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}
