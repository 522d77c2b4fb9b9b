//! Workloads with their sidecars on a test network: a [`Workload`] is a host running an
//! application (a TCP echo server, [`echo_server`]) and `strait-dp run` beside it, registered
//! with a [`Zone`] with a dataplane token issued by the [`Global`] (`straitctl token dataplane`).
//! Clients run inside the workload's host ([`echo`], [`Traffic`]) against the sidecar's
//! explicit outbound ports, as the application would.
//!
//! In: a [`Net`], a global and a zone from [`crate::control_plane`]. Out: running sidecars and
//! typed access to their admin endpoint (`/ready`, `/config_dump`, `/metrics`) and logs; every
//! accessor returns `Err(reason)` instead of panicking, so that it can be polled.
//!
//! Ports: in namespace mode each workload has its own loopback, so the application and the
//! admin endpoint use 127.0.0.1 as in production. In loopback mode they use the host's own
//! address instead, and inbound ports (which the sidecar binds on 0.0.0.0) are moved by the
//! net's slot ([`wildcard_port`]) so that workloads and parallel tests do not collide.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::control_plane::{get_json, metric_value, Global, Zone, ZONE_DPS_PORT};
use crate::{bin, wait_for, Cmd, Host, Net, Proc};

/// Port of a sidecar's admin endpoint.
pub const ADMIN_PORT: u16 = 9901;
/// Deadline for a sidecar to become ready (registration, configuration, certificate).
pub const SIDECAR_READY: Duration = Duration::from_secs(30);
/// Deadline of one call: connect, send, read the echo.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off cap given to sidecars, so that reconnections take seconds, not 30 s, and traffic
/// reports every second.
pub const SIDECAR_BACKOFF: &[&str] = &["--cp-max-backoff", "2s", "--traffic-report-interval", "1s"];

/// The address a workload's own processes use among themselves: 127.0.0.1 inside its
/// namespace; in loopback mode, the host's address.
pub fn local_ip(host: &Host) -> IpAddr {
    if host.netns().is_some() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.addr()
    }
}

/// A port for a listener bound on 0.0.0.0 (a sidecar's inbound): `port` itself in namespace
/// mode; in loopback mode moved by 100 per slot, so parallel tests do not collide.
pub fn wildcard_port(net: &Net, port: u16) -> u16 {
    if net.is_namespaced() {
        port
    } else {
        port + 100 * u16::from(net.slot())
    }
}

/// How often sidecars probe their application (`serviceProbe.interval`): a stopped
/// application is out of the pool within about two of these.
pub const PROBE_INTERVAL: &str = "300ms";

/// A Dataplane resource with one inbound and explicit outbounds.
#[derive(Debug, Clone)]
pub struct DataplaneSpec {
    /// Resource name.
    pub name: String,
    /// `strait.io/service` of the inbound.
    pub service: String,
    /// `networking.address`: where other sidecars reach this one.
    pub address: IpAddr,
    /// Inbound port: where the sidecar accepts mTLS from other sidecars.
    pub inbound_port: u16,
    /// Where the application listens (`serviceAddress:servicePort`).
    pub app: SocketAddr,
    /// Explicit outbounds: local port and destination service.
    pub outbounds: Vec<(u16, String)>,
    /// Address the outbound listeners bind.
    pub outbound_address: IpAddr,
    /// `strait.io/protocol` of the inbound (`http`, `grpc`, ...); TCP when `None`.
    pub protocol: Option<String>,
}

impl DataplaneSpec {
    /// The resource as YAML, in mesh `default`.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "type: Dataplane\nname: {}\nmesh: default\nspec:\n  networking:\n    address: {}\n    inbound:\n      - port: {}\n        \
             serviceAddress: {}\n        servicePort: {}\n        serviceProbe: {{interval: {}}}\n        \
             tags: {{strait.io/service: {}{}}}\n",
            self.name,
            self.address,
            self.inbound_port,
            self.app.ip(),
            self.app.port(),
            PROBE_INTERVAL,
            self.service,
            self.protocol.as_ref().map(|p| format!(", strait.io/protocol: {p}")).unwrap_or_default(),
        );
        if !self.outbounds.is_empty() {
            y.push_str("    outbound:\n");
            for (port, service) in &self.outbounds {
                y.push_str(&format!(
                    "      - port: {port}\n        address: {}\n        tags: {{strait.io/service: {service}}}\n",
                    self.outbound_address
                ));
            }
        }
        y
    }
}

/// `straitctl token dataplane --mesh default --service <service> --output <net dir>/<file>`;
/// returns the file (which must be mode 0600).
pub fn dataplane_token(net: &Net, global: &Global, service: &str, file: &str) -> PathBuf {
    let path = net.dir().join(file);
    let path_str = path.to_str().expect("utf-8 temp path");
    global.straitctl(net, &["token", "dataplane", "--mesh", "default", "--service", service, "--output", path_str]).assert_success();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("token file written").permissions());
    assert_eq!(mode & 0o777, 0o600, "the dataplane token must be written with mode 0600");
    path
}

/// A TCP echo server (python3) as process `name` on `host`, listening on `addr`; waits until
/// it accepts connections.
pub fn echo_server(host: &Host, name: &str, addr: SocketAddr) -> Proc {
    const SCRIPT: &str = "import socketserver, sys\n\
        class H(socketserver.BaseRequestHandler):\n    \
            def handle(self):\n        \
                while True:\n            \
                    d = self.request.recv(65536)\n            \
                    if not d:\n                return\n            \
                    self.request.sendall(d)\n\
        class S(socketserver.ThreadingTCPServer):\n    \
            allow_reuse_address = True\n    \
            daemon_threads = True\n\
        print('echo listening', flush=True)\n\
        S((sys.argv[1], int(sys.argv[2])), H).serve_forever()\n";
    let proc = host.spawn_cmd(name, Cmd::new("python3").args(["-u", "-c", SCRIPT]).arg(addr.ip().to_string()).arg(addr.port().to_string()));
    wait_for(&format!("the echo server {name} on {addr}"), Duration::from_secs(10), || {
        proc.assert_running("the echo server to listen");
        host.tcp_connect(addr, Duration::from_secs(1))
    });
    proc
}

/// An HTTP/1 server (python3's `http.server`) as process `name` on `host`, listening on
/// `addr` and serving the files of `dir`; waits until it accepts connections.
pub fn http_server(host: &Host, name: &str, addr: SocketAddr, dir: &Path) -> Proc {
    let cmd = Cmd::new("python3")
        .args(["-u", "-m", "http.server", "--bind"])
        .arg(addr.ip().to_string())
        .arg("--directory")
        .arg(dir)
        .arg(addr.port().to_string());
    let proc = host.spawn_cmd(name, cmd);
    wait_for(&format!("the HTTP server {name} on {addr}"), Duration::from_secs(10), || {
        proc.assert_running("the HTTP server to listen");
        host.tcp_connect(addr, Duration::from_secs(1))
    });
    proc
}

/// `GET path` from `host` to `target` over HTTP/1.1 (`Host: <host_header>`, one request per
/// connection): the status and the body, or why there is none.
pub fn http_get(host: &Host, target: SocketAddr, host_header: &str, path: &str) -> Result<(u16, String), String> {
    host.within(|| {
        let mut stream = connect(target)?;
        let _ = stream.set_read_timeout(Some(CALL_TIMEOUT));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).map_err(|e| format!("sending to {target}: {e}"))?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).map_err(|e| format!("reading from {target}: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("{target} answered no HTTP/1.1 status line: {:?}", &text[..text.len().min(80)]))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    })
}

/// One round trip on an open connection: sends `payload`, reads as many bytes back; `Ok` only
/// if they are the same.
pub fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(payload).map_err(|e| format!("send: {e}"))?;
    let mut got = vec![0u8; payload.len()];
    let mut read = 0;
    while read < got.len() {
        match stream.read(&mut got[read..]) {
            Ok(0) => return Err(format!("connection closed after {read} of {} echoed bytes", payload.len())),
            Ok(n) => read += n,
            Err(e) => return Err(format!("receive after {read} bytes: {e}")),
        }
    }
    if got == payload {
        Ok(())
    } else {
        Err(format!("echoed {:?} instead of {:?}", String::from_utf8_lossy(&got), String::from_utf8_lossy(payload)))
    }
}

/// Connects to `target` (from the calling thread's namespace: use inside [`Host::within`]).
pub fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&target, CALL_TIMEOUT).map_err(|e| format!("connect to {target}: {e}"))
}

/// A call from `host`: a new connection to `target`, one round trip of `payload`, closed.
pub fn echo(host: &Host, target: SocketAddr, payload: &[u8]) -> Result<(), String> {
    host.within(|| {
        let mut s = connect(target)?;
        let result = round_trip(&mut s, payload);
        let _ = s.shutdown(Shutdown::Both);
        result.map_err(|e| format!("from {} to {target}: {e}", host.name()))
    })
}

/// A running `strait-dp run`, and its admin endpoint.
#[derive(Clone)]
pub struct Sidecar {
    /// The workload's host.
    pub host: Host,
    /// The `strait-dp` process.
    pub proc: Proc,
    /// Where its admin endpoint listens (reached from inside the host).
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts `strait-dp run` as process `name` on `host`, registering with `zone`'s DPS at
    /// `cp_port` (normally [`ZONE_DPS_PORT`]), with [`SIDECAR_BACKOFF`] and `extra` flags; does
    /// not wait.
    pub fn spawn(host: &Host, name: &str, zone: &Zone, cp_port: u16, dataplane: &Path, token: &Path, extra: &[&str]) -> Sidecar {
        let admin = SocketAddr::new(local_ip(host), ADMIN_PORT);
        let proc = host.spawn_cmd(
            name,
            Sidecar::command(zone, cp_port, dataplane, token)
                .arg("--admin-address")
                .arg(admin.to_string())
                .args(SIDECAR_BACKOFF)
                .args(extra),
        );
        Sidecar { host: host.clone(), proc, admin }
    }

    /// `strait-dp run` with the zone's DPS address and CA, a Dataplane file and a token file.
    pub fn command(zone: &Zone, cp_port: u16, dataplane: &Path, token: &Path) -> Cmd {
        Cmd::new(bin("strait-dp"))
            .args(["run", "--cp-address", &format!("https://{}", zone.host.socket_addr(cp_port))])
            .arg("--cp-ca-file")
            .arg(zone.dps_ca_file())
            .arg("--dataplane-file")
            .arg(dataplane)
            .arg("--dataplane-token-file")
            .arg(token)
    }

    /// `GET <path>` on the admin endpoint, from inside the host.
    pub fn get(&self, path: &str) -> Result<(StatusCode, Value), String> {
        get_json(&self.host, &format!("http://{}{path}", self.admin), None)
    }

    /// The status of `/ready`.
    pub fn ready(&self) -> Result<StatusCode, String> {
        self.get("/ready").map(|(status, _)| status)
    }

    /// Waits for `/ready` to answer 200 (fails at once if the sidecar exits).
    pub fn wait_ready(&self, deadline: Duration) {
        self.proc.wait_http_ready(&self.host, &format!("http://{}/ready", self.admin), deadline);
    }

    /// `/config_dump` (version, config, certificate).
    pub fn config_dump(&self) -> Result<Value, String> {
        match self.get("/config_dump")? {
            (StatusCode::OK, body) if body.is_object() => Ok(body),
            (status, body) => Err(format!("{}: /config_dump answered {status}: {body}", self.proc.name())),
        }
    }

    /// The value of sample `name` (exact, unlabelled) on `/metrics`.
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (_, body) = self.get("/metrics")?;
        let text = body.as_str().unwrap_or_default();
        metric_value(text, name).ok_or_else(|| format!("{}: no sample {name} in /metrics:\n{text}", self.proc.name()))
    }

    /// How many lines of its log contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.proc.log().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
    }
}

/// A workload: a host with its application (a TCP echo server) and its sidecar.
pub struct Workload {
    /// Its service (`strait.io/service`).
    pub service: String,
    /// Its host.
    pub host: Host,
    /// The application.
    pub app: Proc,
    /// The sidecar.
    pub sidecar: Sidecar,
    /// Its Dataplane.
    pub dataplane: DataplaneSpec,
    /// Where other hosts reach its inbound (the sidecar's mTLS port).
    pub inbound: SocketAddr,
}

impl Workload {
    /// On a new host `service`: issues a token for `service`, writes its Dataplane (`<service>-1`,
    /// inbound [`wildcard_port`] `inbound_port` forwarding to the echo server on `app_port`, and
    /// `outbounds`), starts the echo server and the sidecar, and waits until it is ready.
    pub fn start(
        net: &Net,
        global: &Global,
        zone: &Zone,
        service: &str,
        inbound_port: u16,
        app_port: u16,
        outbounds: &[(u16, &str)],
    ) -> Workload {
        Workload::start_on(net, global, zone, service, service, inbound_port, app_port, outbounds, None)
    }

    /// As [`Workload::start`], but the application is an HTTP server ([`http_server`]) serving
    /// `files` (name, content), and the inbound is tagged `strait.io/protocol: http`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_http(
        net: &Net,
        global: &Global,
        zone: &Zone,
        service: &str,
        inbound_port: u16,
        app_port: u16,
        outbounds: &[(u16, &str)],
        files: &[(&str, &str)],
    ) -> Workload {
        Workload::start_on(net, global, zone, service, service, inbound_port, app_port, outbounds, Some(files))
    }

    /// As [`Workload::start`] (or [`Workload::start_http`] with `http_files`), on a new host
    /// named `host_name`: several workloads of one service, in different zones say.
    #[allow(clippy::too_many_arguments)]
    pub fn start_on(
        net: &Net,
        global: &Global,
        zone: &Zone,
        host_name: &str,
        service: &str,
        inbound_port: u16,
        app_port: u16,
        outbounds: &[(u16, &str)],
        http_files: Option<&[(&str, &str)]>,
    ) -> Workload {
        let host = net.host(host_name);
        let local = local_ip(&host);
        // Named after the host when it is not the service's: instances of one service in one
        // zone need names of their own.
        let name = if host_name == service { format!("{service}-1") } else { host_name.to_owned() };
        let dataplane = DataplaneSpec {
            name,
            service: service.to_owned(),
            address: host.addr(),
            inbound_port: wildcard_port(net, inbound_port),
            app: SocketAddr::new(local, app_port),
            outbounds: outbounds.iter().map(|(port, s)| (*port, (*s).to_owned())).collect(),
            outbound_address: local,
            protocol: http_files.map(|_| "http".to_owned()),
        };
        let token = dataplane_token(net, global, service, &format!("{host_name}.token"));
        let file = net.write_file(&format!("{host_name}.dataplane.yaml"), dataplane.yaml());
        let app = match http_files {
            Some(files) => {
                let dir = net.dir().join(format!("{host_name}-www"));
                std::fs::create_dir_all(&dir).expect("create the web root");
                for (name, content) in files {
                    std::fs::write(dir.join(name), content).expect("write a served file");
                }
                http_server(&host, "app", dataplane.app, &dir)
            }
            None => echo_server(&host, "app", dataplane.app),
        };
        let sidecar = Sidecar::spawn(&host, "strait-dp", zone, ZONE_DPS_PORT, &file, &token, &[]);
        sidecar.wait_ready(SIDECAR_READY);
        let inbound = host.socket_addr(dataplane.inbound_port);
        Workload { service: service.to_owned(), host, app, sidecar, dataplane, inbound }
    }

    /// Where the application reaches `service` through its sidecar (an explicit outbound).
    pub fn outbound(&self, service: &str) -> SocketAddr {
        let (port, _) = self
            .dataplane
            .outbounds
            .iter()
            .find(|(_, s)| s == service)
            .unwrap_or_else(|| panic!("{} has no outbound to {service}", self.service));
        SocketAddr::new(self.dataplane.outbound_address, *port)
    }

    /// A call from this workload to `service` through its sidecar: `payload` echoed back.
    pub fn call(&self, service: &str, payload: &[u8]) -> Result<(), String> {
        echo(&self.host, self.outbound(service), payload)
    }
}

/// What a [`Traffic`] generator has seen so far.
#[derive(Debug, Clone, Default)]
pub struct TrafficReport {
    /// Successful calls on new connections.
    pub ok: u32,
    /// Successful round trips on the one long-lived connection.
    pub kept_ok: u32,
    /// Failed calls or round trips: when (since the start) and why.
    pub failures: Vec<(Duration, String)>,
}

/// Calls made in the background from a host, at a steady pace, until stopped: each tick one
/// call on a new connection and one round trip on a long-lived connection (reopened if it
/// fails), so that both new and open connections are checked.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<TrafficReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    /// Starts calling `target` from `host` every `every`.
    pub fn start(host: &Host, target: SocketAddr, every: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(TrafficReport::default()));
        let (host, flag, shared) = (host.clone(), stop.clone(), report.clone());
        let thread = std::thread::spawn(move || {
            host.within(|| {
                let start = Instant::now();
                let mut kept: Option<TcpStream> = None;
                let mut n = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    n += 1;
                    let payload = format!("call-{n}\n");
                    let fresh = connect(target).and_then(|mut s| round_trip(&mut s, payload.as_bytes()));
                    let long = match kept.as_mut() {
                        Some(s) => round_trip(s, payload.as_bytes()),
                        None => connect(target).and_then(|mut s| {
                            let r = round_trip(&mut s, payload.as_bytes());
                            kept = Some(s);
                            r
                        }),
                    };
                    let mut r = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    match fresh {
                        Ok(()) => r.ok += 1,
                        Err(e) => r.failures.push((start.elapsed(), format!("new connection: {e}"))),
                    }
                    match long {
                        Ok(()) => r.kept_ok += 1,
                        Err(e) => {
                            kept = None;
                            r.failures.push((start.elapsed(), format!("long-lived connection: {e}")));
                        }
                    }
                    drop(r);
                    std::thread::sleep(every);
                }
            })
        });
        Traffic { stop, report, thread: Some(thread) }
    }

    /// What it has seen so far.
    pub fn report(&self) -> TrafficReport {
        self.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops it and returns what it saw.
    pub fn stop(mut self) -> TrafficReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        self.report()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
