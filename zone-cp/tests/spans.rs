//! The zone's logs, as an operator reads them: the `strait-zone` binary with `--log-format
//! json`, a hand-driven sidecar on its DPS. Every line of a sidecar's session carries the
//! `dps_session` span with the Dataplane, its mesh and service, from its connection to its
//! end, and the lines do not repeat those fields themselves.

use std::time::{Duration, Instant};

use common::{global_and_zone_args, Logged};
use serde_json::{json, Value};
use strait_api::dps::{dataplane_message, zone_message, DataplaneMessage};
use tokio::sync::mpsc;

mod common;

/// Opens a sidecar stream for Dataplane `web-1` of service `web`, retrying until the zone has
/// what it needs to accept it (token keys and mesh from the global).
async fn register(
    dps: &str,
    ca_pem: &str,
    token: &str,
) -> (mpsc::Sender<DataplaneMessage>, tonic::Streaming<strait_api::dps::ZoneMessage>) {
    let dataplane = serde_json::to_vec(&json!({"type": "Dataplane", "name": "web-1", "mesh": "default",
        "spec": {"networking": {"address": "127.0.0.1", "inbound": [{"port": 8080, "tags": {"strait.io/service": "web"}}]}}}))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match common::open_stream(dps, ca_pem, token, dataplane.clone()).await {
            Ok(stream) => return stream,
            Err(status) => assert!(Instant::now() < deadline, "the zone never accepted the sidecar: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fields of the span named `name` in a JSON line's span list.
fn span<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["spans"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).unwrap_or_else(|| panic!("no span {name:?} in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_sidecar_session_names_its_dataplane_mesh_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let dps = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
    let (_global, args, http, base, admin) = global_and_zone_args(dir.path(), &dps).await;
    let zone = Logged::spawn(env!("CARGO_BIN_EXE_strait-zone"), &args);
    zone.line("zone control plane started").await;
    let ca_pem = std::fs::read_to_string(dir.path().join("zone-1/data/dps-ca.pem")).unwrap();
    let token: Value = http
        .post(format!("{base}/meshes/default/dataplane-tokens?service=web"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let (tx, mut rx) = register(&dps, &ca_pem, token["token"].as_str().unwrap()).await;
    let version = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), rx.message()).await.expect("a configuration within 10 s");
        if let Some(zone_message::Message::Config(c)) = message.expect("stream ok").expect("stream open").message {
            break c.version;
        }
    };
    let nack = strait_api::dps::Nack { version, error: "listener port taken".into() };
    tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Nack(nack)) }).await.unwrap();
    // Lines from the middle of the session (a warning) and from its end, after the stream closed.
    let rejected = zone.line("sidecar refused its configuration (NACK); it keeps its previous one").await;
    drop((tx, rx));
    let disconnected = zone.line("sidecar disconnected").await;
    let connected = zone.line("sidecar connected").await;

    for line in [&connected, &rejected, &disconnected] {
        let session = span(line, "dps_session");
        assert_eq!(session["dataplane"], "web-1", "{line}");
        assert_eq!(session["mesh"], "default", "{line}");
        assert_eq!(session["service"], "web", "{line}");
        assert_eq!(session["zone"], "zone-1", "{line}");
        assert!(session["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{line}");
        assert!(line.get("dataplane").is_none() && line.get("mesh").is_none(), "the line repeats the span's fields: {line}");
    }
    assert_eq!(rejected["error"], "listener port taken", "{rejected}");
    assert_eq!(rejected["level"], "WARN", "{rejected}");
    assert!(disconnected["reason"].is_string(), "{disconnected}");
}
