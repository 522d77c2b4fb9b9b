//! The idempotence logic of `install`/`uninstall`, against an in-memory nat table that answers
//! like iptables does (exit 1 for "no such rule/chain", 2 for an unknown jump target, 4 without
//! privileges). The same behaviours run against the real iptables in `netns_tests`.

use std::collections::{BTreeMap, HashSet};
use std::io;

use super::iptables::{install_with, uninstall_with, Output, Runner};
use super::*;

const BUILTIN_CHAINS: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];
const BUILTIN_TARGETS: [&str; 5] = ["RETURN", "REDIRECT", "ACCEPT", "DROP", "DNAT"];

/// One family's nat table: chain → rules (each rule's arguments joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table(BTreeMap<String, Vec<String>>);

impl Default for Table {
    fn default() -> Self {
        Table(BUILTIN_CHAINS.iter().map(|chain| (chain.to_string(), Vec::new())).collect())
    }
}

impl Table {
    fn rules(&self, chain: &str) -> &[String] {
        self.0.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }

    fn has_ours(&self) -> bool {
        self.0.iter().any(|(chain, rules)| chain.starts_with("STRAIT") || rules.iter().any(|rule| rule.contains("STRAIT")))
    }

    fn apply(&mut self, args: &[String]) -> Output {
        let ok = |stdout: String| Output { code: Some(0), stdout, stderr: String::new() };
        let fail = |code, stderr: &str| Output { code: Some(code), stdout: String::new(), stderr: stderr.to_string() };
        let chain = args.get(4).cloned().unwrap_or_default();
        let rule = args.get(5..).unwrap_or(&[]).join(" ");
        let target = args.iter().position(|arg| arg == "-j").and_then(|at| args.get(at + 1)).cloned();
        let unknown_target = target.as_deref().is_some_and(|t| !BUILTIN_TARGETS.contains(&t) && !self.0.contains_key(t));
        match args.get(3).map(String::as_str) {
            Some("-S") => {
                let mut lines: Vec<String> = BUILTIN_CHAINS.iter().map(|c| format!("-P {c} ACCEPT")).collect();
                lines.extend(self.0.keys().filter(|c| !BUILTIN_CHAINS.contains(&c.as_str())).map(|c| format!("-N {c}")));
                lines.extend(self.0.iter().flat_map(|(c, rules)| rules.iter().map(move |r| format!("-A {c} {r}"))));
                ok(lines.join("\n") + "\n")
            }
            Some("-N") if self.0.contains_key(&chain) => fail(1, "iptables: Chain already exists."),
            Some("-N") => {
                self.0.insert(chain, Vec::new());
                ok(String::new())
            }
            Some("-F") => match self.0.get_mut(&chain) {
                Some(rules) => {
                    rules.clear();
                    ok(String::new())
                }
                None => fail(1, "iptables: No chain/target/match by that name."),
            },
            Some("-X") if !self.0.contains_key(&chain) => fail(1, "iptables: No chain/target/match by that name."),
            Some("-X") if self.0.values().flatten().any(|r| r.ends_with(&format!("-j {chain}"))) || !self.rules(&chain).is_empty() => {
                fail(1, "CHAIN_DEL failed (Device or resource busy)")
            }
            Some("-X") => {
                self.0.remove(&chain);
                ok(String::new())
            }
            Some("-A" | "-C") if unknown_target => fail(2, "Couldn't load target"),
            Some("-A") => match self.0.get_mut(&chain) {
                Some(rules) => {
                    rules.push(rule);
                    ok(String::new())
                }
                None => fail(1, "iptables: No chain/target/match by that name."),
            },
            Some("-C") if self.rules(&chain).contains(&rule) => ok(String::new()),
            Some("-C") => fail(1, "iptables: Bad rule (does a matching rule exist in that chain?)."),
            Some("-D") => match self.0.get_mut(&chain).and_then(|rules| rules.iter().position(|r| *r == rule).map(|at| (rules, at))) {
                Some((rules, at)) => {
                    rules.remove(at);
                    ok(String::new())
                }
                None => fail(1, "iptables: Bad rule (does a matching rule exist in that chain?)."),
            },
            other => fail(2, &format!("unexpected {other:?}")),
        }
    }
}

/// iptables and ip6tables over in-memory tables, recording every call.
#[derive(Default)]
struct Fake {
    v4: Table,
    v6: Table,
    missing: HashSet<&'static str>,
    not_root: bool,
    fail_on: Option<&'static str>,
    calls: Vec<String>,
}

impl Runner for Fake {
    fn run(&mut self, binary: &str, args: &[String]) -> io::Result<Output> {
        let line = format!("{binary} {}", args.join(" "));
        self.calls.push(line.clone());
        if self.missing.contains(binary) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "No such file or directory (os error 2)"));
        }
        if args == ["--version"] {
            return Ok(Output { code: Some(0), stdout: format!("{binary} v1.8.9 (fake)"), stderr: String::new() });
        }
        if self.not_root {
            return Ok(Output { code: Some(4), stdout: String::new(), stderr: "Permission denied (you must be root)".into() });
        }
        if self.fail_on.is_some_and(|needle| line.ends_with(needle)) {
            return Ok(Output { code: Some(1), stdout: String::new(), stderr: "iptables: Invalid argument.".into() });
        }
        assert_eq!(args.get(..3), Some(&["-w".to_string(), "-t".into(), "nat".into()][..]), "{line}");
        Ok(match binary {
            "iptables" => self.v4.apply(args),
            "ip6tables" => self.v6.apply(args),
            other => panic!("unexpected binary {other}"),
        })
    }
}

fn config() -> TransparentConfig {
    let mut config = TransparentConfig::new(12345);
    config.exclude_outbound_ports = vec![5432];
    config.exclude_outbound_cidrs = vec!["198.18.1.0/24".parse().expect("cidr"), "2001:db8:1::/48".parse().expect("cidr")];
    config.exclude_inbound_ports = vec![22, 9901];
    config
}

fn appends(config: &TransparentConfig, family: Family) -> usize {
    install_commands(config, family).iter().filter(|c| c.action == rules::Action::Append).count()
}

#[test]
fn installing_twice_leaves_one_set_of_rules() {
    let mut fake = Fake::default();
    let first = install_with(&mut fake, &config(), false).expect("first install");
    let after_first = (fake.v4.clone(), fake.v6.clone());
    let second = install_with(&mut fake, &config(), false).expect("second install");
    assert_eq!((fake.v4.clone(), fake.v6.clone()), after_first, "the second install changed the result");
    for table in [&fake.v4, &fake.v6] {
        assert_eq!(table.rules("OUTPUT"), ["-p tcp -j STRAIT_OUTBOUND"]);
        assert_eq!(table.rules("PREROUTING"), ["-p tcp -j STRAIT_INBOUND"]);
    }
    let total: usize = fake.v4.0.values().map(Vec::len).sum();
    assert_eq!(total, appends(&config(), Family::V4));
    assert!(first.iter().any(|c| c == "iptables -w -t nat -N STRAIT_OUTBOUND"), "{first:?}");
    assert!(first.iter().any(|c| c == "ip6tables -w -t nat -A OUTPUT -p tcp -j STRAIT_OUTBOUND"), "{first:?}");
    for command in &second {
        assert!(!command.contains(" -N ") && !command.contains(" -A OUTPUT") && !command.contains(" -A PREROUTING"), "{command}");
    }
}

#[test]
fn other_programs_rules_are_kept_and_ours_appended_after_them() {
    let mut fake = Fake::default();
    fake.v4.0.insert("OUTPUT".into(), vec!["-p udp -j RETURN".into()]);
    fake.v4.0.insert("KUBE-SERVICES".into(), vec!["-j RETURN".into()]);
    install_with(&mut fake, &config(), false).expect("install");
    assert_eq!(fake.v4.rules("OUTPUT"), ["-p udp -j RETURN", "-p tcp -j STRAIT_OUTBOUND"]);
    uninstall_with(&mut fake, false).expect("uninstall");
    assert_eq!(fake.v4.rules("OUTPUT"), ["-p udp -j RETURN"]);
    assert_eq!(fake.v4.rules("KUBE-SERVICES"), ["-j RETURN"]);
    assert!(!fake.v4.has_ours());
}

#[test]
fn reinstalling_with_new_settings_replaces_the_old_rules() {
    let mut fake = Fake::default();
    install_with(&mut fake, &config(), false).expect("install");
    let mut outbound_only = config();
    outbound_only.redirect_inbound = false;
    outbound_only.redirect_port_outbound = 25001;
    install_with(&mut fake, &outbound_only, false).expect("reinstall");
    for table in [&fake.v4, &fake.v6] {
        assert!(table.rules("PREROUTING").is_empty(), "{table:?}");
        assert!(!table.0.contains_key("STRAIT_INBOUND") && !table.0.contains_key("STRAIT_IN_REDIRECT"), "{table:?}");
        assert_eq!(table.rules("STRAIT_REDIRECT"), ["-p tcp -j REDIRECT --to-ports 25001"]);
        assert!(!table.rules("STRAIT_OUTBOUND").iter().any(|r| r.contains("STRAIT_IN_REDIRECT")));
    }
    install_with(&mut fake, &config(), false).expect("inbound again");
    assert_eq!(fake.v4.rules("PREROUTING"), ["-p tcp -j STRAIT_INBOUND"]);
    assert_eq!(fake.v4.rules("STRAIT_IN_REDIRECT"), ["-p tcp -j REDIRECT --to-ports 15006"]);
}

#[test]
fn uninstall_removes_everything_and_is_idempotent() {
    let mut fake = Fake::default();
    assert_eq!(uninstall_with(&mut fake, false).expect("nothing installed"), Vec::<String>::new());
    install_with(&mut fake, &config(), false).expect("install");
    // A copy of the jump left by some other tool is removed too.
    fake.v4.0.get_mut("OUTPUT").expect("OUTPUT").push("-p tcp -j STRAIT_OUTBOUND".into());
    let removed = uninstall_with(&mut fake, false).expect("uninstall");
    assert!(!fake.v4.has_ours() && !fake.v6.has_ours(), "{:?}\n{:?}", fake.v4, fake.v6);
    assert_eq!(removed.iter().filter(|c| *c == "iptables -w -t nat -D OUTPUT -p tcp -j STRAIT_OUTBOUND").count(), 2);
    assert_eq!(fake.v4, Table::default());
    assert_eq!(uninstall_with(&mut fake, false).expect("second uninstall"), Vec::<String>::new());
}

#[test]
fn a_dry_run_runs_nothing_but_a_version_probe() {
    let mut fake = Fake::default();
    let install = install_with(&mut fake, &config(), true).expect("dry install");
    let uninstall = uninstall_with(&mut fake, true).expect("dry uninstall");
    assert_eq!(fake.calls, ["ip6tables --version", "ip6tables --version"]);
    assert_eq!((fake.v4.clone(), fake.v6.clone()), (Table::default(), Table::default()));
    let mut expected: Vec<String> = install_commands(&config(), Family::V4).iter().map(ToString::to_string).collect();
    expected.extend(install_commands(&config(), Family::V6).iter().map(ToString::to_string));
    assert_eq!(install, expected);
    assert!(uninstall.contains(&"ip6tables -w -t nat -X STRAIT_OUTBOUND".to_string()), "{uninstall:?}");

    // Dry runs need no privileges: they never ask iptables anything.
    let mut unprivileged = Fake { not_root: true, ..Fake::default() };
    assert_eq!(install_with(&mut unprivileged, &config(), true).expect("dry install").len(), expected.len());
}

#[test]
fn ipv6_is_skipped_when_ip6tables_is_missing_or_not_wanted() {
    let mut fake = Fake { missing: HashSet::from(["ip6tables"]), ..Fake::default() };
    let done = install_with(&mut fake, &config(), false).expect("install without ip6tables");
    assert!(done.iter().all(|c| c.starts_with("iptables ")), "{done:?}");
    assert!(fake.v4.has_ours());
    uninstall_with(&mut fake, false).expect("uninstall without ip6tables");
    assert!(!fake.v4.has_ours());
    let dry = install_with(&mut fake, &config(), true).expect("dry run without ip6tables");
    assert!(dry.iter().all(|c| c.starts_with("iptables ")), "{dry:?}");

    let mut v4_only = Fake::default();
    let mut config = config();
    config.ipv6 = false;
    install_with(&mut v4_only, &config, false).expect("install");
    assert!(v4_only.v4.has_ours() && !v4_only.v6.has_ours());
    assert!(v4_only.calls.iter().all(|c| c.starts_with("iptables ")), "{:?}", v4_only.calls);
}

#[test]
fn errors_name_the_failing_command_and_its_stderr() {
    let mut not_root = Fake { not_root: true, ..Fake::default() };
    let error = install_with(&mut not_root, &config(), false).expect_err("not root").to_string();
    assert!(error.contains("`iptables -w -t nat -S`") && error.contains("you must be root") && error.contains("exit status 4"), "{error}");
    let error = uninstall_with(&mut not_root, false).expect_err("not root").to_string();
    assert!(error.contains("you must be root"), "{error}");

    let mut no_iptables = Fake { missing: HashSet::from(["iptables", "ip6tables"]), ..Fake::default() };
    let error = install_with(&mut no_iptables, &config(), false).expect_err("no iptables");
    assert!(matches!(error, Error::Spawn { .. }), "{error:?}");
    assert!(error.to_string().contains("could not run `iptables -w -t nat -S`"), "{error}");

    let mut broken = Fake { fail_on: Some("-A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"), ..Fake::default() };
    let error = install_with(&mut broken, &config(), false).expect_err("failing rule").to_string();
    assert_eq!(
        error,
        "`iptables -w -t nat -A STRAIT_REDIRECT -p tcp -j REDIRECT --to-ports 15001` failed (exit status 1): iptables: Invalid argument."
    );
    assert!(broken.v4.rules("OUTPUT").is_empty(), "no jump is added after a failure");
}

#[test]
fn invalid_settings_are_rejected_before_any_command_runs() {
    let mut fake = Fake::default();
    let mut config = config();
    config.redirect_port_outbound = 0;
    config.exclude_inbound_ports.push(0);
    let error = install_with(&mut fake, &config, false).expect_err("invalid").to_string();
    assert!(error.contains("redirect_port_outbound") && error.contains("exclude_inbound_ports[2]"), "{error}");
    assert!(fake.calls.is_empty(), "{:?}", fake.calls);
}
