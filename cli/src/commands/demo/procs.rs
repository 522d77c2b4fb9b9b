//! The demo's processes: started in the background in a process group of their own (so that
//! they outlive `straitctl` and a Ctrl-C of it), their output in `<dir>/logs/<name>.log`, and
//! recorded in `<dir>/demo.json` so that later commands find them.
//!
//! In: binaries and arguments. Out: running processes and their records; their liveness (by
//! `/proc/<pid>` and the binary it runs, so a reused pid is not mistaken for ours); stopping
//! them with SIGTERM, then SIGKILL.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One process of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Its name (`zone-1-gateway`, `backend-v1-sidecar`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// The binary's file name, to recognise the process.
    pub binary: String,
    /// Its zone, if any.
    #[serde(default)]
    pub zone: Option<String>,
    /// The service of a workload's processes.
    #[serde(default)]
    pub service: Option<String>,
    /// The URL that answers 200 when it is healthy.
    pub health: String,
    /// Its log file.
    pub log: PathBuf,
}

/// What `demo up` leaves for the other commands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The global's REST API.
    pub api: String,
    /// The admin token file.
    pub token_file: PathBuf,
    /// The frontend's URL.
    pub frontend: String,
    /// Every process, in start order.
    pub processes: Vec<Record>,
    /// Network namespaces and links made for the demo (`netns:<name>`, `link:<name>`).
    #[serde(default)]
    pub network: Vec<String>,
}

/// The state file of `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("demo.json")
}

impl State {
    /// Reads the state of the demo in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<State> {
        let path = state_path(dir);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no demo in {} (reading {}); start one with `straitctl demo up`", dir.display(), path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a demo state file", path.display()))
    }

    /// Writes it (after each process started, so that `down` finds whatever `up` left).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = state_path(dir);
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Starts `binary` with `args` in the background (inside network namespace `netns`, if any),
/// its output to `<dir>/logs/<name>.log`.
pub fn spawn(dir: &Path, name: &str, binary: &Path, args: &[String], netns: Option<&str>) -> anyhow::Result<(Child, PathBuf)> {
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("{name}.log"));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = match netns {
        // `ip netns exec` enters the namespace and execs the binary: the pid is the binary's.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok((child, log))
}

/// Whether the process of `record` still runs (and is the one we started).
pub fn alive(record: &Record) -> bool {
    let proc = PathBuf::from(format!("/proc/{}", record.pid));
    let running = fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')))
        .unwrap_or(false);
    running && fs::read(proc.join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&record.binary))
}

fn signal(record: &Record, signal: &str) {
    let _ = Command::new("kill").args([signal, &record.pid.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Stops `records`: SIGTERM to all, up to `grace` for them to exit, then SIGKILL. Returns
/// the names of those that had to be killed.
pub fn stop(records: &[&Record], grace: Duration) -> Vec<String> {
    for r in records.iter().filter(|r| alive(r)) {
        signal(r, "-TERM");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && records.iter().any(|r| alive(r)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut killed = Vec::new();
    for r in records.iter().filter(|r| alive(r)) {
        signal(r, "-KILL");
        killed.push(r.name.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && records.iter().any(|r| alive(r)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// SIGKILLs `records` at once, as a crash would.
pub fn kill9(records: &[&Record]) {
    for r in records.iter().filter(|r| alive(r)) {
        signal(r, "-KILL");
    }
}
