//! A global control plane and zones in this process, on loopback, as the benchmarks' fixture;
//! or the global alone as a `strait-global` process of its own, for a benchmark whose own work
//! would starve a global sharing its runtime.
//!
//! In: how many zones. Out: a [`ControlPlane`] with mesh `default`, each zone registered and
//! connected, and what clients need: the REST base URL, the admin token, the global's zone
//! sync address, each zone's DPS address and CA.

use std::sync::Arc;

use clap::Parser;
use serde_json::{json, Value};
use strait_global_cp::GlobalCp;
use strait_zone_cp::ZoneCp;

/// Errors of the fixture: anything, reported with its cause.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A running global and its zones.
pub struct ControlPlane {
    /// The global control plane.
    global: Global,
    /// The global's zone sync (KDS) address.
    pub kds_addr: std::net::SocketAddr,
    /// The zones, `zone-1` first.
    pub zones: Vec<ZoneCp>,
    /// `http://<global REST address>`.
    pub base: String,
    /// The admin token.
    pub token: String,
    /// A REST client.
    pub http: reqwest::Client,
    /// Where everyone keeps its data.
    pub dir: tempfile::TempDir,
}

/// Where the global runs.
enum Global {
    /// In this process.
    InProcess(GlobalCp),
    /// A `strait-global` process, stopped when this is dropped.
    Process { _process: crate::rig::Children },
}

impl ControlPlane {
    /// Starts the global, creates mesh `default`, and starts `zones` zones connected to it.
    pub async fn start(zones: usize) -> Result<ControlPlane, Error> {
        let dir = tempfile::tempdir()?;
        crate::cleanup::remove_on_signal(dir.path());
        let config = strait_global_cp::Config::for_dir(dir.path().join("global"), "127.0.0.1:0".parse()?);
        let global = GlobalCp::start(Arc::new(config)).await?;
        let base = format!("http://{}", global.api_addr);
        let token = std::fs::read_to_string(&global.token_file)?.trim().to_string();
        let kds_addr = global.kds_addr;
        let mut cp =
            ControlPlane { global: Global::InProcess(global), kds_addr, zones: Vec::new(), base, token, http: reqwest::Client::new(), dir };
        cp.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await?;
        for i in 0..zones {
            let zone = cp.start_zone(&format!("zone-{}", i + 1)).await?;
            cp.zones.push(zone);
        }
        Ok(cp)
    }

    /// Starts the global as a `strait-global` process (the binary beside this benchmark, its
    /// log in `global.log` of the work directory) and creates mesh `default`; no zones.
    pub async fn start_global_process() -> Result<ControlPlane, Error> {
        let dir = tempfile::tempdir()?;
        crate::cleanup::remove_on_signal(dir.path());
        let bin = std::env::current_exe()?.parent().ok_or("no directory for this binary")?.join("strait-global");
        if !bin.exists() {
            return Err(format!("{} is missing: build the binaries with this benchmark's profile", bin.display()).into());
        }
        let (api, kds_addr) =
            (format!("127.0.0.1:{}", crate::rig::free_port()?), format!("127.0.0.1:{}", crate::rig::free_port()?).parse()?);
        let data = dir.path().join("global");
        let log = std::fs::File::create(dir.path().join("global.log"))?;
        let child = crate::cleanup::spawn(
            std::process::Command::new(&bin)
                .args(["--api-plaintext", "--api-address", &api, "--kds-address", &format!("{kds_addr}"), "--log-level", "warn"])
                .arg("--data-dir")
                .arg(&data)
                .stdout(std::process::Stdio::null())
                .stderr(log),
        )?;
        let global = Global::Process { _process: crate::rig::Children(vec![child]) };
        let (base, http) = (format!("http://{api}"), reqwest::Client::new());
        let started = std::time::Instant::now();
        let token = loop {
            let ready = http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            match std::fs::read_to_string(data.join("admin-token")) {
                Ok(token) if ready && !token.trim().is_empty() => break token.trim().to_string(),
                _ if started.elapsed() > std::time::Duration::from_secs(30) => {
                    return Err(format!("strait-global not ready within 30 s; see {}", dir.path().join("global.log").display()).into())
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let cp = ControlPlane { global, kds_addr, zones: Vec::new(), base, token, http, dir };
        cp.put("/meshes/default", &json!({"type": "Mesh", "name": "default"})).await?;
        Ok(cp)
    }

    async fn start_zone(&self, name: &str) -> Result<ZoneCp, Error> {
        let zdir = self.dir.path().join(name);
        std::fs::create_dir_all(&zdir)?;
        let reg: Value = self
            .http
            .post(format!("{}/zones/{name}/token", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap_or_default())?;
        std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap_or_default())?;
        let args = [
            "strait-zone".to_string(),
            "--zone".into(),
            name.into(),
            "--global-address".into(),
            format!("https://{}", self.kds_addr),
            "--zone-token-file".into(),
            zdir.join("token").display().to_string(),
            "--global-ca-file".into(),
            zdir.join("ca.pem").display().to_string(),
            "--data-dir".into(),
            zdir.join("data").display().to_string(),
            "--api-plaintext".into(),
            "--api-address".into(),
            "127.0.0.1:0".into(),
            "--dps-address".into(),
            "127.0.0.1:0".into(),
        ];
        Ok(ZoneCp::start(Arc::new(strait_zone_cp::Config::try_parse_from(args)?)).await?)
    }

    /// `PUT path` with the admin token.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let response = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// `DELETE path` with the admin token.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.http.delete(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?.error_for_status()?;
        Ok(())
    }

    /// A dataplane token for `service` in mesh `default`.
    pub async fn dataplane_token(&self, service: &str) -> Result<String, Error> {
        let url = format!("{}/meshes/default/dataplane-tokens?service={service}", self.base);
        let reply: Value = self.http.post(url).bearer_auth(&self.token).send().await?.error_for_status()?.json().await?;
        Ok(reply["token"].as_str().unwrap_or_default().to_string())
    }

    /// Stops the zones, then the global.
    pub async fn stop(self) {
        for z in &self.zones {
            z.shutdown();
        }
        for z in self.zones {
            z.wait().await;
        }
        if let Global::InProcess(global) = self.global {
            global.shutdown();
            global.wait().await;
        }
    }
}
