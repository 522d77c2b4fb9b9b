//! The cost of a realistic policy set in the sidecar pair: a MeshHTTPRoute of 50 rules (49
//! matching a header and a path prefix, the last splitting 90/10 between two versions),
//! MeshRetry, MeshTimeout and MeshCircuitBreaker with outlier detection, against the bare pair
//! (no policy but the permission) and the direct connection, measured in the same run at a
//! constant rate of 1 KiB HTTP/1.1 responses from nginx. The requests match no header rule,
//! so each goes through all 49 before the split: the worst case of the route table. Prints
//! added latency (p50, p99) and CPU per 1,000 rps of each pair, and the policy pair's ratios
//! to the bare pair (target: at most 1.10).
//!
//! With `--set observability`, the policy pair gets instead what operators turn on to see
//! their traffic: MeshAccessLog on both sides (a JSON line per request to a file), MeshTrace
//! at 1% sampling exported over OTLP to a collector in this process, and the metrics every
//! sidecar keeps. Its pair has then one server sidecar, as the bare pair has, so that only
//! the observability's cost differs. `--set access-logs` and `--set tracing` measure each
//! half alone.
//!
//! `cargo build --profile dist --bins && target/dist/policies [--set observability]`
//! (needs nginx; the sidecars are the `strait-dp` next to this binary, built the same way).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_bench::control::Error;
use strait_bench::rig::{file_server, free_port, round_ratios, start_sidecar, wait_http, wait_ready, LoadArgs, Proxy, SidecarSpec, Target};
use strait_bench::{ms, percentile};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Rules of the route table (the last one is the 90/10 split).
    #[arg(long, default_value_t = 50)]
    routes: usize,
    /// Which set the policy pair gets: `routes` (routes and resilience), `observability`
    /// (access logs, tracing at 1%), or one half of it, `access-logs` or `tracing`, to see
    /// which costs what; `none` leaves both pairs bare, to see what the benchmark itself
    /// tells apart between two pairs alike.
    #[arg(long, default_value = "routes", value_parser = ["routes", "observability", "access-logs", "tracing", "none"])]
    set: String,
    /// Load the three paths one after the other in each round, rather than all at once: each
    /// path then has the machine to itself, but the spells of a shared machine fall on one
    /// path and not the others, and the two pairs' difference drowns in them.
    #[arg(long)]
    one_at_a_time: bool,
}

/// Access logs on both sides, to `log`, and tracing at 1% to the OTLP collector at `collector`.
fn observability_set(log: &std::path::Path, collector: SocketAddr) -> Vec<(String, Value)> {
    let json = json!({"json": [{"key": "start", "value": "%START_TIME%"}, {"key": "method", "value": "%METHOD%"}, {"key": "path", "value": "%PATH%"},
        {"key": "status", "value": "%RESPONSE_CODE%"}, {"key": "from", "value": "%SOURCE_SERVICE%"}, {"key": "to", "value": "%DESTINATION_SERVICE%"},
        {"key": "duration", "value": "%DURATION%"}, {"key": "sent", "value": "%BYTES_SENT%"}, {"key": "trace", "value": "%TRACE_ID%"}]});
    let backends = json!([{"file": {"path": log.to_string_lossy(), "format": json}}]);
    vec![
        (
            "meshaccesslogs/out".into(),
            json!({"type": "MeshAccessLog", "name": "out", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "web-pol"},
                "to": [{"targetRef": {"kind": "MeshService", "name": "backend-pol"}, "default": {"backends": backends.clone()}}]}}),
        ),
        (
            "meshaccesslogs/in".into(),
            json!({"type": "MeshAccessLog", "name": "in", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "backend-pol"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"backends": backends}}]}}),
        ),
        (
            "meshtraces/tracing".into(),
            json!({"type": "MeshTrace", "name": "tracing", "mesh": "default", "spec": {"targetRef": {"kind": "MeshSubset", "tags": {"strait.io/service": "web-pol"}},
                "default": {"backends": [{"openTelemetry": {"endpoint": collector.to_string()}}], "sampling": {"overall": 1}}}}),
        ),
        (
            "meshtraces/tracing-server".into(),
            json!({"type": "MeshTrace", "name": "tracing-server", "mesh": "default", "spec": {"targetRef": {"kind": "MeshService", "name": "backend-pol"},
                "default": {"backends": [{"openTelemetry": {"endpoint": collector.to_string()}}], "sampling": {"overall": 1}}}}),
        ),
    ]
}

/// An OTLP/gRPC collector that counts the spans it receives.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request.into_inner().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Starts the collector on a thread of its own: on the load generator's thread, decoding each
/// export would delay the responses it is timing, and only the traced pair's.
async fn start_collector() -> Result<(SocketAddr, Collector), Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let collector = Collector::default();
    let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(collector.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("otlp-collector".into()).spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
    })?;
    Ok((addr, collector))
}

const PATH: &str = "/1k.bin";

/// The mesh's default resilience policies, removed so that the bare pair is bare.
const DEFAULTS: [&str; 3] =
    ["meshtimeouts/mesh-timeout-all-default", "meshretries/mesh-retry-all-default", "meshcircuitbreakers/mesh-circuit-breaker-all-default"];

/// The policies of the policy pair: every one targets its client sidecar (`web-pol`) only.
fn policy_set(routes: usize) -> Vec<(String, Value)> {
    let top = json!({"kind": "MeshService", "name": "web-pol"});
    let to = |default: Value| json!([{"targetRef": {"kind": "MeshService", "name": "backend-pol"}, "default": default}]);
    let version = |v: &str, weight: u32| json!({"kind": "MeshService", "name": "backend-pol", "tags": {"version": v}, "weight": weight});
    let mut rules: Vec<Value> = (0..routes.saturating_sub(1))
        .map(|i| {
            json!({
                "matches": [{"path": {"type": "PathPrefix", "value": format!("/tenant-{i}")},
                             "headers": [{"type": "Exact", "name": "x-tenant", "value": format!("tenant-{i}")}]}],
                "default": {
                    "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-tenant-route", "value": format!("r{i}")}]}}],
                    "backendRefs": [version("v2", 1)],
                },
            })
        })
        .collect();
    rules.push(json!({"default": {"backendRefs": [version("v1", 90), version("v2", 10)]}}));
    let mut policies = vec![(
        "meshhttproutes/routes".to_string(),
        json!({"type": "MeshHTTPRoute", "name": "routes", "mesh": "default", "spec": {"targetRef": top,
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend-pol"}, "rules": rules}]}}),
    )];
    for (path, kind, default) in [
        (
            "meshretries/retry",
            "MeshRetry",
            json!({"tcp": {"maxConnectAttempt": 3}, "http": {"numRetries": 2, "perTryTimeout": "2s", "retryOn": ["5xx", "GatewayError", "Reset", "ConnectFailure"], "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"}}}),
        ),
        ("meshtimeouts/timeout", "MeshTimeout", json!({"connectionTimeout": "2s", "idleTimeout": "1h", "http": {"requestTimeout": "5s"}})),
        (
            "meshcircuitbreakers/breaker",
            "MeshCircuitBreaker",
            json!({"connectionLimits": {"maxRequests": 1024, "maxRetries": 3}, "outlierDetection": {"baseEjectionTime": "30s", "maxEjectionPercent": 50,
                "detectors": {"totalFailures": {"consecutive": 5}, "gatewayFailures": {"consecutive": 5}, "localOriginFailures": {"consecutive": 5}}}}),
        ),
    ] {
        let name = path.split('/').nth(1).unwrap_or_default();
        policies.push((
            path.to_string(),
            json!({"type": kind, "name": name, "mesh": "default", "spec": {"targetRef": top, "to": to(default)}}),
        ));
    }
    policies
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    strait_bench::load::post_bodies(args.load.request_body);
    let (dp, cp, work, mut children) = strait_bench::rig::start().await?;
    for path in DEFAULTS {
        cp.delete(&format!("/meshes/default/{path}")).await?;
    }

    let (app, app_port) = file_server(&work, PATH)?;
    children.0.push(app);
    let app_addr: SocketAddr = format!("127.0.0.1:{app_port}").parse()?;
    wait_http("nginx serving the file", app_addr, PATH).await?;

    let observability = args.set != "routes";
    let (bare_out, pol_out) = (free_port()?, free_port()?);
    let mut specs = vec![
        SidecarSpec { name: "backend-bare-1", service: "backend-bare", inbound: free_port()?, app: app_port, tags: "", outbound: None },
        SidecarSpec {
            name: "web-bare-1",
            service: "web-bare",
            inbound: free_port()?,
            app: free_port()?,
            tags: "",
            outbound: Some((bare_out, "backend-bare")),
        },
        SidecarSpec {
            name: "backend-pol-v1",
            service: "backend-pol",
            inbound: free_port()?,
            app: app_port,
            tags: "version: v1",
            outbound: None,
        },
        SidecarSpec {
            name: "backend-pol-v2",
            service: "backend-pol",
            inbound: free_port()?,
            app: app_port,
            tags: "version: v2",
            outbound: None,
        },
        SidecarSpec {
            name: "web-pol-1",
            service: "web-pol",
            inbound: free_port()?,
            app: free_port()?,
            tags: "",
            outbound: Some((pol_out, "backend-pol")),
        },
    ];
    // The observability set measures its own cost only: the same topology as the bare pair,
    // one server sidecar (the routes set needs v2 for its split).
    if observability {
        specs.retain(|s| s.name != "backend-pol-v2");
    }
    let mut pids = Vec::new();
    let mut admins = Vec::new();
    for spec in &specs {
        let (child, admin) = start_sidecar(&dp, &cp, &work, spec, args.load.sidecar_concurrency).await?;
        pids.push(child.id());
        children.0.push(child);
        admins.push(admin);
    }
    for admin in &admins {
        wait_ready(&cp.http, admin).await?;
    }
    // Where the sidecar named `name` is in `pids` and `admins`.
    let at = |name: &str| specs.iter().position(|s| s.name == name).expect("a sidecar of the rig");
    let (collector_addr, collector) = start_collector().await?;
    let log = work.join("access.log");
    let policies: Vec<(String, Value)> = match args.set.as_str() {
        "routes" => policy_set(args.routes),
        "access-logs" => observability_set(&log, collector_addr).into_iter().filter(|(p, _)| p.starts_with("meshaccesslogs/")).collect(),
        "tracing" => observability_set(&log, collector_addr).into_iter().filter(|(p, _)| p.starts_with("meshtraces/")).collect(),
        "none" => Vec::new(),
        _ => observability_set(&log, collector_addr),
    };
    for (path, body) in &policies {
        cp.put(&format!("/meshes/default/{path}"), body).await?;
    }
    // Applied once web-pol's configuration holds the last header rule and every policy type.
    let last = format!("tenant-{}", args.routes.saturating_sub(2));
    let expected: Vec<&str> = match args.set.as_str() {
        "routes" => vec!["MeshRetry", "MeshTimeout", "MeshCircuitBreaker", last.as_str()],
        "access-logs" => vec!["MeshAccessLog"],
        "tracing" => vec!["MeshTrace"],
        "none" => Vec::new(),
        _ => vec!["MeshAccessLog", "MeshTrace"],
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = cp.http.get(format!("http://{}/config_dump", admins[at("web-pol-1")])).send().await?.text().await?;
        let server = cp.http.get(format!("http://{}/config_dump", admins[at("backend-pol-v1")])).send().await?.text().await?;
        if expected.iter().all(|n| dump.contains(n)) && (!observability || expected.iter().all(|n| server.contains(n))) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the policies did not reach web-pol's sidecar within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (bare_addr, pol_addr): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{bare_out}").parse()?, format!("127.0.0.1:{pol_out}").parse()?);
    wait_http("the bare pair", bare_addr, PATH).await?;
    wait_http("the policy pair", pol_addr, PATH).await?;

    let targets = [
        Target { name: "direct", addr: app_addr, proxies: vec![] },
        Target {
            name: "bare pair",
            addr: bare_addr,
            proxies: vec![
                Proxy { name: "client sidecar", pids: vec![pids[at("web-bare-1")]] },
                Proxy { name: "server sidecar", pids: vec![pids[at("backend-bare-1")]] },
            ],
        },
        Target {
            name: "policy pair",
            addr: pol_addr,
            proxies: vec![
                Proxy { name: "client sidecar", pids: vec![pids[at("web-pol-1")]] },
                Proxy {
                    name: "server sidecars",
                    pids: specs.iter().zip(&pids).filter(|(s, _)| s.service == "backend-pol").map(|(_, p)| *p).collect(),
                },
            ],
        },
    ];
    let plan = args.load.plan(PATH, !args.one_at_a_time);
    plan.warm_up(&targets).await?;
    let mut results = plan.measure(&targets).await?;

    let what = match args.set.as_str() {
        "routes" => format!("{} routes, retries, timeouts, outlier detection and a 90/10 split", args.routes),
        "access-logs" => "access logs on both sides".to_string(),
        "tracing" => "tracing at 1%".to_string(),
        "none" => "no policy either".to_string(),
        _ => "access logs on both sides and tracing at 1%".to_string(),
    };
    println!(
        "\nsidecar pair with {what} vs the bare pair: {} rps, 1 KiB HTTP/1.1 keep-alive ({} connections), {} rounds x {} s per path, {}",
        plan.rate,
        plan.connections,
        plan.rounds,
        plan.seconds,
        if plan.together { "the three paths loaded at once" } else { "one path at a time" }
    );
    if observability {
        let lines = std::fs::read_to_string(&log).map(|t| t.lines().count()).unwrap_or(0);
        let spans = collector.0.load(std::sync::atomic::Ordering::Relaxed);
        println!("access log lines written: {lines}; spans received by the collector: {spans}");
    }
    println!(
        "{:<14} {:>9} {:>9} {:>11} {:>11} {:>7} {:>16} {:>16}",
        "path", "p50", "p99", "added p50", "added p99", "errors", "client vCPU/krps", "server vCPU/krps"
    );
    let mut direct = (Duration::ZERO, Duration::ZERO);
    let mut figures = Vec::new();
    for (t, m) in targets.iter().zip(results.iter_mut()) {
        let lat = &mut m.outcome.latencies;
        let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
        if t.proxies.is_empty() {
            direct = (p50, p99);
        }
        let (a50, a99) = (p50.saturating_sub(direct.0), p99.saturating_sub(direct.1));
        let cpu: Vec<f64> = m.cpu.iter().map(|c| plan.per_krps(*c)).collect();
        let (client, server) = (cpu.first().copied().unwrap_or(0.0), cpu.get(1).copied().unwrap_or(0.0));
        println!(
            "{:<14} {:>9} {:>9} {:>11} {:>11} {:>7} {:>16.3} {:>16.3}",
            t.name,
            ms(p50),
            ms(p99),
            ms(a50),
            ms(a99),
            m.outcome.errors,
            client,
            server
        );
        figures.push((a50, a99, client + server));
    }
    let (bare, pol) = (figures[1], figures[2]);
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    let pooled = (ratio(pol.0.as_secs_f64(), bare.0.as_secs_f64()), ratio(pol.1.as_secs_f64(), bare.1.as_secs_f64()), ratio(pol.2, bare.2));
    // Each round measures the three paths at once (or back to back), so drift over the run
    // hits them alike; the verdict takes each path's median round, so one stalled round (a
    // tail of milliseconds on one path) does not decide it.
    let by_round = round_ratios(&results[0].rounds, &results[1].rounds, &results[2].rounds);
    let verdict = |r: f64| if r <= 1.10 { "met" } else { "NOT met" };
    let pair = match args.set.as_str() {
        "none" => "second bare pair",
        "routes" => "policy pair",
        _ => "observability pair",
    };
    println!(
        "\n{pair} / bare pair, all samples together: added p50 {:.2}x, added p99 {:.2}x, CPU of both sides {:.2}x",
        pooled.0, pooled.1, pooled.2
    );
    for (n, r) in by_round.per_round.iter().enumerate() {
        println!("  round {}: added p50 {:.2}x, added p99 {:.2}x, CPU {:.2}x", n + 1, r.0, r.1, r.2);
    }
    // Loaded at once, the pairs of one round met the same spells: the verdict takes the
    // median of the rounds' own ratios. One after the other, each path's median round.
    let (how, other, (r50, r99, rcpu), (o50, o99, ocpu)) = if plan.together {
        ("median of the rounds' ratios", "each path's median round", by_round.paired, by_round.median)
    } else {
        ("each path's median round", "median of the rounds' ratios", by_round.median, by_round.paired)
    };
    println!("{pair} / bare pair, {other}: added p50 {o50:.2}x, added p99 {o99:.2}x, CPU of both sides {ocpu:.2}x");
    println!(
        "{pair} / bare pair, {how}: added p50 {r50:.2}x ({}), added p99 {r99:.2}x ({}), CPU of both sides {rcpu:.2}x ({}); target <= 1.10x each",
        verdict(r50),
        verdict(r99),
        verdict(rcpu)
    );
    drop(children);
    cp.stop().await;
    Ok(())
}
