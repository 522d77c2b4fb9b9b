//! Self-tests of the harness, needing no Strait binary: hosts reach each other, isolation
//! holds, teardown kills processes and deletes namespaces (also after a panic), waits fail
//! with a useful message, and concurrent nets stay apart.

use std::collections::HashSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use strait_multizone::{wait_for, Cmd, Host, Mode, Net, Proc};

const DEADLINE: Duration = Duration::from_secs(20);

/// Starts a Python HTTP server on `host:8000` serving the net's directory.
fn http_server(net: &Net, host: &Host) -> Proc {
    net.write_file("hello.txt", "hello from the server\n");
    let addr = host.addr().to_string();
    host.spawn("http", "python3", ["-u", "-m", "http.server", "--bind", addr.as_str(), "8000"])
}

/// Names of all network namespaces (seen from the root namespace).
fn netns_names() -> HashSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect()
}

/// Pids of the live (non-zombie) processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // fields[0] = state (field 3), fields[2] = pgrp (field 5).
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

fn has_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn two_hosts_reach_each_other_over_http() {
    let net = Net::new();
    let server = net.host("server");
    let client = net.host("client");
    assert_ne!(server.addr(), client.addr());
    let proc = http_server(&net, &server);
    let url = server.url(8000, "/hello.txt");

    client.http_ready(&url, DEADLINE);
    let body = client.http_client().get(&url).send().and_then(|r| r.text()).expect("GET hello.txt from the client host");
    assert_eq!(body, "hello from the server\n");

    // The server saw the client's own address as the source.
    let client_addr = client.addr().to_string();
    wait_for("the server to log the client's request", DEADLINE, || proc.log().contains(&format!("{client_addr} - -")).then_some(()));

    if let Some(wan) = net.wan() {
        // The WAN namespace (where delay/loss will be applied) sits on the same bridge.
        wan.tcp_connect(server.socket_addr(8000), Duration::from_secs(2)).expect("the WAN namespace reaches hosts");
    }

    if has_curl() {
        let out = client.run("curl", ["-sS", "--noproxy", "*", url.as_str()]);
        out.assert_success().assert_stdout_contains("hello from the server");
    } else {
        eprintln!("curl not installed: skipping the `host.run(\"curl\")` check");
    }
}

#[test]
fn isolated_host_cannot_reach_the_wan() {
    let net = Net::new();
    let server = net.host("server");
    let client = net.host("client");
    let island = net.isolated_host("island");
    http_server(&net, &server);
    client.http_ready(&server.url(8000, "/"), DEADLINE);
    client.tcp_connect(server.socket_addr(8000), Duration::from_secs(2)).expect("a host on the bridge connects");
    if net.mode() == Mode::Loopback {
        eprintln!("loopback mode ({}): no isolation to check", net.mode_reason());
        return;
    }
    let err = island.tcp_connect(server.socket_addr(8000), Duration::from_secs(1)).expect_err("a host off the bridge must not connect");
    eprintln!("as expected: {err}");
}

#[test]
fn run_returns_status_output_and_sees_extra_env() {
    let net = Net::new();
    let host = net.host("box");
    let out = host.run_cmd(Cmd::new("sh").args(["-c", "echo out; echo err >&2; echo \"$GREETING\"; exit 3"]).env("GREETING", "hi there"));
    assert_eq!(out.code(), Some(3), "{out}");
    assert_eq!(out.stdout, "out\nhi there\n");
    assert_eq!(out.stderr, "err\n");
    out.assert_failure();

    if net.is_namespaced() {
        // The command really runs inside the host's namespace.
        let addrs = host.run("ip", ["-4", "-o", "addr", "show"]);
        addrs.assert_success().assert_stdout_contains(&format!("inet {}/24", host.addr()));
    }

    let hung = catch_unwind(AssertUnwindSafe(|| host.run_cmd(Cmd::new("sleep").arg("30").timeout(Duration::from_millis(300)))));
    let msg = panic_message(hung.expect_err("a command past its timeout fails"));
    assert!(msg.contains("timed out") && msg.contains("sleep 30"), "{msg}");
}

#[test]
fn kill9_restart_and_terminate() {
    let net = Net::new();
    let server = net.host("server");
    let client = net.host("client");
    let proc = http_server(&net, &server);
    let url = server.url(8000, "/hello.txt");
    client.http_ready(&url, DEADLINE);
    assert!(proc.is_running());
    assert_eq!(proc.starts(), 1);

    let status = proc.kill9().expect("it was running");
    assert!(!status.success());
    assert!(!proc.is_running());
    client.tcp_connect(server.socket_addr(8000), Duration::from_secs(1)).expect_err("nothing listens after kill9");

    proc.restart();
    assert_eq!(proc.starts(), 2);
    client.http_ready(&url, DEADLINE);
    assert_eq!(proc.log().matches("==== strait-e2e: start #").count(), 2);

    proc.terminate().expect("it was running");
    assert!(!proc.is_running());
}

#[test]
fn processes_are_killed_on_drop_even_if_they_ignore_sigterm() {
    let net = Net::new();
    let host = net.host("box");
    let polite = host.spawn("polite", "sleep", ["1000"]);
    // A shell that ignores SIGTERM, with two children: the group must still die.
    let stubborn = host.spawn("stubborn", "sh", ["-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"]);
    let polite_pid = polite.pid().expect("polite runs");
    let stubborn_pid = stubborn.pid().expect("stubborn runs");
    wait_for("the stubborn shell to start its children", DEADLINE, || {
        let n = group_members(stubborn_pid).len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} processes in its group"))
        }
    });
    drop(net);
    assert!(group_members(polite_pid).is_empty());
    assert!(group_members(stubborn_pid).is_empty());
    assert!(!polite.is_running() && !stubborn.is_running());
}

#[test]
fn namespaces_are_deleted_on_drop_and_after_a_panic() {
    let created = Mutex::new(Vec::<String>::new());
    let kept_dir = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let net = Net::new();
        *kept_dir.lock().expect("lock") = Some(net.dir().to_path_buf());
        let a = net.host("zone-a");
        let b = net.host("zone-b");
        a.spawn("sleeper", "sleep", ["1000"]);
        let mut names = created.lock().expect("lock");
        names.extend(a.netns().map(str::to_owned));
        names.extend(b.netns().map(str::to_owned));
        drop(names);
        panic!("deliberate failure to exercise teardown during a panic");
    }));
    assert!(result.is_err());
    // A failed test keeps its directory for inspection; this failure was on purpose.
    let kept_dir = kept_dir.into_inner().expect("lock").expect("dir recorded");
    assert!(kept_dir.join("logs").is_dir(), "kept after the panic");
    let _ = fs::remove_dir_all(kept_dir);

    let normal = Net::new();
    let c = normal.host("zone-c");
    let c_ns = c.netns().map(str::to_owned);
    if !normal.is_namespaced() {
        eprintln!("loopback mode ({}): no namespaces to check", normal.mode_reason());
        return;
    }
    drop(normal);

    let created = created.into_inner().expect("lock");
    assert_eq!(created.len(), 2);
    let left = netns_names();
    for ns in created.iter().chain(&c_ns) {
        assert!(!left.contains(ns), "namespace {ns} survived teardown: {left:?}");
    }
}

#[test]
fn leftover_namespaces_of_a_released_slot_are_reclaimed() {
    let net = Net::new();
    if !net.is_namespaced() {
        eprintln!("loopback mode ({}): no namespaces to reclaim", net.mode_reason());
        return;
    }
    // Simulate what a killed test leaves behind: a namespace its teardown never removed.
    // Unique per process: another test process may own this slot right after us.
    let leftover = format!("smz{}-left{}", net.slot(), std::process::id());
    let status = Command::new("ip").args(["netns", "add", &leftover]).status().expect("run ip netns add");
    assert!(status.success());
    drop(net);
    assert!(netns_names().contains(&leftover));

    // The next net (whichever slot it gets) removes namespaces of slots nobody owns.
    let _next = Net::new();
    assert!(!netns_names().contains(&leftover), "{leftover} was not reclaimed");
}

#[test]
fn wait_for_times_out_naming_what_it_waited_for() {
    let err = catch_unwind(|| wait_for("the moon to turn blue", Duration::from_millis(200), || Err::<(), _>("still grey")))
        .expect_err("must time out");
    let msg = panic_message(err);
    assert!(msg.contains("the moon to turn blue"), "{msg}");
    assert!(msg.contains("still grey"), "{msg}");

    let err = catch_unwind(|| wait_for("a value", Duration::from_millis(100), || None::<u8>)).expect_err("must time out");
    assert!(panic_message(err).contains("a value"));
}

#[test]
fn waiting_on_a_server_that_exited_fails_at_once() {
    let net = Net::new();
    let host = net.host("box");
    let dead = host.spawn("crasher", "sh", ["-c", "echo boom >&2; exit 7"]);
    let start = std::time::Instant::now();
    let err = catch_unwind(AssertUnwindSafe(|| dead.wait_http_ready(&host, &host.url(8000, "/"), Duration::from_secs(30))))
        .expect_err("must fail");
    let msg = panic_message(err);
    assert!(start.elapsed() < Duration::from_secs(10), "did not fail fast");
    assert!(msg.contains("crasher") && msg.contains("exit status: 7"), "{msg}");
    assert!(msg.contains("boom"), "log tail included: {msg}");
}

#[test]
fn two_nets_at_once_get_different_slots_and_addresses() {
    let one = Net::new();
    let two = Net::new();
    assert_ne!(one.slot(), two.slot());
    let a = one.host("global");
    let b = two.host("global");
    assert_ne!(a.addr(), b.addr());
    if one.is_namespaced() && two.is_namespaced() {
        assert_ne!(a.netns(), b.netns());
    }
    let lock = format!("/tmp/strait-e2e/slot-{}.lock", one.slot());
    let content = fs::read_to_string(&lock).expect("slot lock file exists");
    assert!(content.contains(&format!("pid {}", std::process::id())), "{content}");

    // Same port on both: no collision between the two nets.
    let s1 = http_server(&one, &a);
    let s2 = http_server(&two, &b);
    a.http_ready(&a.url(8000, "/"), DEADLINE);
    b.http_ready(&b.url(8000, "/"), DEADLINE);
    assert!(s1.is_running() && s2.is_running());
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned())).unwrap_or_default()
}
