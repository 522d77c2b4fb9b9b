//! The sidecar's logs, as an operator reads them: `strait-dp` binaries with `--log-format
//! json` behind an in-process caller. A line logged while serving a request names the inbound
//! (service, port) and the connection (the caller's address and, from the TLS handshake on,
//! its SPIFFE ID), under the default `info` filter too, where HTTP/2 streams run in tasks of
//! their own; with debug logs on, it also names the request (method, path). Under systemd
//! (`Type=notify`), it says `READY=1` only once configured, and `STOPPING=1` on SIGTERM.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{dataplane, free_port, get, Mesh};
use serde_json::Value;

/// A process whose stderr (its JSON log lines) is collected; killed when dropped.
struct Logged {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Logged {
    fn spawn_with(bin: &str, args: &[String], env: &[(&str, &std::path::Path)]) -> Logged {
        let mut command = Command::new(bin);
        command.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Logged { child, lines }
    }

    /// The first JSON line whose message is `message`, if logged yet.
    fn line(&self, message: &str) -> Option<Value> {
        self.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["message"] == message)
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `strait-dp` for the Dataplane `yaml` of service `backend`, logging JSON with `filter`.
async fn backend(mesh: &Mesh, name: &str, yaml: &str, filter: &str) -> Logged {
    mesh.validated(name, "backend", yaml).await;
    Logged::spawn_with(env!("CARGO_BIN_EXE_strait-dp"), &backend_args(mesh, name, filter), &[])
}

/// The arguments of `strait-dp` for the files [`Mesh::validated`] wrote for `name`.
fn backend_args(mesh: &Mesh, name: &str, filter: &str) -> Vec<String> {
    let dir = mesh.dir.path().join(name);
    let s = |f: &str| dir.join(f).display().to_string();
    let args = [
        "run",
        "--cp-address",
        &format!("https://{}", mesh.dps),
        "--cp-ca-file",
        &s("ca.pem"),
        "--dataplane-file",
        &s("dp.yaml"),
        "--dataplane-token-file",
        &s("token"),
        "--admin-address",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--log-level",
        filter,
    ];
    args.map(str::to_string).to_vec()
}

/// The span list of a JSON line, as (name, fields).
fn spans(line: &Value) -> Vec<(String, Value)> {
    let list = line["spans"].as_array().unwrap_or_else(|| panic!("no spans in {line}"));
    list.iter().map(|s| (s["name"].as_str().unwrap_or_default().to_string(), s.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_logged_for_a_request_names_the_inbound_the_caller_and_at_debug_the_request() {
    let mesh = Mesh::start().await;
    // Nothing listens on the application's port: each request is answered 502 by the
    // backend's sidecar, which logs a warning while serving it.
    let (dead_app, web_out) = (free_port(), free_port());
    let (info_in, debug_in) = (free_port(), free_port());
    // Their probe is off: it would take the inbounds out of the pool before the requests come.
    let unprobed = |yaml: String| {
        yaml.replace("tags: {strait.io/service: backend", "serviceProbe: {disabled: true}, tags: {strait.io/service: backend")
    };
    let at_info = backend(&mesh, "backend-1", &unprobed(dataplane("backend-1", "backend", info_in, dead_app, "http", &[])), "info").await;
    let at_debug = backend(
        &mesh,
        "backend-2",
        &unprobed(dataplane("backend-2", "backend", debug_in, dead_app, "http", &[])),
        "info,strait_dataplane=debug",
    )
    .await;
    let web = mesh.sidecar("web", "web", &dataplane("web-1", "web", free_port(), free_port(), "http", &[(web_out, "backend")])).await;

    // Requests are balanced over both backends; wait until each has answered one.
    let client = reqwest::Client::new();
    let warning = "the application did not answer";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (info_line, debug_line) = loop {
        if let (Some(a), Some(b)) = (at_info.line(warning), at_debug.line(warning)) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "no {warning:?} from both backends.\nbackend-1:\n{}\nbackend-2:\n{}",
            at_info.log(),
            at_debug.log()
        );
        let _ = get(&client, web_out, "/orders?id=7").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (line, port) in [(&info_line, info_in), (&debug_line, debug_in)] {
        let spans = spans(line);
        let names: Vec<&str> = spans.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..2], ["inbound", "connection"], "{line}");
        let (inbound, connection) = (&spans[0].1, &spans[1].1);
        assert_eq!(inbound["service"], "backend", "{line}");
        assert_eq!(inbound["port"], port, "{line}");
        assert_eq!(connection["peer"], "spiffe://default/web", "the caller's identity, recorded after the handshake: {line}");
        assert!(connection["peer_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{line}");
        assert_eq!(line["level"], "WARN", "{line}");
        assert!(line.get("service").is_none(), "the line repeats the span's service: {line}");
    }
    assert_eq!(spans(&info_line).len(), 2, "no request span under the default filter: {info_line}");
    let request = spans(&debug_line).into_iter().find(|(n, _)| n == "request").unwrap_or_else(|| panic!("a request span: {debug_line}")).1;
    assert_eq!(request["method"], "GET", "{debug_line}");
    assert_eq!(request["path"], "/orders", "{debug_line}");
    web.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_sidecar_says_ready_once_configured_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let mut mesh = Mesh::start().await;
    let socket = mesh.dir.path().join("notify");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_nonblocking(true).unwrap();
    let yaml = dataplane("backend-1", "backend", free_port(), free_port(), "http", &[]);
    mesh.validated("backend-1", "backend", &yaml).await;
    // The zone is away: the sidecar runs, but is not ready.
    mesh.stop_zone().await;
    let sidecar =
        Logged::spawn_with(env!("CARGO_BIN_EXE_strait-dp"), &backend_args(&mesh, "backend-1", "info"), &[("NOTIFY_SOCKET", &socket)]);
    common::eventually("the sidecar to try its zone", async || sidecar.line("control plane stream ended; keeping the last configuration"))
        .await;
    let mut buf = [0u8; 256];
    assert!(manager.recv(&mut buf).is_err(), "READY=1 before the sidecar had a configuration:\n{}", sidecar.log());
    mesh.start_zone().await;
    let n = common::eventually("READY=1", async || manager.recv(&mut buf).ok()).await;
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    assert!(sidecar.line("configuration applied").is_some(), "ready before its configuration:\n{}", sidecar.log());
    let status = Command::new("kill").args(["-TERM", &sidecar.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let n = common::eventually("STOPPING=1", async || manager.recv(&mut buf).ok()).await;
    assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
}
