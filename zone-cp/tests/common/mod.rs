//! What the zone's integration tests share: a global with a registered zone, and a hand-driven
//! sidecar stream.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_api::dps::dataplane_sync_client::DataplaneSyncClient;
use strait_api::dps::{dataplane_message, DataplaneMessage, ZoneMessage, PROTOCOL_VERSION};
use strait_global_cp::GlobalCp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A global with mesh `default` in-process, and zone-1 registered: its token and CA written
/// in `dir`, with the arguments to start `strait-zone` with them, logging JSON.
pub async fn global_and_zone_args(dir: &Path, dps: &str) -> (GlobalCp, Vec<String>, reqwest::Client, String, String) {
    let config = strait_global_cp::Config::for_dir(dir.join("global"), "127.0.0.1:0".parse().unwrap());
    let global = GlobalCp::start(Arc::new(config)).await.unwrap();
    let admin = std::fs::read_to_string(&global.token_file).unwrap().trim().to_string();
    let base = format!("http://{}", global.api_addr);
    let http = reqwest::Client::new();
    http.put(format!("{base}/meshes/default")).bearer_auth(&admin).json(&json!({"type": "Mesh", "name": "default"})).send().await.unwrap();
    let reg: Value = http.post(format!("{base}/zones/zone-1/token")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let zdir = dir.join("zone-1");
    std::fs::create_dir_all(zdir.join("data")).unwrap();
    std::fs::write(zdir.join("token"), reg["token"].as_str().unwrap()).unwrap();
    std::fs::write(zdir.join("ca.pem"), reg["caBundle"].as_str().unwrap()).unwrap();
    std::fs::write(zdir.join("proxy-token"), reg["proxyToken"].as_str().unwrap()).unwrap();
    let s = |p: &Path| p.display().to_string();
    let args = [
        "--zone",
        "zone-1",
        "--global-address",
        &format!("https://{}", global.kds_addr),
        "--zone-token-file",
        &s(&zdir.join("token")),
        "--global-ca-file",
        &s(&zdir.join("ca.pem")),
        "--data-dir",
        &s(&zdir.join("data")),
        "--api-plaintext",
        "--api-address",
        "127.0.0.1:0",
        "--dps-address",
        dps,
        "--log-format",
        "json",
    ];
    (global, args.into_iter().map(str::to_string).collect(), http, base, admin)
}

/// Opens a sidecar stream on the DPS at `dps`: a Hello with `dataplane` (empty for a sidecar
/// that presents its Pod's service-account token), authenticated with `token`.
pub async fn open_stream(
    dps: &str,
    ca_pem: &str,
    token: &str,
    dataplane: Vec<u8>,
) -> Result<(mpsc::Sender<DataplaneMessage>, tonic::Streaming<ZoneMessage>), tonic::Status> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("strait-zone");
    let channel = Endpoint::from_shared(format!("https://{dps}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(16);
    let hello =
        strait_api::dps::Hello { protocol: PROTOCOL_VERSION, dataplane, software_version: "test".into(), deltas: false, pieces: false };
    tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Hello(hello)) }).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = DataplaneSyncClient::new(channel).stream(request).await?;
    Ok((tx, stream.into_inner()))
}

/// A process whose stderr (its JSON log lines) is collected; killed when dropped.
pub struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    pub fn spawn(bin: &str, args: &[String]) -> Logged {
        let mut child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Logged { child, lines }
    }

    /// The first JSON line whose message is `message`, waiting up to 20 s for it.
    pub async fn line(&self, message: &str) -> Value {
        self.line_where(message, |_| true).await
    }

    /// The first JSON line whose message is `message` and that `matches`, waiting up to 20 s.
    pub async fn line_where(&self, message: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == message && matches(v));
            if let Some(line) = found {
                return line;
            }
            assert!(Instant::now() < deadline, "no line {message:?} in the log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
