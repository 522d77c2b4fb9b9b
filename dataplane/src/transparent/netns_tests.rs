//! `install`/`uninstall` against the real iptables, each test in a network namespace of its
//! own: the outer `#[test]` re-runs this test binary under `unshare --net` with one inner,
//! `#[ignore]`d test selected, as `strait_proxy_core`'s `orig_dst` tests do. Without root or
//! the tools, the outer test prints why and passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait_proxy_core::orig_dst::original_dst;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::*;

/// Set only in the child process that runs inside a fresh network namespace.
const IN_NETNS: &str = "STRAIT_TEST_IN_NETNS";
/// The uid whose connections the rules leave alone; the test itself connects as root.
const PROXY_UID: u32 = 12345;
const TOOLS: [&str; 9] = ["unshare", "nsenter", "ip", "iptables", "iptables-save", "ip6tables", "ip6tables-save", "bash", "timeout"];

fn skip_reason() -> Option<String> {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        return Some("needs root to change iptables in a network namespace".into());
    }
    let missing: Vec<&str> =
        TOOLS.into_iter().filter(|tool| !Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success())).collect();
    (!missing.is_empty()).then(|| format!("missing tools: {}", missing.join(", ")))
}

/// Runs the inner test `name` of this module in a new network namespace; it must pass and
/// print `marker`.
fn in_netns(name: &str, marker: &str) {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED transparent::netns_tests::{name}: {reason}");
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let test = format!("transparent::netns_tests::{name}");
    let output = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args([test.as_str(), "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "inner test {name} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the inner test {name} did not run:\n{stdout}\n{stderr}");
    assert!(stdout.contains(marker), "{name} did not reach its end:\n{stdout}\n{stderr}");
}

fn assert_in_netns() {
    assert!(std::env::var_os(IN_NETNS).is_some(), "refusing to change iptables outside a throwaway network namespace");
}

/// Runs a setup command; panics with its stderr if it fails.
fn sh(argv: &[&str]) -> String {
    let output = Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output().expect("spawn");
    assert!(output.status.success(), "{argv:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The nat table as `iptables-save` prints it, without comments and counters.
fn nat(family: Family) -> Vec<String> {
    sh(&[family.save_binary(), "-t", "nat"])
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| if line.starts_with(':') { line.split(' ').take(2).collect::<Vec<_>>().join(" ") } else { line.to_string() })
        .collect()
}

fn ours(table: &[String]) -> Vec<String> {
    table.iter().filter(|line| line.contains("STRAIT")).cloned().collect()
}

fn config() -> TransparentConfig {
    let mut config = TransparentConfig::new(PROXY_UID);
    config.exclude_outbound_ports = vec![5432];
    config.exclude_outbound_cidrs = vec!["198.18.1.0/24".parse().expect("cidr"), "2001:db8:1::/48".parse().expect("cidr")];
    config.exclude_inbound_ports = vec![22, 9901];
    config
}

#[test]
fn installing_twice_leaves_each_rule_once() {
    in_netns("install_twice_in_netns", "INSTALL_TWICE_OK");
}

#[test]
#[ignore = "run by installing_twice_leaves_each_rule_once in a network namespace"]
fn install_twice_in_netns() {
    assert_in_netns();
    let first = install(&config(), false).expect("first install");
    let after_first = (nat(Family::V4), nat(Family::V6));
    let second = install(&config(), false).expect("second install");
    assert_eq!((nat(Family::V4), nat(Family::V6)), after_first, "the second install changed the nat tables");
    assert!(first.iter().any(|c| c.ends_with("-A OUTPUT -p tcp -j STRAIT_OUTBOUND")), "{first:?}");
    assert!(second.iter().all(|c| !c.contains(" -N ") && !c.contains(" -A OUTPUT") && !c.contains(" -A PREROUTING")), "{second:?}");
    for family in [Family::V4, Family::V6] {
        let rules = ours(&nat(family));
        let mut unique = rules.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), rules.len(), "{family:?}: a rule appears twice:\n{}", rules.join("\n"));
        let added = rules.iter().filter(|line| line.starts_with("-A ")).count();
        let generated = install_commands(&config(), family).iter().filter(|c| c.action == rules::Action::Append).count();
        assert_eq!(added, generated, "{family:?}:\n{}", rules.join("\n"));
        assert_eq!(rules.iter().filter(|l| l.as_str() == "-A OUTPUT -p tcp -j STRAIT_OUTBOUND").count(), 1);
        assert_eq!(rules.iter().filter(|l| l.as_str() == "-A PREROUTING -p tcp -j STRAIT_INBOUND").count(), 1);
    }
    let mut outbound_only = config();
    outbound_only.redirect_inbound = false;
    install(&outbound_only, false).expect("install without inbound");
    let rules = ours(&nat(Family::V4));
    assert!(!rules.iter().any(|l| l.contains("STRAIT_IN")), "inbound leftovers:\n{}", rules.join("\n"));
    println!("INSTALL_TWICE_OK");
}

#[test]
fn uninstall_removes_every_rule_and_is_idempotent() {
    in_netns("uninstall_in_netns", "UNINSTALL_OK");
}

#[test]
#[ignore = "run by uninstall_removes_every_rule_and_is_idempotent in a network namespace"]
fn uninstall_in_netns() {
    assert_in_netns();
    assert_eq!(uninstall(false).expect("uninstall with nothing installed"), Vec::<String>::new());
    sh(&["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN"]);
    let before = (nat(Family::V4), nat(Family::V6));
    install(&config(), false).expect("install");
    assert!(!ours(&nat(Family::V4)).is_empty() && !ours(&nat(Family::V6)).is_empty());
    let removed = uninstall(false).expect("uninstall");
    assert!(removed.iter().any(|c| c == "iptables -w -t nat -X STRAIT_OUTBOUND"), "{removed:?}");
    assert!(removed.iter().any(|c| c == "ip6tables -w -t nat -X STRAIT_OUTBOUND"), "{removed:?}");
    assert_eq!((nat(Family::V4), nat(Family::V6)), before, "uninstall left something behind or removed a foreign rule");
    assert_eq!(uninstall(false).expect("second uninstall"), Vec::<String>::new());
    println!("UNINSTALL_OK");
}

#[test]
fn a_dry_run_changes_nothing() {
    in_netns("dry_run_in_netns", "DRY_RUN_OK");
}

#[test]
#[ignore = "run by a_dry_run_changes_nothing in a network namespace"]
fn dry_run_in_netns() {
    assert_in_netns();
    let empty = (nat(Family::V4), nat(Family::V6));
    let planned = install(&config(), true).expect("dry install");
    assert!(planned.contains(&"iptables -w -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001".to_string()), "{planned:?}");
    assert!(planned.contains(&"ip6tables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND".to_string()), "{planned:?}");
    assert_eq!((nat(Family::V4), nat(Family::V6)), empty, "a dry install changed the nat tables");
    install(&config(), false).expect("install");
    let installed = (nat(Family::V4), nat(Family::V6));
    assert!(!uninstall(true).expect("dry uninstall").is_empty());
    assert_eq!((nat(Family::V4), nat(Family::V6)), installed, "a dry uninstall changed the nat tables");
    println!("DRY_RUN_OK");
}

#[test]
fn connections_are_redirected_as_configured() {
    in_netns("redirect_in_netns", "REDIRECT_OK");
}

/// What a client should see: the greeting of a listener, or a refused connection.
#[derive(Debug)]
enum Expect {
    Reached(&'static str),
    Refused,
}

/// One connection: who makes it (uid, or from the peer namespace), where to, what happens.
struct Case {
    what: &'static str,
    uid: Option<u32>,
    from_peer: bool,
    host: &'static str,
    port: u16,
    expect: Expect,
}

const fn case(what: &'static str, uid: Option<u32>, from_peer: bool, host: &'static str, port: u16, expect: Expect) -> Case {
    Case { what, uid, from_peer, host, port, expect }
}

/// Inside the namespace: `10.99.0.1` is this host's end of a veth pair whose other end,
/// `10.99.0.2`, sits in a second namespace that plays another host; `198.18.0.0/16` and
/// `2001:db8::/64` are routed out of that veth, and a filter rule resets any connection to
/// them that was not redirected (so "not redirected" is a quick refusal). Listeners answer
/// each connection with their name and the original destination they read.
#[tokio::test]
#[ignore = "run by connections_are_redirected_as_configured in a network namespace"]
async fn redirect_in_netns() {
    assert_in_netns();
    sh(&["ip", "link", "set", "lo", "up"]);
    let peer = Peer::start();
    sh(&["ip", "route", "add", "198.18.0.0/16", "dev", "strait-a"]);
    sh(&["ip", "-6", "addr", "add", "fd99::1/64", "dev", "strait-a", "nodad"]);
    sh(&["ip", "-6", "route", "add", "2001:db8::/64", "dev", "strait-a"]);
    sh(&["iptables", "-A", "OUTPUT", "-d", "198.18.0.0/16", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]);
    sh(&["ip6tables", "-A", "OUTPUT", "-d", "2001:db8::/64", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]);

    let mut listeners = JoinSet::new();
    for (addr, name) in [
        (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001), "outbound"),
        (SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 15001), "outbound"),
        (SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15006), "inbound"),
        (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7777), "local"),
    ] {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listeners.spawn(greet(listener, name));
    }

    install(&config(), false).expect("install");
    let root = None;
    let proxy = Some(PROXY_UID);
    let cases = [
        case("the app's connection goes to the outbound port", root, false, "198.18.0.99", 80, Expect::Reached("outbound 198.18.0.99:80")),
        case("over IPv6 too", root, false, "2001:db8::99", 80, Expect::Reached("outbound [2001:db8::99]:80")),
        case("an excluded outbound port goes out directly", root, false, "198.18.0.99", 5432, Expect::Refused),
        case("an excluded network is reached directly", root, false, "198.18.1.5", 80, Expect::Refused),
        case("the proxy's own connections are not redirected", proxy, false, "198.18.0.99", 80, Expect::Refused),
        case("loopback is not redirected", root, false, "127.0.0.1", 7777, Expect::Reached("local ")),
        case("the app calling its own address is not redirected", root, false, "10.99.0.1", 8080, Expect::Refused),
        case(
            "the proxy calling its own workload enters inbound",
            proxy,
            false,
            "10.99.0.1",
            8080,
            Expect::Reached("inbound 10.99.0.1:8080"),
        ),
        case(
            "another host's connection goes to the inbound port",
            root,
            true,
            "10.99.0.1",
            8080,
            Expect::Reached("inbound 10.99.0.1:8080"),
        ),
        case("an excluded inbound port reaches the host directly", root, true, "10.99.0.1", 22, Expect::Refused),
    ];
    for case in &cases {
        let result = connect(case, &peer).await;
        match (&case.expect, &result) {
            (Expect::Reached(greeting), Ok(line)) if line.starts_with(greeting) => {}
            (Expect::Refused, Err(error)) if error.contains("refused") => {}
            _ => panic!("{}: expected {:?}, got {result:?}\n{}", case.what, case.expect, ours(&nat(Family::V4)).join("\n")),
        }
        println!("ok: {}", case.what);
    }

    uninstall(false).expect("uninstall");
    let after = connect(&cases[0], &peer).await;
    assert!(after.as_ref().is_err_and(|e| e.contains("refused")), "still redirected after uninstall: {after:?}");
    listeners.abort_all();
    println!("REDIRECT_OK");
}

/// Accepts connections and answers each with `<name> <original destination>`.
async fn greet(listener: TcpListener, name: &'static str) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let original = original_dst(&stream).map_or_else(|e| format!("none ({e})"), |addr| addr.to_string());
        let _ = stream.write_all(format!("{name} {original}\n").as_bytes()).await;
    }
}

/// Connects with bash's `/dev/tcp` (as `case.uid`, from the peer namespace if asked) and
/// returns the line the listener sent, or bash's error.
async fn connect(case: &Case, peer: &Peer) -> Result<String, String> {
    const SCRIPT: &str = r#"exec 3<>"/dev/tcp/$0/$1" && read -r line <&3 && echo "$line""#;
    let mut command = if case.from_peer {
        let mut nsenter = tokio::process::Command::new("nsenter");
        nsenter.args(["-t", &peer.pid.to_string(), "-n", "timeout"]);
        nsenter
    } else {
        tokio::process::Command::new("timeout")
    };
    command.args(["5", "bash", "-c", SCRIPT, case.host, &case.port.to_string()]).stdin(Stdio::null());
    if let Some(uid) = case.uid {
        command.uid(uid).gid(uid);
    }
    let output = command.output().await.map_err(|e| format!("spawn: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// A second network namespace (held open by a `sleep` we started) joined to ours by a veth pair.
struct Peer {
    child: std::process::Child,
    pid: u32,
}

impl Peer {
    fn start() -> Self {
        let child = Command::new("unshare").args(["--net", "--", "sleep", "300"]).spawn().expect("spawn the peer namespace");
        let pid = child.id();
        let peer = Peer { child, pid };
        // `unshare` execs `sleep` in place once it has entered the new namespace: wait for that.
        let own = std::fs::read_link("/proc/self/ns/net").expect("own namespace");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().is_none_or(|ns| ns == own) {
            assert!(Instant::now() < deadline, "the peer namespace did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = pid.to_string();
        sh(&["ip", "link", "add", "strait-a", "type", "veth", "peer", "name", "strait-b", "netns", &pid]);
        sh(&["ip", "addr", "add", "10.99.0.1/24", "dev", "strait-a"]);
        sh(&["ip", "link", "set", "strait-a", "up"]);
        for argv in [
            ["ip", "link", "set", "lo", "up"].as_slice(),
            &["ip", "addr", "add", "10.99.0.2/24", "dev", "strait-b"],
            &["ip", "link", "set", "strait-b", "up"],
        ] {
            let mut full = vec!["nsenter", "-t", &pid, "-n"];
            full.extend_from_slice(argv);
            sh(&full);
        }
        peer
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
