//! The test network. [`Net::new`] takes a slot, then, with root and `ip netns`, builds a "WAN"
//! namespace holding a bridge; each [`Net::host`] is a namespace joined to that bridge by a
//! veth pair, with an address in `198.18.<slot>.0/24` (RFC 2544 benchmarking range). Without
//! root or `ip netns`, or with `STRAIT_E2E_LOOPBACK=1`, hosts are `127.77.<slot>.<n>` addresses
//! and commands run directly. Dropping the `Net` — also while a test panics — stops every
//! process it started, prints their logs if the test failed, deletes its namespaces and
//! releases the slot.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::host::Host;
use crate::ip::{self, ip_ok};
use crate::process::{self, Proc, ProcInner};
use crate::slots::Slot;

/// Set to `1` to force loopback mode even where namespaces would work.
pub const LOOPBACK_ENV: &str = "STRAIT_E2E_LOOPBACK";
/// Set to `1` to keep the net's directory (logs, data dirs) after a passing test too.
pub const KEEP_ENV: &str = "STRAIT_E2E_KEEP";
/// How long teardown waits after SIGTERM before it SIGKILLs the remaining processes.
pub const TEARDOWN_GRACE: Duration = Duration::from_secs(3);
/// Lines of each process log printed when a test fails.
pub const REPORT_LINES: usize = 200;

/// Prefix of every namespace the harness creates; the slot number follows.
const NS_PREFIX: &str = "smz";
/// Name of the WAN pseudo-host ([`Net::wan`]); reserved.
const WAN: &str = "wan";
/// Bridge inside the WAN namespace.
const BRIDGE: &str = "br0";
/// Host numbers (last address octet) available per net.
const MAX_HOSTS: u8 = 250;

/// How hosts are isolated from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One network namespace per host, joined by a bridge in a WAN namespace.
    Namespaces,
    /// Distinct 127.x.y.z addresses in the test's own namespace: no isolation.
    Loopback,
}

/// A test network; see the module docs. Create one per test.
pub struct Net {
    shared: Arc<Shared>,
    reason: String,
    prefix: String,
    wan_ns: Option<String>,
    wan: Option<Host>,
    hosts: Arc<Mutex<Hosts>>,
    tempdir: Option<tempfile::TempDir>,
    // Declared last so it is released after everything above is torn down.
    slot: Slot,
}

/// Host bookkeeping: names taken, namespaces to delete, next host number.
#[derive(Default)]
struct Hosts {
    names: HashSet<String>,
    namespaces: Vec<String>,
    last: u8,
}

/// State shared by the net and its hosts and processes.
pub(crate) struct Shared {
    pub(crate) mode: Mode,
    pub(crate) dir: PathBuf,
    procs: Mutex<Procs>,
}

#[derive(Default)]
struct Procs {
    list: Vec<Arc<ProcInner>>,
    names: HashSet<String>,
    closed: bool,
}

impl Net {
    /// Builds a network in namespace mode if possible, else in loopback mode; prints which
    /// and why.
    pub fn new() -> Net {
        let netns = netns_support();
        let slot = Slot::acquire(|mine, is_stale| {
            if netns.is_ok() {
                remove_leftover_namespaces(mine, is_stale);
            }
        });
        let index = slot.index();
        let prefix = format!("{NS_PREFIX}{index}-");
        let tempdir = tempfile::Builder::new().prefix(&format!("strait-e2e-{index}-")).tempdir().expect("create the net's temp dir");
        let dir = tempdir.path().to_path_buf();
        fs::create_dir_all(dir.join("logs")).expect("create the logs dir");

        let forced = std::env::var(LOOPBACK_ENV).is_ok_and(|v| v == "1");
        let (mode, reason, wan_ns) = match netns {
            _ if forced => (Mode::Loopback, format!("{LOOPBACK_ENV}=1"), None),
            Err(why) => (Mode::Loopback, why, None),
            Ok(()) => match create_wan(&format!("{prefix}wan"), wan_addr(index)) {
                Ok(wan) => (Mode::Namespaces, "root and `ip netns` available".into(), Some(wan)),
                Err(e) => (Mode::Loopback, format!("creating the WAN namespace failed: {e}"), None),
            },
        };
        let range = match mode {
            Mode::Namespaces => format!("namespaces {prefix}*, 198.18.{index}.0/24"),
            Mode::Loopback => format!("127.77.{index}.0/24"),
        };
        eprintln!("strait-e2e: slot {index}, {mode:?} mode ({range}) because {reason}; files in {}", dir.display());
        let shared = Arc::new(Shared { mode, dir, procs: Mutex::new(Procs::default()) });
        let wan = wan_ns.as_ref().map(|ns| Host::new(WAN, IpAddr::V4(wan_addr(index)), Some(ns.clone()), Arc::clone(&shared)));
        let hosts = Hosts { names: HashSet::from([WAN.to_owned()]), ..Hosts::default() };
        Net { shared, reason, prefix, wan_ns, wan, hosts: Arc::new(Mutex::new(hosts)), tempdir: Some(tempdir), slot }
    }

    /// The WAN namespace itself, as a host (address `198.18.<slot>.254` on the bridge), in
    /// namespace mode only: the place for what acts on traffic between hosts (an NFQUEUE
    /// delayer, iptables drop rules, a packet capture).
    pub fn wan(&self) -> Option<&Host> {
        self.wan.as_ref()
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Whether hosts are really isolated (namespace mode).
    pub fn is_namespaced(&self) -> bool {
        self.shared.mode == Mode::Namespaces
    }

    /// Why this mode was chosen (e.g. "not root (euid 1000)").
    pub fn mode_reason(&self) -> &str {
        &self.reason
    }

    /// This net's slot number (unique among running nets on the machine).
    pub fn slot(&self) -> u8 {
        self.slot.index()
    }

    /// The net's private directory (logs, data dirs, files for commands).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Creates (if needed) and returns the subdirectory `name` of [`Net::dir`].
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.shared.dir.join(name);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        path
    }

    /// Writes `contents` to file `name` in [`Net::dir`] and returns its path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.shared.dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Adds host `name` (lowercase letters, digits, `-`) attached to the WAN bridge.
    pub fn host(&self, name: &str) -> Host {
        self.add_host(name, true)
    }

    /// Adds host `name` on no network at all: in namespace mode it has only its own
    /// loopback (`addr()` is 127.0.0.1). In loopback mode it is an ordinary host, since
    /// loopback cannot isolate anything; check [`Net::is_namespaced`].
    pub fn isolated_host(&self, name: &str) -> Host {
        self.add_host(name, false)
    }

    fn add_host(&self, name: &str, on_wan: bool) -> Host {
        assert!(
            !name.is_empty() && name.len() <= 40 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "host name {name:?}: use 1-40 lowercase letters, digits or '-'"
        );
        let mut hosts = lock(&self.hosts);
        assert!(hosts.names.insert(name.to_owned()), "host {name:?} already exists");
        assert!(hosts.last < MAX_HOSTS, "more than {MAX_HOSTS} hosts in one net");
        hosts.last += 1;
        let n = hosts.last;
        let slot = self.slot.index();
        let Some(wan) = &self.wan_ns else {
            let addr = IpAddr::V4(Ipv4Addr::new(127, 77, slot, n));
            return Host::new(name, addr, None, Arc::clone(&self.shared));
        };

        let ns = format!("{}{name}", self.prefix);
        ip_ok(&["netns", "add", &ns]);
        // Recorded at once, so teardown deletes it even if a later step fails.
        hosts.namespaces.push(ns.clone());
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        if !on_wan {
            return Host::new(name, IpAddr::V4(Ipv4Addr::LOCALHOST), Some(ns), Arc::clone(&self.shared));
        }
        let addr = Ipv4Addr::new(198, 18, slot, n);
        let port = format!("v{n}");
        ip_ok(&["-n", wan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip_ok(&["-n", wan, "link", "set", &port, "master", BRIDGE, "up"]);
        // No IPv6 link-local address: its duplicate-address check ends a second or two later
        // with a netlink event, which programs that watch the network (Chromium) take for a
        // change of network and abort their loads.
        ip_ok(&["-n", &ns, "link", "set", "eth0", "addrgenmode", "none"]);
        ip_ok(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        Host::new(name, IpAddr::V4(addr), Some(ns), Arc::clone(&self.shared))
    }

    /// Every process's log tail (and the one-shot commands' output), as printed on failure.
    pub fn report(&self) -> String {
        let procs = lock(&self.shared.procs).list.clone();
        let mut out = format!(
            "===== strait-e2e: logs of slot {} ({:?} mode, files in {})\n",
            self.slot.index(),
            self.shared.mode,
            self.shared.dir.display()
        );
        for p in &procs {
            out.push_str(&p.report(REPORT_LINES));
        }
        let runs = fs::read_to_string(self.shared.runs_log()).unwrap_or_default();
        if !runs.is_empty() {
            out.push_str(&format!("----- one-shot commands (last {REPORT_LINES} lines):\n{}\n", process::tail(&runs, REPORT_LINES)));
        }
        out.push_str("===== end of strait-e2e logs\n");
        out
    }

    /// Prints [`Net::report`] to stderr (done automatically when a test panics).
    pub fn dump_logs(&self) {
        eprintln!("{}", self.report());
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let teardown = self.teardown();
        teardown.stop_processes();
        if failed {
            self.dump_logs();
        }
        teardown.destroy_namespaces();
        let keep = failed || std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        if let Some(dir) = self.tempdir.take() {
            if keep {
                eprintln!("strait-e2e: kept {}", dir.keep().display());
            }
        }
    }
}

impl Net {
    /// What tears this net down from elsewhere, as its drop does: for a signal handler, which
    /// a drop never reaches (`teardown.run()`, then exit).
    pub fn teardown(&self) -> Teardown {
        Teardown {
            shared: Arc::clone(&self.shared),
            hosts: Arc::clone(&self.hosts),
            wan_ns: self.wan_ns.clone(),
            dir: self.tempdir.as_ref().map(|d| d.path().to_path_buf()),
        }
    }
}

/// Tears a [`Net`] down from outside its owner: stops its processes, deletes its network
/// namespaces (the WAN's with its delayer's rules) and its files.
#[derive(Clone)]
pub struct Teardown {
    shared: Arc<Shared>,
    hosts: Arc<Mutex<Hosts>>,
    wan_ns: Option<String>,
    dir: Option<PathBuf>,
}

impl Teardown {
    /// Everything: processes, namespaces, files.
    pub fn run(&self) {
        self.stop_processes();
        self.destroy_namespaces();
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }

    fn stop_processes(&self) {
        let procs = self.shared.close();
        process::stop_all(&procs, TEARDOWN_GRACE);
    }

    fn destroy_namespaces(&self) {
        let hosts = std::mem::take(&mut lock(&self.hosts).namespaces);
        for ns in hosts.iter().chain(&self.wan_ns) {
            if let Err(e) = ip::netns_destroy(ns) {
                eprintln!("strait-e2e: teardown: {e}");
            }
        }
    }
}

impl Shared {
    /// Panics if the net is already torn down.
    pub(crate) fn check_open(&self) {
        assert!(!lock(&self.procs).closed, "the Net of this host was already dropped");
    }

    /// Reserves the log file of process `name` on `host`, starts it and tracks it.
    pub(crate) fn register_proc(&self, host: &str, name: &str, start: impl FnOnce(PathBuf) -> Proc) -> Proc {
        let mut procs = lock(&self.procs);
        assert!(!procs.closed, "the Net of host {host} was already dropped");
        assert!(procs.names.insert(format!("{host}/{name}")), "a process named {name:?} already exists on host {host}");
        let file: String =
            format!("{host}.{name}.log").chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
        let proc = start(self.dir.join("logs").join(file));
        procs.list.push(proc.inner());
        proc
    }

    /// Appends a one-shot command's output to the runs log.
    pub(crate) fn record_run(&self, text: &str) {
        let path = self.runs_log();
        let written = OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| writeln!(f, "{text}"));
        if let Err(e) = written {
            eprintln!("strait-e2e: cannot write {}: {e}", path.display());
        }
    }

    fn runs_log(&self) -> PathBuf {
        self.dir.join("logs").join("runs.log")
    }

    /// Marks the net closed and returns every process it started.
    fn close(&self) -> Vec<Arc<ProcInner>> {
        let mut procs = lock(&self.procs);
        procs.closed = true;
        procs.list.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Teardown must still work after a panic elsewhere poisoned the lock.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `Ok` if this process can create namespaces, else the reason it cannot.
fn netns_support() -> Result<(), String> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc: {e}"))?;
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    if euid != "0" {
        return Err(format!("not root (euid {euid})"));
    }
    ip::netns_list().map(drop).map_err(|e| format!("`ip netns` unavailable: {e}"))
}

/// The WAN namespace's own address on the bridge.
fn wan_addr(slot: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, slot, 254)
}

/// Creates the WAN namespace with its bridge; deletes it again if a step fails.
fn create_wan(ns: &str, addr: Ipv4Addr) -> Result<String, String> {
    ip::ip(&["netns", "add", ns])?;
    let cidr = format!("{addr}/24");
    let steps: [&[&str]; 4] = [
        &["-n", ns, "link", "set", "lo", "up"],
        &["-n", ns, "link", "add", BRIDGE, "type", "bridge"],
        &["-n", ns, "addr", "add", &cidr, "dev", BRIDGE],
        &["-n", ns, "link", "set", BRIDGE, "up"],
    ];
    for step in steps {
        if let Err(e) = ip::ip(step) {
            let _ = ip::netns_destroy(ns);
            return Err(e);
        }
    }
    Ok(ns.to_owned())
}

/// Deletes namespaces of our own slot and of slots without a live owner.
fn remove_leftover_namespaces(mine: u8, is_stale: &dyn Fn(u8) -> bool) {
    let list = match ip::netns_list() {
        Ok(list) => list,
        Err(e) => return eprintln!("strait-e2e: cannot list namespaces: {e}"),
    };
    for ns in list {
        let Some(slot) = slot_of(&ns) else { continue };
        if slot == mine || is_stale(slot) {
            match ip::netns_destroy(&ns) {
                Ok(()) => eprintln!("strait-e2e: removed leftover namespace {ns}"),
                Err(e) => eprintln!("strait-e2e: cannot remove leftover namespace {ns}: {e}"),
            }
        }
    }
}

/// The slot number in a harness namespace name (`smz12-zone-1` → 12).
fn slot_of(ns: &str) -> Option<u8> {
    let (num, _) = ns.strip_prefix(NS_PREFIX)?.split_once('-')?;
    num.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_parsed_from_harness_namespaces_only() {
        assert_eq!(slot_of("smz12-zone-1"), Some(12));
        assert_eq!(slot_of("smz0-wan"), Some(0));
        assert_eq!(slot_of("smzx-wan"), None);
        assert_eq!(slot_of("other-ns"), None);
        assert_eq!(slot_of("smz300-a"), None);
    }
}
