//! A benchmark leaves no process behind: not when it stops what it started, not when it is
//! interrupted. nginx (the application and the baseline proxies) is the case that matters: its
//! workers outlive a master killed alone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait_bench::procstat::children;
use strait_bench::rig::{free_port, nginx, Children};

fn has_nginx() -> bool {
    Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether `pid` still runs (a zombie waiting for its parent's `wait` no longer does).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(|state| state != "Z")))
        .unwrap_or(false)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut next = children(pid);
    while let Some(p) = next.pop() {
        next.extend(children(p));
        all.push(p);
    }
    all
}

fn wait_until(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < deadline, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-INT`) to `run` and waits for it to end, at most `within`.
fn signal_and_wait(run: &mut std::process::Child, signal: &str, within: Duration) -> std::process::ExitStatus {
    Command::new("kill").args([signal, &run.id().to_string()]).status().expect("kill");
    let start = Instant::now();
    loop {
        if let Some(status) = run.try_wait().expect("wait") {
            return status;
        }
        assert!(start.elapsed() < within, "the benchmark did not stop within {within:?} of {signal}");
        // Polled often, so that what still runs is checked right after the benchmark exits.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts the benchmark `bench` (stderr piped), if `needs` was built next to it; else says so.
fn start(bench: &str, needs: &str) -> Option<std::process::Child> {
    let needed = std::path::Path::new(bench).with_file_name(needs);
    if !needed.exists() {
        eprintln!("skipped: {} is not built (cargo build --workspace --bins)", needed.display());
        return None;
    }
    Some(Command::new(bench).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the benchmark"))
}

#[test]
fn stopped_nginx_takes_its_workers_with_it() {
    if !has_nginx() {
        eprintln!("skipped: nginx is not installed (apt-get install nginx)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port().expect("port");
    let master = nginx(dir.path(), "t", &format!("server {{ listen 127.0.0.1:{port}; return 200; }}")).expect("nginx");
    let master_pid = master.id();
    let mut children_to_stop = Children::default();
    children_to_stop.0.push(master);
    let mut workers = Vec::new();
    wait_until("nginx's worker", Duration::from_secs(20), || {
        workers = children(master_pid);
        !workers.is_empty()
    });
    drop(children_to_stop);
    // Stopping waits for the whole group: right after it, nothing of it runs.
    let left: Vec<u32> = workers.iter().copied().filter(|w| running(*w)).collect();
    assert!(left.is_empty(), "nginx's workers {left:?} still run after their group was stopped");
    assert!(!running(master_pid));
}

#[test]
fn an_interrupted_benchmark_leaves_nothing_behind() {
    if !has_nginx() {
        eprintln!("skipped: nginx is not installed (apt-get install nginx)");
        return;
    }
    let Some(mut run) = start(env!("CARGO_BIN_EXE_sidecar"), "strait-dp") else { return };
    // Until it runs nginx with its worker (the application comes first) and a sidecar (a
    // process of several threads, which takes longest to end).
    let mut started = Vec::new();
    wait_until("the benchmark's nginx with its worker, and a sidecar", Duration::from_secs(120), || {
        started = descendants(run.id());
        started.iter().any(|p| comm(*p) == "nginx" && !children(*p).is_empty()) && started.iter().any(|p| comm(*p) == "strait-dp")
    });
    started = descendants(run.id());
    let status = signal_and_wait(&mut run, "-INT", Duration::from_secs(30));
    let stderr = std::io::read_to_string(run.stderr.take().expect("stderr")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "exit after SIGINT; stderr:\n{stderr}");
    // The benchmark waits for what it killed before it exits: right after, nothing it started
    // runs (a binary still running cannot be replaced, `Text file busy`).
    let left: Vec<String> = started.iter().copied().filter(|p| running(*p)).map(|p| format!("{p} ({})", comm(p))).collect();
    assert!(left.is_empty(), "still running after the benchmark exited: {left:?}");
    assert!(stderr.contains("SIGINT: stopping"), "it says what it does: {stderr}");
}

#[test]
fn an_interrupted_cross_zone_run_leaves_no_process_or_namespace_behind() {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !root || !Command::new("ip").args(["netns", "list"]).stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs root and `ip netns` (CI runs it)");
        return;
    }
    let Some(mut run) = start(env!("CARGO_BIN_EXE_cross_zone"), "strait-gateway") else { return };
    // Its log, read as it comes: the line that names its namespaces.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), run.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    // Until both zones' gateways run.
    let mut started = Vec::new();
    wait_until("cross_zone's two gateways", Duration::from_secs(120), || {
        started = descendants(run.id());
        started.iter().filter(|p| comm(**p) == "strait-gateway").count() >= 2
    });
    started = descendants(run.id());
    let prefix = {
        let log = log.lock().unwrap();
        let after = log.split_once("(namespaces ").map(|(_, rest)| rest).expect("the harness names its namespaces");
        after.split('*').next().unwrap_or_default().to_string()
    };
    let namespaces = || {
        let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(!namespaces().is_empty(), "the run made namespaces {prefix}*");
    let status = signal_and_wait(&mut run, "-TERM", Duration::from_secs(60));
    let _ = reader.join();
    let log = log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(130), "exit after SIGTERM; stderr:\n{log}");
    let left = || started.iter().copied().filter(|p| running(*p)).map(|p| format!("{p} ({})", comm(p))).collect::<Vec<_>>();
    wait_until("every process the run started gone", Duration::from_secs(10), || left().is_empty());
    assert_eq!(namespaces(), Vec::<String>::new(), "its namespaces are deleted");
    assert!(log.contains("SIGTERM: stopping"), "it says what it does: {log}");
}
