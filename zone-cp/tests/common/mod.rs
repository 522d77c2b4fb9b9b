//! What the zone's integration tests share: a global with a registered zone, and a hand-driven
//! sidecar stream.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

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
    let hello = strait_api::dps::Hello { protocol: PROTOCOL_VERSION, dataplane, software_version: "test".into() };
    tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Hello(hello)) }).await.unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = DataplaneSyncClient::new(channel).stream(request).await?;
    Ok((tx, stream.into_inner()))
}
