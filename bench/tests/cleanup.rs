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
    wait_until("nginx's workers gone with their master", Duration::from_secs(10), || !workers.iter().any(|w| running(*w)));
    assert!(!running(master_pid));
}

#[test]
fn an_interrupted_benchmark_leaves_nothing_behind() {
    if !has_nginx() {
        eprintln!("skipped: nginx is not installed (apt-get install nginx)");
        return;
    }
    let bench = env!("CARGO_BIN_EXE_sidecar");
    let dp = std::path::Path::new(bench).with_file_name("strait-dp");
    if !dp.exists() {
        eprintln!("skipped: {} is not built (cargo build --workspace --bins)", dp.display());
        return;
    }
    let mut run = Command::new(bench).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the sidecar benchmark");
    // Until it runs nginx with its worker (the application comes first).
    let mut started = Vec::new();
    wait_until("the benchmark's nginx and its worker", Duration::from_secs(120), || {
        started = descendants(run.id());
        started.iter().any(|p| comm(*p) == "nginx" && !children(*p).is_empty())
    });
    started = descendants(run.id());
    Command::new("kill").args(["-INT", &run.id().to_string()]).status().expect("kill -INT");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the benchmark did not stop within 30 s of SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::io::read_to_string(run.stderr.take().expect("stderr")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "exit after SIGINT; stderr:\n{stderr}");
    let left = || started.iter().copied().filter(|p| running(*p)).map(|p| format!("{p} ({})", comm(p))).collect::<Vec<_>>();
    wait_until("every process the benchmark started gone", Duration::from_secs(10), || left().is_empty());
    assert!(stderr.contains("SIGINT: stopping"), "it says what it does: {stderr}");
}
