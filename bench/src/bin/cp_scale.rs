//! The control plane at scale: many simulated sidecars in this process against real
//! `strait-zone` processes and a `strait-global` process, each sidecar with a DPS stream of
//! its own (its own TLS connection), a real dataplane token, a real key and CSR, and an
//! acknowledgement of every configuration, as `strait-dp` does (over the framed transport, as it
//! does, or with `--grpc` over gRPC). Measures:
//!
//! - the registration storm: every sidecar connecting at once, until each has its first
//!   configuration and its certificate, with each zone's CPU and memory every second;
//! - zone memory per connected sidecar (the zone's RSS after the storm minus before, divided by
//!   its sidecars; target at most 100 KB);
//! - a policy written on the global until it is in the configuration of 50%, 90% and 99% of
//!   the sidecars (target p90 at most 1 s).
//!
//! Each sidecar is a Dataplane of one of `--services` services with one inbound and one
//! explicit outbound (to the next service), at its own 127.x address (the zones are started
//! with `--allow-dataplane-address 127.0.0.0/8`, since every connection comes from 127.0.0.1).
//!
//! `cargo build --profile dist --bins && target/dist/cp_scale [--sidecars 1000] [--zones 1]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use strait_api::dps::dataplane_sync_client::DataplaneSyncClient;
use strait_api::dps::{dataplane_message, zone_message, Ack, CertificateRequest, DataplaneMessage, Hello, ZoneMessage, PROTOCOL_VERSION};
use strait_bench::control::{ControlPlane, Error};
use strait_bench::procstat::{cpu_seconds, rss_bytes};
use strait_bench::rig::{free_port, Children};
use strait_bench::{ms, percentile};
use strait_proxy_core::cp_client;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// Simulated sidecars, spread over the zones in turn.
    #[arg(long, default_value_t = 1000)]
    sidecars: usize,
    /// Zone control planes (separate `strait-zone` processes).
    #[arg(long, default_value_t = 1)]
    zones: usize,
    /// Services the sidecars belong to (in turn); each calls the next one.
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Endpoints added to one service (`svc-0`) at the end, as new sidecars: the time until
    /// every caller of that service has them all (0: skip).
    #[arg(long, default_value_t = 1000)]
    scale_endpoints: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    deadline_secs: u64,
    /// Simulate sidecars that take each configuration whole, as sidecars did before
    /// configurations came in parts (for comparison).
    #[arg(long)]
    whole_configs: bool,
    /// Simulate sidecars whose DPS stream is gRPC (HTTP/2) rather than the framed transport
    /// `strait-dp` uses (for comparison: the zone's memory per sidecar on each).
    #[arg(long)]
    grpc: bool,
    /// The zones' log level; their logs (a line per sidecar that connects or leaves, with the
    /// reason) are kept beside the benchmark's temporary directory while it runs.
    #[arg(long, default_value = "info")]
    zone_log_level: String,
}

/// What every simulated sidecar is like.
#[derive(Clone, Copy)]
struct Shape {
    /// Services of the mesh.
    services: usize,
    /// Whether it takes configurations whole rather than in parts.
    whole: bool,
    /// Whether its stream is gRPC rather than framed.
    grpc: bool,
}

/// What a simulated sidecar reports.
enum Seen {
    /// A configuration (its size, whether it holds the probe policy, and for callers of
    /// `svc-0` how many endpoints of it).
    Config { sidecar: usize, bytes: usize, probe: bool, svc0_endpoints: Option<usize> },
    /// Its workload certificate.
    Certificate { sidecar: usize },
    /// Its stream failed.
    Failed { sidecar: usize, why: String },
}

/// The idle timeout the probe policy sets, as configurations spell durations.
const PROBE: &str = "2h11m59s";

struct Zone {
    name: String,
    pid: u32,
    dps: String,
    ca_pem: String,
    /// The REST API (plaintext), for its metrics.
    api: String,
}

async fn start_zone(cp: &ControlPlane, children: &mut Children, name: &str, log_level: &str) -> Result<Zone, Error> {
    let dir = cp.dir.path().join(name);
    std::fs::create_dir_all(&dir)?;
    let reg: Value =
        cp.http.post(format!("{}/zones/{name}/token", cp.base)).bearer_auth(&cp.token).send().await?.error_for_status()?.json().await?;
    std::fs::write(dir.join("token"), reg["token"].as_str().unwrap_or_default())?;
    std::fs::write(dir.join("ca.pem"), reg["caBundle"].as_str().unwrap_or_default())?;
    let bin = std::env::current_exe()?.parent().ok_or("no directory for this binary")?.join("strait-zone");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build the binaries with this benchmark's profile (`cargo build --profile dist --bins`)",
            bin.display()
        )
        .into());
    }
    let dps_port = free_port()?;
    let api = format!("127.0.0.1:{}", free_port()?);
    let log = std::fs::File::create(dir.join("zone.log"))?;
    let child = strait_bench::cleanup::spawn(
        std::process::Command::new(&bin)
            .args(["--zone", name, "--global-address", &format!("https://{}", cp.kds_addr)])
            .arg("--zone-token-file")
            .arg(dir.join("token"))
            .arg("--global-ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--api-plaintext", "--api-address", &api])
            .args(["--dps-address", &format!("127.0.0.1:{dps_port}"), "--allow-dataplane-address", "127.0.0.0/8", "--log-level", log_level])
            .stdout(std::process::Stdio::null())
            .stderr(log),
    )?;
    let pid = child.id();
    children.0.push(child);
    let ca_file = dir.join("data").join("dps-ca.pem");
    let started = Instant::now();
    let ca_pem = loop {
        if let Ok(pem) = std::fs::read_to_string(&ca_file) {
            if pem.contains("END CERTIFICATE") && std::net::TcpStream::connect(("127.0.0.1", dps_port)).is_ok() {
                break pem;
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("zone {name} not serving DPS within 30 s; see {}", dir.join("zone.log").display()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(Zone { name: name.to_string(), pid, dps: format!("https://127.0.0.1:{dps_port}"), ca_pem, api: format!("http://{api}") })
}

/// The value of a metric (no labels) a zone serves, or 0 while it has none.
async fn zone_metric(http: &reqwest::Client, zone: &Zone, name: &str) -> f64 {
    let Ok(response) = http.get(format!("{}/metrics", zone.api)).send().await else { return 0.0 };
    let text = response.text().await.unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

fn address(i: usize) -> String {
    format!("127.{}.{}.{}", 1 + (i >> 16), (i >> 8) & 255, i & 255)
}

/// How many endpoints of `svc-0` a configuration gives its sidecar, if it calls `svc-0`.
fn svc0_endpoints(json: &[u8]) -> Option<usize> {
    let config: Value = serde_json::from_slice(json).ok()?;
    let outbound = config["outbounds"].as_array()?.iter().find(|o| o["service"] == "svc-0")?;
    outbound["endpoints"].as_array().map(Vec::len)
}

fn dataplane(i: usize, service: usize, services: usize) -> Vec<u8> {
    let (service, next) = (format!("svc-{service}"), format!("svc-{}", (service + 1) % services));
    let dp = json!({"type": "Dataplane", "name": format!("sim-{i}"), "mesh": "default", "spec": {"networking": {
        "address": address(i),
        "inbound": [{"port": 8000, "servicePort": 9000, "tags": {"strait.io/service": service, "strait.io/protocol": "http"}}],
        "outbound": [{"port": 10000, "tags": {"strait.io/service": next}}],
    }}});
    serde_json::to_vec(&dp).unwrap_or_default()
}

/// Reconnections a sidecar makes before it gives up.
const RECONNECT_ATTEMPTS: u32 = 12;
/// Reconnections made by all sidecars.
static RECONNECTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Why sidecars reconnected (the reason with its addresses left out), and how often.
static RECONNECT_REASONS: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// `why` without what differs between sidecars (addresses and ports), to count alike reasons together.
fn reason_of(why: &str) -> String {
    why.split_whitespace().filter(|w| !w.contains("127.")).collect::<Vec<_>>().join(" ")
}

/// What a simulated sidecar sends on, and what it reads from the zone.
type Opened = (mpsc::Sender<DataplaneMessage>, std::pin::Pin<Box<dyn Stream<Item = Result<ZoneMessage, tonic::Status>> + Send>>);

/// The largest message a simulated sidecar takes.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Connects and opens the DPS stream with a Hello; the error says whether to retry (the zone
/// could not be reached or turned the connection away) or not (it refused the sidecar).
async fn open_stream(i: usize, service: usize, zone: &Zone, token: &str, shape: Shape) -> Result<Opened, (String, bool)> {
    let (tx, rx) = mpsc::channel(8);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        dataplane: dataplane(i, service, shape.services),
        software_version: "cp-scale".into(),
        deltas: !shape.whole,
        pieces: !shape.whole,
    };
    let _ = tx.send(DataplaneMessage { message: Some(dataplane_message::Message::Hello(hello)) }).await;
    let refused =
        |s: tonic::Status| (format!("{}: {}", s.code(), s.message()), matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown));
    if !shape.grpc {
        // As `strait-dp` does: the framed transport, its messages written by a task of their own.
        let cp_client::Framed { read, write } =
            cp_client::connect_framed(&zone.dps, &zone.ca_pem, "strait-zone", None, token).await.map_err(|e| (e, true))?;
        strait_runtime::framed::spawn_writer(write, rx);
        let mut inbound = Box::pin(strait_runtime::framed::messages::<_, ZoneMessage>(read, MAX_MESSAGE));
        // A refusal is the stream's first item.
        return match inbound.next().await {
            Some(Ok(first)) => Ok((tx, Box::pin(futures::stream::once(std::future::ready(Ok(first))).chain(inbound)))),
            Some(Err(s)) => Err(refused(s)),
            None => Err(("the zone closed the stream".into(), true)),
        };
    }
    let channel = cp_client::connect(&zone.dps, &zone.ca_pem, "strait-zone", None).await.map_err(|e| (e, true))?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let value = format!("Bearer {token}").parse().map_err(|_| ("the token is not a header value".to_string(), false))?;
    request.metadata_mut().insert("authorization", value);
    let mut client = DataplaneSyncClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    match client.stream(request).await {
        Ok(response) => Ok((tx, Box::pin(response.into_inner()))),
        Err(s) => Err(refused(s)),
    }
}

/// One simulated sidecar: registers, asks for its certificate, acknowledges every
/// configuration, and reports what it receives until the stream ends.
async fn sidecar(i: usize, service: usize, zone: Arc<Zone>, token: Arc<String>, shape: Shape, seen: mpsc::UnboundedSender<Seen>) {
    let failed = |why: String| {
        let _ = seen.send(Seen::Failed { sidecar: i, why });
    };
    // Connection refusals are retried as a sidecar does (exponential back-off with jitter).
    let mut attempt = 0u32;
    let (tx, mut inbound) = loop {
        match open_stream(i, service, &zone, &token, shape).await {
            Ok(opened) => break opened,
            Err((why, true)) if attempt < RECONNECT_ATTEMPTS => {
                RECONNECTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *RECONNECT_REASONS.lock().unwrap_or_else(|p| p.into_inner()).entry(reason_of(&why)).or_default() += 1;
                tokio::time::sleep(cp_client::backoff(attempt, Duration::from_secs(10))).await;
                attempt += 1;
            }
            Err((why, _)) => return failed(why),
        }
    };
    let send = |m: dataplane_message::Message| DataplaneMessage { message: Some(m) };
    match strait_pki::csr::KeyAndCsr::generate(&format!("sim-{i}")) {
        Ok(kc) => {
            let _ = tx.send(send(dataplane_message::Message::CertificateRequest(CertificateRequest { csr_pem: kc.csr_pem }))).await;
        }
        Err(e) => return failed(e.to_string()),
    }
    let marker = format!("\"{PROBE}\"");
    let calls_svc0 = (service + 1).is_multiple_of(shape.services);
    // In parts, the settings say whether the probe policy is there until new settings come.
    let mut probe = false;
    // The pieces of the version being received.
    let (mut settings, mut svc0_json, mut bytes) = (Vec::new(), None::<Vec<u8>>, 0);
    loop {
        match inbound.next().await {
            Some(Ok(message)) => match message.message {
                Some(zone_message::Message::ConfigDelta(piece)) => {
                    // A version comes in pieces: its settings and svc-0's list are each cut
                    // in order across them.
                    if !piece.settings.is_empty() {
                        settings.extend_from_slice(&piece.settings);
                    }
                    let parts = piece.endpoints.iter().filter(|e| calls_svc0 && e.service == "svc-0");
                    parts.for_each(|e| svc0_json.get_or_insert_with(Vec::new).extend_from_slice(&e.json));
                    bytes += piece.settings.len() + piece.endpoints.iter().map(|e| e.json.len()).sum::<usize>();
                    if piece.more {
                        continue;
                    }
                    if !settings.is_empty() {
                        probe = String::from_utf8_lossy(&settings).contains(&marker);
                    }
                    let svc0 = svc0_json.take().and_then(|json| serde_json::from_slice::<Vec<Value>>(&json).ok()).map(|list| list.len());
                    let _ = seen.send(Seen::Config { sidecar: i, bytes: std::mem::take(&mut bytes), probe, svc0_endpoints: svc0 });
                    settings.clear();
                    let _ = tx.send(send(dataplane_message::Message::Ack(Ack { version: piece.version }))).await;
                }
                Some(zone_message::Message::Config(config)) => {
                    let text = String::from_utf8_lossy(&config.json);
                    let probe = text.contains(&marker);
                    let svc0 = if calls_svc0 { svc0_endpoints(&config.json) } else { None };
                    let _ = seen.send(Seen::Config { sidecar: i, bytes: config.json.len(), probe, svc0_endpoints: svc0 });
                    let _ = tx.send(send(dataplane_message::Message::Ack(Ack { version: config.version }))).await;
                }
                Some(zone_message::Message::Certificate(cert)) if cert.error.is_empty() => {
                    let _ = seen.send(Seen::Certificate { sidecar: i });
                }
                Some(zone_message::Message::Certificate(cert)) => return failed(format!("certificate refused: {}", cert.error)),
                _ => {}
            },
            None => return failed("the zone closed the stream".into()),
            Some(Err(s)) => return failed(format!("{}: {}", s.code(), s.message())),
        }
    }
}

/// What the sidecars have reported so far.
#[derive(Default)]
struct Tally {
    configured: Vec<bool>,
    certified: Vec<bool>,
    failed: usize,
    count_configured: usize,
    count_certified: usize,
    config_bytes: usize,
    /// Configuration messages received, first ones and changes, and their bytes.
    messages: usize,
    message_bytes: usize,
    /// When each sidecar first had the probe policy, counted from its write.
    probed: Vec<Option<Duration>>,
    first_failures: Vec<String>,
    /// The latest count of `svc-0` endpoints each of its callers has.
    svc0: std::collections::HashMap<usize, usize>,
}

impl Tally {
    fn handle(&mut self, event: Seen, probe_start: Option<Instant>) {
        match event {
            Seen::Config { sidecar, bytes, probe, svc0_endpoints } => {
                self.messages += 1;
                self.message_bytes += bytes;
                if let Some(count) = svc0_endpoints {
                    self.svc0.insert(sidecar, count);
                }
                if !self.configured[sidecar] {
                    self.configured[sidecar] = true;
                    self.count_configured += 1;
                    self.config_bytes += bytes;
                }
                if let (true, Some(start), None) = (probe, probe_start, self.probed[sidecar]) {
                    self.probed[sidecar] = Some(start.elapsed());
                }
            }
            Seen::Certificate { sidecar } => {
                if !self.certified[sidecar] {
                    self.certified[sidecar] = true;
                    self.count_certified += 1;
                }
            }
            Seen::Failed { sidecar, why } => {
                self.failed += 1;
                if self.first_failures.len() < 5 {
                    self.first_failures.push(format!("sim-{sidecar}: {why}"));
                }
            }
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let deadline = Duration::from_secs(args.deadline_secs);
    let shape = Shape { services: args.services.max(1), whole: args.whole_configs, grpc: args.grpc };
    strait_bench::cleanup::on_signal();
    // The global in a process of its own, as in production: in this one, the simulated
    // sidecars' work starved it, and its zones' streams timed out.
    let cp = ControlPlane::start_global_process().await?;
    let mut children = Children::default();
    let mut zones = Vec::new();
    for z in 0..args.zones.max(1) {
        zones.push(Arc::new(start_zone(&cp, &mut children, &format!("zone-{}", z + 1), &args.zone_log_level).await?));
    }
    let mut tokens = Vec::new();
    for s in 0..args.services.max(1) {
        tokens.push(Arc::new(cp.dataplane_token(&format!("svc-{s}")).await?));
    }
    // Let the zones settle (first sync, their own certificates) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline: Vec<(u64, f64)> = zones.iter().map(|z| (rss_bytes(z.pid), cpu_seconds(z.pid))).collect();
    println!(
        "cp_scale: {} sidecars ({}, {}), {} zone(s), {} services; zone RSS before: {}",
        args.sidecars,
        if shape.whole { "whole configurations" } else { "configurations in parts" },
        if shape.grpc { "DPS over gRPC" } else { "DPS over the framed transport" },
        zones.len(),
        args.services,
        baseline.iter().map(|(rss, _)| format!("{:.1} MB", mb(*rss))).collect::<Vec<_>>().join(", ")
    );

    // The storm: every sidecar at once.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let storm = Instant::now();
    let simulator_cpu = cpu_seconds(std::process::id());
    for i in 0..args.sidecars {
        let (zone, token) = (zones[i % zones.len()].clone(), tokens[i % tokens.len()].clone());
        tokio::spawn(sidecar(i, i % args.services.max(1), zone, token, shape, seen_tx.clone()));
    }
    let n = args.sidecars;
    let total = n + args.scale_endpoints;
    let mut t = Tally { configured: vec![false; total], certified: vec![false; total], probed: vec![None; total], ..Tally::default() };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let storm_time = loop {
        tokio::select! {
            event = seen.recv() => match event {
                Some(event) => t.handle(event, None),
                None => break None,
            },
            _ = tick.tick() => {
                let zones_now: Vec<String> = zones.iter().zip(&baseline).map(|(z, (_, cpu0))| {
                    format!("{} rss={:.1}MB cpu={:.1}s", z.name, mb(rss_bytes(z.pid)), cpu_seconds(z.pid) - cpu0)
                }).collect();
                println!(
                    "storm t={:>5.1}s configured={} certified={} failed={} {} simulator cpu={:.1}s",
                    storm.elapsed().as_secs_f64(), t.count_configured, t.count_certified, t.failed, zones_now.join(" "),
                    cpu_seconds(std::process::id()) - simulator_cpu
                );
                if storm.elapsed() > deadline {
                    break None;
                }
            }
        }
        if t.count_configured + t.failed >= n && t.count_certified + t.failed >= n {
            break Some(storm.elapsed());
        }
    };
    for f in &t.first_failures {
        println!("failed: {f}");
    }
    println!("reconnections after a refused or failed connection: {}", RECONNECTS.load(std::sync::atomic::Ordering::Relaxed));
    for (why, count) in RECONNECT_REASONS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("  {count} after: {why}");
    }
    match storm_time {
        Some(took) if t.failed == 0 => println!(
            "FIGURE registration-storm sidecars={n} seconds={:.2} target=60 {}",
            took.as_secs_f64(),
            if took <= Duration::from_secs(60) { "met" } else { "not met" }
        ),
        _ => println!(
            "FIGURE registration-storm sidecars={n} configured={} certified={} failed={}: not met",
            t.count_configured, t.count_certified, t.failed
        ),
    }
    if t.count_configured > 0 {
        println!(
            "configuration size: {:.1} KB average; {} configuration messages in the storm ({:.1} per sidecar, {:.1} MB in all)",
            t.config_bytes as f64 / t.count_configured as f64 / 1024.0,
            t.messages,
            t.messages as f64 / n as f64,
            mb(t.message_bytes as u64)
        );
    }
    for z in &zones {
        let metric = |suffix: &'static str| zone_metric(&cp.http, z, suffix);
        let (builds, seconds) =
            (metric("strait_zone_dps_mesh_view_build_seconds_count").await, metric("strait_zone_dps_mesh_view_build_seconds_sum").await);
        println!(
            "{}: the mesh's view built {builds:.0} times so far, {seconds:.1} s in all ({:.1} ms each)",
            z.name,
            seconds * 1000.0 / builds.max(1.0)
        );
    }

    // Memory per connected sidecar, once the storm has settled: every sidecar is configured at
    // its first configuration, while the zones may still be sending the endpoints that came
    // after it. Settled is every zone below a tenth of a core for a whole second.
    let settling = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    let mut last: Vec<f64> = zones.iter().map(|z| cpu_seconds(z.pid)).collect();
    while quiet_since.is_none_or(|q| q.elapsed() < Duration::from_secs(1)) && settling.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now: Vec<f64> = zones.iter().map(|z| cpu_seconds(z.pid)).collect();
        let busy = now.iter().zip(&last).any(|(n, l)| n - l > 0.025);
        last = now;
        quiet_since = if busy { None } else { quiet_since.or(Some(Instant::now())) };
    }
    println!(
        "the zones settled {:.1} s after the storm{}",
        settling.elapsed().as_secs_f64(),
        if quiet_since.is_some() { "" } else { " (still busy at the 120 s limit)" }
    );
    // A zone gives the memory the storm freed back to the system once it is quiet; measured
    // once it has (or after 30 s), with what it held before beside it.
    let settled_rss: Vec<u64> = zones.iter().map(|z| rss_bytes(z.pid)).collect();
    let mut trims = Vec::new();
    for z in &zones {
        trims.push(zone_metric(&cp.http, z, "strait_zone_memory_trims_total").await);
    }
    let trimming = Instant::now();
    let mut pending: Vec<usize> = (0..zones.len()).collect();
    while !pending.is_empty() && trimming.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut still = Vec::new();
        for i in pending {
            if zone_metric(&cp.http, &zones[i], "strait_zone_memory_trims_total").await <= trims[i] {
                still.push(i);
            }
        }
        pending = still;
    }
    // Per sidecar still connected (as the zone counts them): sidecars a zone lost do not
    // lower its figure.
    let mut connected = Vec::new();
    for z in &zones {
        connected.push(zone_metric(&cp.http, z, "strait_zone_dps_connected_proxies{kind=\"sidecar\"}").await as usize);
    }
    for (((z, (rss0, _)), before), connected) in zones.iter().zip(&baseline).zip(&settled_rss).zip(&connected) {
        let connected = (*connected).max(1) as f64;
        println!(
            "{}: {:.0} KB per sidecar once settled, before giving freed memory back ({:.1} MB given back since the start)",
            z.name,
            before.saturating_sub(*rss0) as f64 / connected / 1024.0,
            zone_metric(&cp.http, z, "strait_zone_memory_returned_bytes_total").await / 1048576.0
        );
    }
    for ((z, (rss0, cpu0)), connected) in zones.iter().zip(&baseline).zip(&connected) {
        let rss = rss_bytes(z.pid);
        let per = rss.saturating_sub(*rss0) as f64 / (*connected).max(1) as f64 / 1024.0;
        // Judged only with the zone's share of the sidecars connected.
        let all = *connected >= n / zones.len();
        println!(
            "FIGURE zone-memory-per-sidecar zone={} sidecars={connected} of {} rss_mb={:.1} kb_per_sidecar={per:.0} target=100 {}; zone cpu during the storm {:.1}s",
            z.name,
            n / zones.len(),
            mb(rss),
            if per <= 100.0 && all { "met" } else { "not met" },
            cpu_seconds(z.pid) - cpu0
        );
    }

    // A policy written on the global, until it is in every sidecar's configuration.
    let probe = json!({"type": "MeshTimeout", "name": "scale-probe", "mesh": "default",
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": PROBE}}]}});
    let start = Instant::now();
    cp.put("/meshes/default/meshtimeouts/scale-probe", &probe).await?;
    let written = start.elapsed();
    loop {
        let remaining = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(remaining, seen.recv()).await {
            Ok(Some(event)) => t.handle(event, Some(start)),
            Ok(None) | Err(_) => break,
        }
        if t.probed[..n].iter().all(Option::is_some) {
            break;
        }
    }
    let mut times: Vec<Duration> = t.probed[..n].iter().flatten().copied().collect();
    let reached = times.len();
    let (p50, p90, p99) = (percentile(&mut times, 50.0), percentile(&mut times, 90.0), percentile(&mut times, 99.0));
    println!(
        "FIGURE policy-propagation sidecars={n} reached={reached} write={} p50={} p90={} p99={} max={} target_p90=1000ms {}",
        ms(written),
        ms(p50),
        ms(p90),
        ms(p99),
        ms(times.last().copied().unwrap_or_default()),
        if reached == n && p90 <= Duration::from_secs(1) { "met" } else { "not met" }
    );

    // A service that grows by `scale_endpoints` endpoints: until every caller has them all.
    if args.scale_endpoints > 0 {
        let callers: Vec<usize> = (0..n).filter(|i| (i % args.services.max(1) + 1) % args.services.max(1) == 0).collect();
        // Without gateways a caller reaches the endpoints of its own zone only: it must see
        // the new ones of its zone (sidecar i runs in zone i % zones).
        let zone_count = zones.len();
        let added_in = |zone: usize| (n..total).filter(|i| i % zone_count == zone).count();
        let want: std::collections::HashMap<usize, usize> =
            callers.iter().map(|&c| (c, t.svc0.get(&c).copied().unwrap_or(0) + added_in(c % zone_count))).collect();
        let start = Instant::now();
        for i in n..total {
            let (zone, token) = (zones[i % zones.len()].clone(), tokens[0].clone());
            tokio::spawn(sidecar(i, 0, zone, token, shape, seen_tx.clone()));
        }
        let done = |t: &Tally| callers.iter().all(|c| t.svc0.get(c).is_some_and(|&e| e >= want[c]));
        while !done(&t) && start.elapsed() < deadline {
            match tokio::time::timeout(deadline.saturating_sub(start.elapsed()), seen.recv()).await {
                Ok(Some(event)) => t.handle(event, None),
                Ok(None) | Err(_) => break,
            }
        }
        let short = callers.iter().map(|c| want[c].saturating_sub(t.svc0.get(c).copied().unwrap_or(0))).max().unwrap_or(0);
        println!(
            "FIGURE endpoint-scale added={} callers={} seconds={:.2} {}",
            args.scale_endpoints,
            callers.len(),
            start.elapsed().as_secs_f64(),
            if done(&t) {
                "every caller has them".to_string()
            } else {
                format!("incomplete: the slowest caller lacks {short} of its zone's new endpoints")
            }
        );
    }
    drop(seen_tx);
    drop(children);
    cp.stop().await;
    Ok(())
}
