//! A host of the test network: a network namespace (or, in loopback mode, a distinct
//! `127.x.y.z` address) that runs long-lived processes ([`Host::spawn`]) and one-shot commands
//! ([`Host::run`]), and can make requests from the inside ([`Host::within`],
//! [`Host::http_client`]) — the test process itself lives in the root namespace, which cannot
//! reach namespace addresses.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;

use crate::net::Shared;
use crate::process::{Cmd, Proc};
use crate::sys::{self, Signal};
use crate::wait;

/// Default deadline of a one-shot [`Host::run`]; override with [`Cmd::timeout`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A host on the test network. Cheap to clone; valid until its `Net` is dropped.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    name: String,
    addr: IpAddr,
    ns: Option<String>,
    net: Arc<Shared>,
    client: OnceLock<Client>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("name", &self.inner.name).field("addr", &self.inner.addr).field("ns", &self.inner.ns).finish()
    }
}

impl Host {
    pub(crate) fn new(name: &str, addr: IpAddr, ns: Option<String>, net: Arc<Shared>) -> Host {
        Host { inner: Arc::new(HostInner { name: name.to_owned(), addr, ns, net, client: OnceLock::new() }) }
    }

    /// The name given to `Net::host`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address other hosts reach this one at.
    pub fn addr(&self) -> IpAddr {
        self.inner.addr
    }

    /// `addr():port`.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.inner.addr, port)
    }

    /// `http://<addr>:<port><path>`.
    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}{path}", self.socket_addr(port))
    }

    /// Its network namespace, or `None` in loopback mode.
    pub fn netns(&self) -> Option<&str> {
        self.inner.ns.as_deref()
    }

    /// Starts `program args...` on this host as a long-running process called `name` (unique
    /// per host), logging stdout and stderr to a file in the net's directory.
    pub fn spawn<I, S>(&self, name: &str, program: impl AsRef<Path>, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.spawn_cmd(name, Cmd::new(program.as_ref()).args(args))
    }

    /// Starts `cmd` (which may carry extra environment variables) as process `name`.
    pub fn spawn_cmd(&self, name: &str, cmd: Cmd) -> Proc {
        let net = &self.inner.net;
        net.register_proc(&self.inner.name, name, |log_path| {
            Proc::start(name, &self.inner.name, cmd, self.inner.ns.clone(), net.dir.clone(), log_path)
        })
    }

    /// Runs `program args...` on this host to completion (deadline [`RUN_TIMEOUT`]) and
    /// returns its exit status and output. A command that outlives its deadline is killed
    /// and fails the test.
    pub fn run<I, S>(&self, program: impl AsRef<Path>, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_cmd(Cmd::new(program.as_ref()).args(args))
    }

    /// Runs `cmd` to completion; see [`Host::run`].
    pub fn run_cmd(&self, cmd: Cmd) -> Output {
        let net = &self.inner.net;
        net.check_open();
        let timeout = cmd.timeout_or(RUN_TIMEOUT);
        let command = cmd.display();
        let mut child = cmd
            .to_command(self.netns(), &net.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}` on host {}: {e}", self.name()));
        let pgid = child.id();
        let stdout = read_in_background(child.stdout.take());
        let stderr = read_in_background(child.stderr.take());

        let deadline = Instant::now() + timeout;
        let (status, timed_out) = loop {
            match child.try_wait() {
                Ok(Some(status)) => break (status, false),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = sys::signal_group(pgid, Signal::Kill);
                    let status = child.wait().expect("wait for a killed child");
                    break (status, true);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{command}` failed: {e}"),
            }
        };
        let output = Output { command, host: self.name().to_owned(), status, stdout: collect(stdout, pgid), stderr: collect(stderr, pgid) };
        net.record_run(&output.to_string());
        if timed_out {
            panic!("timed out after {timeout:?} (killed): {output}");
        }
        output
    }

    /// Runs `f` on a thread inside this host's network namespace (directly in loopback
    /// mode): sockets it opens, and threads it starts, belong to this host.
    pub fn within<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let Some(ns) = self.netns() else {
            return f();
        };
        let ns_path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let file = File::open(&ns_path).unwrap_or_else(|e| panic!("cannot open {ns_path}: {e}"));
                sys::enter_netns(&file).unwrap_or_else(|e| panic!("setns into {ns_path} failed: {e}"));
                f()
            });
            handle.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// An HTTP client whose connections start from this host (its namespace; in loopback
    /// mode, its address as source). Built once per host; no proxy, 10 s timeout.
    pub fn http_client(&self) -> Client {
        self.inner
            .client
            .get_or_init(|| {
                let mut builder = wait::client_builder();
                if self.netns().is_none() {
                    builder = builder.local_address(self.addr());
                }
                // The client's I/O thread is started here, so it inherits the namespace.
                self.within(|| builder.build()).expect("build reqwest client for a host")
            })
            .clone()
    }

    /// An HTTPS client whose connections start from this host and that trusts only the CA of
    /// `ca_pem` (such as the global's `api-ca.pem`).
    pub fn https_client(&self, ca_pem: &str) -> Client {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("a PEM CA certificate");
        let mut builder = wait::client_builder().tls_built_in_root_certs(false).add_root_certificate(ca);
        if self.netns().is_none() {
            builder = builder.local_address(self.addr());
        }
        self.within(|| builder.build()).expect("build an HTTPS client for a host")
    }

    /// `https://<addr>:<port><path>`.
    pub fn https_url(&self, port: u16, path: &str) -> String {
        format!("https://{}{path}", self.socket_addr(port))
    }

    /// Waits until `GET url`, sent from this host, answers 200.
    pub fn http_ready(&self, url: &str, deadline: Duration) {
        wait::http_ready_with(&self.http_client(), url, deadline);
    }

    /// One TCP connection attempt from this host to `target`.
    pub fn tcp_connect(&self, target: SocketAddr, timeout: Duration) -> Result<(), String> {
        self.within(|| {
            std::net::TcpStream::connect_timeout(&target, timeout)
                .map(drop)
                .map_err(|e| format!("connect from {} to {target}: {e}", self.name()))
        })
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// The output a reader collected. A child left behind by the command may hold the pipe open;
/// after a short grace, its process group is killed so the pipe closes.
fn collect(rx: mpsc::Receiver<Vec<u8>>, pgid: u32) -> String {
    let bytes = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_else(|_| {
        let _ = sys::signal_group(pgid, Signal::Kill);
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    });
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Result of a one-shot command ([`Host::run`]).
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line.
    pub command: String,
    /// The host it ran on.
    pub host: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Output {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code (None if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing the command and its output, unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Output {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics, showing the command and its output, if it exited 0.
    #[track_caller]
    pub fn assert_failure(&self) -> &Output {
        assert!(!self.success(), "command unexpectedly succeeded: {self}");
        self
    }

    /// Panics unless stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_contains(&self, needle: &str) -> &Output {
        assert!(self.stdout.contains(needle), "stdout does not contain {needle:?}: {self}");
        self
    }

    /// Stdout parsed as JSON; panics with the output if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` on host {}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.host,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}
