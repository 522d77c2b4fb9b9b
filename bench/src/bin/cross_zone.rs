//! Cross-zone traffic through the east-west gateways, with 25 ms of WAN delay each way:
//! the first request of a new client connection (a new end-to-end mTLS session through the
//! zones' QUIC tunnel) and warm requests, against the round-trip time measured in the same run
//! on a direct connection between the zones' gateway hosts; the throughput of one cross-zone
//! connection against direct ones (with the system's socket buffers, which cap it; with as
//! much in flight as the tunnel allows a stream, the bound it is judged against; and wider);
//! and 1,000 concurrent cross-zone connections held (10,000 with `--connections 10000`, spread
//! over client and server sidecars of 5,000 each), with the gateways' memory while they are
//! open.
//!
//! Targets: first request ≤ 2 RTT + 5 ms, warm request p99 ≤ 1 RTT + 1 ms, one connection
//! ≥ 0.9 of a direct one with as much in flight, 1,000 connections without an error, 10,000
//! with ≤ 100 MB per gateway.
//!
//! `cargo build --profile dist --bins && target/dist/cross_zone` (as root: network namespaces
//! and the NFQUEUE delayer; the Strait binaries are the ones next to this one).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use strait_bench::{ms, percentile};
use strait_multizone::gateway::start_zones;
use strait_multizone::sidecar::{local_ip, Workload};
use strait_multizone::wan::{Wan, ZoneHosts};
use strait_multizone::{Host, Net};

#[derive(Parser)]
struct Args {
    /// One-way WAN delay, milliseconds.
    #[arg(long, default_value_t = 25)]
    delay_ms: u64,
    /// New connections measured for the first-request latency.
    #[arg(long, default_value_t = 30)]
    first: usize,
    /// Round trips measured for the warm latency.
    #[arg(long, default_value_t = 100)]
    warm: usize,
    /// Megabytes moved for the throughput of one connection.
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// Concurrent cross-zone connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Serve the benchmark's application on this address and nothing else: how the benchmark
    /// starts it in the server's network namespace, in a process of its own (the descriptors of
    /// 10,000 connections at each end do not fit one process's limit).
    #[arg(long, hide = true)]
    serve: Option<SocketAddr>,
}

const APP_PORT: u16 = 9100;
const INBOUND_PORT: u16 = 8100;
const TO_BULK: u16 = 10100;
const DIRECT_PORT: u16 = 7999;
/// The direct server whose connections have [`WIDE`] socket buffers.
const WIDE_DIRECT_PORT: u16 = 7998;
/// The direct server whose connections have [`WIDEST`] socket buffers.
const WIDEST_DIRECT_PORT: u16 = 7997;
/// Socket buffers that let one TCP connection have as much in flight as the gateways' tunnel
/// lets one stream (16 MB): the system's (`net.ipv4.tcp_wmem`, 4 MB) hold about 50 MB/s at
/// 50 ms, so a direct connection with them is no upper bound.
const WIDE: usize = 16 * 1024 * 1024;
/// Wider still: where a direct connection goes when its buffers are not what bounds it.
const WIDEST: usize = 64 * 1024 * 1024;
const REQUEST: u64 = 64;
/// Concurrent connections one client sidecar and one server sidecar carry (each holds two
/// descriptors per connection, and 20,000 is a common limit).
const PER_SIDECAR: usize = 5000;

/// The application: each request is a big-endian u64 N; the answer is N bytes.
fn serve(listener: TcpListener, buffers: Option<usize>) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(bytes) = buffers {
                let _ = strait_runtime::sockets::grow_buffers(&stream, bytes);
            }
            std::thread::Builder::new().stack_size(64 * 1024).spawn(move || answer(stream)).expect("a thread per connection");
        }
    });
}

/// What the application answers with, shared by every connection's thread.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn answer(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let zeros = &ZEROS;
    let mut n = [0u8; 8];
    while stream.read_exact(&mut n).is_ok() {
        let mut left = u64::from_be_bytes(n);
        while left > 0 {
            let chunk = left.min(zeros.len() as u64) as usize;
            if stream.write_all(&zeros[..chunk]).is_err() {
                return;
            }
            left -= chunk as u64;
        }
    }
}

/// One request of `n` bytes on `stream`.
fn request(stream: &mut TcpStream, n: u64, buf: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(&n.to_be_bytes())?;
    let mut left = n as usize;
    let cap = buf.len();
    while left > 0 {
        let got = stream.read(&mut buf[..left.min(cap)])?;
        if got == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        left -= got;
    }
    Ok(())
}

fn connect(from: &Host, to: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = from.within(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

/// Latency of a new connection's first request, and of requests on one warm connection.
fn latencies(from: &Host, to: SocketAddr, firsts: usize, warm: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = Vec::new();
    for _ in 0..firsts {
        let started = Instant::now();
        let mut s = connect(from, to).expect("connect");
        request(&mut s, REQUEST, &mut buf).expect("first request");
        first.push(started.elapsed());
    }
    let mut s = connect(from, to).expect("connect");
    request(&mut s, REQUEST, &mut buf).expect("warm-up");
    let mut warm_samples = Vec::new();
    for _ in 0..warm {
        let started = Instant::now();
        request(&mut s, REQUEST, &mut buf).expect("warm request");
        warm_samples.push(started.elapsed());
    }
    (first, warm_samples)
}

/// Megabytes per second of one connection moving `mb` megabytes.
fn throughput(from: &Host, to: SocketAddr, mb: u64, buffers: Option<usize>) -> f64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut s = connect(from, to).expect("connect");
    if let Some(bytes) = buffers {
        let _ = strait_runtime::sockets::grow_buffers(&s, bytes);
    }
    request(&mut s, 1024 * 1024, &mut buf).expect("warm-up");
    let started = Instant::now();
    request(&mut s, mb * 1024 * 1024, &mut buf).expect("bulk request");
    mb as f64 / started.elapsed().as_secs_f64()
}

/// Opens `n` connections (from each host of `froms` in turn, to its outbound), holds them all
/// open, makes a request on each twice; the errors.
fn concurrent(froms: &[(Host, SocketAddr)], n: usize, gateways: &[u32]) -> (usize, Duration, Vec<u64>) {
    let started = Instant::now();
    // Every connection opened and used once; then the gateways' memory; then each used again.
    // At most 1,000 client threads (each thread's stacks are memory maps, and a process has
    // at most 65,530): beyond that, each opens several connections in turn.
    let threads = n.min(1000);
    let (opened, measured) = (Arc::new(Barrier::new(threads + 1)), Arc::new(Barrier::new(threads + 1)));
    let threads: Vec<_> = (0..threads)
        .map(|i| {
            let (from, to) = froms[i % froms.len()].clone();
            let (opened, measured) = (opened.clone(), measured.clone());
            let mine = n / threads + usize::from(i < n % threads);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut buf = [0u8; 256];
                    let first: Vec<_> =
                        (0..mine).map(|_| connect(&from, to).and_then(|mut s| request(&mut s, REQUEST, &mut buf).map(|()| s))).collect();
                    opened.wait();
                    measured.wait();
                    let mut errors = Vec::new();
                    for stream in first {
                        let used = stream.and_then(|mut s| request(&mut s, REQUEST, &mut buf));
                        errors.extend(used.err().map(|e| e.to_string()));
                    }
                    errors
                })
                .expect("a client thread")
        })
        .collect();
    opened.wait();
    let rss: Vec<u64> = gateways.iter().map(|pid| strait_bench::procstat::rss_bytes(*pid)).collect();
    measured.wait();
    let errors: Vec<String> = threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect();
    if let Some(e) = errors.first() {
        eprintln!("first error of {}: {e}", errors.len());
    }
    (errors.len(), started.elapsed(), rss)
}

fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// On SIGINT or SIGTERM, stops what the benchmark started (zones, gateways, sidecars, the
/// delayer) and deletes its network namespaces and files, then exits with 130: an interrupted
/// run leaves nothing behind.
fn tear_down_on_signal(teardown: strait_multizone::net::Teardown) {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the signal handler");
    let listening =
        runtime.block_on(async { Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)) });
    let Ok((mut interrupt, mut terminate)) = listening else {
        eprintln!("cannot listen for SIGINT and SIGTERM: an interrupted run may leave processes and namespaces behind");
        return;
    };
    // Once the teardown starts, the main thread's calls fail as their processes go: it must
    // not end the process (with a panic's exit code) before the teardown is done.
    static TEARING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if TEARING_DOWN.load(std::sync::atomic::Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        report(info);
    }));
    std::thread::spawn(move || {
        let name = runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        });
        TEARING_DOWN.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("{name}: stopping the benchmark's processes and deleting its network namespaces");
        teardown.run();
        std::process::exit(130);
    });
}

fn main() {
    let args = Args::parse();
    if let Some(addr) = args.serve {
        serve(TcpListener::bind(addr).unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}")), None);
        loop {
            std::thread::park();
        }
    }
    // Thousands of connections through five processes need more descriptors than the usual 1,024;
    // the processes started from here inherit the limit.
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), "--nofile=65536:65536"])
        .stderr(std::process::Stdio::null())
        .status();
    let needed = (args.connections.max(2 * PER_SIDECAR) + 1024) as u64;
    let limit = strait_bench::procstat::open_files_limit();
    if limit < needed {
        eprintln!(
            "{} concurrent connections need about {needed} descriptors in this process and in each gateway; the limit here is {limit} and cannot be raised (prlimit --nofile)",
            args.connections
        );
        std::process::exit(2);
    }
    let net = Net::new();
    if !net.is_namespaced() {
        eprintln!("cross_zone needs network namespaces (root and `ip netns`): {}", net.mode_reason());
        std::process::exit(2);
    }
    tear_down_on_signal(net.teardown());
    let (global, zones) = start_zones(&net, &["zone-1", "zone-2"]);
    let ((zone1, _), (zone2, _)) = (&zones[0], &zones[1]);
    // Each sidecar holds two descriptors per connection (the application's side and the
    // peer's): beyond PER_SIDECAR connections, more client and server workloads share them.
    let pairs = args.connections.div_ceil(PER_SIDECAR).max(1);
    let program = std::env::current_exe().expect("the benchmark's own path");
    let mut bulks = Vec::new();
    let mut apps = Vec::new();
    for i in 0..pairs {
        let name = if i == 0 { "bulk-2".to_string() } else { format!("bulk-2-{i}") };
        let bulk = Workload::start_on(&net, &global, zone2, &name, "bulk", INBOUND_PORT, APP_PORT, &[], None);
        // The workload's echo application gives way to this benchmark's own, in a process of
        // its own in the server's namespace.
        bulk.app.kill9();
        apps.push(bulk.host.spawn("bulk-app", &program, ["--serve".to_string(), bulk.dataplane.app.to_string()]));
        strait_multizone::wait_for("the benchmark's application listening", Duration::from_secs(10), || {
            bulk.host
                .within(|| TcpStream::connect_timeout(&bulk.dataplane.app, Duration::from_secs(1)))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        bulks.push(bulk);
    }
    let clients: Vec<Workload> = (0..pairs)
        .map(|i| {
            let name = if i == 0 { "client-1".to_string() } else { format!("client-1-{i}") };
            Workload::start_on(&net, &global, zone1, &name, "client", INBOUND_PORT + 1, APP_PORT + 1, &[(TO_BULK, "bulk")], None)
        })
        .collect();
    let client = &clients[0];
    for (port, buffers) in [(DIRECT_PORT, None), (WIDE_DIRECT_PORT, Some(WIDE)), (WIDEST_DIRECT_PORT, Some(WIDEST))] {
        serve(zone2.host.within(|| TcpListener::bind(zone2.host.socket_addr(port))).expect("bind a direct server"), buffers);
    }
    let delay = Duration::from_millis(args.delay_ms);
    let hosts = || {
        [
            ZoneHosts { gateway: &zone1.host, members: clients.iter().map(|c| &c.host).collect() },
            ZoneHosts { gateway: &zone2.host, members: bulks.iter().map(|b| &b.host).collect() },
        ]
    };
    // The delayer's own limit: one direct connection through it, with no delay. A direct
    // connection over the delayed WAN is the upper bound of the gateways' figure only while
    // it stays below this.
    let (direct, wide, widest) =
        (zone2.host.socket_addr(DIRECT_PORT), zone2.host.socket_addr(WIDE_DIRECT_PORT), zone2.host.socket_addr(WIDEST_DIRECT_PORT));
    let limit = {
        let probe = Wan::link(&net, &hosts(), Duration::ZERO).expect("the WAN between the zones, without delay");
        let best = (0..2).map(|_| throughput(&zone1.host, widest, args.megabytes, Some(WIDEST))).fold(0f64, f64::max);
        probe.unlink();
        best
    };
    let _wan = Wan::link(&net, &hosts(), delay).expect("the WAN between the zones");
    let mesh = SocketAddr::new(local_ip(&client.host), TO_BULK);
    // Until the sidecars have the other zone's endpoints, and the tunnel's estimates settle.
    strait_multizone::wait_for("a request across the zones", Duration::from_secs(30), || {
        connect(&client.host, mesh).and_then(|mut s| request(&mut s, REQUEST, &mut [0u8; 256])).map_err(|e| e.to_string())
    });

    println!("cross-zone benchmark: {} ms each way ({} first requests, {} warm)", args.delay_ms, args.first, args.warm);
    let (mut direct_first, mut direct_warm) = latencies(&zone1.host, direct, args.first, args.warm);
    let (mut mesh_first, mut mesh_warm) = latencies(&client.host, mesh, args.first, args.warm);
    let rtt = median(&mut direct_warm);
    let (first, warm) = (median(&mut mesh_first), median(&mut mesh_warm));
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "RTT (direct, warm round trip): {} (p99 {}); direct new connection + request: {}",
        ms(rtt),
        ms(percentile(&mut direct_warm, 99.0)),
        ms(median(&mut direct_first))
    );
    println!(
        "first request of a new connection through the gateways: p50 {} (p90 {}) = {:.2} RTT; target <= 2 RTT + 5 ms = {}: {}",
        ms(first),
        ms(percentile(&mut mesh_first, 90.0)),
        first.as_secs_f64() / rtt.as_secs_f64(),
        ms(rtt * 2 + Duration::from_millis(5)),
        verdict(first <= rtt * 2 + Duration::from_millis(5))
    );
    let warm_p99 = percentile(&mut mesh_warm, 99.0);
    println!(
        "warm request through the gateways: p50 {} = RTT + {}, p99 {} = RTT + {}; target p99 <= RTT + 1 ms: {}",
        ms(warm),
        ms(warm.saturating_sub(rtt)),
        ms(warm_p99),
        ms(warm_p99.saturating_sub(rtt)),
        verdict(warm_p99 <= rtt + Duration::from_millis(1))
    );
    // Best of three, interleaved: the delayer handles every packet in user space and TCP over
    // it varies from run to run. The application through the gateways has the system's socket
    // buffers. The direct connection is measured with them (no upper bound: they cap it), with
    // as much in flight as the tunnel allows a stream (the like-for-like bound, judged), and
    // with wider buffers still.
    let (mut direct_mbps, mut wide_mbps, mut widest_mbps, mut mesh_mbps) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..3 {
        direct_mbps = direct_mbps.max(throughput(&zone1.host, direct, args.megabytes, None));
        wide_mbps = wide_mbps.max(throughput(&zone1.host, wide, args.megabytes, Some(WIDE)));
        widest_mbps = widest_mbps.max(throughput(&zone1.host, widest, args.megabytes, Some(WIDEST)));
        mesh_mbps = mesh_mbps.max(throughput(&client.host, mesh, args.megabytes, None));
    }
    println!(
        "one connection (best of 3, {} MB each): {mesh_mbps:.0} MB/s through the gateways; direct: {wide_mbps:.0} MB/s with {} MiB socket buffers, as much in flight as the tunnel allows a stream ({:.2} of it), {widest_mbps:.0} MB/s with {} MiB ({:.2}), {direct_mbps:.0} MB/s with the system's ({:.2}); target >= 0.9 of direct with as much in flight: {}",
        args.megabytes,
        WIDE >> 20,
        mesh_mbps / wide_mbps,
        WIDEST >> 20,
        mesh_mbps / widest_mbps,
        mesh_mbps / direct_mbps,
        verdict(mesh_mbps >= 0.9 * wide_mbps)
    );
    println!(
        "the WAN delayer's own limit: {limit:.0} MB/s (one direct connection through it, no delay, {} MiB buffers); the widest direct connection over the WAN is {:.2} of it{}",
        WIDEST >> 20,
        widest_mbps / limit,
        if widest_mbps >= 0.9 * limit { ": the delayer, not the WAN's delay, bounds the direct figure" } else { "" }
    );
    let gateways: Vec<u32> = zones.iter().filter_map(|(_, gateway)| gateway.proc.pid()).collect();
    let froms: Vec<(Host, SocketAddr)> = clients.iter().map(|c| (c.host.clone(), SocketAddr::new(local_ip(&c.host), TO_BULK))).collect();
    let (errors, took, rss) = concurrent(&froms, args.connections, &gateways);
    println!(
        "{} concurrent connections across the zones, each used twice while all are open: {errors} errors ({:.1} s); target 0: {}",
        args.connections,
        took.as_secs_f64(),
        verdict(errors == 0)
    );
    let most = rss.iter().copied().max().unwrap_or(0);
    let rss_mb = rss.iter().map(|b| format!("{:.1} MB", *b as f64 / 1e6)).collect::<Vec<_>>().join(" / ");
    let judged = if args.connections >= 10_000 {
        format!("; target <= 100 MB per gateway with 10,000: {}", verdict(most <= 100_000_000))
    } else {
        " (the target is for 10,000: --connections 10000)".to_string()
    };
    println!("the gateways' memory with them open: {rss_mb}{judged}");
}
