//! Scenario: `straitctl demo`, as a newcomer runs it. `demo up` starts the two-zone demo in
//! the background (loopback addresses, no root); its frontend answers through the whole chain
//! (frontend and backend v1 in zone-1, store in zone-2 through the gateways); each `straitctl`
//! command it suggests has its effect, checked through the frontend (a permission denying
//! backend -> store shows as the store's 403 in the frontend's answer, and its deletion lets
//! the calls through again); `demo traffic` prints who answers; `demo kill backend --zone
//! zone-1` moves the frontend's calls to backend v2 in zone-2; `demo status` tells which
//! processes run; `demo down` leaves no process and no directory behind. `up` prints the
//! traffic map's URL, and its suggested `straitctl inspect` finds a sidecar of zone-2; in the
//! namespaces scenario, `--with-prometheus` starts a Prometheus that scrapes every target.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_multizone::{bin, wait_for, Net};

const DEADLINE: Duration = Duration::from_secs(30);

fn straitctl(args: &[&str]) -> Output {
    Command::new(bin("straitctl")).args(args).output().expect("run straitctl")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {}\nstdout:\n{stdout}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Stops the demo even when the test fails.
struct Demo<'a>(&'a Path);

impl Drop for Demo<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = straitctl(&["demo", "down", "--dir", &self.0.display().to_string()]);
        }
    }
}

/// The frontend's answer: status and JSON.
fn get(frontend: &str) -> Result<(u16, Value), String> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let response = client.get(format!("{frontend}/api")).send().map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// `service version@zone` of each hop of an answer.
fn chain(answer: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut hop = Some(answer);
    while let Some(h) = hop {
        let f = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        out.push(format!("{} {}@{}", f("service"), f("version"), f("zone")));
        hop = h.get("calls");
    }
    out
}

/// The `straitctl ...` command line of `up`'s suggestions that contains `needle`.
fn suggested(stdout: &str, needle: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("straitctl ") && l.contains(needle))
        .unwrap_or_else(|| panic!("`demo up` suggests no command with {needle:?}:\n{stdout}"));
    line.split_whitespace().skip(1).map(str::to_string).collect()
}

#[test]
fn on_loopback_addresses() {
    // Other scenarios use 127.77.*.
    scenario(&["--address-prefix", "127.78", "--no-namespaces"], "http://127.78.11.10:8080", "loopback");
}

#[test]
fn in_network_namespaces() {
    let net = Net::new();
    if !net.is_namespaced() {
        println!("SKIPPED: the demo makes network namespaces only with root and `ip netns` ({})", net.mode_reason());
        return;
    }
    drop(net);
    // With Prometheus where it is installed (always in CI: `.ci/run` installs it).
    let mut flags = vec!["--address-prefix", "127.82"];
    if strait_multizone::system_program(&["prometheus"], "prometheus").is_some() {
        flags.push("--with-prometheus");
    }
    scenario(&flags, "http://198.19.82.20:8080", "namespaces");
}

/// The whole scenario, with `demo up` given `flags`; its frontend is at `frontend`.
fn scenario(flags: &[&str], frontend: &str, mode: &str) {
    let net = Net::new();
    let dir = net.dir().join("demo");
    let dir_arg = dir.display().to_string();
    let _demo = Demo(&dir);
    let started = Instant::now();
    let mut up_args = vec!["demo", "up", "--dir", &dir_arg];
    up_args.extend(flags);
    let up = ok(straitctl(&up_args), "demo up");
    println!("FIGURE demo-up-{mode} ms={:.0}", started.elapsed().as_secs_f64() * 1000.0);
    assert!(up.contains(&format!("{frontend}/")), "up prints the frontend's URL:\n{up}");
    let frontend = || get(frontend);
    let api = up
        .lines()
        .find_map(|l| l.trim().strip_prefix("REST API"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the REST API's URL")
        .to_string();
    assert!(up.contains(&format!("{api}/map")), "up prints the traffic map's URL:\n{up}");
    if mode == "namespaces" {
        // Zones reach each other only through their gateways: zone-1 cannot reach store.
        let curl = |ns: &str| {
            Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-s", "-m", "2", "-o", "/dev/null", "http://198.19.82.32:8080/healthz"])
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(curl("sd82-zone-2"), "store answers inside its zone");
        assert!(!curl("sd82-zone-1"), "zone-1 cannot reach zone-2's store directly");
    }

    let (status, answer) = frontend().expect("the frontend answers");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(chain(&answer), ["frontend v1@zone-1", "backend v1@zone-1", "store v1@zone-2"], "backend stays local; store is in zone-2");

    let traffic = ok(straitctl(&["demo", "traffic", "--dir", &dir_arg, "--seconds", "2", "--rate", "5"]), "demo traffic");
    assert!(traffic.lines().filter(|l| l.contains("backend v1@zone-1")).count() >= 2, "a line a second naming who answered:\n{traffic}");

    // The suggested inspection of a sidecar of zone-2, from the global.
    let run = |line: Vec<String>, what: &str| ok(straitctl(&line.iter().map(String::as_str).collect::<Vec<_>>()), what);
    let inspected = run(suggested(&up, "inspect dataplane backend-v2 --mesh"), "the suggested inspection");
    assert!(inspected.contains("in zone zone-2") && inspected.contains("dataplane: backend-v2"), "{inspected}");
    // Prometheus, when asked for: it scrapes the 4 sidecars, 2 gateways and 3 control planes.
    if let Some(url) = up.lines().find_map(|l| l.trim().strip_prefix("Prometheus")).and_then(|l| l.split_whitespace().next()) {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("a client");
        wait_for("the demo's Prometheus to scrape every target", Duration::from_secs(60), || {
            let answer: Value = client
                .get(format!("{url}api/v1/query"))
                .query(&[("query", "count(up == 1)")])
                .send()
                .and_then(|r| r.json())
                .map_err(|e| e.to_string())?;
            match answer["data"]["result"][0]["value"][1].as_str() {
                Some("9") => Ok(()),
                other => Err(format!("{other:?} targets up: {answer}")),
            }
        });
    }

    // The suggested 50/50 split of backend across v1 (zone-1) and v2 (zone-2).
    run(suggested(&up, "split-backend.yaml"), "the suggested split");
    let backends = |n: usize| -> Result<(usize, usize), String> {
        let mut counts = (0, 0);
        for _ in 0..n {
            match frontend()? {
                (200, body) if chain(&body)[1] == "backend v1@zone-1" => counts.0 += 1,
                (200, body) if chain(&body)[1] == "backend v2@zone-2" => counts.1 += 1,
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(counts)
    };
    let (v1, v2) = wait_for("the split to send calls to both versions", DEADLINE, || match backends(40)? {
        (v1, v2) if v1 >= 8 && v2 >= 8 => Ok((v1, v2)),
        counts => Err(format!("{counts:?} of 40")),
    });
    println!("FIGURE demo-split-{mode} v1={v1} v2={v2} of 40");
    let traffic = ok(straitctl(&["demo", "traffic", "--dir", &dir_arg, "--seconds", "2", "--rate", "10"]), "demo traffic");
    assert!(traffic.contains("backend v1@zone-1") && traffic.contains("backend v2@zone-2"), "both versions answer:\n{traffic}");
    // The suggested fault injection: backend v2's sidecar answers 503 to half its requests,
    // the frontend's retries hide them (every call answers), and the suggested inspection of
    // v2's metrics shows the faults it gave.
    run(suggested(&up, "fault-backend-v2.yaml"), "the suggested fault injection");
    let mut stats = suggested(&up, "inspect dataplane backend-v2 --stats");
    stats.extend(["-o".to_string(), "json".to_string()]);
    let faults = wait_for("backend v2's sidecar to inject faults, hidden by the frontend's retries", DEADLINE, || {
        let (v1, v2) = backends(20)?;
        let answer: Value =
            serde_json::from_str(&run(stats.clone(), "the suggested inspection of v2's metrics")).map_err(|e| e.to_string())?;
        let text = answer["result"]["metrics"].as_str().unwrap_or_default();
        let faults: f64 = text
            .lines()
            .filter(|l| l.starts_with("strait_dp_faults_injected_total{") && l.contains("direction=\"inbound\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if faults >= 1.0 && v1 + v2 == 20 {
            Ok(faults)
        } else {
            Err(format!("{faults} faults, answers {v1} + {v2}"))
        }
    });
    println!("FIGURE demo-fault-{mode} faults={faults}");
    // `demo traffic` shows what the retries hide: the share of v2's answers to the frontend
    // that were 503, from the traffic map.
    let share = wait_for("`demo traffic` to show the 503s at backend v2's sidecar", DEADLINE, || {
        let traffic = ok(straitctl(&["demo", "traffic", "--dir", &dir_arg, "--seconds", "2", "--rate", "10"]), "demo traffic");
        let last = traffic.lines().rev().find(|l| l.contains("5xx at the sidecars:")).unwrap_or_default().to_string();
        let share = last
            .split("frontend→backend@zone-2 ")
            .nth(1)
            .and_then(|rest| rest.split('%').next())
            .and_then(|n| n.trim().parse::<u32>().ok());
        match share {
            Some(share) if (35..=65).contains(&share) => Ok(share),
            _ => Err(format!("no 5xx share of about 50% for frontend→backend@zone-2:\n{traffic}")),
        }
    });
    println!("FIGURE demo-fault-{mode} sidecar-5xx-share={share}%");
    run(suggested(&up, "delete meshfaultinjection"), "the suggested delete of the fault");
    run(suggested(&up, "delete meshhttproute split-backend"), "the suggested delete of the split");
    wait_for("the calls to stay in zone-1 again", DEADLINE, || match backends(20)? {
        (20, 0) => Ok(()),
        counts => Err(format!("{counts:?} of 20")),
    });

    // The suggested outlier detection: backend v1 failing is ejected, and the calls go to v2
    // (the frontend's retries hide the failures on the way); healed, v1 gets them back.
    run(suggested(&up, "outlier-backend.yaml"), "the suggested outlier detection");
    run(suggested(&up, "demo fail"), "demo fail");
    wait_for("v1, failing, to be ejected and the calls to move to v2", DEADLINE, || match backends(10)? {
        (0, 10) => Ok(()),
        counts => Err(format!("{counts:?} of 10")),
    });
    let traffic = ok(straitctl(&["demo", "traffic", "--dir", &dir_arg, "--seconds", "2", "--rate", "10"]), "demo traffic");
    assert!(traffic.contains("backend v2@zone-2") && !traffic.contains("backend v1@zone-1"), "v2 answers while v1 fails:\n{traffic}");
    run(suggested(&up, "--heal"), "demo fail --heal");
    wait_for("healed v1 to get the calls back once its ejection ends", DEADLINE, || match backends(5)? {
        (5, 0) => Ok(()),
        counts => Err(format!("{counts:?} of 5")),
    });

    let killed = ok(straitctl(&["demo", "kill", "backend", "--zone", "zone-1", "--dir", &dir_arg]), "demo kill");
    assert!(killed.contains("backend-v1-sidecar") && killed.contains("backend-v1-app"), "{killed}");
    let kill = Instant::now();
    wait_for("the frontend's calls to move to backend v2 in zone-2", DEADLINE, || match frontend()? {
        (200, body) if chain(&body)[1] == "backend v2@zone-2" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let moved = kill.elapsed();
    println!("FIGURE demo-failover-{mode} ms={:.0}", moved.as_secs_f64() * 1000.0);
    assert!(moved <= Duration::from_secs(5), "failover took {moved:?}");

    // The suggested permission denies backend -> store; the frontend's answer shows why. (After
    // the failover: with backend v1 up, its 502s would have the frontend's outlier detection
    // eject it for 30 s, as the mesh's default MeshCircuitBreaker says, and the calls would
    // move to v2 meanwhile.)
    let apply = suggested(&up, "apply -f");
    ok(straitctl(&apply.iter().map(String::as_str).collect::<Vec<_>>()), "the suggested apply");
    let (_, denied) = wait_for("the frontend to show the denial", DEADLINE, || match frontend()? {
        (502, body) => Ok((502, body)),
        other => Err(format!("{other:?}")),
    });
    assert!(denied.to_string().contains("spiffe://default/backend is not allowed to reach store"), "{denied}");
    let delete = suggested(&up, "delete meshtrafficpermission");
    ok(straitctl(&delete.iter().map(String::as_str).collect::<Vec<_>>()), "the suggested delete");
    wait_for("the frontend to answer again", DEADLINE, || match frontend()? {
        (200, body) => Ok(body),
        other => Err(format!("{other:?}")),
    });

    let status = ok(straitctl(&["demo", "status", "--dir", &dir_arg]), "demo status");
    let line = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in:\n{status}")).to_string();
    assert!(line("backend-v1-sidecar").contains("stopped"), "{status}");
    assert!(line("frontend-v1-sidecar").contains("healthy"), "{status}");

    let state: Value = serde_json::from_slice(&std::fs::read(dir.join("demo.json")).expect("the demo's state")).expect("JSON");
    let pids: Vec<u64> = state["processes"].as_array().expect("processes").iter().filter_map(|p| p["pid"].as_u64()).collect();
    let with_prometheus = usize::from(flags.contains(&"--with-prometheus"));
    assert_eq!(
        pids.len(),
        13 + with_prometheus,
        "global, two zones with a gateway each, four workloads with their sidecars (and Prometheus)"
    );
    if with_prometheus == 1 {
        assert!(line("prometheus").contains("healthy"), "{status}");
    }
    ok(straitctl(&["demo", "down", "--dir", &dir_arg]), "demo down");
    assert!(!dir.exists(), "down removes the demo's directory");
    // Zombies do not count: they have exited, and wait for whoever adopted them to reap them.
    let running: Vec<u64> = pids
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')))
        })
        .collect();
    assert!(running.is_empty(), "processes left after down: {running:?}");
    if mode == "namespaces" {
        let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        let left = String::from_utf8_lossy(&list.stdout).lines().filter(|l| l.starts_with("sd82-")).count();
        assert_eq!(left, 0, "down removes the demo's namespaces");
        let link = Command::new("ip").args(["link", "show", "sd82-host"]).output().expect("ip link show");
        assert!(!link.status.success(), "down removes the demo's link on this machine");
    }
}
