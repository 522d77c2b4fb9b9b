//! The sidecar pair's cost: 1 KiB HTTP/1.1 responses from nginx at a constant 1,000 requests
//! per second (keep-alive), through a client sidecar and a server sidecar with mTLS between
//! them, against the direct connection and against a pair of nginx reverse proxies with mTLS
//! between them (the usual L7 proxy baseline), all measured in the same run. Prints added
//! latency (p50, p99), CPU per 1,000 rps and memory of each proxy, and saturation throughput,
//! as figures and as ratios to the baselines, then memory with 1,000 open client connections,
//! and judges the targets (ratios to the nginx pair measured in the same run).
//!
//! `--contention` runs everything beside a busy process on one core (production nodes are
//! busy); `--cores N` also measures saturation with each sidecar on 1, 2, 4 ... N data-path
//! threads (`strait-dp run --concurrency`), for machines with more cores than CI's two.
//!
//! `cargo build --profile dist --bins && target/dist/sidecar`
//! (needs nginx; the sidecars are the `strait-dp` next to this binary, built the same way).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use strait_bench::control::Error;
use strait_bench::load::closed_loop;
use strait_bench::procstat::children;
use strait_bench::rig::{
    file_server, free_port, median, nginx, round_ratios, start_sidecar, wait_http, wait_ready, LoadArgs, Measured, Plan, Proxy,
    SidecarSpec, Target,
};
use strait_bench::{ms, percentile};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Seconds of each saturation run (0: skip).
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
    /// Runs beside a busy process pinned to one core, started by the benchmark.
    #[arg(long)]
    contention: bool,
    /// Also measures saturation with sidecars of 1, 2, 4 ... this many data-path threads
    /// (`--concurrency`); 1 skips it. The load generator gets as many threads.
    #[arg(long, default_value_t = 1)]
    cores: u16,
    /// Client connections held open for the memory figure (0: skip).
    #[arg(long, default_value_t = 1000)]
    open_connections: usize,
}

const PATH: &str = "/1k.bin";

/// A ratio as printed: `n/a` where there is none (the baseline added nothing).
fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}x")
    } else {
        "n/a".to_string()
    }
}

/// A direct path's p99 more than this many times its p50 (in its median round) is the host's
/// noise: on a quiet host it is 2-2.5x here.
const NOISY_SPREAD: f64 = 5.0;

fn main() -> Result<(), Error> {
    // Started by itself as one of the relay pair's relays.
    if let Some((listen, target)) = strait_bench::relay::from_args() {
        return Ok(strait_bench::relay::serve(listen, target)?);
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(Args::parse()))
}

async fn run(args: Args) -> Result<(), Error> {
    strait_bench::load::post_bodies(args.load.request_body);
    let (dp, cp, work, mut children_to_kill) = strait_bench::rig::start().await?;
    if args.contention {
        // A shell spinning on core 0: what a busy neighbour takes from the proxies.
        let busy = strait_bench::cleanup::spawn(Command::new("taskset").args(["-c", "0", "sh", "-c", "while :; do :; done"]))
            .map_err(|e| format!("--contention: starting a busy process with taskset (util-linux): {e}"))?;
        children_to_kill.0.push(busy);
        eprintln!("contention: a busy process on core 0");
    }

    // The application: nginx serving a 1 KiB file.
    let (app, app_port) = file_server(&work, PATH)?;
    children_to_kill.0.push(app);
    let app_addr: SocketAddr = format!("127.0.0.1:{app_port}").parse()?;
    wait_http("nginx serving the file", app_addr, PATH).await?;

    // The Strait pair: web's sidecar (client side) and backend's sidecar (server side).
    let (backend_in, web_in, web_out) = (free_port()?, free_port()?, free_port()?);
    // Each process goes to `children_to_kill` as it starts: one held elsewhere would outlive a
    // failure before it got there.
    let (mut strait_pids, mut admins) = (Vec::new(), Vec::new());
    for spec in [
        SidecarSpec { name: "backend-1", service: "backend", inbound: backend_in, app: app_port, tags: "", outbound: None },
        SidecarSpec { name: "web-1", service: "web", inbound: web_in, app: free_port()?, tags: "", outbound: Some((web_out, "backend")) },
    ] {
        let (child, admin) = start_sidecar(&dp, &cp, &work, &spec, args.load.sidecar_concurrency).await?;
        strait_pids.push(child.id());
        admins.push(admin);
        children_to_kill.0.push(child);
    }
    for admin in &admins {
        wait_ready(&cp.http, admin).await?;
    }
    let strait_addr: SocketAddr = format!("127.0.0.1:{web_out}").parse()?;
    wait_http("the strait sidecar pair", strait_addr, PATH).await?;

    // The nginx pair: proxy A (client side) to proxy B (server side) over mTLS.
    let tls = certificates(&work)?;
    let (b_port, a_port) = (free_port()?, free_port()?);
    let proxy_b = nginx(
        &work,
        "proxy-b",
        &format!(
            "upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{b_port} ssl; ssl_protocols TLSv1.3; ssl_certificate {0}/b.pem; ssl_certificate_key {0}/b.key;\n\
               ssl_client_certificate {0}/ca.pem; ssl_verify_client on;\n\
               location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            tls.display()
        ),
    )?;
    let b_master = proxy_b.id();
    children_to_kill.0.push(proxy_b);
    let proxy_a = nginx(
        &work,
        "proxy-a",
        &format!(
            "upstream b {{ server 127.0.0.1:{b_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{a_port};\n\
               location / {{ proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                 proxy_ssl_certificate {0}/a.pem; proxy_ssl_certificate_key {0}/a.key; proxy_ssl_trusted_certificate {0}/ca.pem;\n\
                 proxy_ssl_verify on; proxy_ssl_name b.local; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; }} }}",
            tls.display()
        ),
    )?;
    let a_master = proxy_a.id();
    children_to_kill.0.push(proxy_a);
    let nginx_addr: SocketAddr = format!("127.0.0.1:{a_port}").parse()?;
    if let Err(e) = wait_http("the nginx pair", nginx_addr, PATH).await {
        for name in ["proxy-a", "proxy-b"] {
            let log = std::fs::read_to_string(work.join(name).join("logs/error.log")).unwrap_or_default();
            eprintln!("{name} error.log:\n{log}");
        }
        return Err(e);
    }
    // The floor: two relays that copy bytes and nothing else, as the pairs are chained.
    let (relay_a, relay_b) = (free_port()?, free_port()?);
    let mut relay_pids = Vec::new();
    for (listen, target) in [(relay_b, app_port), (relay_a, relay_b)] {
        let mut relay = Command::new(std::env::current_exe()?);
        relay.args([strait_bench::relay::ARG, &format!("127.0.0.1:{listen}"), &format!("127.0.0.1:{target}")]);
        let child = strait_bench::cleanup::spawn(&mut relay)?;
        relay_pids.push(child.id());
        children_to_kill.0.push(child);
    }
    let relay_addr: SocketAddr = format!("127.0.0.1:{relay_a}").parse()?;
    wait_http("the relay pair", relay_addr, PATH).await?;
    let nginx_pids = |master: u32| {
        let mut p = vec![master];
        p.extend(children(master));
        p
    };
    let targets = [
        Target { name: "direct", addr: app_addr, proxies: vec![] },
        Target {
            name: "strait sidecar pair",
            addr: strait_addr,
            proxies: vec![
                Proxy { name: "client sidecar", pids: vec![strait_pids[1]] },
                Proxy { name: "server sidecar", pids: vec![strait_pids[0]] },
            ],
        },
        Target {
            name: "nginx pair (mTLS)",
            addr: nginx_addr,
            proxies: vec![Proxy { name: "nginx A", pids: nginx_pids(a_master) }, Proxy { name: "nginx B", pids: nginx_pids(b_master) }],
        },
        Target {
            name: "relay pair (floor)",
            addr: relay_addr,
            proxies: vec![Proxy { name: "relay A", pids: vec![relay_pids[1]] }, Proxy { name: "relay B", pids: vec![relay_pids[0]] }],
        },
    ];

    // Warm up every path (pools, TLS sessions), then take idle memory.
    let plan = args.load.plan(PATH, false);
    plan.warm_up(&targets).await?;
    let idle: Vec<Vec<u64>> = targets.iter().map(|t| t.proxies.iter().map(Proxy::rss).collect()).collect();
    let mut results = plan.measure(&targets).await?;

    let mut saturation = Vec::new();
    if args.saturation_seconds > 0 {
        for t in &targets {
            let o = closed_loop(t.addr, PATH, Duration::from_secs(args.saturation_seconds), 32).await?;
            saturation.push(o.throughput());
        }
    }
    let held =
        if args.open_connections > 0 { open_connections(&targets, args.open_connections, &cp.http, &admins).await? } else { Vec::new() };
    report(&plan, &targets, &mut results, &idle, &saturation, &held, args.open_connections);
    if args.cores > 1 && args.saturation_seconds > 0 {
        scaling(&dp, &cp, &work, app_port, &args, saturation.first().copied().unwrap_or(0.0)).await?;
    }
    drop(children_to_kill);
    cp.stop().await;
    Ok(())
}

/// The proxies' memory with `n` client connections open on each path: each connection sends
/// one request (all at once) and stays open. For the strait pair, once each sidecar has given
/// back what the burst freed (its `strait_dp_memory_trims_total` grew; at most 20 s), with the
/// figure from before it printed; nginx's at once.
async fn open_connections(targets: &[Target], n: usize, http: &reqwest::Client, admins: &[String]) -> Result<Vec<Vec<u64>>, Error> {
    let mut held = Vec::new();
    // The two proxy pairs (the relay floor holds a thread per connection and direction).
    for (i, t) in targets.iter().enumerate().take(3).filter(|(_, t)| !t.proxies.is_empty()) {
        let strait = i == 1;
        let connections = strait_bench::load::hold_open(t.addr, PATH, n).await?;
        // Read after the burst: a trim at the quiet end of the runs before it must not count.
        let trims_before = if strait { trims(http, admins).await } else { Vec::new() };
        if connections.answered < n {
            eprintln!("{}: {} of {n} held connections were answered", t.name, connections.answered);
        }
        let at_once: Vec<u64> = t.proxies.iter().map(Proxy::rss).collect();
        if strait {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while trims(http, admins).await.iter().zip(&trims_before).any(|(now, before)| now <= before) {
                if std::time::Instant::now() > deadline {
                    eprintln!("the sidecars gave no memory back within 20 s of the burst");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            println!("\nRSS of the strait pair with {n} client connections open, right after their requests: {}", mb_list(&at_once));
            held.push(t.proxies.iter().map(Proxy::rss).collect());
        } else {
            held.push(at_once);
        }
        drop(connections);
    }
    Ok(held)
}

/// Each sidecar's `strait_dp_memory_trims_total` (0 if unreadable).
async fn trims(http: &reqwest::Client, admins: &[String]) -> Vec<f64> {
    let mut counts = Vec::new();
    for admin in admins {
        let text = match http.get(format!("http://{admin}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let count =
            text.lines().find_map(|l| l.strip_prefix("strait_dp_memory_trims_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
        counts.push(count);
    }
    counts
}

/// Saturation through a fresh sidecar pair with 1, 2, 4 ... `args.cores` data-path threads each,
/// from a load generator with as many threads.
async fn scaling(
    dp: &Path,
    cp: &strait_bench::control::ControlPlane,
    work: &Path,
    app_port: u16,
    args: &Args,
    direct: f64,
) -> Result<(), Error> {
    println!("\nsaturation by data-path threads per sidecar ({} connections per thread, closed loop)", 32);
    println!("{:>8} {:>12} {:>12}", "threads", "rps", "of direct");
    let mut threads = 1u16;
    while threads <= args.cores {
        let (backend_in, web_out) = (free_port()?, free_port()?);
        let backend = format!("backend-c{threads}");
        let web = format!("web-c{threads}");
        let mut pair = strait_bench::rig::Children::default();
        for spec in [
            SidecarSpec { name: &backend, service: "backend", inbound: backend_in, app: app_port, tags: "", outbound: None },
            SidecarSpec {
                name: &web,
                service: "web",
                inbound: free_port()?,
                app: free_port()?,
                tags: "",
                outbound: Some((web_out, "backend")),
            },
        ] {
            let (child, admin) = start_sidecar(dp, cp, work, &spec, threads).await?;
            pair.0.push(child);
            wait_ready(&cp.http, &admin).await?;
        }
        let addr: SocketAddr = format!("127.0.0.1:{web_out}").parse()?;
        wait_http("the sidecar pair", addr, PATH).await?;
        let (seconds, connections) = (args.saturation_seconds, 32 * usize::from(threads));
        let rps = tokio::task::spawn_blocking(move || -> std::io::Result<f64> {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(threads)).enable_all().build()?;
            Ok(runtime.block_on(closed_loop(addr, PATH, Duration::from_secs(seconds), connections))?.throughput())
        })
        .await??;
        println!("{threads:>8} {rps:>12.0} {:>12.2}", rps / direct.max(1e-9));
        drop(pair);
        threads *= 2;
    }
    Ok(())
}

fn report(
    plan: &Plan,
    targets: &[Target],
    results: &mut [Measured],
    idle: &[Vec<u64>],
    saturation: &[f64],
    held: &[Vec<u64>],
    open: usize,
) {
    println!(
        "\nsidecar pair vs direct vs nginx pair: {} rps constant rate, 1 KiB HTTP/1.1 keep-alive ({} connections), {} rounds x {} s per path",
        plan.rate, plan.connections, plan.rounds, plan.seconds
    );
    println!("{:<22} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}", "path", "p50", "p99", "p99.9", "added p50", "added p99", "errors");
    let mut direct = (Duration::ZERO, Duration::ZERO);
    let mut added = Vec::new();
    for (t, m) in targets.iter().zip(results.iter_mut()) {
        let lat = &mut m.outcome.latencies;
        let (p50, p99, p999) = (percentile(lat, 50.0), percentile(lat, 99.0), percentile(lat, 99.9));
        if t.proxies.is_empty() {
            direct = (p50, p99);
        }
        let (a50, a99) = (p50.saturating_sub(direct.0), p99.saturating_sub(direct.1));
        added.push((a50, a99));
        println!("{:<22} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}", t.name, ms(p50), ms(p99), ms(p999), ms(a50), ms(a99), m.outcome.errors);
    }
    let (strait, nginx) = (added[1], added[2]);
    let over = |a: Duration, b: Duration| times(if b.is_zero() { f64::NAN } else { a.as_secs_f64() / b.as_secs_f64() });
    println!("added latency, strait / nginx pair, all samples together: p50 {}, p99 {}", over(strait.0, nginx.0), over(strait.1, nginx.1));
    // The paths are measured one after the other: a spell of the machine's noise falls on one
    // path's round alone, and a few such rounds decide the pooled p99. The targets take each
    // path's median round instead (as the policies benchmark does).
    let by_round = round_ratios(&results[0].rounds, &results[2].rounds, &results[1].rounds);
    println!(
        "added latency, strait / nginx pair, each path's median round: p50 {}, p99 {}",
        times(by_round.median.0),
        times(by_round.median.1)
    );
    // The floor: what two relays that only copy bytes add, against the nginx pair.
    let floor = (results.len() > 3).then(|| round_ratios(&results[0].rounds, &results[2].rounds, &results[3].rounds).median);
    if let Some(f) = floor {
        println!(
            "added latency, relay floor / nginx pair, each path's median round: p50 {}, p99 {}; CPU {} (no proxy pair adds less on this path)",
            times(f.0),
            times(f.1),
            times(f.2)
        );
    }
    println!("\n{:<22} {:<16} {:>18} {:>12} {:>14}", "path", "proxy", "vCPU per 1000 rps", "RSS idle", "RSS peak load");
    let per_krps = |cpu: f64| plan.per_krps(cpu);
    for ((t, m), idle) in targets.iter().zip(results.iter()).zip(idle) {
        for (i, p) in t.proxies.iter().enumerate() {
            println!(
                "{:<22} {:<16} {:>18.3} {:>9.1} MB {:>11.1} MB",
                t.name,
                p.name,
                per_krps(m.cpu[i]),
                idle[i] as f64 / 1e6,
                m.peak_rss[i] as f64 / 1e6
            );
        }
    }
    if saturation.len() >= 3 {
        if let Some(relays) = saturation.get(3) {
            println!("\nsaturation through the relay floor: {relays:.0} rps ({:.2} of direct)", relays / saturation[0]);
        }
        println!(
            "\nsaturation (32 connections, closed loop): direct {:.0} rps; strait pair {:.0} rps ({:.2} of direct); nginx pair {:.0} rps ({:.2} of direct)",
            saturation[0],
            saturation[1],
            saturation[1] / saturation[0],
            saturation[2],
            saturation[2] / saturation[0]
        );
    }
    if held.len() == 2 {
        println!("\nRSS with {open} client connections open: strait {}; nginx {}", mb_list(&held[0]), mb_list(&held[1]));
    }
    // The targets: ratios to the nginx pair of this run, and memory.
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    println!("\ntargets for the strait pair (against the nginx mTLS pair of this run):");
    let (p50, p99) = (by_round.median.0, by_round.median.1);
    println!("  added latency p50 <= 0.8x nginx (each path's median round): {} ({})", times(p50), verdict(p50 <= 0.8));
    // When the direct path's own typical round has a p99 far above its p50, the host's spells
    // set every path's p99, and their ratio says nothing about the proxies.
    let direct_round = |f: fn(&strait_bench::rig::Round) -> f64| median(&mut results[0].rounds.iter().map(f).collect::<Vec<_>>());
    let spread = ratio(direct_round(|r| r.p99.as_secs_f64()), direct_round(|r| r.p50.as_secs_f64()));
    let p99_verdict = if p99.is_nan() {
        "not judged: the nginx pair added nothing at p99 in its median round".to_string()
    } else if p99 < 0.0 {
        "not judged: the direct path's median round has a higher p99 than the strait pair's, the host's noise".to_string()
    } else if spread > NOISY_SPREAD {
        format!("not judged: the direct path's median round has a p99 {spread:.1}x its p50, the host's noise")
    } else {
        verdict(p99 <= 0.8).to_string()
    };
    println!("  added latency p99 <= 0.8x nginx (each path's median round): {} ({p99_verdict})", times(p99));
    let (strait_cpu, nginx_cpu) = (per_krps(results[1].cpu.iter().sum()), per_krps(results[2].cpu.iter().sum()));
    let cpu = ratio(strait_cpu, nginx_cpu);
    println!("  CPU per 1000 rps <= 0.8x nginx: {cpu:.2}x ({strait_cpu:.3} vs {nginx_cpu:.3} vCPU for the pair) ({})", verdict(cpu <= 0.8));
    if let Some(f) = floor {
        println!(
            "  (the relay floor, two relays that only copy bytes: p50 {}, p99 {}, CPU {} nginx's)",
            times(f.0),
            times(f.1),
            times(f.2)
        );
    }
    if saturation.len() >= 3 {
        let (share, nginx_share) = (ratio(saturation[1], saturation[0]), ratio(saturation[2], saturation[0]));
        let ok = share >= 0.5 && share >= 1.15 * nginx_share;
        println!(
            "  saturation >= 0.50 of direct and >= 1.15x nginx's share: {share:.2} of direct, {:.2}x nginx's ({})",
            ratio(share, nginx_share),
            verdict(ok)
        );
    }
    let (rss_idle, rss_load) = (idle[1].iter().copied().max().unwrap_or(0), results[1].peak_rss.iter().copied().max().unwrap_or(0));
    println!("  RSS idle <= 10 MB per sidecar: {:.1} MB ({})", mb(rss_idle), verdict(rss_idle <= 10_000_000));
    println!("  RSS under {} rps <= 16 MB: {:.1} MB ({})", plan.rate, mb(rss_load), verdict(rss_load <= 16_000_000));
    if let Some(rss) = held.first().and_then(|h| h.iter().copied().max()).filter(|_| open >= 1000) {
        println!("  RSS with {open} client connections <= 40 MB: {:.1} MB ({})", mb(rss), verdict(rss <= 40_000_000));
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn mb_list(rss: &[u64]) -> String {
    rss.iter().map(|b| format!("{:.1} MB", mb(*b))).collect::<Vec<_>>().join(" / ")
}

/// A CA, a server certificate for `b.local` and a client certificate, in `<work>/tls`.
fn certificates(work: &Path) -> Result<PathBuf, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
    // Distinct subjects: a leaf named like its issuer would look self-signed to OpenSSL.
    let named = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let dir = work.join("tls");
    std::fs::create_dir_all(&dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = named("strait bench CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (name, san) in [("a", "a.local"), ("b", "b.local")] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![san.to_string()])?;
        params.distinguished_name = named(san);
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(dir)
}
