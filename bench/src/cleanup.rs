//! Leaving nothing behind: each process a benchmark starts leads a process group of its own,
//! stopped as a whole (nginx's workers with their master), when the benchmark ends, fails, or
//! is interrupted (SIGINT, SIGTERM), and its work directories go too. A stopped group is waited
//! for until none of its processes runs: a binary a process still runs cannot be replaced
//! (`Text file busy`) right after the benchmark.
//!
//! In: the commands a benchmark starts, and its work directories. Out: the processes, and a
//! handler that stops every group still running and removes the directories on a signal.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Process groups started and not yet stopped.
static GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
/// Work directories to remove when a signal ends the benchmark (their owners remove them
/// otherwise).
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `cmd` as the leader of a new process group, stopped with [`stop`].
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let child = cmd.process_group(0).spawn()?;
    lock(&GROUPS).insert(child.id());
    Ok(child)
}

/// Kills the process group `child` leads (what it started, too), reaps `child`, and waits until
/// no process of the group runs (reaping the leader does not wait for the others, such as
/// nginx's worker).
pub fn stop(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
    wait_gone(&[child.id()]);
}

fn kill_group(leader: u32) {
    if lock(&GROUPS).remove(&leader) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{leader}")]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// How long a killed group's processes are waited for.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Waits, for at most [`GONE_WITHIN`], until no process of the groups `leaders` lead runs: a
/// killed process takes a moment to end (its threads, its memory), and SIGKILL returns before.
fn wait_gone(leaders: &[u32]) {
    let deadline = Instant::now() + GONE_WITHIN;
    while running_groups().iter().any(|group| leaders.contains(group)) {
        if Instant::now() > deadline {
            eprintln!("processes of the groups {leaders:?} still run {} s after being killed", GONE_WITHIN.as_secs());
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The process groups of the processes running now. A zombie (ended, not yet reaped by its
/// parent: a group leader when a signal ends the benchmark) does not run, unless it leads
/// threads still ending.
fn running_groups() -> BTreeSet<u32> {
    let threads = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    crate::procstat::processes().into_iter().filter(|p| p.state != "Z" || threads(p.pid) > 1).map(|p| p.group).collect()
}

/// Removes `dir` if a signal ends the benchmark.
pub fn remove_on_signal(dir: &Path) {
    lock(&DIRS).push(dir.to_path_buf());
}

/// Stops every group still running and removes the work directories when SIGINT or SIGTERM
/// comes, then exits with 130. Call it once, from within the benchmark's runtime.
pub fn on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        eprintln!("cannot listen for SIGINT and SIGTERM: an interrupted benchmark may leave processes behind");
        return;
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        let groups: Vec<u32> = lock(&GROUPS).iter().copied().collect();
        eprintln!("{name}: stopping the {} process groups this benchmark started", groups.len());
        for &leader in &groups {
            kill_group(leader);
        }
        wait_gone(&groups);
        for dir in lock(&DIRS).drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}
