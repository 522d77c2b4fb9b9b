//! What the sidecar benchmarks share: nginx as the application (and as the baseline proxy),
//! `strait-dp` sidecars registered with the in-process control plane, readiness waits, and
//! the processes' memory while a load runs.
//!
//! In: a work directory and the binaries next to the benchmark. Out: running processes
//! ([`Children`], killed when dropped), their addresses, and samples of their memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::{ControlPlane, Error};
use crate::load::probe;
use crate::procstat::rss_bytes;

/// The processes a benchmark started (each leading its process group: see
/// [`crate::cleanup`]), stopped with what they started when it ends, also on an error.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            crate::cleanup::stop(c);
        }
    }
}

/// What every sidecar benchmark starts with: the `strait-dp` binary, a control plane with one
/// zone, its work directory, and the processes to kill at the end.
/// An interrupted benchmark stops what it started (see [`crate::cleanup::on_signal`]).
pub async fn start() -> Result<(PathBuf, ControlPlane, PathBuf, Children), Error> {
    crate::cleanup::on_signal();
    let dp = sidecar_binary()?;
    let cp = ControlPlane::start(1).await?;
    let work = cp.dir.path().to_path_buf();
    Ok((dp, cp, work, Children::default()))
}

/// A free TCP port for a listener a process of the rig binds later
/// ([`strait_runtime::sockets::port_for_a_later_listener`]).
pub fn free_port() -> std::io::Result<u16> {
    Ok(strait_runtime::sockets::port_for_a_later_listener())
}

/// `strait-dp` next to the running benchmark, built with the same profile; an error that says
/// how to build it when it is missing.
pub fn sidecar_binary() -> Result<PathBuf, Error> {
    let bin_dir = std::env::current_exe()?.parent().map(Path::to_path_buf).ok_or("no directory for this binary")?;
    let dp = bin_dir.join("strait-dp");
    if !dp.exists() {
        return Err(format!(
            "{} is missing: build the binaries with the same profile as this benchmark first (`cargo build --profile dist --bins`)",
            dp.display()
        )
        .into());
    }
    Ok(dp)
}

/// Starts nginx (one worker, in the foreground) with `server` blocks in its own prefix.
pub fn nginx(work: &Path, name: &str, servers: &str) -> Result<Child, Error> {
    let prefix = work.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = format!(
        "worker_processes 1; daemon off; user root; pid {p}/nginx.pid; error_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s; sendfile on; tcp_nodelay on;\n{servers}\n}}\n",
        p = prefix.display()
    );
    std::fs::write(prefix.join("nginx.conf"), conf)?;
    let child = crate::cleanup::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )
    .map_err(|e| format!("starting nginx (install it: apt-get install nginx): {e}"))?;
    Ok(child)
}

/// nginx serving a 1 KiB file at `path` (`/1k.bin`) on a free port: the application. A POST
/// gets the file too (its body read and dropped).
pub fn file_server(work: &Path, path: &str) -> Result<(Child, u16), Error> {
    let www = work.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join(path.trim_start_matches('/')), vec![b's'; 1024])?;
    let port = free_port()?;
    let child = nginx(
        work,
        "app",
        &format!("server {{ listen 127.0.0.1:{port}; location / {{ root {}; error_page 405 =200 $uri; }} }}", www.display()),
    )?;
    Ok((child, port))
}

/// One sidecar to start: a Dataplane of `service` with an HTTP inbound on `inbound`
/// forwarding to `app`, extra inbound `tags` (such as `version: v1`) and an optional explicit
/// outbound (`port`, `service`).
pub struct SidecarSpec<'a> {
    /// The Dataplane's name.
    pub name: &'a str,
    /// Its service.
    pub service: &'a str,
    /// Its inbound port.
    pub inbound: u16,
    /// Its application's port.
    pub app: u16,
    /// Extra inbound tags, as YAML flow entries (`version: v1`), or empty.
    pub tags: &'a str,
    /// An explicit outbound: its port and service.
    pub outbound: Option<(u16, &'a str)>,
}

/// Starts `strait-dp run` for `spec` against zone 0 of `cp`, with `concurrency` data-path
/// threads; returns the process and its admin address (not yet ready: see [`wait_ready`]).
pub async fn start_sidecar(
    dp: &Path,
    cp: &ControlPlane,
    work: &Path,
    spec: &SidecarSpec<'_>,
    concurrency: u16,
) -> Result<(Child, String), Error> {
    let zone = &cp.zones[0];
    // One file per sidecar: rewriting a shared one could be read empty by a sidecar starting.
    let dps_ca = work.join(format!("{}-dps-ca.pem", spec.name));
    std::fs::write(&dps_ca, &zone.dps_ca_pem)?;
    let SidecarSpec { name, service, inbound, app, tags, outbound } = spec;
    let tags = if tags.is_empty() { String::new() } else { format!(", {tags}") };
    let outbound = outbound.map(|(p, s)| format!("\n    outbound: [{{port: {p}, tags: {{strait.io/service: {s}}}}}]")).unwrap_or_default();
    let yaml = format!(
        "type: Dataplane\nname: {name}\nmesh: default\nspec:\n  networking:\n    address: 127.0.0.1\n    inbound: [{{port: {inbound}, servicePort: {app}, tags: {{strait.io/service: {service}, strait.io/protocol: http{tags}}}}}]{outbound}\n"
    );
    std::fs::write(work.join(format!("{name}.yaml")), yaml)?;
    std::fs::write(work.join(format!("{name}.token")), cp.dataplane_token(service).await?)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let child = crate::cleanup::spawn(
        Command::new(dp)
            .args(["run", "--cp-address", &format!("https://{}", zone.dps_addr), "--cp-ca-file"])
            .arg(&dps_ca)
            .arg("--dataplane-file")
            .arg(work.join(format!("{name}.yaml")))
            .arg("--dataplane-token-file")
            .arg(work.join(format!("{name}.token")))
            .args(["--admin-address", &admin, "--log-level", "warn", "--concurrency", &concurrency.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
    )?;
    Ok((child, admin))
}

/// Polls `GET path` on `addr` until it answers 200.
pub async fn wait_http(what: &str, addr: SocketAddr, path: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if probe(addr, path).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} at {addr} did not answer {path} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a sidecar's `/ready` until it answers 200.
pub async fn wait_ready(http: &reqwest::Client, admin: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http.get(format!("http://{admin}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the sidecar with admin {admin} was not ready within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples the summed RSS of each pid group every 100 ms until stopped; returns the peaks.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    /// Starts sampling `groups`.
    pub fn start(groups: Vec<Vec<u32>>) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0u64; groups.len()];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for (peak, pids) in peaks.iter_mut().zip(&groups) {
                    *peak = (*peak).max(pids.iter().map(|p| rss_bytes(*p)).sum());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        });
        RssSampler { stop, thread }
    }

    /// Stops and returns each group's peak.
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A proxy under test: its processes, for CPU and memory.
pub struct Proxy {
    /// What it is (`client sidecar`).
    pub name: &'static str,
    /// Its processes.
    pub pids: Vec<u32>,
}

impl Proxy {
    /// The CPU time its processes' threads have used so far.
    pub fn cpu(&self) -> crate::procstat::CpuSnapshot {
        crate::procstat::CpuSnapshot::take(&self.pids)
    }

    /// Its processes' resident memory now.
    pub fn rss(&self) -> u64 {
        self.pids.iter().map(|p| rss_bytes(*p)).sum()
    }
}

/// A path from the load generator to the application, and the proxies on it.
pub struct Target {
    /// What it is (`direct`, `strait sidecar pair`).
    pub name: &'static str,
    /// Where the load generator sends its requests.
    pub addr: SocketAddr,
    /// The proxies on the path.
    pub proxies: Vec<Proxy>,
}

/// What the constant-rate runs of one target measured.
pub struct Measured {
    /// Latencies and errors of every round.
    pub outcome: crate::load::Outcome,
    /// CPU seconds each proxy used during the runs.
    pub cpu: Vec<f64>,
    /// The peak memory of each proxy during the runs.
    pub peak_rss: Vec<u64>,
    /// Each round's own figures, in round order.
    pub rounds: Vec<Round>,
}

/// One round of one path: its p50 and p99 latency and the CPU seconds of all its proxies.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Median latency of the round.
    pub p50: Duration,
    /// 99th percentile latency of the round.
    pub p99: Duration,
    /// CPU seconds of every proxy of the path during the round.
    pub cpu: f64,
}

/// The load flags the sidecar benchmarks share (`#[command(flatten)]`).
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Requests per second of the constant-rate runs.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of each measured constant-rate run (each path is measured `rounds` times, in
    /// turn). Short runs in many rounds: a shared machine's noise comes in spells of seconds,
    /// and a spell then falls on every path alike rather than on one path's whole run.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Rounds over the paths, interleaved so that drift on a shared machine hits them alike
    /// (default 20; 60 where a round loads every path at once, which takes the same time).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Data-path threads of each sidecar (`strait-dp run --concurrency`).
    #[arg(long, default_value_t = 1)]
    pub sidecar_concurrency: u16,
    /// Every request a POST of a body of this many bytes (`content-length`) rather than a GET
    /// (0); the application answers it as a GET.
    #[arg(long, default_value_t = 0)]
    pub request_body: usize,
}

impl LoadArgs {
    /// The plan of constant-rate runs of `path` these flags ask for, one path at a time in
    /// each round or (`together`) all at once.
    pub fn plan<'a>(&self, path: &'a str, together: bool) -> Plan<'a> {
        let rounds = self.rounds.unwrap_or(if together { 60 } else { 20 });
        Plan { path, rate: self.rate, seconds: self.seconds, rounds, connections: self.connections, together }
    }
}

/// How the targets are loaded.
pub struct Plan<'a> {
    /// The path requested.
    pub path: &'a str,
    /// Requests per second.
    pub rate: u32,
    /// Seconds of each run.
    pub seconds: u64,
    /// Runs of each target, interleaved so that drift on a shared machine hits them alike.
    pub rounds: usize,
    /// Keep-alive connections of the load generator.
    pub connections: usize,
    /// Whether each round loads every target at once (each at `rate`) rather than one after
    /// the other: the machine's spells then fall on every target in the same instant, which
    /// comparing two pairs alike needs; each pair is then measured on a busier machine.
    pub together: bool,
}

impl Plan<'_> {
    /// Warms every target up (pools, TLS sessions) for 2 s each, and lets them settle.
    pub async fn warm_up(&self, targets: &[Target]) -> std::io::Result<()> {
        for t in targets {
            crate::load::constant_rate(t.addr, self.path, self.rate, Duration::from_secs(2), self.connections).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    /// Runs every target `rounds` times in turn at the constant rate, measuring latency, the
    /// proxies' CPU and their peak memory.
    pub async fn measure(&self, targets: &[Target]) -> std::io::Result<Vec<Measured>> {
        let mut results: Vec<Measured> = targets
            .iter()
            .map(|t| Measured {
                outcome: Default::default(),
                cpu: vec![0.0; t.proxies.len()],
                peak_rss: vec![0; t.proxies.len()],
                rounds: Vec::new(),
            })
            .collect();
        let seconds = Duration::from_secs(self.seconds);
        for round in 0..self.rounds {
            // Each round starts one path further, so that no path is always measured right
            // after the same other one (or, together, started first).
            let order: Vec<usize> = (0..targets.len()).map(|i| (i + round) % targets.len()).collect();
            let batches: Vec<Vec<usize>> = if self.together { vec![order] } else { order.into_iter().map(|at| vec![at]).collect() };
            for batch in batches {
                let cpu_before: Vec<Vec<_>> = batch.iter().map(|&at| targets[at].proxies.iter().map(Proxy::cpu).collect()).collect();
                let groups = batch.iter().flat_map(|&at| targets[at].proxies.iter().map(|p| p.pids.clone())).collect();
                let sampler = RssSampler::start(groups);
                let runs =
                    batch.iter().map(|&at| crate::load::constant_rate(targets[at].addr, self.path, self.rate, seconds, self.connections));
                let outcomes = futures::future::join_all(runs).await;
                let mut peaks = sampler.stop().into_iter();
                for ((&at, outcome), before) in batch.iter().zip(outcomes).zip(cpu_before) {
                    let outcome = outcome?;
                    let (t, m) = (&targets[at], &mut results[at]);
                    let mut cpu = 0.0;
                    for (i, p) in t.proxies.iter().enumerate() {
                        let used = p.cpu().seconds_since(&before[i]);
                        m.cpu[i] += used;
                        cpu += used;
                        m.peak_rss[i] = m.peak_rss[i].max(peaks.next().unwrap_or_default());
                    }
                    let mut latencies = outcome.latencies.clone();
                    let figures = Round { p50: crate::percentile(&mut latencies, 50.0), p99: crate::percentile(&mut latencies, 99.0), cpu };
                    eprintln!(
                        "round {}: {} p50 {} p99 {} ({} errors)",
                        round + 1,
                        t.name,
                        crate::ms(figures.p50),
                        crate::ms(figures.p99),
                        outcome.errors
                    );
                    m.rounds.push(figures);
                    m.outcome.merge(outcome);
                }
            }
        }
        Ok(results)
    }

    /// CPU seconds over the measured runs, as vCPU per 1,000 requests per second.
    pub fn per_krps(&self, cpu: f64) -> f64 {
        cpu / (self.seconds * self.rounds as u64) as f64 / (f64::from(self.rate) / 1000.0)
    }
}

/// One path's figures over a baseline path's (added p50, added p99, CPU), round by round
/// (added latency over the direct path of the same round), from each path's median round, and
/// the rounds' median.
pub struct RoundRatios {
    /// Each round's ratios.
    pub per_round: Vec<(f64, f64, f64)>,
    /// The ratios of each path's median round: for paths measured one after the other, where a
    /// round that one spell of the machine's noise stalled is outvoted on its path.
    pub median: (f64, f64, f64),
    /// The median of the rounds' own ratios: for paths loaded at once, which met the same spells.
    pub paired: (f64, f64, f64),
}

/// The median of `v` (NaN if empty), which it sorts.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `pol` over `bare`, each round's latency taken over `direct`'s in the same round.
pub fn round_ratios(direct: &[Round], bare: &[Round], pol: &[Round]) -> RoundRatios {
    let added = |p: Duration, d: Duration| p.saturating_sub(d).as_secs_f64();
    // NaN where the baseline added nothing: no ratio says anything then.
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let per_round: Vec<(f64, f64, f64)> = direct
        .iter()
        .zip(bare)
        .zip(pol)
        .map(|((d, b), p)| {
            (ratio(added(p.p50, d.p50), added(b.p50, d.p50)), ratio(added(p.p99, d.p99), added(b.p99, d.p99)), ratio(p.cpu, b.cpu))
        })
        .collect();
    // Each path's median round (p50, p99 and CPU each), then the ratios: a round that one
    // spell of the machine's noise stalled is outvoted on its path, and a short round's noisy
    // p99 is not compounded by dividing it by another's.
    let typical = |rounds: &[Round]| {
        let pick = |f: fn(&Round) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
        (pick(|r| r.p50.as_secs_f64()), pick(|r| r.p99.as_secs_f64()), pick(|r| r.cpu))
    };
    let (d, b, p) = (typical(direct), typical(bare), typical(pol));
    let by_median = (ratio(p.0 - d.0, b.0 - d.0), ratio(p.1 - d.1, b.1 - d.1), ratio(p.2, b.2));
    let of_rounds = |f: fn(&(f64, f64, f64)) -> f64| median(&mut per_round.iter().map(f).collect::<Vec<_>>());
    let paired = (of_rounds(|r| r.0), of_rounds(|r| r.1), of_rounds(|r| r.2));
    RoundRatios { per_round, median: by_median, paired }
}

#[cfg(test)]
mod round_tests {
    use super::*;

    fn round(p50_us: u64, p99_us: u64, cpu: f64) -> Round {
        Round { p50: Duration::from_micros(p50_us), p99: Duration::from_micros(p99_us), cpu }
    }

    #[test]
    fn a_baseline_that_adds_nothing_gives_no_ratio() {
        let direct = [round(200, 900, 0.0)];
        let bare = [round(400, 800, 1.0)];
        let pol = [round(420, 1_000, 1.05)];
        let r = round_ratios(&direct, &bare, &pol);
        assert!((r.median.0 - 1.10).abs() < 1e-9, "{:?}", r.median);
        assert!(r.median.1.is_nan(), "the baseline's p99 is below direct's: {:?}", r.median);
        assert!(r.per_round[0].1.is_nan(), "{:?}", r.per_round);
    }

    #[test]
    fn one_stalled_round_does_not_decide_the_median() {
        let direct = [round(200, 400, 0.0), round(200, 400, 0.0), round(200, 9_000, 0.0)];
        let bare = [round(400, 800, 1.0), round(400, 800, 1.0), round(400, 9_400, 1.0)];
        // The third round stalls the policy pair alone: 20 ms at p99.
        let pol = [round(420, 840, 1.05), round(410, 820, 1.02), round(430, 20_000, 1.5)];
        let r = round_ratios(&direct, &bare, &pol);
        assert_eq!(r.per_round.len(), 3);
        assert!((r.per_round[2].1 - 27.5).abs() < 1e-9, "{:?}", r.per_round);
        assert!((r.median.0 - 1.10).abs() < 1e-9, "{:?}", r.median);
        assert!((r.median.1 - 1.10).abs() < 1e-9, "{:?}", r.median);
        assert!((r.median.2 - 1.05).abs() < 1e-9, "{:?}", r.median);
        let even = round_ratios(&direct[..2], &bare[..2], &pol[..2]);
        assert!((even.median.0 - 1.075).abs() < 1e-9, "{:?}", even.median);
        assert!((r.paired.1 - 1.10).abs() < 1e-9, "the stalled round's 27.5x is outvoted: {:?}", r.paired);
    }

    #[test]
    fn rounds_that_move_every_path_together_keep_their_own_ratio() {
        // Loaded at once, every path of a round meets the same spell; the policy pair adds
        // 5% more than the bare pair in each round.
        let direct = [round(200, 400, 0.0), round(250, 450, 0.0), round(300, 500, 0.0)];
        let bare = [round(400, 600, 1.0), round(350, 550, 0.8), round(700, 900, 2.0)];
        let pol = [round(410, 610, 1.05), round(355, 555, 0.84), round(720, 920, 2.1)];
        let r = round_ratios(&direct, &bare, &pol);
        for (got, want) in [(r.paired.0, 1.05), (r.paired.1, 1.05), (r.paired.2, 1.05)] {
            assert!((got - want).abs() < 1e-9, "{:?}", r.paired);
        }
        // Each path's median round mixes rounds: 160 µs over 150 µs.
        assert!((r.median.0 - 160.0 / 150.0).abs() < 1e-9, "{:?}", r.median);
    }
}
