//! Processes started by the harness. A [`Cmd`] describes what to run (program, arguments,
//! environment); a [`Proc`] is a long-running instance of it on a host, with its stdout and
//! stderr appended to one log file, in its own process group so that signals reach its
//! children too. The spec is kept, so a process can be killed and started again identically
//! (crash/restart scenarios). The owning `Net` stops every process on drop.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::sys::{self, Signal};
use crate::wait;

/// How long [`Proc::terminate`] waits after SIGTERM before it sends SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// Environment variables removed from every command: a proxy configured on a developer's
/// machine or CI runner would otherwise capture the tests' HTTP traffic between hosts.
const PROXY_VARS: &[&str] = &["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];

/// What to run: a program (a path, or a name looked up in `PATH`), its arguments and extra
/// environment variables. Cheap to clone; a [`Proc`] keeps its `Cmd` to restart it.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    clear_env: bool,
    timeout: Option<Duration>,
}

impl Cmd {
    /// A command running `program` with no arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd { program: program.as_ref().to_owned(), args: Vec::new(), env: Vec::new(), clear_env: false, timeout: None }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for this command (on top of the test's environment).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts from an empty environment (as systemd starts a service) instead of the test's.
    pub fn clear_env(mut self) -> Cmd {
        self.clear_env = true;
        self
    }

    /// This command run through `wrapper` (such as `setpriv --reuid=1337`): the wrapper and its
    /// arguments first, then this command's program and arguments; environment and timeout kept.
    pub fn wrapped(self, wrapper: impl AsRef<OsStr>, wrapper_args: &[&str]) -> Cmd {
        let mut args: Vec<OsString> = wrapper_args.iter().map(OsString::from).collect();
        args.push(self.program);
        args.extend(self.args);
        Cmd { program: wrapper.as_ref().to_owned(), args, env: self.env, clear_env: self.clear_env, timeout: self.timeout }
    }

    /// Deadline for a one-shot run (`Host::run_cmd`); ignored by spawned processes.
    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = Some(timeout);
        self
    }

    pub(crate) fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.unwrap_or(default)
    }

    /// The command line as a human would type it (for logs and failure messages).
    pub fn display(&self) -> String {
        std::iter::once(&self.program).chain(&self.args).map(|a| shell_quote(&a.to_string_lossy())).collect::<Vec<_>>().join(" ")
    }

    /// A `std::process::Command` running this inside network namespace `ns` (or directly
    /// when `None`), in `cwd`, in a new process group, with proxy variables removed.
    pub(crate) fn to_command(&self, ns: Option<&str>, cwd: &Path) -> Command {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).current_dir(cwd).process_group(0);
        if self.clear_env {
            cmd.env_clear();
        }
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A long-running process on a host. Clones are handles to the same process.
#[derive(Debug, Clone)]
pub struct Proc {
    inner: Arc<ProcInner>,
}

#[derive(Debug)]
pub(crate) struct ProcInner {
    name: String,
    host: String,
    cmd: Cmd,
    ns: Option<String>,
    cwd: PathBuf,
    log_path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    child: Option<Child>,
    exit: Option<ExitStatus>,
    starts: u32,
}

impl Proc {
    /// Starts `cmd` on `host` (inside `ns` if set), logging to `log_path`.
    pub(crate) fn start(name: &str, host: &str, cmd: Cmd, ns: Option<String>, cwd: PathBuf, log_path: PathBuf) -> Proc {
        let proc = Proc {
            inner: Arc::new(ProcInner {
                name: name.to_owned(),
                host: host.to_owned(),
                cmd,
                ns,
                cwd,
                log_path,
                state: Mutex::new(State::default()),
            }),
        };
        proc.inner.spawn(&mut proc.inner.lock());
        proc
    }

    pub(crate) fn inner(&self) -> Arc<ProcInner> {
        Arc::clone(&self.inner)
    }

    /// The name given at spawn (unique per host).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The command it runs, as a command line.
    pub fn command_line(&self) -> String {
        self.inner.cmd.display()
    }

    /// Its pid (also its process group id) while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut st = self.inner.lock();
        ProcInner::reap(&mut st);
        st.child.as_ref().map(Child::id)
    }

    /// Whether it is still running (reaps it if it exited).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Exit status of the last run, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut st = self.inner.lock();
        ProcInner::reap(&mut st);
        st.exit
    }

    /// How many times it was started (1 after spawn, +1 per restart).
    pub fn starts(&self) -> u32 {
        self.inner.lock().starts
    }

    /// SIGKILLs its process group and reaps it, as a crash would. No-op if not running.
    pub fn kill9(&self) -> Option<ExitStatus> {
        self.inner.stop(Duration::ZERO)
    }

    /// SIGSTOPs its process group: it stays alive, its sockets open, and answers nothing (a
    /// hung process, a stalled host) until [`Proc::resume`].
    pub fn pause(&self) {
        assert!(self.inner.signal(Signal::Stop).is_some(), "{} is not running: it cannot be stopped", self.name());
    }

    /// SIGCONTs its process group after [`Proc::pause`].
    pub fn resume(&self) {
        self.inner.signal(Signal::Cont);
    }

    /// SIGTERMs its process group, waits up to [`TERMINATE_GRACE`], then SIGKILLs.
    /// Returns the exit status (None if it was not running).
    pub fn terminate(&self) -> Option<ExitStatus> {
        self.inner.stop(TERMINATE_GRACE)
    }

    /// Panics, with its log tail, if it is not running (it exited while the test was
    /// `doing` something that needs it).
    #[track_caller]
    pub fn assert_running(&self, doing: &str) {
        if let Some(status) = self.exit_status() {
            panic!(
                "process {} on host {} exited ({status}) while waiting for {doing}; log tail:\n{}",
                self.inner.name,
                self.inner.host,
                self.log_tail(50)
            );
        }
    }

    /// Waits until `GET url`, sent from host `from`, answers 200; fails at once if this
    /// process exits meanwhile.
    pub fn wait_http_ready(&self, from: &Host, url: &str, deadline: Duration) {
        wait::http_ready_watching(&from.http_client(), url, deadline, Some(self));
    }

    /// Waits for it to exit by itself; panics (with its log) if it still runs after `deadline`.
    pub fn wait_exit(&self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() >= end {
                panic!("process {} still running after {deadline:?}; log tail:\n{}", self.name(), self.log_tail(50));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after the grace period) if running, then starts the
    /// same command again on the same host; the log file is appended to.
    pub fn restart(&self) {
        self.terminate();
        self.start_again();
    }

    /// Starts the same command again after it exited or was killed. Panics if it is running.
    pub fn start_again(&self) {
        let mut st = self.inner.lock();
        ProcInner::reap(&mut st);
        assert!(st.child.is_none(), "start_again: process {} is still running", self.inner.name);
        self.inner.spawn(&mut st);
    }

    /// Path of its log file (stdout and stderr of every run, with a header per start).
    pub fn log_path(&self) -> &Path {
        &self.inner.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.inner.log(), lines)
    }
}

impl ProcInner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop teardown from killing this process.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self, st: &mut State) {
        st.starts += 1;
        let log = self.open_log();
        let cmdline = self.cmd.display();
        let header = format!("==== strait-e2e: start #{} of {} on host {}: {cmdline}\n", st.starts, self.name, self.host);
        (&log).write_all(header.as_bytes()).unwrap_or_else(|e| panic!("cannot write {}: {e}", self.log_path.display()));
        let stderr = log.try_clone().unwrap_or_else(|e| panic!("cannot dup {}: {e}", self.log_path.display()));
        let child = self
            .cmd
            .to_command(self.ns.as_deref(), &self.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} on host {}: `{cmdline}`: {e}", self.name, self.host));
        st.child = Some(child);
        st.exit = None;
    }

    fn open_log(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", self.log_path.display()))
    }

    /// Records the exit status if the child has exited.
    fn reap(st: &mut State) {
        if let Some(child) = st.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) => {
                    st.exit = Some(status);
                    st.child = None;
                }
                Ok(None) => {}
                Err(e) => eprintln!("strait-e2e: try_wait failed: {e}"),
            }
        }
    }

    /// Sends SIGTERM (if `grace` > 0), waits up to `grace`, then SIGKILLs and reaps.
    fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        let graceful = !grace.is_zero();
        let pid = self.signal(if graceful { Signal::Term } else { Signal::Kill })?;
        if graceful {
            // A paused process handles SIGTERM only once continued.
            let _ = sys::signal_group(pid, Signal::Cont);
        }
        self.finish(pid, Instant::now() + grace, graceful)
    }

    /// Signals the process group if the process runs; returns its pid.
    pub(crate) fn signal(&self, sig: Signal) -> Option<u32> {
        let mut st = self.lock();
        Self::reap(&mut st);
        let pid = st.child.as_ref()?.id();
        if let Err(e) = sys::signal_group(pid, sig) {
            eprintln!("strait-e2e: cannot signal {} (pgid {pid}): {e}", self.name);
        }
        Some(pid)
    }

    /// Waits until `deadline` for the process to exit, then SIGKILLs what is left of its
    /// group (children that outlived it included) and reaps it. `warn`: say so if it had to
    /// be killed.
    pub(crate) fn finish(&self, pgid: u32, deadline: Instant, warn: bool) -> Option<ExitStatus> {
        loop {
            let mut st = self.lock();
            Self::reap(&mut st);
            if st.child.is_none() || Instant::now() >= deadline {
                if let Some(mut child) = st.child.take() {
                    if warn {
                        eprintln!("strait-e2e: {} on host {} did not exit in time; sending SIGKILL", self.name, self.host);
                    }
                    let _ = sys::signal_group(pgid, Signal::Kill);
                    match child.wait() {
                        Ok(status) => st.exit = Some(status),
                        Err(e) => eprintln!("strait-e2e: wait for {} failed: {e}", self.name),
                    }
                }
                // The group id stays reserved while any member lives, so this cannot hit
                // an unrelated process.
                let _ = sys::signal_group(pgid, Signal::Kill);
                return st.exit;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// One block for the failure report: who, what, how it ended, and the log tail.
    pub(crate) fn report(&self, lines: usize) -> String {
        let status = {
            let mut st = self.lock();
            Self::reap(&mut st);
            match (&st.child, st.exit) {
                (Some(c), _) => format!("running (pid {})", c.id()),
                (None, Some(s)) => s.to_string(),
                (None, None) => "not started".to_owned(),
            }
        };
        format!(
            "----- process {} on host {} [{status}]\n----- command: {}\n----- last {lines} lines of {}:\n{}\n",
            self.name,
            self.host,
            self.cmd.display(),
            self.log_path.display(),
            tail(&self.log(), lines)
        )
    }
}

/// Stops all `procs` together: SIGTERM to every group, one shared `grace` period, then SIGKILL.
pub(crate) fn stop_all(procs: &[Arc<ProcInner>], grace: Duration) {
    let running: Vec<(&Arc<ProcInner>, u32)> = procs.iter().filter_map(|p| p.signal(Signal::Term).map(|pid| (p, pid))).collect();
    let deadline = Instant::now() + grace;
    for (p, pid) in running {
        p.finish(pid, deadline, true);
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let cmd = Cmd::new("straitctl").args(["get", "x y", "it's", ""]);
        assert_eq!(cmd.display(), r"straitctl get 'x y' 'it'\''s' ''");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
