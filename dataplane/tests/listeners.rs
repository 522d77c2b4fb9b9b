//! The sidecar's listeners: bound at start from the Dataplane, before the zone answers; a port
//! that is taken fails the start (in-process and as a binary), naming the listener and the
//! address; `/ready` waits until every listener accepts; port 0 gets a real port, which is the
//! one registered with the zone.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{admin, call, eventually, on_any_port, Mesh};
use strait_dataplane::config::{Cli, Command, Validated};
use strait_dataplane::proxy::listeners::BindError;
use strait_dataplane::{Sidecar, StartError};

/// The files and flags of a sidecar whose zone is never reached: enough to bind.
fn offline_args(dir: &Path, yaml: &str) -> Vec<String> {
    std::fs::write(dir.join("dp.yaml"), yaml).unwrap();
    std::fs::write(dir.join("token"), "token").unwrap();
    std::fs::write(dir.join("ca.pem"), "pem").unwrap();
    let s = |f: &str| dir.join(f).display().to_string();
    ["run", "--cp-address", "https://127.0.0.1:1", "--cp-ca-file", &s("ca.pem"), "--dataplane-file", &s("dp.yaml")]
        .into_iter()
        .map(str::to_string)
        .chain(["--dataplane-token-file".into(), s("token"), "--admin-address".into(), "127.0.0.1:0".into()])
        .collect()
}

fn offline_config(dir: &Path, yaml: &str) -> Validated {
    let args = std::iter::once("strait-dp".to_string()).chain(offline_args(dir, yaml));
    let Command::Run(flags) = Cli::try_parse_from(args).unwrap().command else { panic!("run") };
    flags.validate().unwrap()
}

fn web(inbound: u16, outbound: u16) -> String {
    format!(
        "type: Dataplane\nname: web-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {inbound}, servicePort: 9, tags: {{strait.io/service: web}}}}]\n    outbound: [{{port: {outbound}, tags: {{strait.io/service: backend}}}}]\n"
    )
}

/// A socket holding a port, as another process would.
fn squat(ip: [u8; 4]) -> (std::net::TcpListener, u16) {
    let socket = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_start_naming_the_listener_and_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let (_inbound_squatter, taken) = squat([0, 0, 0, 0]);
    let error = Sidecar::start(offline_config(dir.path(), &web(taken, 15_999))).await.err().expect("the inbound port is taken");
    assert!(matches!(&error, StartError::Listener(BindError::Bind { address, .. }) if address.port() == taken), "{error:?}");
    assert!(error.to_string().starts_with(&format!("binding inbound[0] (web) to 0.0.0.0:{taken}: ")), "{error}");

    let (_outbound_squatter, taken) = squat([127, 0, 0, 1]);
    let mut config = offline_config(dir.path(), &web(15_998, taken));
    let strait_api::Spec::Dataplane(spec) = &mut config.dataplane.spec else { panic!("a Dataplane") };
    spec.networking.inbound[0].port = 0;
    let error = Sidecar::start(config).await.err().expect("the outbound port is taken");
    assert!(error.to_string().starts_with(&format!("binding outbound[0] (backend) to 127.0.0.1:{taken}: ")), "{error}");
}

#[test]
fn the_binary_exits_with_an_error_naming_the_address_when_a_port_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_squatter, taken) = squat([0, 0, 0, 0]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strait-dp"))
        .args(offline_args(dir.path(), &web(taken, 15_997)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strait-dp kept running with its inbound port taken");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains(&format!("strait-dp: binding inbound[0] (web) to 0.0.0.0:{taken}: ")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_every_listener_and_port_zero_is_registered_as_bound() {
    let mut mesh = Mesh::start().await;
    let app = common::echo_app().await;
    let backend_yaml = format!("type: Dataplane\nname: backend-1\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: 15996, servicePort: {app}, tags: {{strait.io/service: backend}}}}]\n");
    let mut backend = mesh.validated("backend", "backend", &backend_yaml).await;
    let mut web = mesh.validated("web", "web", &web(15_995, 15_994)).await;
    on_any_port(&mut backend);
    on_any_port(&mut web);

    // The zone is away: the listeners are bound, but the sidecars are not ready.
    mesh.stop_zone().await;
    let backend = Sidecar::start(backend).await.unwrap();
    let web = Sidecar::start(web).await.unwrap();
    let addresses = [backend.listeners.inbound[0], web.listeners.inbound[0], web.listeners.outbound[0]];
    assert!(addresses.iter().all(|a| a.port() != 0), "port 0 is reported as the port bound: {addresses:?}");
    assert_eq!(web.listeners.outbound[0].ip(), std::net::Ipv4Addr::LOCALHOST);
    let (status, body) = admin(&web, "/ready").await;
    assert_eq!(status, 503);
    for pending in [
        "workload certificate".to_string(),
        format!("inbound[0] (web) accepting on {}", web.listeners.inbound[0]),
        format!("outbound[0] (backend) accepting on {}", web.listeners.outbound[0]),
    ] {
        assert!(body.contains(&pending), "/ready names {pending:?}: {body}");
    }
    for address in addresses {
        tokio::net::TcpStream::connect(address).await.unwrap_or_else(|e| panic!("{address} is bound before the zone answers: {e}"));
    }
    let (_, dump) = admin(&web, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["listeners"]["outbound"][0], web.listeners.outbound[0].to_string());

    // The zone comes back: ready means every listener accepts with a certificate in place,
    // and the port 0 of the backend's inbound was registered as the port it bound.
    mesh.start_zone().await;
    for s in [&backend, &web] {
        eventually("ready", async || (admin(s, "/ready").await.0 == 200).then_some(())).await;
    }
    let registered = eventually("the backend's endpoint in web's configuration", async || {
        let config = web.state.served()?;
        let backend = config.1.outbounds.iter().find(|o| o.service == "backend")?;
        (!backend.endpoints.is_empty()).then(|| backend.endpoints.iter().map(|e| e.port).collect::<Vec<_>>())
    })
    .await;
    assert_eq!(registered, [backend.listeners.inbound[0].port()], "the backend registered the port it bound");
    eventually("web -> backend through the bound ports", async || {
        (call(web.listeners.outbound[0], b"hello").await == b"hello").then_some(())
    })
    .await;
    for address in addresses {
        tokio::net::TcpStream::connect(address).await.unwrap_or_else(|e| panic!("{address} accepts once ready: {e}"));
    }
    web.shutdown(Duration::from_secs(1)).await;
    backend.shutdown(Duration::from_secs(1)).await;
    mesh.stop_zone().await;
    mesh.global.shutdown();
}

/// What a `strait-dp@` unit runs around the sidecar: `transparent-proxy install|uninstall
/// --dataplane-file F` does nothing for a Dataplane without `transparentProxying` (so that a
/// sidecar without interception never removes another's rules), redirects to the Dataplane's
/// own ports otherwise, and names a bad file.
#[test]
fn the_transparent_proxy_follows_the_dataplane_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait-dp")).arg("transparent-proxy").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, web(8001, 10001)).unwrap();
    let plain = plain.to_str().unwrap();
    for action in [&["install", "--proxy-uid", "5678", "--dataplane-file", plain][..], &["uninstall", "--dataplane-file", plain]] {
        let (code, stdout, _) = run(action);
        assert_eq!(code, Some(0), "{action:?}");
        assert!(stdout.contains("no transparentProxying; no interception rules"), "{action:?}: {stdout}");
    }
    let transparent = dir.path().join("transparent.yaml");
    std::fs::write(&transparent, web(8001, 10001) + "    transparentProxying: {redirectPortOutbound: 15101, redirectPortInbound: 15106}\n")
        .unwrap();
    let (code, stdout, stderr) = run(&["install", "--proxy-uid", "5678", "--dry-run", "--dataplane-file", transparent.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("--to-ports 15101") && stdout.contains("--to-ports 15106"), "the Dataplane's ports: {stdout}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "type: Dataplane\nname: web-1\nmesh: default\nspec: {networking: {address: nowhere}}\n").unwrap();
    let (code, _, stderr) = run(&["install", "--proxy-uid", "5678", "--dataplane-file", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("--dataplane-file") && stderr.contains("address"), "{stderr}");
}
