//! The sidecar pair's cost: 1 KiB HTTP/1.1 responses from nginx at a constant 1,000 requests
//! per second (keep-alive), through a client sidecar and a server sidecar with mTLS between
//! them, against the direct connection and against a pair of nginx reverse proxies with mTLS
//! between them (the usual L7 proxy baseline), all measured in the same run. Prints added
//! latency (p50, p99), CPU per 1,000 rps and memory of each proxy, and saturation throughput,
//! as figures and as ratios to the baselines.
//!
//! `cargo build --profile dist --bins && target/dist/sidecar`
//! (needs nginx; the sidecars are the `strait-dp` next to this binary, built the same way).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use clap::Parser;
use strait_bench::control::Error;
use strait_bench::load::closed_loop;
use strait_bench::procstat::children;
use strait_bench::rig::{
    file_server, free_port, nginx, start_sidecar, wait_http, wait_ready, LoadArgs, Measured, Plan, Proxy, SidecarSpec, Target,
};
use strait_bench::{ms, percentile};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: LoadArgs,
    /// Seconds of each saturation run (0: skip).
    #[arg(long, default_value_t = 5)]
    saturation_seconds: u64,
}

const PATH: &str = "/1k.bin";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let (dp, cp, work, mut children_to_kill) = strait_bench::rig::start().await?;

    // The application: nginx serving a 1 KiB file.
    let (app, app_port) = file_server(&work, PATH)?;
    let app_addr: SocketAddr = format!("127.0.0.1:{app_port}").parse()?;
    children_to_kill.0.push(app);
    wait_http("nginx serving the file", app_addr, PATH).await?;

    // The Strait pair: web's sidecar (client side) and backend's sidecar (server side).
    let (backend_in, web_in, web_out) = (free_port()?, free_port()?, free_port()?);
    let mut sidecars = Vec::new();
    for spec in [
        SidecarSpec { name: "backend-1", service: "backend", inbound: backend_in, app: app_port, tags: "", outbound: None },
        SidecarSpec { name: "web-1", service: "web", inbound: web_in, app: free_port()?, tags: "", outbound: Some((web_out, "backend")) },
    ] {
        sidecars.push(start_sidecar(&dp, &cp, &work, &spec, args.load.sidecar_concurrency).await?);
    }
    for (_, admin) in &sidecars {
        wait_ready(&cp.http, admin).await?;
    }
    let strait_addr: SocketAddr = format!("127.0.0.1:{web_out}").parse()?;
    wait_http("the strait sidecar pair", strait_addr, PATH).await?;
    let strait_pids: Vec<u32> = sidecars.iter().map(|(c, _)| c.id()).collect();
    children_to_kill.0.extend(sidecars.into_iter().map(|(c, _)| c));

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
    let nginx_addr: SocketAddr = format!("127.0.0.1:{a_port}").parse()?;
    if let Err(e) = wait_http("the nginx pair", nginx_addr, PATH).await {
        for name in ["proxy-a", "proxy-b"] {
            let log = std::fs::read_to_string(work.join(name).join("logs/error.log")).unwrap_or_default();
            eprintln!("{name} error.log:\n{log}");
        }
        return Err(e);
    }
    let nginx_pids = |c: &Child| {
        let mut p = vec![c.id()];
        p.extend(children(c.id()));
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
            proxies: vec![Proxy { name: "nginx A", pids: nginx_pids(&proxy_a) }, Proxy { name: "nginx B", pids: nginx_pids(&proxy_b) }],
        },
    ];
    children_to_kill.0.push(proxy_a);
    children_to_kill.0.push(proxy_b);

    // Warm up every path (pools, TLS sessions), then take idle memory.
    let plan = args.load.plan(PATH);
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
    report(&plan, &targets, &mut results, &idle, &saturation);
    drop(children_to_kill);
    cp.stop().await;
    Ok(())
}

fn report(plan: &Plan, targets: &[Target], results: &mut [Measured], idle: &[Vec<u64>], saturation: &[f64]) {
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
    println!(
        "added latency, strait / nginx pair: p50 {:.2}x, p99 {:.2}x",
        strait.0.as_secs_f64() / nginx.0.as_secs_f64().max(1e-9),
        strait.1.as_secs_f64() / nginx.1.as_secs_f64().max(1e-9)
    );
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
    if saturation.len() == 3 {
        println!(
            "\nsaturation (32 connections, closed loop): direct {:.0} rps; strait pair {:.0} rps ({:.2} of direct); nginx pair {:.0} rps ({:.2} of direct)",
            saturation[0],
            saturation[1],
            saturation[1] / saturation[0],
            saturation[2],
            saturation[2] / saturation[0]
        );
    }
    let cpu = results[1].cpu.iter().map(|c| per_krps(*c)).fold(0.0, f64::max);
    let (rss_idle, rss_load) = (idle[1].iter().copied().max().unwrap_or(0), results[1].peak_rss.iter().copied().max().unwrap_or(0));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("\ntargets for the strait pair:");
    println!("  added p50 <= 0.10 ms: {} ({})", ms(strait.0), verdict(strait.0 <= Duration::from_micros(100)));
    println!("  added p99 <= 0.20 ms: {} ({})", ms(strait.1), verdict(strait.1 <= Duration::from_micros(200)));
    println!("  <= 0.05 vCPU per 1000 rps per sidecar: {cpu:.3} ({})", verdict(cpu <= 0.05));
    println!("  RSS <= 10 MB idle: {:.1} MB ({})", rss_idle as f64 / 1e6, verdict(rss_idle <= 10_000_000));
    println!("  RSS <= 16 MB under load: {:.1} MB ({})", rss_load as f64 / 1e6, verdict(rss_load <= 16_000_000));
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
