//! Scenarios: VM zones as `deploy/vm` installs and runs them.
//!
//! - `install.sh` into an empty root, twice: the files land with their owners and modes, and the
//!   second run changes nothing; `--uninstall` leaves the root as it was. Every unit passes
//!   `systemd-analyze verify` against that root and `systemd-analyze security --offline=yes`
//!   rates it OK or better.
//! - A whole mesh of VMs run from the units themselves (see `strait_multizone::units`): a
//!   global, two zones each with its gateway on the zone's machine, and a workload per zone with
//!   a `strait-dp@` instance and the transparent proxy on, configured only by the env files
//!   `straitctl` and the zone wrote. A request crosses from zone-1's workload to zone-2's;
//!   stopping one sidecar's unit and crashing the other's leave no interception rules behind.
//!
//! Needs root (users, owners, namespaces) and, for the ratings, `systemd-analyze` (Debian's
//! `systemd` package, installed by `scripts/test.sh`); without them each says it is skipped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strait_multizone::control_plane::{Global, API_PORT, SYNC};
use strait_multizone::sidecar::{echo_server, http_get, http_server};
use strait_multizone::units::{install_sh, seed_root, Machine};
use strait_multizone::{bin_dir, wait_for, Net};

const UNITS: [&str; 4] = ["strait-global.service", "strait-zone.service", "strait-gateway.service", "strait-dp@web.service"];

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Every path under `root` with its mode, owner, size, content and (for files) mtime.
fn snapshot(root: &Path, with_mtimes: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        let relative = path.strip_prefix(root).expect("under the root").to_path_buf();
        let mut line = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("read_dir").map(|e| e.expect("entry").path()));
        } else {
            let content = std::fs::read(&path).expect("read");
            line.push_str(&format!(" {} bytes {:x}", content.len(), md5_like(&content)));
            if with_mtimes {
                line.push_str(&format!(" mtime {}.{}", meta.mtime(), meta.mtime_nsec()));
            }
        }
        out.insert(relative, line);
    }
    out
}

/// A content fingerprint (FNV-1a, 64 bits): enough to tell two versions of a file apart.
fn md5_like(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (path, line) in after {
        match before.get(path) {
            None => out.push(format!("+ {} {line}", path.display())),
            Some(old) if old != line => out.push(format!("~ {} {old} -> {line}", path.display())),
            Some(_) => {}
        }
    }
    out.extend(before.keys().filter(|p| !after.contains_key(*p)).map(|p| format!("- {}", p.display())));
    out
}

fn run_install(args: &[&str]) -> String {
    let out = install_sh(args);
    assert!(out.status.success(), "install.sh {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_sh_is_idempotent_and_uninstall_restores_the_root_and_the_units_verify_and_rate_ok() {
    if !is_root() {
        println!("SKIPPED install.sh: it creates users and sets owners (needs root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    seed_root(&root);
    let (r, from) = (root.to_str().unwrap(), bin_dir());
    let from = from.to_str().unwrap();
    let before = snapshot(&root, true);

    run_install(&["--role", "global,zone,gateway,dataplane", "--root", r, "--from", from]);
    let first = snapshot(&root, true);
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let uid = |user: &str| -> u32 {
        passwd.lines().find_map(|l| l.strip_prefix(&format!("{user}:x:"))).and_then(|rest| rest.split(':').next()?.parse().ok()).unwrap()
    };
    let expect = |path: &str, mode: u32, owner: u32| {
        let meta = std::fs::metadata(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (mode, owner), "{path}: mode and owner");
    };
    for (binary, user, state) in [
        ("strait-global", "strait-global", Some("global")),
        ("strait-zone", "strait-zone", Some("zone")),
        ("strait-gateway", "strait-gateway", Some("gateway")),
        ("strait-dp", "strait-dp", None),
    ] {
        expect(&format!("usr/local/bin/{binary}"), 0o755, 0);
        let owner = uid(user);
        assert!(owner > 0 && owner < 1000, "{user} is a system user ({owner})");
        if let Some(state) = state {
            expect(&format!("var/lib/strait/{state}"), 0o700, owner);
        }
    }
    for unit in ["strait-global.service", "strait-zone.service", "strait-gateway.service", "strait-dp@.service"] {
        expect(&format!("etc/systemd/system/{unit}"), 0o644, 0);
        assert_eq!(std::fs::read(root.join("etc/systemd/system").join(unit)).unwrap(), std::fs::read(deploy(unit)).unwrap());
    }
    expect("etc/strait", 0o755, 0);
    let dp_env = std::fs::read_to_string(root.join("etc/strait/dp.env")).unwrap();
    assert!(dp_env.contains(&format!("\nSTRAIT_PROXY_UID={}\n", uid("strait-dp"))), "{dp_env}");
    for example in ["global.env.example", "zone.env.example", "gateway.env.example", "dp-web.env.example", "dp-web.yaml.example"] {
        expect(&format!("etc/strait/{example}"), 0o644, 0);
    }
    let yaml = std::fs::read_to_string(root.join("etc/strait/dp-web.yaml.example")).unwrap();
    let example = strait_api::Resource::from_str_any(&yaml).unwrap_or_else(|e| panic!("the example Dataplane is valid: {e:?}"));
    assert_eq!(example.kind, strait_api::ResourceType::Dataplane);

    run_install(&["--role", "global,zone,gateway,dataplane", "--root", r, "--from", from]);
    assert_eq!(diff(&first, &snapshot(&root, true)), Vec::<String>::new(), "a second run changes nothing");

    // What the operator adds stays through an uninstall.
    std::fs::write(root.join("var/lib/strait/zone/kept"), "state").unwrap();
    std::fs::write(root.join("etc/strait/zone.env"), "STRAIT_ZONE=zone-1\n").unwrap();
    let out = run_install(&["--uninstall", "--root", r]);
    assert!(out.contains("kept /var/lib/strait/zone"), "{out}");
    assert!(root.join("etc/strait/zone.env").is_file() && root.join("var/lib/strait/zone/kept").is_file());
    std::fs::remove_file(root.join("etc/strait/zone.env")).unwrap();
    std::fs::remove_dir_all(root.join("var")).unwrap();
    std::fs::remove_dir(root.join("etc/strait")).unwrap();
    assert!(!root.join("usr").exists() && !root.join("etc/systemd").exists(), "uninstall removed the directories it made");

    // The shadow tools keep a backup of each file they edit (`passwd-`, ...): theirs, not ours.
    let mut after = snapshot(&root, false);
    after.retain(|p, _| !p.to_string_lossy().ends_with('-'));
    assert_eq!(diff(&snapshot_without_mtimes(&before), &after), Vec::<String>::new(), "the root as it was before");

    verify_and_rate(dir.path(), from);
}

fn snapshot_without_mtimes(snapshot: &BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    snapshot.iter().map(|(p, l)| (p.clone(), l.split(" mtime ").next().unwrap_or_default().to_string())).collect()
}

fn deploy(file: &str) -> PathBuf {
    strait_multizone::units::deploy_vm().join(file)
}

/// `systemd-analyze verify` of every unit (an instance for the template) in a root that holds
/// what the units name, and `security --offline=yes` at "OK" or better (at most 2.0 here).
fn verify_and_rate(dir: &Path, from: &str) {
    let Ok(analyze) = which("systemd-analyze") else {
        println!("SKIPPED systemd-analyze verify/security: not installed (scripts/test.sh installs Debian's systemd)");
        return;
    };
    let root = dir.join("verify");
    seed_root(&root);
    run_install(&["--role", "global,zone,gateway,dataplane", "--root", root.to_str().unwrap(), "--from", from]);
    // The units' dependencies (sysinit.target, network-online.target, ...) come with systemd.
    let system = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&system).unwrap();
    let copied = std::process::Command::new("cp").args(["-r", "/lib/systemd/system"]).arg(&system).status().unwrap();
    assert!(copied.success());
    let root_flag = format!("--root={}", root.display());
    let out = std::process::Command::new(&analyze).args(["verify", &root_flag]).args(UNITS).current_dir(&root).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    println!("systemd-analyze verify: {} units, no finding", UNITS.len());
    for unit in UNITS {
        let out = std::process::Command::new(&analyze).args(["security", "--offline=yes", &root_flag, unit]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().rev().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{unit}: {text}"));
        let mut words = last.split(": ").nth(1).unwrap_or_default().split_whitespace();
        let (score, level) = (words.next().and_then(|s| s.parse::<f64>().ok()).unwrap(), words.next().unwrap_or_default());
        println!("FIGURE systemd_security unit={unit} exposure={score} level={level}");
        assert!(["PERFECT", "SAFE", "OK"].contains(&level) && score <= 2.0, "{unit}: {last}");
    }
}

fn which(program: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} not found"))
}

/// The interception rules of a host's NAT table.
fn strait_rules(machine: &Machine) -> String {
    let out = machine.host.run("iptables", ["-t", "nat", "-S"]);
    out.assert_success();
    out.stdout.lines().filter(|l| l.contains("STRAIT_")).collect::<Vec<_>>().join("\n")
}

const BACKEND_APP: u16 = 9002;
const WEB_APP: u16 = 9001;
const INBOUND: u16 = 8443;
const TO_BACKEND: u16 = 7001;
const SECRET: &str = "answered by zone-2's backend, run from its unit";

fn dataplane(name: &str, service: &str, address: std::net::IpAddr, app: u16, outbound: Option<(u16, &str)>) -> String {
    let outbound = outbound
        .map(|(port, to)| format!("    outbound:\n      - port: {port}\n        tags: {{strait.io/service: {to}}}\n"))
        .unwrap_or_default();
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nspec:\n  networking:\n    address: {address}\n    inbound:\n      - port: {INBOUND}\n        \
         servicePort: {app}\n        tags: {{strait.io/service: {service}, strait.io/protocol: http}}\n{outbound}    \
         transparentProxying: {{redirectPortOutbound: 15001, redirectPortInbound: 15006}}\n"
    )
}

#[test]
fn a_mesh_of_vms_runs_from_the_units_and_a_stopped_sidecar_leaves_no_rules() {
    let net = Net::new();
    if !net.is_namespaced() || !is_root() {
        println!("SKIPPED VM units: they run as their users with iptables in network namespaces (needs root and `ip netns`)");
        return;
    }
    // The global, configured as an operator would in /etc/strait/global.env.
    let g = Machine::install(&net, "global", &["global"]);
    g.write("/etc/strait/global.env", &format!("STRAIT_API_TLS_NAMES={}\n", g.host.addr()), 0o600);
    let global_unit = g.start("strait-global.service");
    let data = g.path("/var/lib/strait/global");
    let ca_pem = std::fs::read_to_string(data.join("api-ca.pem")).expect("the global wrote its API CA");
    let token = std::fs::read_to_string(data.join("admin-token")).expect("the global wrote its admin token").trim().to_string();
    let global = Global {
        client: g.host.https_client(&ca_pem),
        server: g.host.https_url(API_PORT, ""),
        host: g.host.clone(),
        proc: global_unit.proc.clone(),
        token,
        ca_file: data.join("api-ca.pem"),
    };
    global.wait_ready();
    global.apply(&net, "mesh.yaml", "type: Mesh\nname: default\n");

    // Each zone: its credentials as `zone register --output-format env` wrote them, its
    // gateway on the same machine with the cp.env the zone wrote.
    let mut zones = Vec::new();
    for name in ["zone-1", "zone-2"] {
        let machine = Machine::install(&net, name, &["zone", "gateway"]);
        let out_dir = net.dir().join(format!("register-{name}"));
        global
            .straitctl(&net, &["zone", "register", name, "--output-format", "env", "--output", out_dir.to_str().unwrap()])
            .assert_success();
        let env = |file: &str| std::fs::read_to_string(out_dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        machine.write("/etc/strait/zone.env", &env("zone.env"), 0o600);
        let zone_unit = machine.start("strait-zone.service");
        let cp_env = std::fs::read_to_string(machine.path("/var/lib/strait/zone/cp.env")).expect("the zone wrote cp.env");
        assert!(cp_env.contains(&format!("STRAIT_CP_ADDRESS=https://{}:7678", machine.host.addr())), "{cp_env}");
        machine.write("/etc/strait/cp.env", &cp_env, 0o644);
        machine.write("/etc/strait/gateway.env", &env("gateway.env"), 0o600);
        let gateway_unit = machine.start("strait-gateway.service");
        zones.push((machine, cp_env, zone_unit, gateway_unit));
    }

    // A workload per zone, each with the transparent proxy: backend (HTTP) in zone-2, web in
    // zone-1 calling backend through its explicit outbound.
    let workload = |name: &str, zone: usize, app: u16, outbound: Option<(u16, &str)>| {
        let machine = Machine::install(&net, name, &["dataplane"]);
        machine.write("/etc/strait/cp.env", &zones[zone].1, 0o644);
        let env_file = machine.path(&format!("/etc/strait/dp-{name}.env"));
        let args = [
            "token",
            "dataplane",
            "--mesh",
            "default",
            "--service",
            name,
            "--output-format",
            "env",
            "--output",
            env_file.to_str().unwrap(),
        ];
        global.straitctl(&net, &args).assert_success();
        machine.write(
            &format!("/etc/strait/dp-{name}.yaml"),
            &dataplane(&format!("{name}-1"), name, machine.host.addr(), app, outbound),
            0o644,
        );
        machine
    };
    let backend = workload("backend", 1, BACKEND_APP, None);
    let files = net.mkdir("backend-files");
    std::fs::write(files.join("secret.txt"), SECRET).unwrap();
    let _backend_app = http_server(&backend.host, "app", SocketAddr::from(([127, 0, 0, 1], BACKEND_APP)), &files);
    assert_eq!(strait_rules(&backend), "", "no rules before the unit starts");
    let backend_unit = backend.start("strait-dp@backend.service");
    assert!(strait_rules(&backend).contains("STRAIT_INBOUND"), "ExecStartPre installed the rules");

    let web = workload("web", 0, WEB_APP, Some((TO_BACKEND, "backend")));
    let _web_app = echo_server(&web.host, "app", SocketAddr::from(([127, 0, 0, 1], WEB_APP)));
    let web_unit = web.start("strait-dp@web.service");
    let uid = web.user("strait-dp").0;
    assert!(strait_rules(&web).contains(&format!("--uid-owner {uid}")), "the rules exempt the sidecar's user (dp.env)");

    // Zone-1's workload reaches zone-2's through both gateways; backend's inbound is reached
    // through its interception rules (other hosts' connections go to 15006).
    let (status, body) = wait_for("web (zone-1) -> backend (zone-2) through the gateways", SYNC * 2, || {
        http_get(&web.host, SocketAddr::from(([127, 0, 0, 1], TO_BACKEND)), "backend", "/secret.txt").and_then(|r| {
            if r.0 == 200 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        })
    });
    assert_eq!((status, body.as_str()), (200, SECRET));

    // `systemctl stop strait-dp@web`: STOPPING=1, then ExecStopPost removes the rules.
    web_unit.stop();
    assert_eq!(strait_rules(&web), "", "a stopped sidecar leaves no interception rules");
    // A crash (SIGKILL) runs ExecStopPost too.
    backend_unit.crash();
    assert_eq!(strait_rules(&backend), "", "a crashed sidecar leaves no interception rules");
    // With the rules gone the workload's own port is reachable again without the sidecar:
    // nothing is black-holed.
    let reached = backend.host.tcp_connect(SocketAddr::from(([127, 0, 0, 1], BACKEND_APP)), Duration::from_secs(3));
    assert_eq!(reached, Ok(()), "backend's application after its sidecar crashed");
    for (machine, _, zone_unit, gateway_unit) in &zones {
        gateway_unit.stop();
        zone_unit.stop();
        println!("{}: the zone and gateway units stopped cleanly", machine.host.name());
    }
    global_unit.stop();
}
